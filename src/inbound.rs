//! Reading from a client before anything is forwarded: a bounded, timed
//! read loop shared by the PROXY header, ClientHello and HTTP request
//! readers, and the client's real address.

use crate::config::Listener;
use crate::outcome::Refusal;
use crate::proxy_header;
use bytes::BufMut;
use std::net::SocketAddr;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Reads into `buf` until `parse` gives an answer, `max` bytes are held,
/// the client closes, or `deadline` passes. Bytes stay in `buf`.
pub async fn read_until<T, E>(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    max: usize,
    deadline: Instant,
    started: Instant,
    mut parse: impl FnMut(&[u8]) -> Result<Option<T>, E>,
) -> Result<T, Refusal>
where
    Refusal: From<E>,
{
    loop {
        if let Some(found) = parse(buf)? {
            return Ok(found);
        }
        let room = max.saturating_sub(buf.len());
        if room == 0 {
            return Err(Refusal::TooLarge(max));
        }
        buf.reserve(room.min(4096));
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf.limit(room))).await {
            Err(_) => return Err(Refusal::Timeout(deadline - started)),
            Ok(Err(e)) => return Err(Refusal::Io(e)),
            Ok(Ok(0)) => return Err(Refusal::ClosedEarly),
            Ok(Ok(_)) => {}
        }
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
    buf: &mut Vec<u8>,
    deadline: Instant,
    started: Instant,
) -> Result<(SocketAddr, SocketAddr), Refusal> {
    let local = local_address(stream, listener)?;
    if !is_trusted_proxy(listener, peer) {
        return Ok((peer, local));
    }
    let header = read_until(stream, buf, proxy_header::MAX_HEADER_LEN, deadline, started, proxy_header::parse).await?;
    buf.drain(..header.len);
    let (client, local) = header.addresses.unwrap_or((peer, local));
    if client != peer {
        tracing::Span::current().record("client", tracing::field::display(client));
    }
    Ok((client, local))
}

/// The address the client connected to. A listener on one address and port
/// can only have been reached there, so only a wildcard listener (or port 0)
/// needs to ask the socket: one system call less per connection.
fn local_address(stream: &TcpStream, listener: &Listener) -> std::io::Result<SocketAddr> {
    let configured = listener.address;
    if configured.ip().is_unspecified() || configured.port() == 0 {
        stream.local_addr()
    } else {
        Ok(configured)
    }
}

pub fn is_trusted_proxy(listener: &Listener, peer: SocketAddr) -> bool {
    let ip = proxy_header::unmap(peer).ip();
    listener.proxy_protocol_from.iter().any(|net| net.contains(&ip))
}
