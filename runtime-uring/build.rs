//! Compiles the in-kernel relay (`bpf/relay.c`, data_path `kernel-sockmap`) with clang into
//! `$OUT_DIR/relay.o`, which the binary embeds. A machine without clang or libbpf's headers
//! (Debian: `clang`, `libbpf-dev`) still builds origdst: the cfg `origdst_no_bpf` is set, and the
//! data path reports at start-up that this build has no relay. (The Rust BPF toolchain, aya-ebpf,
//! needs a nightly compiler; the program is twenty lines of C.)

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(origdst_no_bpf)");
    println!("cargo::rerun-if-changed=bpf/relay.c");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = out.join("relay.o");
    // <asm/types.h> lives under the multiarch include directory on Debian.
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let multiarch = format!("/usr/include/{arch}-linux-gnu");
    let built = Command::new("clang")
        .args([
            "-O2",
            "-g",
            "-target",
            "bpf",
            "-I",
            &multiarch,
            "-c",
            "bpf/relay.c",
            "-o",
        ])
        .arg(&object)
        .output();
    match built {
        Ok(output) if output.status.success() => {}
        Ok(output) => skip(&format!(
            "clang failed: {}",
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .next()
                .unwrap_or("")
        )),
        Err(err) => skip(&format!("clang not found ({err})")),
    }
}

fn skip(why: &str) {
    println!(
        "cargo::warning=building without the kernel-sockmap relay: {why} (install clang and libbpf-dev)"
    );
    println!("cargo::rustc-cfg=origdst_no_bpf");
}
