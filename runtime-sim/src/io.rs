//! Stream I/O with the kernel's reset semantics, which turmoil 0.7.2 does not give on its own: a
//! peer that aborted is seen as `ConnectionReset` on read and `BrokenPipe` on write, as an RST
//! would be (turmoil resets only when a read half is dropped with unread data).
//!
//! Every read and write of the simulated proxy and of the workload goes through here.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use turmoil::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::net::SimNet;

/// Reads, turning "EOF (or anything) from a peer that aborted" into `ConnectionReset`.
pub async fn read(net: &SimNet, half: &mut OwnedReadHalf, buf: &mut [u8]) -> io::Result<usize> {
    let (local, peer) = (half.local_addr()?, half.peer_addr()?);
    let result = half.read(buf).await;
    if net.peer_aborted(local, peer) {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "reset by peer (modelled RST)",
        ));
    }
    result
}

/// Writes all of `buf`, failing with `BrokenPipe` if the peer aborted — also while blocked on a
/// full window, which turmoil would never wake.
pub async fn write_all(net: &SimNet, half: &mut OwnedWriteHalf, buf: &[u8]) -> io::Result<()> {
    let (local, peer) = (half.local_addr()?, half.peer_addr()?);
    let aborts = net.aborts();
    let mut written = 0;
    while written < buf.len() {
        if net.peer_aborted(local, peer) {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "peer reset (modelled RST)",
            ));
        }
        let notified = aborts.notified();
        // turmoil's write either sends a whole segment or none (cancel-safe), so dropping it on
        // an abort notification loses nothing.
        tokio::select! {
            biased;
            result = half.write(&buf[written..]) => written += result?,
            () = notified => {}
        }
    }
    Ok(())
}

/// Shuts the write half (FIN).
pub async fn shutdown(_net: &SimNet, half: &mut OwnedWriteHalf) -> io::Result<()> {
    half.shutdown().await
}

/// Records a reset of the socket (`local`, `peer`); the caller then drops its halves.
pub fn abort(net: &SimNet, local: SocketAddr, peer: SocketAddr) {
    net.record_abort(local, peer);
}
