//! The origdst command line, as an operator meets it (no namespaces needed).

use std::process::Command;

use origdst_netns_tests::origdst_bin;

fn origdst(args: &[&str]) -> std::process::Output {
    Command::new(origdst_bin!())
        .args(args)
        .output()
        .expect("run origdst")
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
