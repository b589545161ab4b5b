//! Reaching the control plane: the xDS cluster's endpoints — an IP and port, a host name looked
//! up at each attempt (`STRICT_DNS`, `LOGICAL_DNS`: how go-control-plane's and Envoy's published
//! bootstraps name it), or a Unix socket (`pipe`: how Istio's bootstrap reaches its agent) —
//! tried in turn, each address with the cluster's `connect_timeout`.
//!
//! Each connection attempt starts at the next endpoint (round robin, as Envoy balances its xDS
//! cluster) and falls through to the others, so one dead replica of several costs one timeout,
//! not the stream. Names are looked up here, on the control-plane thread: never on a shard.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use origdst_core::config::{ControlPlaneTarget, DnsFamily};
use tokio::io::{AsyncRead, AsyncWrite};

/// Addresses tried in one connection attempt at most (the endpoints' and their names'
/// together): with a timeout each, more would hold the client far past its backoff.
pub const ADDRESSES_PER_ATTEMPT_MAX: usize = 8;

/// Where the control plane is and how long reaching one of its addresses may take.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    /// The xDS cluster's endpoints, in order (at least one).
    pub targets: Vec<ControlPlaneTarget>,
    /// Which addresses of a name are tried, in which order.
    pub family: DnsFamily,
    /// The xDS cluster's `connect_timeout`, per address.
    pub connect_timeout: Duration,
    /// The endpoint the next attempt starts at.
    next: Arc<AtomicUsize>,
}

impl ControlPlane {
    /// A control plane at `targets` (at least one; checked by the config's validation).
    pub fn new(
        targets: Vec<ControlPlaneTarget>,
        family: DnsFamily,
        connect_timeout: Duration,
    ) -> Self {
        assert!(!targets.is_empty(), "a control plane needs an address");
        Self {
            targets,
            family,
            connect_timeout,
            next: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// One address, as the README's examples and the tests give it.
    pub fn at(addr: SocketAddr, connect_timeout: Duration) -> Self {
        Self::new(
            vec![ControlPlaneTarget::Socket(addr)],
            DnsFamily::default(),
            connect_timeout,
        )
    }

    /// The `:authority` of the stream's requests: the first endpoint's `host:port` (a Unix
    /// socket has none; `localhost`, as gRPC's own `unix:` targets say).
    pub fn authority(&self) -> String {
        match &self.targets[0] {
            ControlPlaneTarget::Socket(addr) => addr.to_string(),
            ControlPlaneTarget::Host { name, port } => format!("{name}:{port}"),
            ControlPlaneTarget::Pipe(_) => "localhost".into(),
        }
    }

    /// A connection to the control plane: the endpoints from the next in turn, each of a name's
    /// addresses in the family's order, until one connects. The error says what each gave.
    pub async fn dial(&self) -> io::Result<TokioIo<Box<dyn Stream>>> {
        let start = self.next.fetch_add(1, Ordering::Relaxed) % self.targets.len();
        let mut tried = 0;
        let mut failures = Vec::new();
        for offset in 0..self.targets.len() {
            if tried == ADDRESSES_PER_ATTEMPT_MAX {
                break;
            }
            let target = &self.targets[(start + offset) % self.targets.len()];
            for address in self.addresses(target, &mut failures).await {
                if tried == ADDRESSES_PER_ATTEMPT_MAX {
                    break;
                }
                tried += 1;
                match self.connect(&address).await {
                    Ok(stream) => return Ok(stream),
                    Err(err) => failures.push(format!("{address}: {err}")),
                }
            }
        }
        Err(io::Error::new(
            io::ErrorKind::NotConnected,
            failures.join("; "),
        ))
    }

    /// What `target` is reached at: itself, or its name's addresses in the family's order (a
    /// failed lookup said in `failures`).
    async fn addresses(
        &self,
        target: &ControlPlaneTarget,
        failures: &mut Vec<String>,
    ) -> Vec<Address> {
        match target {
            ControlPlaneTarget::Pipe(path) => vec![Address::Unix(path.clone())],
            ControlPlaneTarget::Socket(addr) => vec![Address::Tcp(*addr)],
            ControlPlaneTarget::Host { name, port } => {
                let found = self
                    .within(tokio::net::lookup_host((name.as_str(), *port)))
                    .await;
                match found {
                    Ok(found) => {
                        let ordered = self.family.order(found.collect());
                        if ordered.is_empty() {
                            failures.push(format!(
                                "{name}: no address of the family {:?}",
                                self.family
                            ));
                        }
                        ordered.into_iter().map(Address::Tcp).collect()
                    }
                    Err(err) => {
                        failures.push(format!("looking up {name}: {err}"));
                        Vec::new()
                    }
                }
            }
        }
    }

    /// A stream to `address`, within the connect timeout.
    async fn connect(&self, address: &Address) -> io::Result<TokioIo<Box<dyn Stream>>> {
        let stream: Box<dyn Stream> = match address {
            Address::Unix(path) => {
                Box::new(self.within(tokio::net::UnixStream::connect(path)).await?)
            }
            Address::Tcp(addr) => {
                let stream = self.within(tokio::net::TcpStream::connect(addr)).await?;
                // gRPC's small frames must not wait for Nagle.
                stream.set_nodelay(true)?;
                Box::new(stream)
            }
        };
        Ok(TokioIo::new(stream))
    }

    /// `step`, given up after the connect timeout.
    async fn within<T>(&self, step: impl Future<Output = io::Result<T>>) -> io::Result<T> {
        tokio::time::timeout(self.connect_timeout, step)
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {:?}", self.connect_timeout),
                ))
            })
    }
}

