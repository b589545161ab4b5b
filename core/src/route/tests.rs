//! Routing against real config text: hand-off, chain match, cluster selection.

use super::*;
use crate::addr::{ListenerAddr, LocalAddr};
use crate::orig_dst::{Provenance, RecordAnswer, SockOptAnswer};

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn me() -> SelfAddrs {
    SelfAddrs {
        listeners: vec![ListenerAddr::new(sa("0.0.0.0:15001"))],
        local_ips: vec!["10.0.0.1".parse().unwrap()],
        own_mark: Some(1337),
        admin: None,
    }
}

/// A connection from `client` redirected from `dst` to the capture port.
fn redirected(client: &str, dst: &str) -> AcceptEvidence {
    AcceptEvidence {
        client: ClientAddr::new(sa(client)),
        local: LocalAddr::new(sa("10.0.0.1:15001")),
        transparent: false,
        sockopt: SockOptAnswer::V4(sa(dst)),
        mark: None,
        internal: None,
        own_upstream: false,
        redirect_record: RecordAnswer::None,
    }
}

const TCP_PROXY: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";

fn chain(cluster: &str, matcher: &str) -> String {
    format!(
        "    - {matcher}filters:\n      - name: envoy.filters.network.tcp_proxy\n        typed_config: {{ \"@type\": {TCP_PROXY}, stat_prefix: {cluster}, cluster: {cluster} }}\n"
    )
}

/// Istio's outbound shape: a virtual listener handing off to `bind_to_port: false` listeners.
fn istio() -> Config {
    let yaml = format!(
        "static_resources:
  listeners:
  - name: virtualOutbound
    address: {{ socket_address: {{ address: 0.0.0.0, port_value: 15001 }} }}
    use_original_dst: true
    filter_chains:
{passthrough}  - name: 0.0.0.0_8080
    address: {{ socket_address: {{ address: 0.0.0.0, port_value: 8080 }} }}
    bind_to_port: false
    filter_chains:
{svc}  - name: 10.0.0.5_8080
    address: {{ socket_address: {{ address: 10.0.0.5, port_value: 8080 }} }}
    bind_to_port: false
    filter_chains:
{exact}  - name: 10.0.0.6_9000
    address: {{ socket_address: {{ address: 10.0.0.6, port_value: 9000 }} }}
    bind_to_port: false
    filter_chains:
{blackhole}  clusters:
  - {{ name: PassthroughCluster, type: ORIGINAL_DST, lb_policy: CLUSTER_PROVIDED }}
  - {{ name: BlackHoleCluster, type: STATIC }}
  - name: svc
    type: STATIC
    load_assignment:
      cluster_name: svc
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 10.0.0.9, port_value: 8080 }} }} }}
        - endpoint: {{ address: {{ socket_address: {{ address: 10.0.0.10, port_value: 8080 }} }} }}
  - name: exact
    type: STATIC
    load_assignment:
      cluster_name: exact
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 10.0.0.50, port_value: 80 }} }} }}
",
        passthrough = chain("PassthroughCluster", ""),
        svc = chain("svc", ""),
        exact = chain("exact", ""),
        blackhole = chain("BlackHoleCluster", ""),
    );
    Config::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

fn route_of(config: &Config, ev: &AcceptEvidence) -> (Result<Route, RefuseReason>, Counters) {
    let mut stats = Counters::default();
    let mut balancer = Balancer::default();
    let route = route(config, &me(), 0, ev, &mut balancer, &mut stats);
    (route, stats)
}

fn socket_target(route: &Route) -> SocketAddr {
    match &route.upstream {
        UpstreamPlan::Connect(Target::Socket(addr)) => addr.get(),
        other => panic!("expected a socket target, got {other:?}"),
    }
}

#[test]
fn use_original_dst_hands_off_to_the_wildcard_listener_of_the_port() {
    let config = istio();
    let (route, stats) = route_of(&config, &redirected("10.0.0.2:40000", "10.0.0.7:8080"));
    let route = route.unwrap();
    assert_eq!(config.listeners[route.listener].name, "0.0.0.0_8080");
    assert_eq!(socket_target(&route), sa("10.0.0.9:8080"));
    assert_eq!(stats.get(Counter::ListenerHandoff), 1);
    assert_eq!(
        route.resolution.unwrap().orig_dst.get(),
        sa("10.0.0.7:8080"),
        "the restored destination is kept for logs"
    );
}

