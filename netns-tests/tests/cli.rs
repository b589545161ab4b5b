//! The origdst command line, as an operator meets it (no namespaces needed).

use std::process::Command;

use origdst_netns_tests::origdst_bin;

fn origdst(args: &[&str]) -> std::process::Output {
    Command::new(origdst_bin!())
        .args(args)
        .output()
        .expect("run origdst")
}

/// `origdst run …` that must refuse to start: its output, or a failure (and the process killed)
/// if it is still running after ten seconds — a regression must fail, not hang the suite.
fn origdst_refused_run(args: &[&str]) -> std::process::Output {
    let mut child = Command::new(origdst_bin!())
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run origdst");
    let started = std::time::Instant::now();
    while child.try_wait().expect("wait origdst").is_none() {
        if started.elapsed() > std::time::Duration::from_secs(10) {
            let _ = child.kill();
            let output = child.wait_with_output().expect("collect origdst");
            panic!(
                "origdst {args:?} started instead of refusing:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().expect("collect origdst")
}

#[test]
fn check_accepts_the_embedded_default() {
    let printed = origdst(&["default-config"]);
    assert!(printed.status.success());
    let path = std::env::temp_dir().join(format!("origdst-default-{}.yaml", std::process::id()));
    std::fs::write(&path, &printed.stdout).unwrap();
    let out = origdst(&["check", "--config", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid"));
}

/// A stock Envoy bootstrap pointing at a control plane (ADS), in YAML and as proto-JSON, checks
/// valid; the same with an xDS cluster that is not STATIC is refused naming the field.
#[test]
fn check_accepts_an_envoy_ads_bootstrap_in_yaml_and_proto_json() {
    let golden = concat!(env!("CARGO_MANIFEST_DIR"), "/../core/tests/golden/");
    for file in ["bootstrap.yaml", "bootstrap.json"] {
        let path = format!("{golden}{file}");
        let out = origdst(&["check", "--config", &path]);
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("valid"),
            "{file}"
        );
    }
    let yaml = std::fs::read_to_string(format!("{golden}bootstrap.yaml")).expect("bootstrap");
    let broken = yaml.replacen(
        "cluster_name: xds-grpc\n      timeout",
        "cluster_name: PassthroughCluster\n      timeout",
        1,
    );
    assert_ne!(broken, yaml);
    let path = temp_config("xdsbad", &broken);
    let out = origdst(&["check", "--config", path.to_str().expect("UTF-8")]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("dynamic_resources.ads_config.grpc_services[0].envoy_grpc.cluster_name")
            && stderr.contains("must be STATIC"),
        "{stderr}"
    );
}

#[test]
fn check_names_the_bad_field_and_exits_2() {
    let yaml = origdst_core::config::DEFAULT_YAML.replace("port_value: 15001", "port_value: 99999");
    let path = std::env::temp_dir().join(format!("origdst-bad-{}.yaml", std::process::id()));
    std::fs::write(&path, yaml).unwrap();
    let out = origdst(&["check", "--config", path.to_str().unwrap()]);
    let run = origdst(&["run", "--config", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("static_resources.listeners[0].address.socket_address.port_value")
            && stderr.contains("99999 is not a port"),
        "{stderr}"
    );
    assert_eq!(
        run.status.code(),
        Some(2),
        "run refuses the same config before binding anything"
    );
}

#[test]
fn run_refuses_an_unsupported_field_by_its_path() {
    let yaml = origdst_core::config::DEFAULT_YAML.replace(
        "  - name: virtualOutbound\n",
        "  - name: virtualOutbound\n    udp_listener_config: {}\n",
    );
    let path = std::env::temp_dir().join(format!("origdst-unsup-{}.yaml", std::process::id()));
    std::fs::write(&path, yaml).unwrap();
    let run = origdst(&["run", "--config", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    assert_eq!(run.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("static_resources.listeners[0].udp_listener_config")
            && stderr.contains("unknown field"),
        "{stderr}"
    );
}

#[test]
fn missing_config_file_is_a_clear_error() {
    let out = origdst(&["check", "--config", "/nonexistent/origdst.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/origdst.yaml: cannot read")
    );
}

#[test]
fn help_is_written_for_a_person() {
    let out = origdst(&["run", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--config",
        "--data-path",
        "uring-splice",
        "uring-copy",
        "SIGTERM",
        "15001",
    ] {
        assert!(
            help.contains(needle),
            "`origdst run --help` should mention {needle}:\n{help}"
        );
    }
}

/// The deployment files cannot rot silently: the DaemonSet's config is valid, and every
/// `origdst` command line in the DaemonSet and the systemd unit parses (their `iptables`
/// invocations are printed, which validates the flags without touching any rule).
#[test]
fn deployment_files_hold_a_valid_config_and_valid_command_lines() {
    let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/../runtime-uring/deploy");
    let daemonset = std::fs::read_to_string(format!("{deploy}/daemonset.yaml")).unwrap();
    let mut commands: Vec<Vec<String>> = Vec::new();
    let mut configs = 0;
    for document in serde_yaml_ng::Deserializer::from_str(&daemonset) {
        let value: serde_yaml_ng::Value = serde::Deserialize::deserialize(document).unwrap();
        if let Some(yaml) = value["data"]["origdst.yaml"].as_str() {
            origdst_core::config::Config::from_yaml(yaml)
                .unwrap_or_else(|e| panic!("the DaemonSet's origdst.yaml: {e}"));
            configs += 1;
        }
        let spec = &value["spec"]["template"]["spec"];
        for list in ["initContainers", "containers"] {
            for container in spec[list].as_sequence().into_iter().flatten() {
                // Kubernetes expands `$(NAME)` from the container's environment.
                let env: Vec<(String, String)> = container["env"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .filter_map(|e| Some((e["name"].as_str()?.into(), e["value"].as_str()?.into())))
                    .collect();
                let expand = |word: &str| -> String {
                    env.iter().fold(word.to_string(), |w, (name, value)| {
                        w.replace(&format!("$({name})"), value)
                    })
                };
                let mut words: Vec<String> = Vec::new();
                for key in ["command", "args"] {
                    for word in container[key].as_sequence().into_iter().flatten() {
                        words.push(expand(word.as_str().unwrap()));
                    }
                }
                if let Some(stop) =
                    container["lifecycle"]["preStop"]["exec"]["command"].as_sequence()
                {
                    commands.push(stop.iter().map(|w| expand(w.as_str().unwrap())).collect());
                }
                commands.push(words);
            }
        }
    }
    assert_eq!(configs, 1, "the DaemonSet carries its config");
    let unit = std::fs::read_to_string(format!("{deploy}/origdst.service")).unwrap();
    for line in unit.lines() {
        if let Some((_, command)) = line.split_once("/usr/local/bin/origdst ") {
            let mut words = vec!["origdst".to_string()];
            words.extend(command.split_whitespace().map(str::to_string));
            commands.push(words);
        }
    }
    let mut checked = 0;
    for words in commands {
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        let args: Vec<&str> = match words.as_slice() {
            ["origdst", "iptables", "apply" | "remove", rest @ ..] => {
                // `print` with the same flags validates them without installing anything; a
                // user name that does not exist here (the unit's `origdst`) is replaced.
                // The config path is the container's, absent here: without it, `print` checks
                // the ports against the embedded default and only warns.
                let mut args = vec!["iptables", "print"];
                let mut words = rest.iter();
                while let Some(word) = words.next() {
                    match *word {
                        "--config" => {
                            words.next();
                        }
                        "origdst" => args.push("1337"),
                        other => args.push(other),
                    }
                }
                args
            }
            ["origdst", "check", "--config", _] | ["origdst", "run", ..] | ["run", ..] => {
                // Parse-only: `--help` after the subcommand proves the flags exist.
                let mut args: Vec<&str> = words
                    .iter()
                    .copied()
                    .skip_while(|w| *w == "origdst")
                    .collect();
                args.retain(|w| !w.starts_with('/'));
                args.retain(|w| *w != "--config");
                args.push("--help");
                args
            }
            ["sleep", "infinity"] => continue,
            other => panic!("an origdst command this test does not know: {other:?}"),
        };
        let out = origdst(&args);
        assert!(
            out.status.success(),
            "origdst {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert!(checked >= 6, "only {checked} command lines found");
}

/// Writes `yaml` to a temporary file named after `tag`; removed by the caller.
fn temp_config(tag: &str, yaml: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("origdst-{tag}-{}.yaml", std::process::id()));
    std::fs::write(&path, yaml).unwrap();
    path
}

/// Two internal listeners passing connections to each other (A → B → A).
const INTERNAL_CYCLE: &str = r#"static_resources:
  listeners:
  - name: front
    address: { socket_address: { address: 127.0.0.1, port_value: 19000 } }
    filter_chains: [ { filters: [ { name: envoy.filters.network.tcp_proxy, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: front, cluster: to_a } } ] } ]
  - name: a
    address: { envoy_internal_address: { server_listener_name: a } }
    filter_chains: [ { filters: [ { name: envoy.filters.network.tcp_proxy, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: a, cluster: to_b } } ] } ]
  - name: b
    address: { envoy_internal_address: { server_listener_name: b } }
    filter_chains: [ { filters: [ { name: envoy.filters.network.tcp_proxy, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: b, cluster: to_a } } ] } ]
  clusters:
  - { name: to_a, type: STATIC, load_assignment: { cluster_name: to_a, endpoints: [ { lb_endpoints: [ { endpoint: { address: { envoy_internal_address: { server_listener_name: a } } } } ] } ] } }
  - { name: to_b, type: STATIC, load_assignment: { cluster_name: to_b, endpoints: [ { lb_endpoints: [ { endpoint: { address: { envoy_internal_address: { server_listener_name: b } } } } ] } ] } }
bootstrap_extensions:
- name: envoy.bootstrap.internal_listener
"#;

#[test]
fn check_refuses_internal_listener_cycles_naming_the_chain() {
    // This config passed `check` and then aborted the process on its first connection.
    let path = temp_config("cycle", INTERNAL_CYCLE);
    let out = origdst(&["check", "--config", path.to_str().unwrap()]);
    let run = origdst_refused_run(&["run", "--config", path.to_str().unwrap(), "--admin", "off"]);
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("internal listeners form a cycle: a → b → a"),
        "{stderr}"
    );
    assert_eq!(run.status.code(), Some(2), "run refuses it too");
}

#[test]
fn deeply_nested_configs_are_refused_at_once_naming_the_limit() {
    // 400 kB of nested flow sequences took 77 s of CPU in the parser.
    let yaml = format!(
        "static_resources:\n  listeners: {}{}\n",
        "[".repeat(200_000),
        "]".repeat(200_000)
    );
    let path = temp_config("deep", &yaml);
    let started = std::time::Instant::now();
    let out = origdst(&["check", "--config", path.to_str().unwrap()]);
    let took = started.elapsed();
    let big = temp_config("big", &format!("# {}\n", "x".repeat(5 << 20)));
    let too_big = origdst(&["check", "--config", big.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&big);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("more than the limit of 64"), "{stderr}");
    assert!(
        took < std::time::Duration::from_secs(5),
        "check took {took:?}"
    );
    assert_eq!(too_big.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&too_big.stderr);
    assert!(
        stderr.contains("larger than the limit of 4194304 bytes"),
        "{stderr}"
    );
}

#[test]
fn command_line_overrides_pass_the_config_validator() {
    // `--shards 300` started 302 threads on 2 CPUs while `shards: 300` in the file was refused.
    let run = origdst_refused_run(&["run", "--shards", "300"]);
    assert_eq!(run.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("origdst.shards") && stderr.contains("300 is outside 1..=256"),
        "{stderr}"
    );
    // An admin address on a listener's port is refused by `check` naming both, not at start-up.
    let yaml = origdst_core::config::DEFAULT_YAML.replacen(
        "  drain_timeout: 30s\n",
        "  drain_timeout: 30s\n  admin: 127.0.0.1:15001\n",
        1,
    );
    let path = temp_config("adminclash", &yaml);
    let out = origdst(&["check", "--config", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("origdst.admin")
            && stderr.contains("clashes with listener \"virtualOutbound\" on 0.0.0.0:15001"),
        "{stderr}"
    );
    let run = origdst_refused_run(&["run", "--admin", "0.0.0.0:15001"]);
    assert_eq!(
        run.status.code(),
        Some(2),
        "the --admin override is checked too"
    );
}
