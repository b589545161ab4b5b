//! Micro-benchmarks of the core's hot paths: original-destination resolution, routing a
//! connection through an Istio-sized listener set, carrying the balancer over a reload of a
//! mesh's clusters, and one connection's whole state-machine life.
//! `cargo bench -p bench --bench core`.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use origdst_core::addr::{ClientAddr, ListenerAddr, LocalAddr};
use origdst_core::config::ConnParams;
use origdst_core::config::{Config, KnobOverrides};
use origdst_core::connection::{Action, Connection};
use origdst_core::orig_dst::{AcceptEvidence, RecordAnswer, SelfAddrs, SockOptAnswer, resolve};
use origdst_core::relay::Dir;
use origdst_core::route::{Balancer, route};
use origdst_core::stats::Counters;
use origdst_core::time::Instant;

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

fn me() -> SelfAddrs {
    SelfAddrs {
        listeners: vec![ListenerAddr::new(sa("0.0.0.0:15001"))],
        local_ips: vec!["10.0.0.1".parse().expect("ip")],
        own_mark: Some(1337),
        admin: None,
    }
}

fn evidence(dst: &str) -> AcceptEvidence {
    AcceptEvidence {
        client: ClientAddr::new(sa("10.0.0.2:40000")),
        local: LocalAddr::new(sa("10.0.0.1:15001")),
        transparent: false,
        sockopt: SockOptAnswer::V4(sa(dst)),
        mark: None,
        internal: None,
        own_upstream: false,
        redirect_record: RecordAnswer::None,
    }
}

/// A filter chain relaying to `cluster`.
fn chain(cluster: &str) -> String {
    format!(
        "filter_chains: [ {{ filters: [ {{ name: envoy.filters.network.tcp_proxy, typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: {cluster}, cluster: {cluster} }} }} ] }} ]"
    )
}

/// Istio's `use_original_dst` capture listener and its passthrough cluster: the start of the
/// listeners' and the clusters' lists.
fn virtual_outbound() -> (String, String) {
    (
        format!(
            "  - {{ name: virtualOutbound, address: {{ socket_address: {{ address: 0.0.0.0, port_value: 15001 }} }}, use_original_dst: true, {} }}\n",
            chain("PassthroughCluster")
        ),
        "  - { name: PassthroughCluster, type: ORIGINAL_DST, lb_policy: CLUSTER_PROVIDED }\n"
            .to_string(),
    )
}

/// Istio's outbound shape with `services` hand-off listeners (`bind_to_port: false`, what a
/// control plane pushes one per service) behind a `use_original_dst` capture listener, over up to
/// 100 STATIC clusters (compact: 10 000 listeners stay under the config size limit).
fn istio(services: u16) -> Config {
    let (mut listeners, mut clusters) = virtual_outbound();
    let cluster_count = services.clamp(1, 100);
    for i in 0..services {
        let port = 20000 + i;
        listeners.push_str(&format!(
            "  - {{ name: svc{i}, address: {{ socket_address: {{ address: 0.0.0.0, port_value: {port} }} }}, bind_to_port: false, {} }}\n",
            chain(&format!("c{}", i % cluster_count))
        ));
    }
    for i in 0..cluster_count {
        clusters.push_str(&format!(
            "  - {{ name: c{i}, type: STATIC, load_assignment: {{ cluster_name: c{i}, endpoints: [ {{ lb_endpoints: [ {{ endpoint: {{ address: {{ socket_address: {{ address: 10.1.0.{}, port_value: 8080 }} }} }} }} ] }} ] }} }}\n",
            i % 250 + 1
        ));
    }
    Config::from_yaml(&format!(
        "static_resources:\n  listeners:\n{listeners}  clusters:\n{clusters}"
    ))
    .expect("a valid benchmark config")
}

/// `count` STATIC clusters (one endpoint each) behind one capture listener, named from
/// `first` on: the next push's config shares all but the first name.
fn clusters(count: usize, first: usize) -> Config {
    let mut clusters = String::new();
    for i in first..first + count {
        clusters.push_str(&format!(
            "  - {{ name: c{i}, type: STATIC, load_assignment: {{ cluster_name: c{i}, endpoints: [ {{ lb_endpoints: [ {{ endpoint: {{ address: {{ socket_address: {{ address: 10.1.{}.{}, port_value: 8080 }} }} }} }} ] }} ] }} }}\n",
            i / 250 % 250,
            i % 250 + 1
        ));
    }
    Config::from_yaml(&format!(
        "static_resources:\n  listeners:\n  - {{ name: capture, address: {{ socket_address: {{ address: 0.0.0.0, port_value: 15001 }} }}, filter_chains: [ {{ filters: [ {{ name: envoy.filters.network.tcp_proxy, typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: c, cluster: c{first} }} }} ] }} ] }}\n  clusters:\n{clusters}"
    ))
    .expect("a valid benchmark config")
}

