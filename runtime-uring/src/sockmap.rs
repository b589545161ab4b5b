//! The in-kernel relay (data_path `kernel-sockmap`): the BPF program of `bpf/relay.c`, loaded
//! once per process with aya and attached to its `SOCKHASH`; each shard gets its own handles on
//! the two maps (descriptors of the same kernel maps) to put pairs in and read spill marks.
//!
//! Per pair: both sockets' cookies (`SO_COOKIE`), two map updates — the upstream first, so the
//! only socket that can see bytes before its peer is in the map is the upstream (a server that
//! speaks first: its bytes are passed and the direction is copied, `bpf/relay.c`) — and a kick
//! for bytes that arrived before the verdict was attached: setting `SO_RCVLOWAT` runs the
//! socket's data-ready callback, now the verdict's.

use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;

use aya::maps::{HashMap as BpfHashMap, Map, MapData, MapError, SockHash};
use aya::programs::SkSkb;
use origdst_engine::kernel::{Errno, RelayedSource, TcpCounts};

use crate::sys;

/// Bytes aligned as an ELF parser needs them (`include_bytes!` promises no alignment).
#[cfg(not(origdst_no_bpf))]
#[repr(C, align(8))]
struct Aligned<B: ?Sized>(B);

/// The compiled program (`build.rs`), or nothing where this build has none.
#[cfg(not(origdst_no_bpf))]
const OBJECT: Option<&[u8]> = {
    static ALIGNED: &Aligned<[u8]> =
        &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/relay.o")));
    Some(&ALIGNED.0)
};
#[cfg(origdst_no_bpf)]
const OBJECT: Option<&[u8]> = None;

/// The loaded program and its maps, for the process's life (dropping it detaches the relay).
pub(crate) struct Loaded {
    _bpf: aya::Ebpf,
    peers: MapData,
    spilled: MapData,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("sockmap::Loaded")
    }
}

/// Why the relay could not be loaded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    #[error("this build has no BPF relay (clang and libbpf-dev were missing when it was built)")]
    NotBuilt,
    #[error("{0}: {1}")]
    Bpf(&'static str, String),
}

impl Loaded {
    /// Loads the program and attaches it to its socket map. Needs CAP_BPF and CAP_NET_ADMIN
    /// (or root) and a kernel with sockmap.
    pub(crate) fn load() -> Result<Arc<Self>, LoadError> {
        let object = OBJECT.ok_or(LoadError::NotBuilt)?;
        let bpf_err = |what| move |e: &dyn std::fmt::Display| LoadError::Bpf(what, e.to_string());
        let mut bpf = aya::Ebpf::load(object).map_err(|e| bpf_err("loading the object")(&e))?;
        let peers = map_data(&mut bpf, "peers")?;
        let spilled = map_data(&mut bpf, "spilled")?;
        let program: &mut SkSkb = bpf
            .program_mut("relay")
            .ok_or(LoadError::Bpf(
                "the object",
                "no program named relay".into(),
            ))?
            .try_into()
            .map_err(|e| bpf_err("the relay program")(&e))?;
        program
            .load()
            .map_err(|e| bpf_err("loading the verdict program")(&e))?;
        let attach_to = clone_map(&peers).map_err(|e| bpf_err("the peers map")(&e))?;
        let attach_to = SockHash::<MapData, u64>::try_from(Map::SockHash(attach_to))
            .map_err(|e| bpf_err("the peers map")(&e))?;
        program
            .attach(attach_to.fd())
            .map_err(|e| bpf_err("attaching the verdict program")(&e))?;
        Ok(Arc::new(Self {
            _bpf: bpf,
            peers,
            spilled,
        }))
    }

    /// A shard's own handles on the maps.
    pub(crate) fn for_shard(self: &Arc<Self>) -> io::Result<ShardRelay> {
        let peers = clone_map(&self.peers).map_err(io::Error::other)?;
        let spilled = clone_map(&self.spilled).map_err(io::Error::other)?;
        Ok(ShardRelay {
            peers: SockHash::try_from(Map::SockHash(peers)).map_err(io::Error::other)?,
            spilled: BpfHashMap::try_from(Map::HashMap(spilled)).map_err(io::Error::other)?,
            _loaded: Arc::clone(self),
        })
    }
}

fn map_data(bpf: &mut aya::Ebpf, name: &'static str) -> Result<MapData, LoadError> {
    let map = bpf
        .take_map(name)
        .ok_or(LoadError::Bpf("the object", format!("no map named {name}")))?;
    match map {
        Map::SockHash(data) | Map::HashMap(data) => Ok(data),
        _ => Err(LoadError::Bpf(
            "the object",
            format!("{name} has another type"),
        )),
    }
}

