use super::*;

const MINIMAL: &str = r#"
static_resources:
  listeners:
  - name: out
    address: { socket_address: { address: 127.0.0.1, port_value: 15001 } }
    listener_filters:
    - name: envoy.filters.listener.original_dst
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: out
          cluster: pass
  clusters:
  - { name: pass, type: ORIGINAL_DST, lb_policy: CLUSTER_PROVIDED }
"#;

/// The first chain's per-connection knobs of listener `index`.
fn params(config: &Config, index: usize) -> ConnParams {
    let listener = &config.listeners[index];
    config.params(listener, &listener.filter_chains[0])
}

fn err(yaml: &str) -> ConfigError {
    Config::from_yaml(yaml).expect_err("config must be refused")
}

#[test]
fn embedded_default_is_istio_style_dual_stack_15001_and_15006() {
    let config = Config::default_config();
    let [listener, inbound] = config.listeners.as_slice() else {
        panic!("two listeners")
    };
    // Inbound: 15006, connecting to the workload from 127.0.0.6 / ::6 (Istio's
    // InboundPassthroughCluster), which the generated rules never capture.
    assert_eq!(inbound.name, "virtualInbound");
    assert_eq!(
        inbound.socket_addresses(),
        [
            "0.0.0.0:15006".parse::<SocketAddr>().unwrap(),
            "[::]:15006".parse().unwrap()
        ]
    );
    let bind = config.clusters[inbound.filter_chains[0].tcp_proxy.cluster].bind_source;
    assert_eq!(bind.v4, Some("127.0.0.6".parse().unwrap()));
    assert_eq!(bind.v6, Some("::6".parse().unwrap()));
    assert_eq!(
        config.clusters[listener.filter_chains[0].tcp_proxy.cluster].bind_source,
        Default::default(),
        "outbound connections leave from the host's own address"
    );
    assert_eq!(listener.name, "virtualOutbound");
    assert_eq!(
        listener.socket_addresses(),
        [
            "0.0.0.0:15001".parse::<SocketAddr>().unwrap(),
            "[::]:15001".parse().unwrap()
        ]
    );
    assert!(!listener.transparent);
    assert_eq!(params(&config, 0).connect_timeout, Duration::from_secs(10));
    assert_eq!(
        params(&config, 0).idle_timeout,
        Some(Duration::from_secs(3600))
    );
    assert_eq!(params(&config, 0).upstream_mark, Some(1337));
    assert_eq!(config.knobs.data_path, DataPath::UringSplice);
    assert_eq!(config.knobs.shards, None);
}

#[test]
fn minimal_config_takes_envoy_defaults() {
    let config = Config::from_yaml(MINIMAL).unwrap();
    assert_eq!(params(&config, 0).connect_timeout, Duration::from_secs(5));
    assert_eq!(
        params(&config, 0).idle_timeout,
        Some(Duration::from_secs(3600))
    );
    assert_eq!(config.knobs, Knobs::default());
}

#[test]
fn knobs_are_read() {
    let yaml = format!(
        "origdst:\n  shards: 3\n  data_path: uring-copy\n  upstream_mark: null\n  drain_timeout: 1.5s\n  pipe_size_bytes: 65536\n{MINIMAL}"
    );
    let knobs = Config::from_yaml(&yaml).unwrap().knobs;
    assert_eq!(knobs.shards.map(|n| n.get()), Some(3));
    assert_eq!(knobs.data_path, DataPath::UringCopy);
    assert_eq!(knobs.upstream_mark, None);
    assert_eq!(knobs.drain_timeout, Duration::from_millis(1500));
    assert_eq!(knobs.pipe_size_bytes, 65536);
}

#[test]
fn idle_timeout_zero_disables_it() {
    let yaml = MINIMAL.replace("cluster: pass", "cluster: pass\n          idle_timeout: 0s");
    assert_eq!(
        params(&Config::from_yaml(&yaml).unwrap(), 0).idle_timeout,
        None
    );
}

