//! Runs a program the way a container with Docker's (≥ 25) or containerd's default seccomp
//! profile would: `io_uring_setup`, `io_uring_enter` and `io_uring_register` fail with EPERM.
//! `no-io-uring PROGRAM [ARGS...]` installs that filter and execs the program (the filter is
//! inherited across exec).

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter};

fn main() {
    let mut args = std::env::args_os().skip(1);
    let Some(program) = args.next() else {
        eprintln!("usage: no-io-uring PROGRAM [ARGS...]");
        std::process::exit(2);
    };
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> = [
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
    ]
    .into_iter()
    .map(|nr| (nr, Vec::new()))
    .collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        std::env::consts::ARCH
            .try_into()
            .expect("a seccomp-supported architecture"),
    )
    .expect("a valid filter");
    let program_filter: BpfProgram = filter.try_into().expect("compiles to BPF");
    seccompiler::apply_filter(&program_filter).expect("install the seccomp filter");
    let err = std::process::Command::new(&program).args(args).exec();
    eprintln!(
        "no-io-uring: cannot exec {}: {err}",
        program.to_string_lossy()
    );
    std::process::exit(127);
}
