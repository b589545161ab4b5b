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
    ] {
        assert!(markdown.contains(row), "no {row} row:\n{markdown}");
    }
    assert!(
        markdown.contains("| origdst-uring-splice | 200 |"),
        "no idle row:\n{markdown}"
    );
    let json = std::fs::read_to_string(out.join("results.json")).expect("results.json");
    assert!(json.contains("\"bulk1_gbit_s\""));
    let svg = std::fs::read_to_string(out.join("results.svg")).expect("results.svg");
    assert!(svg.starts_with("<svg"));
    let _ = std::fs::remove_dir_all(&out);
}
