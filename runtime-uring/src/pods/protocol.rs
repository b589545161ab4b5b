//! The pod interface: how a node agent (istio-cni's role) tells origdst which pods to serve.
//!
//! A Unix `SOCK_SEQPACKET` socket (one request per message, one answer per request). Requests
//! are ASCII text:
//!
//! ```text
//! ADD <pod>      one descriptor attached (SCM_RIGHTS): the pod's network namespace, for
//!                example an open /var/run/netns/<name> or /proc/<pid>/ns/net
//! DEL <pod>
//! LIST
//! ```
//!
//! Answers: `OK` (for `LIST`: `OK <n>` then one pod name per line), or `ERR <why>`. A pod's name
//! is 1 to [`POD_NAME_BYTES_MAX`] bytes of `A-Z a-z 0-9 . _ - /` (Kubernetes' `namespace/name`
//! fits). Everything a client sends is bounded: [`REQUEST_BYTES_MAX`] bytes, one descriptor.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
    connect, recvmsg, sendmsg, socket,
};

/// The longest request accepted (`ADD ` and the longest name fit well within).
pub const REQUEST_BYTES_MAX: usize = 512;
/// The longest pod name.
pub const POD_NAME_BYTES_MAX: usize = 253;
/// The longest answer a client reads (a `LIST` of every pod is split over lines; the server
/// truncates past this and says so).
pub const ANSWER_BYTES_MAX: usize = 256 * 1024;

/// A request, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Serve a pod (its namespace came attached).
    Add(String),
    /// Stop serving a pod; its connections drain.
    Del(String),
    /// Which pods are served.
    List,
}

/// Parses a request's text, naming what is wrong with it.
pub fn parse(bytes: &[u8]) -> Result<Request, String> {
    let text =
        std::str::from_utf8(bytes).map_err(|_| "the request is not ASCII text".to_string())?;
    let text = text.strip_suffix('\n').unwrap_or(text);
    let (verb, rest) = text.split_once(' ').unwrap_or((text, ""));
    match verb {
        "ADD" => Ok(Request::Add(pod_name(rest)?)),
        "DEL" => Ok(Request::Del(pod_name(rest)?)),
        "LIST" if rest.is_empty() => Ok(Request::List),
        "LIST" => Err("LIST takes no argument".into()),
        _ => Err("unknown request (ADD <pod>, DEL <pod> or LIST)".into()),
    }
}

/// A pod name, checked: it ends up in logs, metrics labels and the access log.
pub fn pod_name(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("no pod name".into());
    }
    if text.len() > POD_NAME_BYTES_MAX {
        return Err(format!(
            "the pod name is {} bytes, more than {POD_NAME_BYTES_MAX}",
            text.len()
        ));
    }
    if let Some(bad) = text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')))
    {
        return Err(format!(
            "the pod name holds {bad:?} (only A-Z a-z 0-9 . _ - / are allowed)"
        ));
    }
    Ok(text.to_string())
}

/// A client of the pod interface (`origdst pod ...`, tests, a node agent written in Rust).
pub struct Client {
    socket: OwnedFd,
}

impl Client {
    /// Connects to origdst's pod socket.
    pub fn connect(path: &Path) -> io::Result<Self> {
        let socket = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        let addr = UnixAddr::new(path)?;
        connect(socket.as_raw_fd(), &addr)
            .map_err(|err| io::Error::other(format!("{}: {err}", path.display())))?;
        Ok(Self { socket })
    }

    /// Serves the pod whose network namespace `netns` is.
    pub fn add(&self, pod: &str, netns: &impl AsRawFd) -> io::Result<String> {
        self.ask(&format!("ADD {pod}"), Some(netns.as_raw_fd()))
    }

    /// Stops serving a pod.
    pub fn remove(&self, pod: &str) -> io::Result<String> {
        self.ask(&format!("DEL {pod}"), None)
    }

    /// The pods served.
    pub fn list(&self) -> io::Result<String> {
        self.ask("LIST", None)
    }

    /// Sends one request and reads its answer: `Ok` with the answer's text after `OK`, or an
    /// error carrying the `ERR` text.
    pub fn ask(&self, request: &str, fd: Option<RawFd>) -> io::Result<String> {
        let iov = [io::IoSlice::new(request.as_bytes())];
        let fds = fd.map(|fd| [fd]);
        let cmsg: Vec<ControlMessage<'_>> = fds
            .as_ref()
            .map(|fds| vec![ControlMessage::ScmRights(fds)])
            .unwrap_or_default();
        sendmsg::<()>(
            self.socket.as_raw_fd(),
            &iov,
            &cmsg,
            MsgFlags::empty(),
            None,
        )?;
        let mut buf = vec![0u8; ANSWER_BYTES_MAX];
        let n = nix::unistd::read(&self.socket, &mut buf)?;
        let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
        match answer.strip_prefix("OK") {
            Some(rest) => Ok(rest.trim_start().to_string()),
            None => Err(io::Error::other(
                answer.strip_prefix("ERR ").unwrap_or(&answer).to_string(),
            )),
        }
    }
}

/// One request as received: its bytes and the descriptors that came with it (owned: closed
/// when dropped unless taken).
pub(crate) struct Received {
    pub(crate) bytes: Vec<u8>,
    pub(crate) fds: Vec<OwnedFd>,
    /// The request or its descriptors did not fit.
    pub(crate) truncated: bool,
}

/// Receives one request from a connected client; `None` when it hung up.
pub(crate) fn receive(socket: &OwnedFd) -> io::Result<Option<Received>> {
    let mut buf = vec![0u8; REQUEST_BYTES_MAX + 1];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let mut iov = [io::IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            for fd in received {
                // SAFETY: SCM_RIGHTS installed this descriptor in our table just now; nothing
                // else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    let truncated = msg
        .flags
        .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
    let n = msg.bytes;
    if n == 0 && fds.is_empty() {
        return Ok(None);
    }
    buf.truncate(n.min(REQUEST_BYTES_MAX + 1));
    let truncated = truncated || n > REQUEST_BYTES_MAX;
    Ok(Some(Received {
        bytes: buf,
        fds,
        truncated,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_hostile_names_are_refused_by_reason() {
        assert_eq!(parse(b"ADD web-0").unwrap(), Request::Add("web-0".into()));
        assert_eq!(
            parse(b"DEL default/web-0\n").unwrap(),
            Request::Del("default/web-0".into())
        );
        assert_eq!(parse(b"LIST").unwrap(), Request::List);
        assert!(parse(b"ADD ").unwrap_err().contains("no pod name"));
        assert!(parse(b"ADD a b").unwrap_err().contains("' '"));
        assert!(parse(b"ADD pod\x1b[31m").unwrap_err().contains("only A-Z"));
        assert!(
            parse(&[b'A', b'D', b'D', b' ', 0xff])
                .unwrap_err()
                .contains("ASCII")
        );
        let long = format!("ADD {}", "a".repeat(POD_NAME_BYTES_MAX + 1));
        assert!(
            parse(long.as_bytes())
                .unwrap_err()
                .contains("more than 253")
        );
        assert!(parse(b"REBOOT").unwrap_err().contains("unknown request"));
        assert!(parse(b"LIST x").unwrap_err().contains("no argument"));
    }
}
