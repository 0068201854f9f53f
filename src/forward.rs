//! What both listeners' paths share: the accepted connection's context, and
//! the last steps of the data path: connect upstream, write the PROXY header
//! and the bytes read so far in one write, then relay.

use crate::backend::Backend;
use crate::config::{Config, Listener};
use crate::metrics::Metrics;
use crate::outcome::{Refusal, Served};
use crate::proxy_header;
use crate::relay::{self, Counters};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// An accepted connection and what it is served with. The config is the one
/// current when it was accepted; a reload does not change it.
pub struct Connection<'a> {
    pub peer: SocketAddr,
    pub listener: &'a Listener,
    pub config: &'a Config,
    pub counters: &'a Counters,
    pub metrics: &'a Metrics,
    /// The route's name once one is chosen, for the log line and metrics.
    pub route: OnceLock<String>,
}

impl Connection<'_> {
    pub fn routed(&self, route: &str) {
        tracing::Span::current().record("route", route);
        let _ = self.route.set(route.to_owned());
    }
}

pub async fn forward(
    client: &mut TcpStream,
    cx: &Connection<'_>,
    (client_addr, local): (SocketAddr, SocketAddr),
    backend: &Backend,
    already_read: Vec<u8>,
) -> Result<Served, Refusal> {
    let mut upstream = backend.connect(client_addr.ip(), cx.metrics).await?;
    tracing::Span::current().record("server", tracing::field::display(&upstream.address));
    let mut first = proxy_header::encode(backend.proxy_protocol, client_addr, local);
    first.extend_from_slice(&already_read);
    upstream.stream.write_all(&first).await?;
    cx.counters.up.fetch_add(already_read.len() as u64, Ordering::Relaxed);
    // A relayed connection may stay open for hours: it keeps no buffer.
    drop(first);
    drop(already_read);
    let end = relay::relay(client, &mut upstream.stream, cx.config.timeouts.idle, cx.counters).await.err();
    Ok(Served::Relayed(end))
}
