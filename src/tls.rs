//! A TLS connection, start to end: read the ClientHello, route by its name,
//! forward. Nothing reaches a backend before the name is known and allowed.

use crate::forward::{forward, Connection};
use crate::hello;
use crate::inbound::{addresses, read_until, Received};
use crate::names::Requested;
use crate::outcome::{Refusal, Served};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::field::display;

/// A fatal `unrecognized_name` alert (RFC 6066 §3), so that a refused client
/// says "unrecognized name" instead of a bare connection reset.
pub(crate) const ALERT_UNRECOGNIZED_NAME: [u8; 7] = [21, 3, 3, 0, 2, 2, 112];

/// Largest amount read before a hello must be complete: the biggest
/// ClientHello TLS allows, with a record header for every 2^14 bytes.
pub(crate) const MAX_READ: usize = hello::MAX_HELLO_LEN + 4 + 5 * (hello::MAX_HELLO_LEN / (1 << 14) + 1);

pub async fn serve(
    stream: &mut TcpStream,
    cx: &Connection<'_>,
    handshake_done: impl FnOnce(),
) -> Result<Served, Refusal> {
    let config = cx.config;
    let started = Instant::now();
    let deadline = started + config.timeouts.client_hello;
    let mut buf = Received::new(config.limits.max_buffered_bytes);
    let addresses = Box::pin(addresses(stream, cx.peer, cx.listener, &mut buf, deadline, started)).await?;
    let hello = Box::pin(read_until(stream, &mut buf, MAX_READ, deadline, started, hello::parse)).await?;
    handshake_done();
    let name = match hello.server_name {
        Requested::Host(name) => name,
        Requested::NoName => return Err(Box::pin(refuse(stream, Refusal::NoName)).await),
    };
    tracing::Span::current().record("sni", display(&name));
    let Some(route) = config.route_for(&name) else {
        return Err(Box::pin(refuse(stream, Refusal::UnknownName(name.to_string()))).await);
    };
    cx.routed(route);
    forward(cx, addresses, &route.backend, std::mem::take(&mut buf.bytes), false).await
}

async fn refuse(stream: &mut TcpStream, refusal: Refusal) -> Refusal {
    // Best effort: the client may be gone already.
    let _ = stream.write_all(&ALERT_UNRECOGNIZED_NAME).await;
    refusal
}