fn clone_map(map: &MapData) -> Result<MapData, MapError> {
    let fd = map.fd().as_fd().try_clone_to_owned().map_err(|io_error| {
        MapError::SyscallError(aya::sys::SyscallError {
            call: "dup",
            io_error,
        })
    })?;
    MapData::from_fd(fd)
}

/// One shard's handles on the relay's maps.
pub(crate) struct ShardRelay {
    peers: SockHash<MapData, u64>,
    spilled: BpfHashMap<MapData, u64, u8>,
    _loaded: Arc<Loaded>,
}

impl ShardRelay {
    /// Puts a connected pair in the map and kicks what each socket holds already.
    /// `between`: a pause between the two updates (BUGGIFY only: it makes a server that speaks
    /// at once spill, so the real-kernel tests cover the handed-back path), ended early once the
    /// upstream has spilled.
    pub(crate) fn insert(
        &mut self,
        client: i32,
        upstream: i32,
        between: Option<std::time::Duration>,
    ) -> Result<(), Errno> {
        let client_cookie = sys::socket_cookie(client).map_err(errno)?;
        let upstream_cookie = sys::socket_cookie(upstream).map_err(errno)?;
        // Under the client's cookie: where the client's bytes go. The upstream socket gets the
        // verdict now; the client only with the second update.
        self.peers
            .insert(client_cookie, upstream, 0)
            .map_err(map_errno)?;
        if let Some(pause) = between {
            // Until the upstream's first bytes were passed and marked, or `pause` at most: a
            // fixed sleep lost the race to a server slowed by a loaded machine (no spill).
            let until = std::time::Instant::now() + pause;
            while self.spilled.get(&upstream_cookie, 0).is_err()
                && std::time::Instant::now() < until
            {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        if let Err(err) = self.peers.insert(upstream_cookie, client, 0) {
            // Take the first one out again: the pair is relayed by the shard. (If the upstream
            // received bytes meanwhile, they were passed and marked, and the shard copies them.)
            let _ = self.peers.remove(&client_cookie);
            return Err(map_errno(err));
        }
        for fd in [client, upstream] {
            // Runs the data-ready callback: bytes queued before the verdict was attached.
            sys::set_rcvlowat_raw(fd, 1).map_err(errno)?;
        }
        Ok(())
    }

    /// What a relayed source has to say (see [`RelayedSource`]).
    pub(crate) fn source(&mut self, fd: i32) -> Result<RelayedSource, Errno> {
        let cookie = sys::socket_cookie(fd).map_err(errno)?;
        if self.spilled.get(&cookie, 0).is_ok() {
            return Ok(RelayedSource::Spilled);
        }
        match sys::peek_one(fd) {
            Ok(0) => Ok(RelayedSource::Eof),
            Ok(_) => Ok(RelayedSource::Pending),
            Err(err) if err.raw_os_error() == Some(libc::EAGAIN) => Ok(RelayedSource::Quiet),
            Err(err) => Err(errno(err)),
        }
    }

    /// Deletes `fd`'s spill mark, if it has one (its map entries go with the socket).
    pub(crate) fn forget(&mut self, fd: i32) {
        if let Ok(cookie) = sys::socket_cookie(fd) {
            let _ = self.spilled.remove(&cookie);
        }
    }
}

/// `TCP_INFO` and `SIOCOUTQ` of a socket.
pub(crate) fn tcp_counts(fd: i32) -> Option<TcpCounts> {
    let info = sys::tcp_info(fd).ok()?;
    let unacked = sys::outq(fd).ok()?;
    Some(TcpCounts {
        received: info.tcpi_bytes_received,
        queued: info.tcpi_bytes_acked + unacked,
        closed: info.tcpi_state == TCP_CLOSE,
        since_sent: std::time::Duration::from_millis(u64::from(info.tcpi_last_data_sent)),
    })
}

/// `TCP_CLOSE` of the kernel's `tcp_states.h` (libc does not export the TCP states).
const TCP_CLOSE: u8 = 7;

fn errno(err: io::Error) -> Errno {
    err.raw_os_error().unwrap_or(libc::EIO)
}

fn map_errno(err: MapError) -> Errno {
    match err {
        MapError::SyscallError(e) => errno(e.io_error),
        _ => libc::EINVAL,
    }
}