/// The endpoints, as the log names them (`10.96.0.10:15010`, `istiod:15010, ./etc/XDS`).
impl std::fmt::Display for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (index, target) in self.targets.iter().enumerate() {
            if index > 0 {
                f.write_str(", ")?;
            }
            match target {
                ControlPlaneTarget::Socket(addr) => write!(f, "{addr}")?,
                ControlPlaneTarget::Host { name, port } => write!(f, "{name}:{port}")?,
                ControlPlaneTarget::Pipe(path) => write!(f, "{}", path.display())?,
            }
        }
        Ok(())
    }
}

/// One address of the control plane's.
enum Address {
    Tcp(SocketAddr),
    Unix(std::path::PathBuf),
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "{addr}"),
            Self::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A byte stream to the control plane: TCP or a Unix socket.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_family_orders_and_filters_a_names_addresses() {
        let v4: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let v6: SocketAddr = "[fd00::1]:1".parse().unwrap();
        let v4b: SocketAddr = "10.0.0.2:1".parse().unwrap();
        let found = vec![v4, v6, v4b];
        assert_eq!(DnsFamily::Auto.order(found.clone()), vec![v6, v4, v4b]);
        assert_eq!(
            DnsFamily::V4Preferred.order(found.clone()),
            vec![v4, v4b, v6]
        );
        assert_eq!(DnsFamily::V4Only.order(found.clone()), vec![v4, v4b]);
        assert_eq!(DnsFamily::V6Only.order(found.clone()), vec![v6]);
        assert_eq!(DnsFamily::All.order(found.clone()), found);
    }

    #[test]
    fn the_authority_is_the_first_endpoints() {
        let timeout = Duration::from_secs(1);
        let plane = |target| ControlPlane::new(vec![target], DnsFamily::Auto, timeout);
        assert_eq!(
            plane(ControlPlaneTarget::Socket(
                "127.0.0.1:18000".parse().unwrap()
            ))
            .authority(),
            "127.0.0.1:18000"
        );
        assert_eq!(
            plane(ControlPlaneTarget::Host {
                name: "xds.example".into(),
                port: 15010
            })
            .authority(),
            "xds.example:15010"
        );
        assert_eq!(
            plane(ControlPlaneTarget::Pipe("./etc/istio/proxy/XDS".into())).authority(),
            "localhost"
        );
        let several = ControlPlane::new(
            vec![
                ControlPlaneTarget::Socket("10.96.0.10:15010".parse().unwrap()),
                ControlPlaneTarget::Host {
                    name: "istiod".into(),
                    port: 15010,
                },
                ControlPlaneTarget::Pipe("./etc/XDS".into()),
            ],
            DnsFamily::Auto,
            timeout,
        );
        assert_eq!(
            several.to_string(),
            "10.96.0.10:15010, istiod:15010, ./etc/XDS"
        );
    }
}