#[test]
fn an_exact_address_listener_beats_the_wildcard() {
    let config = istio();
    let route = route_of(&config, &redirected("10.0.0.2:40000", "10.0.0.5:8080"))
        .0
        .unwrap();
    assert_eq!(config.listeners[route.listener].name, "10.0.0.5_8080");
    assert_eq!(socket_target(&route), sa("10.0.0.50:80"));
}

#[test]
fn without_a_matching_listener_the_virtual_listener_passes_through() {
    let config = istio();
    let (route, stats) = route_of(&config, &redirected("10.0.0.2:40000", "10.0.0.7:443"));
    let route = route.unwrap();
    assert_eq!(config.listeners[route.listener].name, "virtualOutbound");
    assert_eq!(socket_target(&route), sa("10.0.0.7:443"));
    assert_eq!(stats.get(Counter::ListenerHandoff), 0);
}

#[test]
fn a_static_cluster_without_endpoints_is_a_black_hole() {
    let config = istio();
    let (route, _) = route_of(&config, &redirected("10.0.0.2:40000", "10.0.0.6:9000"));
    assert_eq!(route.unwrap_err(), RefuseReason::NoHealthyUpstream);
}

#[test]
fn static_endpoints_take_turns_per_shard() {
    let config = istio();
    let mut balancer = Balancer::default();
    let mut stats = Counters::default();
    let picks: Vec<SocketAddr> = (0..4)
        .map(|_| {
            let ev = redirected("10.0.0.2:40000", "10.0.0.7:8080");
            socket_target(&route(&config, &me(), 0, &ev, &mut balancer, &mut stats).unwrap())
        })
        .collect();
    assert_eq!(
        picks,
        [
            sa("10.0.0.9:8080"),
            sa("10.0.0.10:8080"),
            sa("10.0.0.9:8080"),
            sa("10.0.0.10:8080")
        ]
    );
}

#[test]
fn loops_are_refused_before_anything_else() {
    let config = istio();
    let mut ev = redirected("10.0.0.2:40000", "10.0.0.7:8080");
    ev.own_upstream = true;
    assert_eq!(
        route_of(&config, &ev).0.unwrap_err(),
        RefuseReason::OwnUpstream
    );
    let mut ev = redirected("10.0.0.2:40000", "10.0.0.7:443");
    ev.mark = Some(1337);
    assert_eq!(
        route_of(&config, &ev).0.unwrap_err(),
        RefuseReason::OwnMark { mark: 1337 }
    );
    // A passthrough to our own port is a loop too (the wildcard listener answers on loopback).
    let ev = redirected("10.0.0.2:40000", "127.0.0.1:15001");
    assert_eq!(
        route_of(&config, &ev).0.unwrap_err(),
        RefuseReason::DestinationIsListener
    );
    // Our own address as the "original" destination: nobody redirected it.
    let ev = redirected("10.0.0.2:40000", "10.0.0.1:15001");
    assert_eq!(
        route_of(&config, &ev).0.unwrap_err(),
        RefuseReason::NoOriginalDst
    );
}

