//! Reading from a client before anything is forwarded: a bounded, timed
//! read loop shared by the PROXY header, ClientHello and HTTP request
//! readers, and the client's real address.

use crate::config::Listener;
use crate::limits::{BufferCharge, BUFFER_FLOOR};
use crate::outcome::{Limit, Refusal};
use crate::proxy_header;
use bytes::BufMut;
use std::net::SocketAddr;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Bytes read from a client and not yet forwarded, with what they hold of
/// the buffer budget (`limits.max_buffered_bytes`), given back on drop.
#[derive(Debug)]
pub struct Received {
    pub bytes: Vec<u8>,
    charge: BufferCharge,
    budget: usize,
}

impl Received {
    pub fn new(budget: usize) -> Received {
        Received { bytes: Vec::new(), charge: BufferCharge::default(), budget }
    }
}

/// What a read asks room for: a small hello fits in one read, a large one
/// grows in steps of this, so a buffer is never much larger than what was
/// received (a doubling buffer would hold up to twice that).
const READ_STEP: usize = 4096;

/// Reads into `buf` until `parse` gives an answer, `max` bytes are held,
/// the client closes, the buffer budget is spent, or `deadline` passes.
/// Bytes stay in `buf`.
pub async fn read_until<T, E>(
    stream: &mut TcpStream,
    received: &mut Received,
    max: usize,
    deadline: Instant,
    started: Instant,
    mut parse: impl FnMut(&[u8]) -> Result<Option<T>, E>,
) -> Result<T, Refusal>
where
    Refusal: From<E>,
{
    loop {
        if let Some(found) = parse(&received.bytes)? {
            return Ok(found);
        }
        let step = received.make_room(max)?;
        let buf = &mut received.bytes;
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf.limit(step))).await {
            Err(_) => return Err(Refusal::Timeout(deadline - started)),
            Ok(Err(e)) => return Err(Refusal::Io(e)),
            Ok(Ok(0)) => return Err(Refusal::ClosedEarly),
            Ok(Ok(_)) => {}
        }
    }
}

impl Received {
    /// Makes room for the next read and says how many bytes it may take:
    /// refused when `max` bytes are held already or the budget is spent.
    pub fn make_room(&mut self, max: usize) -> Result<usize, Refusal> {
        let buf = &mut self.bytes;
        let room = max.saturating_sub(buf.len());
        if room == 0 {
            return Err(Refusal::TooLarge(max));
        }
        // Up to the floor, no further: what a connection may always hold
        // must not need the budget because of how the steps fell.
        let step = match BUFFER_FLOOR.checked_sub(buf.len()) {
            Some(to_floor) if to_floor > 0 => room.min(READ_STEP).min(to_floor),
            _ => room.min(READ_STEP),
        };
        if buf.capacity() - buf.len() < step {
            self.charge.cover(buf.len() + step, self.budget).map_err(|_| Refusal::Limit(Limit::Buffered))?;
            buf.reserve_exact(step);
        }
        Ok(step)
    }
}

/// The real client and the address it connected to: the socket's own, or,
/// when the peer is a trusted load balancer on this listener, those its
/// PROXY header gives. The header is removed from `buf`. From anyone else a
/// PROXY header is just bytes, which no TLS or HTTP parser accepts.
pub async fn addresses(
    stream: &mut TcpStream,
    peer: SocketAddr,
    listener: &Listener,
    buf: &mut Received,
    deadline: Instant,
    started: Instant,
) -> Result<(SocketAddr, SocketAddr), Refusal> {
    let local = local_address(stream, listener)?;
    if !is_trusted_proxy(listener, peer) {
        return Ok((peer, local));
    }
    let header = read_until(stream, buf, proxy_header::MAX_HEADER_LEN, deadline, started, proxy_header::parse).await?;
    buf.bytes.drain(..header.len);
    let (client, local) = header.addresses.unwrap_or((peer, local));
    if client != peer {
        tracing::Span::current().record("client", tracing::field::display(client));
    }
    Ok((client, local))
}

/// The address the client connected to. A listener on one address and port
/// can only have been reached there, so only a wildcard listener (or port 0)
/// needs to ask the socket: one system call less per connection.
pub fn local_address(stream: &TcpStream, listener: &Listener) -> std::io::Result<SocketAddr> {
    asked_address(listener, || stream.local_addr())
}

/// The listener's own address when it is specific, else `ask`'s answer.
pub fn asked_address(
    listener: &Listener,
    ask: impl FnOnce() -> std::io::Result<SocketAddr>,
) -> std::io::Result<SocketAddr> {
    let configured = listener.address;
    if configured.ip().is_unspecified() || configured.port() == 0 {
        ask()
    } else {
        Ok(configured)
    }
}

pub fn is_trusted_proxy(listener: &Listener, peer: SocketAddr) -> bool {
    let ip = proxy_header::unmap(peer).ip();
    listener.proxy_protocol_from.iter().any(|net| net.contains(&ip))
}