#[test]
fn unknown_field_is_named_with_its_path() {
    let e = err(&MINIMAL.replace("port_value: 15001", "port_value: 15001, portt: 1"));
    assert_eq!(
        e.path,
        "static_resources.listeners[0].address.socket_address.portt"
    );
    assert!(e.reason.contains("unknown field `portt`"), "{e}");
    let e = err(&MINIMAL.replace(
        "cluster: pass",
        "cluster: pass\n          tunneling_config: {}",
    ));
    assert_eq!(
        e.path,
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.tunneling_config"
    );
    assert!(e.reason.contains("unknown field `tunneling_config`"), "{e}");
    assert!(
        e.to_string()
            .starts_with("config field `static_resources.listeners[0]"),
        "{e}"
    );
}

#[test]
fn bad_values_name_the_field_and_the_reason() {
    let cases = [
        (
            MINIMAL.replace("port_value: 15001", "port_value: 70000"),
            "static_resources.listeners[0].address.socket_address.port_value",
            "70000 is not a port",
        ),
        (
            MINIMAL.replace("127.0.0.1", "localhost"),
            "static_resources.listeners[0].address.socket_address.address",
            "is not an IP address",
        ),
        (
            MINIMAL.replace("type: ORIGINAL_DST", "type: STRICT_DNS"),
            "static_resources.clusters[0].lb_policy",
            "not supported for a STRICT_DNS cluster",
        ),
        (
            MINIMAL.replace("lb_policy: CLUSTER_PROVIDED", "lb_policy: ROUND_ROBIN"),
            "static_resources.clusters[0].lb_policy",
            "CLUSTER_PROVIDED",
        ),
        (
            MINIMAL.replace("cluster: pass", "cluster: nope"),
            "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.cluster",
            "no cluster named \"nope\"",
        ),
        (
            MINIMAL.replace(
                "    listener_filters:\n    - name: envoy.filters.listener.original_dst\n",
                "",
            ),
            "static_resources.listeners[0].listener_filters",
            "original_dst",
        ),
        (
            MINIMAL.replace(
                "envoy.filters.listener.original_dst",
                "envoy.filters.listener.tls_inspector",
            ),
            "static_resources.listeners[0].listener_filters[0].name",
            "not supported",
        ),
        (
            MINIMAL.replace("v3.TcpProxy", "v3.HttpConnectionManager"),
            "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.@type",
            "expected",
        ),
        (
            MINIMAL.replace(
                "lb_policy: CLUSTER_PROVIDED }",
                "lb_policy: CLUSTER_PROVIDED, connect_timeout: 5 }",
            ),
            "static_resources.clusters[0].connect_timeout",
            "not a duration",
        ),
        (
            MINIMAL.replace(
                "lb_policy: CLUSTER_PROVIDED }",
                "lb_policy: CLUSTER_PROVIDED, connect_timeout: 0s }",
            ),
            "static_resources.clusters[0].connect_timeout",
            "greater than 0s",
        ),
        (
            format!("origdst: {{ data_path: splice }}\n{MINIMAL}"),
            "origdst.data_path",
            "not one of",
        ),
        (
            format!("origdst: {{ pipe_size_bytes: 100000 }}\n{MINIMAL}"),
            "origdst.pipe_size_bytes",
            "power of two",
        ),
        (
            format!("origdst: {{ buffer_count: 0 }}\n{MINIMAL}"),
            "origdst.buffer_count",
            "outside",
        ),
        (
            format!("origdst: {{ shards: 1000 }}\n{MINIMAL}"),
            "origdst.shards",
            "outside",
        ),
        (
            format!("origdst: {{ colour: blue }}\n{MINIMAL}"),
            "origdst.colour",
            "unknown field `colour`",
        ),
        (
            "static_resources: { listeners: [] }".to_string(),
            "static_resources.listeners",
            "at least one",
        ),
    ];
    for (yaml, path, reason) in cases {
        let e = err(&yaml);
        assert_eq!(e.path, path, "{e}");
        assert!(e.reason.contains(reason), "{e} (wanted {reason:?})");
    }
}

#[test]
fn duplicate_names_and_addresses_are_refused() {
    let two = MINIMAL.replace(
        "  clusters:",
        "  - name: out\n    address: { socket_address: { address: 127.0.0.1, port_value: 15002 } }\n    listener_filters: [ { name: envoy.filters.listener.original_dst } ]\n    filter_chains: [ { filters: [ { name: envoy.filters.network.tcp_proxy, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: b, cluster: pass } } ] } ]\n  clusters:",
    );
    let e = err(&two);
    assert_eq!(e.path, "static_resources.listeners[1].name");
    let e = err(&two.replace(
        "name: out\n    address: { socket_address: { address: 127.0.0.1, port_value: 15002",
        "name: other\n    address: { socket_address: { address: 127.0.0.1, port_value: 15001",
    ));
    assert_eq!(e.path, "static_resources.listeners[1].address");
}

