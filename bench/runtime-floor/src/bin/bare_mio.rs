//! Experiment only (bench/runtime-floor/README.md): the per-connection path of an SNI gateway on
//! a hand-written, single-threaded epoll loop (mio): accept, read the ClientHello, connect, PROXY v2
//! header and hello in one write, relay with half-close. No limits, timeouts, metrics or logs, and
//! no name check beyond the record being complete: the floor under any runtime, not a gateway.
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};

const LISTENER: Token = Token(usize::MAX);

enum State {
    Hello,
    Connecting,
    Relay,
}

struct Conn {
    client: TcpStream,
    server: Option<TcpStream>,
    peer: SocketAddr,
    local: SocketAddr,
    buf: Vec<u8>,
    state: State,
    up_done: bool,   // client -> server ended
    down_done: bool, // server -> client ended
}

fn hello_complete(b: &[u8]) -> bool {
    b.len() >= 5 && b[0] == 22 && b.len() >= 5 + u16::from_be_bytes([b[3], b[4]]) as usize
}

fn proxy_v2(peer: SocketAddr, local: SocketAddr, out: &mut Vec<u8>) {
    out.extend_from_slice(b"\r\n\r\n\0\r\nQUIT\n");
    out.extend_from_slice(&[0x21, 0x11, 0, 12]);
    match (peer, local) {
        (SocketAddr::V4(p), SocketAddr::V4(l)) => {
            out.extend_from_slice(&p.ip().octets());
            out.extend_from_slice(&l.ip().octets());
            out.extend_from_slice(&p.port().to_be_bytes());
            out.extend_from_slice(&l.port().to_be_bytes());
        }
        _ => unreachable!(),
    }
}

/// Moves what is readable from `from` to `to`; returns false at EOF.
fn pump(from: &mut TcpStream, to: &mut TcpStream) -> Result<bool, std::io::Error> {
    let mut buf = [0u8; 16384];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return Ok(false),
            Ok(n) => {
                to.write_all(&buf[..n])?; // small records: a full socket buffer is not expected here
                if n < buf.len() {
                    return Ok(true);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(true),
            Err(e) => return Err(e),
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let listen: SocketAddr = args[1].parse().unwrap();
    let upstream: SocketAddr = args[2].parse().unwrap();
    let mut poll = Poll::new().unwrap();
    let mut listener = TcpListener::bind(listen).unwrap();
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE).unwrap();
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut events = Events::with_capacity(1024);
    loop {
        poll.poll(&mut events, None).unwrap();
        for ev in events.iter() {
            if ev.token() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((mut client, peer)) => {
                            let i = free.pop().unwrap_or_else(|| {
                                conns.push(None);
                                conns.len() - 1
                            });
                            poll.registry().register(&mut client, Token(i * 2), Interest::READABLE).unwrap();
                            conns[i] = Some(Conn {
                                client,
                                server: None,
                                peer,
                                local: listen,
                                buf: Vec::with_capacity(4096),
                                state: State::Hello,
                                up_done: false,
                                down_done: false,
                            });
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(_) => break,
                    }
                }
                continue;
            }
            let i = ev.token().0 / 2;
            let from_server = ev.token().0 % 2 == 1;
            let Some(c) = conns[i].as_mut() else { continue };
            let mut close = false;
            match c.state {
                State::Hello => {
                    let mut tmp = [0u8; 4096];
                    loop {
                        match c.client.read(&mut tmp) {
                            Ok(0) => {
                                close = true;
                                break;
                            }
                            Ok(n) => {
                                c.buf.extend_from_slice(&tmp[..n]);
                                if n < tmp.len() {
                                    break;
                                }
                            }
                            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                            Err(_) => {
                                close = true;
                                break;
                            }
                        }
                    }
                    if !close && hello_complete(&c.buf) {
                        let mut s = TcpStream::connect(upstream).unwrap();
                        poll.registry()
                            .register(&mut s, Token(i * 2 + 1), Interest::READABLE | Interest::WRITABLE)
                            .unwrap();
                        c.server = Some(s);
                        c.state = State::Connecting;
                    }
                }
                State::Connecting if from_server && ev.is_writable() => {
                    let s = c.server.as_mut().unwrap();
                    if let Ok(Some(_)) | Err(_) = s.take_error() {
                        close = true
                    } else {
                        s.set_nodelay(true).unwrap();
                        let mut first = Vec::with_capacity(28 + c.buf.len());
                        proxy_v2(c.peer, c.local, &mut first);
                        first.extend_from_slice(&c.buf);
                        if s.write_all(&first).is_err() {
                            close = true
                        }
                        c.buf = Vec::new();
                        c.state = State::Relay;
                        // the server may have written already
                        if !close && ev.is_readable() {
                            match pump(s, &mut c.client) {
                                Ok(true) => {}
                                Ok(false) => {
                                    let _ = c.client.shutdown(Shutdown::Write);
                                    c.down_done = true
                                }
                                Err(_) => close = true,
                            }
                        }
                    }
                }
                State::Connecting => {}
                State::Relay => {
                    let s = c.server.as_mut().unwrap();
                    if from_server && !c.down_done && (ev.is_readable() || ev.is_read_closed()) {
                        match pump(s, &mut c.client) {
                            Ok(true) => {}
                            Ok(false) => {
                                c.down_done = true;
                                if !c.up_done {
                                    let _ = c.client.shutdown(Shutdown::Write);
                                }
                            }
                            Err(_) => close = true,
                        }
                    } else if !from_server && !c.up_done && (ev.is_readable() || ev.is_read_closed()) {
                        match pump(&mut c.client, s) {
                            Ok(true) => {}
                            Ok(false) => {
                                c.up_done = true;
                                if !c.down_done {
                                    let _ = s.shutdown(Shutdown::Write);
                                }
                            }
                            Err(_) => close = true,
                        }
                    }
                    if c.up_done && c.down_done {
                        close = true
                    }
                }
            }
            if close {
                // closing the descriptors removes them from the epoll set: no deregistration
                conns[i] = None;
                free.push(i);
            }
        }
    }
}
