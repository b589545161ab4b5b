//! The benchmark's smoke run (`--quick`): every installed candidate measured once, briefly. The
//! numbers are printed for the log and never asserted (CI machines are shared and noisy); what is
//! asserted is that the harness ran every measurement and wrote its three outputs.

use std::process::Command;

#[test]
fn quick_run_measures_every_candidate_and_writes_its_outputs() {
    let out = std::env::temp_dir().join(format!("origdst-bench-quick-{}", std::process::id()));
    let status = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args([
            "--quick",
            "--origdst",
            env!("CARGO_BIN_EXE_origdst-bench-proxy"),
            "--out",
        ])
        .arg(&out)
        .status()
        .expect("run the bench harness");
    assert!(status.success(), "the quick benchmark failed");
    let markdown = std::fs::read_to_string(out.join("results.md")).expect("results.md");
    for row in [
        "| direct |",
        "| origdst-uring-splice |",
        "| origdst-epoll-splice |",
        "| haproxy-splice |",
        "| kernel-sockmap |",
        "| origdst-kernel-sockmap |",
    ] {
        assert!(markdown.contains(row), "no {row} row:\n{markdown}");
    }
    assert!(
        markdown.contains("| origdst-uring-splice | 200 |"),
        "no idle row:\n{markdown}"
    );
    for section in ["Sidecar topology", "Node topology (4 pods"] {
        assert!(markdown.contains(section), "no {section:?}:\n{markdown}");
    }
    let json = std::fs::read_to_string(out.join("results.json")).expect("results.json");
    for key in [
        "\"bulk1_gbit_s\"",
        "\"rr_p999_us\"",
        "\"conn_per_s\"",
        "\"conn_cpu_us\"",
        "\"conn2_per_s\"",
        "\"conn2_cpu_us\"",
        "\"node_bulk8_gbit_s\"",
        "\"node_conn2_per_s\"",
    ] {
        assert!(json.contains(key), "no {key} in results.json");
    }
    for plot in ["results.svg", "latency.svg"] {
        let svg = std::fs::read_to_string(out.join(plot)).expect(plot);
        assert!(svg.starts_with("<svg"), "{plot} is not an SVG");
        assert!(
            svg.contains("origdst-uring-splice"),
            "{plot} has no origdst row"
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}
