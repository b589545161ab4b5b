//! Internal listeners chain connections in process: a listener's cluster may have an
//! `envoy_internal_address` endpoint, whose listener's cluster may have another. A cycle
//! (A → B → A, or A → A) would pass every connection around forever — in one shard, on the data
//! path. Envoy has no guard; origdst refuses such a config, naming the chain, and refuses chains
//! longer than the runtime's hop bound ([`INTERNAL_HOPS_MAX`]), so that bound never cuts a valid
//! config's traffic.

use super::{ClusterKind, Config, ConfigError, EndpointTarget};

/// The most internal-listener hops one connection may take. Enforced again at run time for every
/// connection ([`crate::route::route`]), whatever the config says.
pub const INTERNAL_HOPS_MAX: u8 = 8;

/// The listeners a connection received on `listener` can be passed to in process: through the
/// `use_original_dst` hand-off (to any `bind_to_port: false` listener) and then the handling
/// listener's chains' clusters' internal endpoints.
fn next_hops(config: &Config, listener: usize) -> Vec<usize> {
    let receiving = &config.listeners[listener];
    let mut handlers = vec![listener];
    if receiving.use_original_dst && receiving.original_dst {
        handlers.extend(
            config
                .listeners
                .iter()
                .enumerate()
                .filter(|(index, l)| !l.bind_to_port && *index != listener)
                .map(|(index, _)| index),
        );
    }
    let mut next = Vec::new();
    for handler in handlers {
        for chain in config.listeners[handler].chains() {
            if let ClusterKind::Static { endpoints } =
                &config.clusters[chain.tcp_proxy.cluster].kind
            {
                for endpoint in endpoints {
                    if let EndpointTarget::Internal { listener } = endpoint.target
                        && !next.contains(&listener)
                    {
                        next.push(listener);
                    }
                }
            }
        }
    }
    next
}

/// Refuses cycles among internal listeners, and chains of more than [`INTERNAL_HOPS_MAX`] hops.
pub(super) fn validate(config: &Config) -> Result<(), ConfigError> {
    let edges: Vec<Vec<usize>> = (0..config.listeners.len())
        .map(|index| next_hops(config, index))
        .collect();
    // Longest hop count from each listener, by depth-first search with an explicit stack (a
    // config is data too: no recursion on its size).
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done(usize),
    }
    let mut marks = vec![Mark::New; edges.len()];
    let name = |index: usize| config.listeners[index].name.as_str();
    for start in 0..edges.len() {
        if marks[start] != Mark::New {
            continue;
        }
        // (listener, next edge to visit)
        let mut path: Vec<(usize, usize)> = vec![(start, 0)];
        marks[start] = Mark::OnPath;
        while let Some(&mut (node, ref mut cursor)) = path.last_mut() {
            if let Some(&next) = edges[node].get(*cursor) {
                *cursor += 1;
                match marks[next] {
                    Mark::New => {
                        marks[next] = Mark::OnPath;
                        path.push((next, 0));
                    }
                    Mark::OnPath => {
                        let from = path
                            .iter()
                            .position(|&(n, _)| n == next)
                            .expect("on the path");
                        let cycle: Vec<&str> = path[from..]
                            .iter()
                            .map(|&(n, _)| name(n))
                            .chain([name(next)])
                            .collect();
                        return Err(ConfigError::new(
                            format!("static_resources.listeners[{next}]"),
                            format!(
                                "internal listeners form a cycle: {} (every connection would be passed around it forever)",
                                cycle.join(" → ")
                            ),
                        ));
                    }
                    Mark::Done(_) => {}
                }
                continue;
            }
            let longest = edges[node]
                .iter()
                .map(|&next| match marks[next] {
                    Mark::Done(hops) => hops + 1,
                    _ => unreachable!("every successor is finished before its predecessor"),
                })
                .max()
                .unwrap_or(0);
            if longest > usize::from(INTERNAL_HOPS_MAX) {
                return Err(ConfigError::new(
                    format!("static_resources.listeners[{node}]"),
                    format!(
                        "connections received on listener {:?} would pass {longest} internal listeners in a row, more than the limit of {INTERNAL_HOPS_MAX}",
                        name(node)
                    ),
                ));
            }
            marks[node] = Mark::Done(longest);
            path.pop();
        }
    }
    Ok(())
}