#[test]
fn malformed_yaml_is_an_error_not_a_panic() {
    for text in [
        "",
        ":",
        "static_resources: [",
        "\u{0}",
        "static_resources: 5",
    ] {
        let e = err(text);
        assert!(!e.reason.is_empty(), "{text:?}");
    }
}

#[test]
fn durations_parse_like_protobuf_json() {
    assert_eq!(parse_duration("x", "10s").unwrap(), Duration::from_secs(10));
    assert_eq!(
        parse_duration("x", "0.250s").unwrap(),
        Duration::from_millis(250)
    );
    assert_eq!(
        parse_duration("x", "1.000000001s").unwrap(),
        Duration::new(1, 1)
    );
    for bad in [
        "10",
        "s",
        "-1s",
        "1.s.s",
        "1.0000000001s",
        "1e3s",
        " 1s",
        "99999999999s",
    ] {
        assert!(parse_duration("x", bad).is_err(), "{bad:?}");
    }
}

#[test]
fn documented_defaults_are_the_defaults() {
    // README's knob table promises these numbers.
    let knobs = Knobs::default();
    assert_eq!(knobs.pipe_budget_bytes, 32 * 1024 * 1024);
    assert_eq!(knobs.pipe_size_bytes, 256 * 1024);
    assert_eq!(knobs.buffer_size_bytes, 64 * 1024);
    assert_eq!(knobs.buffer_count, 256);
    assert_eq!(knobs.upstream_mark, Some(1337));
    assert_eq!(knobs.drain_timeout, Duration::from_secs(20));
    assert_eq!(knobs.connections_per_shard_max, 65536);
    assert_eq!(knobs.iowq_workers_max, 2);
    assert_eq!(
        [
            DataPath::UringSplice.name(),
            DataPath::UringCopy.name(),
            DataPath::UringOpSplice.name(),
            DataPath::KernelSockmap.name()
        ],
        [
            "uring-splice",
            "uring-copy",
            "uring-opsplice",
            "kernel-sockmap"
        ]
    );
    for path in [
        DataPath::UringSplice,
        DataPath::UringCopy,
        DataPath::UringOpSplice,
        DataPath::KernelSockmap,
    ] {
        assert_eq!(DataPath::parse(path.name()), Some(path));
    }
}

#[test]
fn limits_are_enforced_at_their_edges() {
    // A sign is not part of the format, though u64 parsing would take it.
    assert!(parse_duration("x", "+5s").is_err());
    let with = |knobs: &str| Config::from_yaml(&format!("origdst: {{ {knobs} }}\n{MINIMAL}"));
    assert!(with("pipe_budget_bytes: 1073741824").is_ok());
    assert_eq!(
        with("pipe_budget_bytes: 1073741825").unwrap_err().path,
        "origdst.pipe_budget_bytes"
    );
    assert!(
        with("pipe_budget_bytes: 0").is_ok(),
        "0 disables splice pipes (copy fallback only)"
    );
    // The longest accepted duration is a year.
    assert_eq!(
        parse_duration("x", "31536000s").unwrap(),
        Duration::from_secs(31_536_000)
    );
    assert!(parse_duration("x", "31536001s").is_err());
    assert!(
        parse_duration("x", "1.5xs").is_err(),
        "a non-digit fraction"
    );
    assert!(
        parse_duration("x", "a.5s").is_err(),
        "a non-digit whole part"
    );
    assert_eq!(
        with("busy_poll: 0.001s").unwrap().knobs.busy_poll,
        Duration::from_millis(1)
    );
    let err = with("busy_poll: 0.0011s").unwrap_err();
    assert_eq!(err.path, "origdst.busy_poll");
    assert!(err.to_string().contains("more than 1ms"), "{err}");
    assert_eq!(
        Config::from_yaml(MINIMAL).unwrap().knobs.busy_poll,
        Duration::from_micros(50)
    );
    assert_eq!(
        with("busy_poll: 0s").unwrap().knobs.busy_poll,
        Duration::ZERO,
        "0s turns polling off"
    );
}

