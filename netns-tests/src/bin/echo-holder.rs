//! `echo-holder ADDR MAX_SECONDS`: [`origdst_netns_tests::echo_holder`] as a process of its own.

use std::net::SocketAddr;
use std::time::Duration;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(seconds)) = (args.next(), args.next()) else {
        eprintln!("usage: echo-holder ADDR MAX_SECONDS");
        std::process::exit(2);
    };
    let addr: SocketAddr = addr.parse().expect("ADDR is ip:port");
    let seconds: u64 = seconds.parse().expect("MAX_SECONDS is a number");
    origdst_netns_tests::echo_holder::run(addr, Duration::from_secs(seconds));
}
