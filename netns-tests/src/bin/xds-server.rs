//! `xds-server ADDR STATE_DIR MAX_SECONDS`: [`origdst_netns_tests::control_plane::serve`] as a
//! process of its own — the tests' control plane, killed and restarted as a real one would be.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(dir), Some(seconds)) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: xds-server ADDR STATE_DIR MAX_SECONDS");
        std::process::exit(2);
    };
    let addr: SocketAddr = addr.parse().expect("ADDR is ip:port");
    let seconds: u64 = seconds.parse().expect("MAX_SECONDS is a number");
    if let Err(err) = origdst_netns_tests::control_plane::serve(
        addr,
        Path::new(&dir),
        Duration::from_secs(seconds),
    ) {
        eprintln!("xds-server: {err}");
        std::process::exit(1);
    }
}
