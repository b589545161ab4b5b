//! Where Istio's `use_original_dst` hand-off finds its target: the `bind_to_port: false` listener
//! whose address is a connection's restored destination — an exact match first, then a wildcard
//! of the same family and port (Envoy's order), the first listener in config order winning each.
//! Built once per config, so routing a connection costs the same with 10 or 10 000 such
//! listeners (a control plane pushes one per service).

use std::collections::HashMap;
use std::net::SocketAddr;

use super::Listener;

/// The hand-off targets of a config, by address.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct HandoffIndex {
    exact: HashMap<SocketAddr, usize>,
    /// (IPv6?, port) of a wildcard address.
    wildcard: HashMap<(bool, u16), usize>,
}

impl HandoffIndex {
    /// The index of `listeners` (their positions are what it answers).
    pub fn build(listeners: &[Listener]) -> Self {
        let mut index = Self::default();
        for (position, listener) in listeners.iter().enumerate() {
            if listener.bind_to_port {
                continue;
            }
            for addr in listener.socket_addresses() {
                index.exact.entry(*addr).or_insert(position);
                if addr.ip().is_unspecified() {
                    index
                        .wildcard
                        .entry((addr.is_ipv6(), addr.port()))
                        .or_insert(position);
                }
            }
        }
        index
    }

    /// The listener a connection to `dst` is handed to, if any.
    pub fn target(&self, dst: SocketAddr) -> Option<usize> {
        self.exact
            .get(&dst)
            .or_else(|| self.wildcard.get(&(dst.is_ipv6(), dst.port())))
            .copied()
    }

    /// How many addresses it knows.
    pub fn len(&self) -> usize {
        self.exact.len()
    }

    /// Whether it knows none.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty()
    }
}

impl std::fmt::Debug for HandoffIndex {
    // The maps' order is arbitrary: a count prints the same every time (golden files).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandoffIndex")
            .field("addresses", &self.exact.len())
            .field("wildcards", &self.wildcard.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// The linear search the index replaced: its answer for every address must not change.
    fn linear(config: &Config, dst: SocketAddr) -> Option<usize> {
        let candidates = || {
            config
                .listeners
                .iter()
                .enumerate()
                .filter(|(_, l)| !l.bind_to_port)
        };
        candidates()
            .find(|(_, l)| l.socket_addresses().contains(&dst))
            .or_else(|| {
                candidates().find(|(_, l)| {
                    l.socket_addresses().iter().any(|a| {
                        a.port() == dst.port()
                            && a.ip().is_unspecified()
                            && a.is_ipv4() == dst.is_ipv4()
                    })
                })
            })
            .map(|(index, _)| index)
    }

    #[test]
    fn the_index_answers_as_the_listeners_read_in_order() {
        let chain = "filter_chains: [ { filters: [ { name: envoy.filters.network.tcp_proxy, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: s, cluster: pass } } ] } ]";
        let listener = |name: &str, addr: &str, port: u16, bound: bool| {
            format!(
                "  - {{ name: {name}, address: {{ socket_address: {{ address: \"{addr}\", port_value: {port} }} }}, bind_to_port: {bound}, {chain} }}\n"
            )
        };
        let mut yaml = String::from("static_resources:\n  listeners:\n");
        yaml.push_str(&listener("capture", "0.0.0.0", 15001, true));
        yaml.push_str(&listener("exact", "10.0.0.1", 80, false));
        yaml.push_str(&listener("wild4", "0.0.0.0", 80, false));
        yaml.push_str(&listener("wild6", "::", 80, false));
        yaml.push_str(&listener("exact6", "fd00::1", 443, false));
        yaml.push_str(&listener("bound", "0.0.0.0", 8080, true));
        yaml.push_str("  clusters: [ { name: pass, type: STATIC } ]\n");
        let config = Config::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        let name = |dst: &str| {
            let dst: SocketAddr = dst.parse().unwrap();
            let found = config.handoff.target(dst);
            assert_eq!(found, linear(&config, dst), "{dst}");
            found.map(|i| config.listeners[i].name.as_str())
        };
        assert_eq!(name("10.0.0.1:80"), Some("exact"));
        assert_eq!(name("10.0.0.2:80"), Some("wild4"));
        assert_eq!(name("[fd00::9]:80"), Some("wild6"));
        assert_eq!(name("[fd00::1]:443"), Some("exact6"));
        assert_eq!(name("10.0.0.1:443"), None, "no IPv4 listener on 443");
        assert_eq!(
            name("10.0.0.1:8080"),
            None,
            "a bound listener is no hand-off target"
        );
        assert_eq!(name("10.0.0.1:15001"), None);
        assert_eq!(config.handoff.len(), 4);
    }
}