/// A pushed mesh: a `use_original_dst` capture listener and `count` hand-off service listeners
/// (`bind_to_port: false`), each with a STATIC cluster of its own.
fn mesh(count: usize) -> String {
    let (mut listeners, mut clusters) = virtual_outbound();
    for i in 0..count {
        listeners.push_str(&format!(
            "  - {{ name: svc{i}, address: {{ socket_address: {{ address: 10.96.{}.{}, port_value: 8080 }} }}, bind_to_port: false, {} }}\n",
            i / 250 % 250,
            i % 250 + 1,
            chain(&format!("c{i}"))
        ));
        clusters.push_str(&format!(
            "  - {{ name: c{i}, type: STATIC, load_assignment: {{ cluster_name: c{i}, endpoints: [ {{ lb_endpoints: [ {{ endpoint: {{ address: {{ socket_address: {{ address: 10.1.{}.{}, port_value: 8080 }} }} }} }} ] }} ] }} }}\n",
            i / 250 % 250,
            i % 250 + 1
        ));
    }
    format!("static_resources:\n  listeners:\n{listeners}  clusters:\n{clusters}")
}

fn benches(c: &mut Criterion) {
    let me = me();
    let ev = evidence("192.0.2.7:80");
    c.bench_function("resolve", |b| {
        b.iter(|| resolve(black_box(&ev), black_box(&me)))
    });

    // Routing cost per accepted connection against the number of hand-off listeners: a hand-off
    // to the last service, and a passthrough that matches none of them.
    for services in [200u16, 1_000, 10_000] {
        let config = istio(services);
        let mut balancer = Balancer::default();
        let mut stats = Counters::default();
        let handoff = evidence(&format!("192.0.2.7:{}", 20000 + services - 1));
        c.bench_function(&format!("route_handoff_{services}_services"), |b| {
            b.iter(|| {
                route(
                    &config,
                    &me,
                    0,
                    black_box(&handoff),
                    &mut balancer,
                    &mut stats,
                )
            })
        });
        let passthrough = evidence("192.0.2.7:443");
        c.bench_function(&format!("route_passthrough_{services}_services"), |b| {
            b.iter(|| {
                route(
                    &config,
                    &me,
                    0,
                    black_box(&passthrough),
                    &mut balancer,
                    &mut stats,
                )
            })
        });
    }

    // What a reload (a SIGHUP, every control-plane push) costs each shard's balancer: the
    // round-robin cursors carried over to the new config by cluster name, at a mesh's numbers of
    // clusters.
    for count in [1_000usize, 10_000] {
        let (old, new) = (clusters(count, 0), clusters(count, 1));
        let balancer = Balancer::default().carried_over(&old, &old);
        c.bench_function(&format!("reload_carry_balancer_{count}_clusters"), |b| {
            b.iter(|| black_box(balancer.carried_over(black_box(&old), black_box(&new))))
        });
    }

    // Judging a mesh's config, what every control-plane push costs the xDS thread: `count`
    // service listeners, each with its own cluster, validated as a pushed document is.
    for count in [1_000usize, 10_000] {
        let text = mesh(count);
        let overrides = KnobOverrides::default();
        c.bench_function(&format!("validate_{count}_services"), |b| {
            b.iter(|| Config::from_pushed_yaml(black_box(&text), &overrides).expect("valid"))
        });
    }

    let mut stats = Counters::default();
    let params = ConnParams {
        connect_timeout: Duration::from_secs(5),
        idle_timeout: Some(Duration::from_secs(3600)),
        upstream_mark: Some(1337),
        original_src: None,
        bind_source: Default::default(),
    };
    c.bench_function("connection_lifecycle", |b| {
        b.iter(|| {
            let now = Instant::from_nanos(1);
            let mut conn = Connection::accept(now, &ev, &me, &params, &mut stats);
            while conn.poll_action().is_some() {}
            conn.handle_connected(now);
            for dir in Dir::ALL {
                conn.handle_transferred(now, dir, 4096, &mut stats);
            }
            for dir in Dir::ALL {
                conn.handle_eof(now, dir, &mut stats);
            }
            let mut last = None;
            while let Some(action) = conn.poll_action() {
                last = Some(action);
            }
            assert_eq!(last, Some(Action::Close));
            black_box(conn.outcome())
        })
    });
}

criterion_group!(core, benches);
criterion_main!(core);