/// One listener with chains narrowed by destination port, destination prefix and source prefix.
fn chains() -> Config {
    let yaml = format!(
        "static_resources:
  listeners:
  - name: out
    address: {{ socket_address: {{ address: 0.0.0.0, port_value: 15001 }} }}
    listener_filters: [ {{ name: envoy.filters.listener.original_dst }} ]
    filter_chains:
{port80}{port80_net}{port80_net_src}{net}    default_filter_chain:
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {{ \"@type\": {TCP_PROXY}, stat_prefix: default, cluster: default }}
  clusters:
  - {{ name: port80, type: ORIGINAL_DST, lb_policy: CLUSTER_PROVIDED }}
  - {{ name: port80_net, type: ORIGINAL_DST, lb_policy: CLUSTER_PROVIDED }}
  - {{ name: port80_net_src, type: ORIGINAL_DST, lb_policy: CLUSTER_PROVIDED }}
  - {{ name: net, type: ORIGINAL_DST, lb_policy: CLUSTER_PROVIDED }}
  - {{ name: default, type: ORIGINAL_DST, lb_policy: CLUSTER_PROVIDED }}
",
        port80 = chain(
            "port80",
            "filter_chain_match: { destination_port: 80 }\n      "
        ),
        port80_net = chain(
            "port80_net",
            "filter_chain_match: { destination_port: 80, prefix_ranges: [ { address_prefix: 10.0.0.0, prefix_len: 8 } ] }\n      "
        ),
        port80_net_src = chain(
            "port80_net_src",
            "filter_chain_match: { destination_port: 80, prefix_ranges: [ { address_prefix: 10.0.0.0, prefix_len: 8 } ], source_prefix_ranges: [ { address_prefix: 192.168.0.0, prefix_len: 16 } ] }\n      "
        ),
        net = chain(
            "net",
            "filter_chain_match: { prefix_ranges: [ { address_prefix: 10.1.0.0, prefix_len: 16 } ] }\n      "
        ),
    );
    Config::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

#[test]
fn filter_chains_narrow_by_port_then_destination_then_source() {
    let config = chains();
    let pick = |client: &str, dst: &str| {
        let route = route_of(&config, &redirected(client, dst)).0.unwrap();
        route.chain(&config).tcp_proxy.stat_prefix.clone()
    };
    assert_eq!(pick("172.16.0.2:1000", "192.0.2.1:80"), "port80");
    assert_eq!(pick("172.16.0.2:1000", "10.2.3.4:80"), "port80_net");
    assert_eq!(pick("192.168.1.1:1000", "10.2.3.4:80"), "port80_net_src");
    // Port 80 chains exist, so the port-less "net" chain is not considered for port 80.
    assert_eq!(pick("172.16.0.2:1000", "10.1.2.3:80"), "port80_net");
    assert_eq!(pick("172.16.0.2:1000", "10.1.2.3:443"), "net");
    assert_eq!(pick("172.16.0.2:1000", "192.0.2.1:443"), "default");
}

#[test]
fn no_matching_chain_and_no_default_is_refused() {
    let yaml = format!(
        "static_resources:
  listeners:
  - name: out
    address: {{ socket_address: {{ address: 0.0.0.0, port_value: 15001 }} }}
    listener_filters: [ {{ name: envoy.filters.listener.original_dst }} ]
    filter_chains:
{only80}  clusters:
  - {{ name: pass, type: ORIGINAL_DST, lb_policy: CLUSTER_PROVIDED }}
",
        only80 = chain(
            "pass",
            "filter_chain_match: { destination_port: 80 }\n      "
        )
    );
    let config = Config::from_yaml(&yaml).unwrap();
    let (route, _) = route_of(&config, &redirected("10.0.0.2:1", "192.0.2.1:443"));
    assert_eq!(route.unwrap_err(), RefuseReason::NoFilterChainMatch);
}

/// A passthrough listener with `original_dst_lb_config` and optional filter state.
fn passthrough(lb: &str, filters_before: &str) -> Config {
    let yaml = format!(
        "static_resources:
  listeners:
  - name: out
    address: {{ socket_address: {{ address: 0.0.0.0, port_value: 15001 }} }}
    listener_filters: [ {{ name: envoy.filters.listener.original_dst }} ]
    filter_chains:
    - filters:
{filters_before}      - name: envoy.filters.network.tcp_proxy
        typed_config: {{ \"@type\": {TCP_PROXY}, stat_prefix: p, cluster: p }}
  clusters:
  - name: p
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    original_dst_lb_config: {lb}
"
    );
    Config::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

const SET_STATE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.set_filter_state.v3.Config";

fn set_state(key: &str, value: &str) -> String {
    format!(
        "      - name: envoy.filters.network.set_filter_state
        typed_config:
          \"@type\": {SET_STATE}
          on_new_connection:
          - object_key: {key}
            format_string: {{ text_format_source: {{ inline_string: \"{value}\" }} }}
"
    )
}

#[test]
fn port_override_replaces_the_restored_port() {
    let config = passthrough("{ upstream_port_override: 8443 }", "");
    let route = route_of(&config, &redirected("10.0.0.2:1", "192.0.2.1:443"))
        .0
        .unwrap();
    assert_eq!(socket_target(&route), sa("192.0.2.1:8443"));
}

#[test]
fn filter_state_beats_metadata_beats_restored() {
    let with_key = "{ metadata_key: { key: envoy.lb, path: [ { key: dst } ] } }";
    let config = passthrough(
        with_key,
        &set_state(
            "envoy.network.transport_socket.original_dst_address",
            "192.0.2.50:7000",
        ),
    );
    let route = route_of(&config, &redirected("10.0.0.2:1", "192.0.2.1:443"))
        .0
        .unwrap();
    assert_eq!(socket_target(&route), sa("192.0.2.50:7000"));

    let config = passthrough(with_key, "");
    let mut ev = redirected("10.0.0.2:1", "192.0.2.1:443");
    ev.internal = Some(InternalMetadata {
        dynamic: [(
            "envoy.lb".to_string(),
            [("dst".to_string(), "192.0.2.60:7000".to_string())].into(),
        )]
        .into(),
        ..InternalMetadata::default()
    });
    ev.sockopt = SockOptAnswer::NotQueried;
    ev.internal.as_mut().unwrap().dynamic_local = Some("192.0.2.1:443".into());
    let route = route_of(&config, &ev).0.unwrap();
    assert_eq!(socket_target(&route), sa("192.0.2.60:7000"));

    // Without either, the restored destination.
    let route = route_of(&config, &redirected("10.0.0.2:1", "192.0.2.1:443"))
        .0
        .unwrap();
    assert_eq!(socket_target(&route), sa("192.0.2.1:443"));
}

#[test]
fn a_malformed_override_is_refused_and_named() {
    let config = passthrough(
        "{ metadata_key: { key: envoy.lb, path: [ { key: dst } ] } }",
        "",
    );
    let mut ev = redirected("10.0.0.2:1", "192.0.2.1:443");
    ev.internal = Some(InternalMetadata {
        dynamic_local: Some("192.0.2.1:443".into()),
        dynamic: [(
            "envoy.lb".to_string(),
            [("dst".to_string(), "not-an-address".to_string())].into(),
        )]
        .into(),
        ..InternalMetadata::default()
    });
    assert_eq!(
        route_of(&config, &ev).0.unwrap_err(),
        RefuseReason::InvalidOriginalDstHost
    );
}

#[test]
fn header_mode_reads_the_head_first_with_the_restored_fallback() {
    let config = passthrough(
        "{ use_http_header: true, upstream_port_override: 8080 }",
        "",
    );
    let route = route_of(&config, &redirected("10.0.0.2:1", "192.0.2.1:443"))
        .0
        .unwrap();
    let UpstreamPlan::ReadHead(plan) = route.upstream else {
        panic!("expected ReadHead, got {:?}", route.upstream);
    };
    assert_eq!(plan.header, "x-envoy-original-dst-host");
    assert_eq!(plan.fallback.map(|a| a.get()), Some(sa("192.0.2.1:443")));
    assert_eq!(plan.port_override, Some(8080));
    assert_eq!(plan.max_bytes, config.knobs.http_head_max_bytes);
}

/// The seed's internal-listener example, plus endpoint metadata passed through.
fn internal() -> Config {
    let yaml = format!(
        "static_resources:
  listeners:
  - name: outbound_tcp_svc_19000
    address: {{ socket_address: {{ address: 0.0.0.0, port_value: 19000 }} }}
    filter_chains:
    - filters:
{state}      - name: tcp_proxy
        typed_config: {{ \"@type\": {TCP_PROXY}, cluster: bridge, stat_prefix: svc }}
  - name: encap
    address: {{ envoy_internal_address: {{ server_listener_name: encap }} }}
    listener_filters: [ {{ name: envoy.filters.listener.original_dst }} ]
    filter_chains:
    - filters:
      - name: tcp_proxy
        typed_config: {{ \"@type\": {TCP_PROXY}, cluster: pass, stat_prefix: encap }}
  clusters:
  - name: bridge
    type: STATIC
    load_assignment:
      cluster_name: bridge
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ envoy_internal_address: {{ server_listener_name: encap }} }} }}
          metadata:
            filter_metadata:
              envoy.filters.listener.original_dst: {{ local: \"192.0.2.9:19001\" }}
    transport_socket:
      name: envoy.transport_sockets.internal_upstream
      typed_config:
        \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport
        passthrough_metadata:
        - {{ kind: {{ host: {{}} }}, name: envoy.filters.listener.original_dst }}
        - {{ kind: {{ host: {{}} }}, name: absent.namespace }}
        transport_socket: {{ name: envoy.transport_sockets.raw_buffer }}
  - {{ name: pass, type: ORIGINAL_DST, lb_policy: CLUSTER_PROVIDED }}
bootstrap_extensions:
- name: envoy.bootstrap.internal_listener
  typed_config:
    \"@type\": type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener
    buffer_size_kb: 64
",
        state = set_state("envoy.filters.listener.original_dst.remote_ip", "%DOWNSTREAM_REMOTE_ADDRESS%")
            .replace("            format_string", "            shared_with_upstream: ONCE\n            format_string"),
    );
    Config::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

#[test]
fn an_internal_endpoint_carries_passthrough_metadata_and_shared_state() {
    let config = internal();
    assert_eq!(
        config.internal_listener.unwrap().buffer_size_bytes,
        64 * 1024
    );
    let mut ev = redirected("10.0.0.2:40000", "10.0.0.1:19000");
    ev.sockopt = SockOptAnswer::NotQueried;
    ev.local = LocalAddr::new(sa("10.0.0.1:19000"));
    let (outer, stats) = route_of(&config, &ev);
    let UpstreamPlan::Connect(Target::Internal { listener, handoff }) = outer.unwrap().upstream
    else {
        panic!("expected an internal target");
    };
    assert_eq!(config.listeners[listener].name, "encap");
    assert_eq!(handoff.dynamic_local.as_deref(), Some("192.0.2.9:19001"));
    assert_eq!(
        handoff.filter_state_remote.as_deref(),
        Some("10.0.0.2:40000")
    );
    assert_eq!(
        stats.get(Counter::NoMetadata),
        1,
        "absent.namespace was not at the endpoint"
    );

    // On the internal listener, the original_dst filter restores from that metadata.
    let inner = AcceptEvidence {
        client: ClientAddr::new(sa("10.0.0.2:40000")),
        local: LocalAddr::new(sa("0.0.0.0:0")),
        transparent: false,
        sockopt: SockOptAnswer::NotQueried,
        mark: None,
        internal: Some(*handoff),
        own_upstream: false,
        redirect_record: RecordAnswer::None,
    };
    let mut stats = Counters::default();
    let inner = route(
        &config,
        &me(),
        1,
        &inner,
        &mut Balancer::default(),
        &mut stats,
    )
    .unwrap();
    assert_eq!(socket_target(&inner), sa("192.0.2.9:19001"));
    assert_eq!(
        inner.resolution.unwrap().provenance,
        Provenance::InternalMetadata
    );
}

/// Two internal listeners whose clusters point at `a_to` and `b_to` (listener names).
fn internal_pair(a_to: &str, b_to: &str) -> String {
    let cluster = |name: &str, to: &str| {
        format!(
            "  - name: {name}
    type: STATIC
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ envoy_internal_address: {{ server_listener_name: {to} }} }} }}
"
        )
    };
    let listener = |name: &str, cluster: &str| {
        format!(
            "  - name: {name}
    address: {{ envoy_internal_address: {{ server_listener_name: {name} }} }}
    filter_chains:
    - filters:
      - name: tcp_proxy
        typed_config: {{ \"@type\": {TCP_PROXY}, cluster: {cluster}, stat_prefix: {name} }}
"
        )
    };
    format!(
        "static_resources:
  listeners:
  - name: front
    address: {{ socket_address: {{ address: 0.0.0.0, port_value: 19000 }} }}
    filter_chains:
    - filters:
      - name: tcp_proxy
        typed_config: {{ \"@type\": {TCP_PROXY}, cluster: to_a, stat_prefix: front }}
{}{}  clusters:
{}{}{}bootstrap_extensions:
- name: envoy.bootstrap.internal_listener
",
        listener("a", "a_next"),
        listener("b", "b_next"),
        cluster("to_a", "a"),
        cluster("a_next", a_to),
        cluster("b_next", b_to),
    )
}

#[test]
fn internal_listener_cycles_are_refused_naming_the_chain() {
    for (a_to, b_to, chain) in [
        ("a", "b", "a → a"),
        ("b", "a", "a → b → a"),
        ("b", "b", "b → b"),
    ] {
        let yaml = internal_pair(a_to, b_to);
        let err = Config::from_yaml(&yaml).unwrap_err();
        assert!(
            err.reason.contains(&format!("form a cycle: {chain}")),
            "{a_to}/{b_to}: {err}"
        );
        assert!(err.path.starts_with("static_resources.listeners["), "{err}");
    }
    // A chain without a cycle is fine: front → a → b → (b's cluster points nowhere internal).
    let yaml = internal_pair("b", "b").replace(
        "  - name: b_next\n    type: STATIC\n    load_assignment:\n      cluster_name: b_next\n      endpoints:\n      - lb_endpoints:\n        - endpoint: { address: { envoy_internal_address: { server_listener_name: b } } }\n",
        "  - name: b_next\n    type: STATIC\n    load_assignment:\n      cluster_name: b_next\n      endpoints:\n      - lb_endpoints:\n        - endpoint: { address: { socket_address: { address: 192.0.2.1, port_value: 80 } } }\n",
    );
    Config::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
}

#[test]
fn internal_hops_are_bounded_per_connection_whatever_the_config() {
    let config = internal();
    let mut ev = redirected("10.0.0.2:40000", "10.0.0.1:19000");
    ev.sockopt = SockOptAnswer::NotQueried;
    ev.local = LocalAddr::new(sa("10.0.0.1:19000"));
    // One hop: allowed, and counted in what crosses.
    let (outer, _) = route_of(&config, &ev);
    let UpstreamPlan::Connect(Target::Internal { handoff, .. }) = outer.unwrap().upstream else {
        panic!("expected an internal target");
    };
    assert_eq!(handoff.hops, 1);
    // A connection that already passed the limit's worth of internal listeners goes no further.
    for (hops, refused) in [
        (crate::config::INTERNAL_HOPS_MAX - 1, false),
        (crate::config::INTERNAL_HOPS_MAX, true),
    ] {
        ev.internal = Some(InternalMetadata {
            hops,
            ..InternalMetadata::default()
        });
        let (route, _) = route_of(&config, &ev);
        assert_eq!(
            route.is_err_and(|r| r == RefuseReason::InternalHopLimit),
            refused,
            "{hops} hops"
        );
    }
}

#[test]
fn text_destinations_pass_the_destination_policy_kernel_ones_do_not() {
    // The internal listener's restored destination is metadata text: loopback is refused there,
    // as is origdst's admin endpoint; a kernel-restored loopback destination is not (it is what
    // the client dialled).
    let yaml = format!(
        "static_resources:
  listeners:
  - name: out
    address: {{ socket_address: {{ address: 0.0.0.0, port_value: 15001 }} }}
    listener_filters: [ {{ name: envoy.filters.listener.original_dst }} ]
    filter_chains:
    - filters:
      - name: tcp_proxy
        typed_config: {{ \"@type\": {TCP_PROXY}, cluster: pass, stat_prefix: out }}
  clusters:
  - {{ name: pass, type: ORIGINAL_DST, lb_policy: CLUSTER_PROVIDED }}
"
    );
    let config = Config::from_yaml(&yaml).unwrap();
    let (route, _) = route_of(&config, &redirected("10.0.0.2:1", "127.0.0.1:8080"));
    assert_eq!(socket_target(&route.unwrap()), sa("127.0.0.1:8080"));
    let mut ev = redirected("10.0.0.2:1", "127.0.0.1:8080");
    ev.sockopt = SockOptAnswer::NotQueried;
    for (text, rule) in [
        ("127.0.0.1:8080", crate::config::DenyRule::Loopback),
        (
            "[::ffff:169.254.169.254]:80",
            crate::config::DenyRule::LinkLocal,
        ),
    ] {
        ev.internal = Some(InternalMetadata {
            dynamic_local: Some(text.into()),
            ..InternalMetadata::default()
        });
        let (route, _) = route_of(&config, &ev);
        assert_eq!(
            route,
            Err(RefuseReason::DestinationDenied { rule }),
            "{text}"
        );
    }
}
