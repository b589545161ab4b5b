//! The rules each spec installs and removes, pinned as the shell scripts `origdst iptables print`
//! shows. After a deliberate change: `UPDATE_GOLDEN=1 cargo test -p origdst-rules --test golden`.

use std::path::PathBuf;

use origdst_rules::{Backend, Inbound, Pods, Scope, Spec, apply, remove, script};

fn check(name: &str, spec: &Spec) {
    spec.validate().expect("golden specs are valid");
    let text = format!(
        "{}\n{}",
        script("apply", &apply(spec)),
        script("remove", &remove(spec))
    );
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.sh"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &text).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
    assert!(
        text == expected,
        "{name}: the generated rules changed; if deliberate, UPDATE_GOLDEN=1.\n--- got ---\n{text}"
    );
}

fn istio_like(backend: Backend, inbound: Inbound) -> Spec {
    Spec {
        backend,
        inbound,
        ..Spec::default()
    }
}

#[test]
fn istio_defaults_redirect_iptables() {
    check(
        "istio-redirect-iptables",
        &istio_like(Backend::Iptables, Inbound::Redirect),
    );
}

#[test]
fn istio_defaults_tproxy_iptables() {
    check(
        "istio-tproxy-iptables",
        &istio_like(Backend::Iptables, Inbound::Tproxy),
    );
}

#[test]
fn istio_defaults_redirect_nftables() {
    check(
        "istio-redirect-nftables",
        &istio_like(Backend::Nftables, Inbound::Redirect),
    );
}

#[test]
fn istio_defaults_tproxy_nftables() {
    check(
        "istio-tproxy-nftables",
        &istio_like(Backend::Nftables, Inbound::Tproxy),
    );
}

/// Include and exclude lists of both families, extra ports, IPv4 only for nftables.
fn narrowed(backend: Backend) -> Spec {
    Spec {
        backend,
        ipv6: backend == Backend::Iptables,
        inbound: Inbound::Redirect,
        proxy_uids: vec![1337, 1338],
        include_outbound_cidrs: vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()],
        exclude_outbound_cidrs: vec!["10.96.0.10/32".parse().unwrap()],
        exclude_outbound_ports: vec![53, 5432],
        include_inbound_ports: vec![8080, 9090],
        exclude_inbound_ports: vec![22],
        ..Spec::default()
    }
}

#[test]
fn narrowed_iptables() {
    check("narrowed-iptables", &narrowed(Backend::Iptables));
}

#[test]
fn narrowed_nftables_ipv4_only() {
    check("narrowed-nftables-ipv4", &narrowed(Backend::Nftables));
}

#[test]
fn outbound_only_gateway_style_has_no_inbound_chains() {
    check(
        "outbound-only-iptables",
        &Spec {
            inbound: Inbound::None,
            ..Spec::default()
        },
    );
}

#[test]
fn specs_that_cannot_work_are_refused_naming_the_flag() {
    let cases = [
        (
            Spec {
                proxy_uids: vec![],
                proxy_mark: None,
                ..Spec::default()
            },
            "proxy-uid",
        ),
        (
            Spec {
                inbound_port: 15001,
                ..Spec::default()
            },
            "inbound-port",
        ),
        (
            Spec {
                inbound: Inbound::Tproxy,
                tproxy_mark: 1337,
                ..Spec::default()
            },
            "tproxy-mark",
        ),
        (
            Spec {
                ipv4: false,
                ipv6: false,
                ..Spec::default()
            },
            "family",
        ),
        (
            Spec {
                outbound: false,
                inbound: Inbound::None,
                ..Spec::default()
            },
            "inbound",
        ),
        (
            Spec {
                include_inbound_ports: vec![80],
                exclude_inbound_ports: vec![80],
                ..Spec::default()
            },
            "include-inbound-ports",
        ),
    ];
    for (spec, field) in cases {
        let err = spec.validate().expect_err(field);
        assert_eq!(err.field, field, "{err}");
    }
    Spec::default().validate().expect("the defaults work");
}

/// A node proxy: pods by CIDR (both families) and interface, one pod opted out by address and
/// one by interface, DNS never captured.
fn node(backend: Backend) -> Spec {
    Spec {
        backend,
        scope: Scope::Node,
        pods: Pods {
            cidrs: vec![
                "10.244.1.0/24".parse().unwrap(),
                "fd00:10:244:1::/64".parse().unwrap(),
            ],
            interfaces: vec!["veth+".into(), "cni0".into()],
            exclude_cidrs: vec!["10.244.1.9/32".parse().unwrap()],
            exclude_interfaces: vec!["vethlegacy".into()],
        },
        exclude_outbound_ports: vec![53],
        ..Spec::default()
    }
}

#[test]
fn node_redirect_iptables() {
    check("node-redirect-iptables", &node(Backend::Iptables));
}

#[test]
fn node_redirect_nftables() {
    check("node-redirect-nftables", &node(Backend::Nftables));
}

#[test]
fn node_scope_refuses_what_cannot_work() {
    let mut spec = node(Backend::Iptables);
    spec.pods.cidrs.clear();
    spec.pods.interfaces.clear();
    assert_eq!(spec.validate().unwrap_err().field, "pod-cidr");
    let mut spec = node(Backend::Iptables);
    spec.inbound = Inbound::Tproxy;
    assert_eq!(spec.validate().unwrap_err().field, "inbound");
    let mut spec = node(Backend::Iptables);
    spec.pods.interfaces = vec!["a-name-that-is-too-long".into()];
    assert_eq!(spec.validate().unwrap_err().field, "pod-interface");
    let mut spec = node(Backend::Iptables);
    spec.pods.exclude_interfaces = vec!["bad name".into()];
    assert_eq!(spec.validate().unwrap_err().field, "pod-interface");
}