#[test]
fn protocol_other_than_tcp_and_duplicate_clusters_are_refused() {
    let e = err(&MINIMAL.replace("port_value: 15001", "port_value: 15001, protocol: UDP"));
    assert_eq!(
        e.path,
        "static_resources.listeners[0].address.socket_address.protocol"
    );
    assert!(
        Config::from_yaml(
            &MINIMAL.replace("port_value: 15001", "port_value: 15001, protocol: TCP")
        )
        .is_ok()
    );
    let e = err(&format!(
        "{MINIMAL}  - {{ name: pass, type: ORIGINAL_DST, lb_policy: CLUSTER_PROVIDED }}\n"
    ));
    assert_eq!(e.path, "static_resources.clusters[1].name");
    assert!(e.reason.contains("duplicate cluster"), "{e}");
}

#[test]
fn listen_addrs_lists_every_bound_address() {
    let config = Config::default_config();
    let addrs: Vec<SocketAddr> = config.listen_addrs().collect();
    assert_eq!(
        addrs,
        vec![
            "0.0.0.0:15001".parse::<SocketAddr>().unwrap(),
            "[::]:15001".parse().unwrap(),
            "0.0.0.0:15006".parse().unwrap(),
            "[::]:15006".parse().unwrap()
        ]
    );
}

#[test]
fn error_display_names_the_field_or_says_config() {
    let field = ConfigError::new("origdst.shards", "too many");
    assert_eq!(field.to_string(), "config field `origdst.shards`: too many");
    for path in ["", "."] {
        assert_eq!(
            ConfigError::new(path, "empty document").to_string(),
            "config: empty document"
        );
    }
}

fn with_original_src(typed_config: &str) -> String {
    MINIMAL.replace(
        "    - name: envoy.filters.listener.original_dst\n",
        &format!(
            "    - name: envoy.filters.listener.original_dst\n    - name: envoy.filters.listener.original_src\n{typed_config}"
        ),
    )
}

#[test]
fn original_src_filter_turns_on_source_preservation() {
    let plain = Config::from_yaml(MINIMAL).unwrap();
    assert_eq!(params(&plain, 0).original_src, None);

    let yaml = with_original_src(
        "      typed_config:\n        \"@type\": type.googleapis.com/envoy.extensions.filters.listener.original_src.v3.OriginalSrc\n",
    );
    let got = params(&Config::from_yaml(&yaml).unwrap(), 0);
    assert_eq!(got.original_src, Some(OriginalSrc { bind_port: false }));
    assert_eq!(
        got.upstream_mark,
        Some(1337),
        "no mark: the origdst mark stays"
    );

    let yaml = with_original_src(
        "      typed_config:\n        \"@type\": type.googleapis.com/envoy.extensions.filters.listener.original_src.v3.OriginalSrc\n        bind_port: true\n        mark: 123\n",
    );
    let got = params(&Config::from_yaml(&yaml).unwrap(), 0);
    assert_eq!(got.original_src, Some(OriginalSrc { bind_port: true }));
    assert_eq!(
        got.upstream_mark,
        Some(123),
        "original_src's mark replaces it"
    );
}

#[test]
fn original_src_errors_name_the_field() {
    let missing = err(&with_original_src(""));
    assert_eq!(
        missing.path,
        "static_resources.listeners[0].listener_filters[1].typed_config"
    );
    let unknown = err(&with_original_src(
        "      typed_config:\n        \"@type\": type.googleapis.com/envoy.extensions.filters.listener.original_src.v3.OriginalSrc\n        bind_ports: true\n",
    ));
    assert_eq!(
        unknown.path,
        "static_resources.listeners[0].listener_filters[1].typed_config.bind_ports"
    );
    assert!(unknown.reason.contains("unknown field"), "{unknown}");
    let wrong_type = err(&with_original_src(
        "      typed_config:\n        \"@type\": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst\n",
    ));
    assert_eq!(
        wrong_type.path,
        "static_resources.listeners[0].listener_filters[1].typed_config.@type"
    );
}

