//! An echo server that holds thousands of connections in one thread (epoll), meant to run in a
//! process of its own so its sockets do not count against its caller's descriptor limit: it
//! prints `listening` once bound, echoes every byte back, closes a connection at its EOF, and
//! exits when stdin closes (its caller ended) or after a deadline.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use socket2::{Domain, Socket, Type};

const LISTENER: u64 = u64::MAX;
const STDIN: u64 = u64::MAX - 1;

/// Serves until stdin closes or `max` passes; prints `listening` once bound.
pub fn run(addr: SocketAddr, max: Duration) {
    let deadline = Instant::now() + max;

    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).expect("socket");
    socket.set_reuse_address(true).expect("SO_REUSEADDR");
    socket.bind(&addr.into()).expect("bind");
    socket.listen(8192).expect("listen");
    socket.set_nonblocking(true).expect("nonblocking");
    let listener = TcpListener::from(socket);

    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).expect("epoll");
    epoll
        .add(&listener, EpollEvent::new(EpollFlags::EPOLLIN, LISTENER))
        .expect("watch listener");
    let stdin = std::io::stdin();
    epoll
        .add(stdin.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, STDIN))
        .expect("watch stdin");
    println!("listening");
    std::io::stdout().flush().expect("stdout");

    let mut conns: HashMap<u64, TcpStream> = HashMap::new();
    let mut events = vec![EpollEvent::empty(); 1024];
    let mut buf = [0u8; 16 * 1024];
    while Instant::now() < deadline {
        let n = epoll
            .wait(&mut events, EpollTimeout::from(100u16))
            .expect("epoll_wait");
        for event in &events[..n] {
            match event.data() {
                LISTENER => loop {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            stream.set_nonblocking(true).expect("nonblocking stream");
                            let key = stream.as_raw_fd() as u64;
                            epoll
                                .add(&stream, EpollEvent::new(EpollFlags::EPOLLIN, key))
                                .expect("watch stream");
                            conns.insert(key, stream);
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => panic!("accept: {e}"),
                    }
                },
                STDIN => {
                    let mut byte = [0u8; 1];
                    if matches!(std::io::stdin().read(&mut byte), Ok(0) | Err(_)) {
                        return;
                    }
                }
                key => {
                    let Some(stream) = conns.get_mut(&key) else {
                        continue;
                    };
                    match stream.read(&mut buf) {
                        // Small echoes fit the socket buffer; a partial write would be a test bug.
                        Ok(n) if n > 0 => stream.write_all(&buf[..n]).expect("echo"),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        Ok(_) | Err(_) => {
                            if let Some(stream) = conns.remove(&key) {
                                let _ = epoll.delete(&stream);
                            }
                        }
                    }
                }
            }
        }
    }
}