/// Istio's `InboundPassthroughCluster`: connections leave from 127.0.0.6 (and ::6).
#[test]
fn upstream_bind_config_gives_a_source_per_family() {
    let yaml = MINIMAL.replace(
        "  - { name: pass, type: ORIGINAL_DST, lb_policy: CLUSTER_PROVIDED }",
        "  - name: pass
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    upstream_bind_config:
      source_address: { address: 127.0.0.6, port_value: 0 }
      additional_source_addresses:
      - address: { address: \"::6\", port_value: 0 }",
    );
    let config = Config::from_yaml(&yaml).expect("valid");
    let bind = params(&config, 0).bind_source;
    assert_eq!(bind.v4, Some("127.0.0.6".parse().unwrap()));
    assert_eq!(bind.v6, Some("::6".parse().unwrap()));
    let default = Config::from_yaml(MINIMAL).expect("valid");
    assert_eq!(params(&default, 0).bind_source, BindSource::default());
}

#[test]
fn upstream_bind_config_refuses_what_cannot_work() {
    let cluster = |bind: &str| {
        MINIMAL.replace(
            "  - { name: pass, type: ORIGINAL_DST, lb_policy: CLUSTER_PROVIDED }",
            &format!(
                "  - name: pass\n    type: ORIGINAL_DST\n    lb_policy: CLUSTER_PROVIDED\n    upstream_bind_config: {bind}"
            ),
        )
    };
    let path = "static_resources.clusters[0].upstream_bind_config";
    for (bind, field, why) in [
        (
            "{ source_address: { address: 127.0.0.6, port_value: 5000 } }",
            format!("{path}.source_address.port_value"),
            "must be 0",
        ),
        (
            "{ source_address: { address: 127.0.0.6 }, additional_source_addresses: [ { address: { address: 127.0.0.7 } } ] }",
            format!("{path}.additional_source_addresses[0].address"),
            "same family",
        ),
        (
            "{ additional_source_addresses: [] }",
            format!("{path}.source_address"),
            "required",
        ),
        (
            "{ source_address: { address: not-an-ip } }",
            format!("{path}.source_address.address"),
            "",
        ),
    ] {
        let error = err(&cluster(bind));
        assert_eq!(error.path, field, "{bind}: {error}");
        assert!(error.to_string().contains(why), "{bind}: {error}");
    }
    let error = err(&cluster(
        "{ source_address: { address: 127.0.0.6 }, freebind: true }",
    ));
    assert!(error.to_string().contains("freebind"), "{error}");
}

/// A STRICT_DNS or LOGICAL_DNS cluster whose endpoints are IP addresses is what looking them up
/// gives: it is taken as STATIC, its family honoured.
#[test]
fn a_dns_cluster_of_ip_addresses_is_taken_as_static() {
    for (kind, family, endpoints) in [
        (
            "STRICT_DNS",
            "AUTO",
            "10.0.0.1, port_value: 80 } } } }, { endpoint: { address: { socket_address: { address: \"fd00::1\", port_value: 80",
        ),
        ("LOGICAL_DNS", "V4_ONLY", "10.0.0.1, port_value: 80"),
    ] {
        let yaml = MINIMAL.replace(
            "  - { name: pass, type: ORIGINAL_DST, lb_policy: CLUSTER_PROVIDED }\n",
            &format!(
                "  - name: pass\n    type: {kind}\n    dns_lookup_family: {family}\n    load_assignment: {{ cluster_name: pass, endpoints: [ {{ lb_endpoints: [ {{ endpoint: {{ address: {{ socket_address: {{ address: {endpoints} }} }} }} }} ] }} ] }}\n"
            ),
        );
        let config = Config::from_yaml(&yaml).unwrap_or_else(|e| panic!("{kind}: {e}\n{yaml}"));
        let ClusterKind::Static { endpoints } = &config.clusters[0].kind else {
            panic!("{kind}: {:?}", config.clusters[0].kind);
        };
        let addrs: Vec<String> = endpoints
            .iter()
            .map(|e| match e.target {
                EndpointTarget::Socket(addr) => addr.to_string(),
                EndpointTarget::Internal { .. } => "internal".into(),
            })
            .collect();
        let want: &[&str] = if kind == "STRICT_DNS" {
            &["10.0.0.1:80", "[fd00::1]:80"]
        } else {
            &["10.0.0.1:80"]
        };
        assert_eq!(addrs, want, "{kind}");
    }
}
