//! What both listeners' paths share: the accepted connection's context, and
//! the step before the relay: connect upstream, then write the PROXY header
//! and the bytes read so far in one write. The relay itself is run by the
//! server, outside these futures, so that their state is gone by then.

use crate::backend::Backend;
use crate::config::{Config, Listener, Route};
use crate::metrics::Metrics;
use crate::outcome::{Refusal, Served, To};
use crate::proxy_header;
use crate::relay::Counters;
use crate::tunnel::gateway::Hub;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use tokio::io::AsyncWriteExt;

/// An accepted connection and what it is served with. The config is the one
/// current when it was accepted; a reload does not change it.
pub struct Connection<'a> {
    pub peer: SocketAddr,
    pub listener: &'a Listener,
    pub config: &'a Config,
    pub counters: &'a Counters,
    pub metrics: &'a Arc<Metrics>,
    /// Where agents are, for backends reached through the tunnel.
    pub tunnel: &'a Hub,
    /// The route once one is chosen, for the log line and metrics.
    pub route: OnceLock<&'a Route>,
}

impl<'a> Connection<'a> {
    pub fn routed(&self, route: &'a Route) {
        tracing::Span::current().record("route", route.name.as_str());
        let _ = self.route.set(route);
    }
}

/// Connects upstream (a server, or an agent through the tunnel) and writes
/// the PROXY header and the bytes read so far. `one_request`: only those
/// bytes go up (an ACME challenge fetch); the relay passes the answer back.
pub async fn forward(
    cx: &Connection<'_>,
    (client_addr, local): (SocketAddr, SocketAddr),
    backend: &Backend,
    already_read: Vec<u8>,
    one_request: bool,
) -> Result<Served, Refusal> {
    let first = proxy_header::encode_before(backend.proxy_protocol, client_addr, local, &already_read);
    // Boxed, like every phase before the relay, so that its state is freed
    // once done instead of being reserved for the connection's whole life.
    let to = match &backend.tunnel {
        // Through the tunnel the header and first bytes go with the stream's
        // opening, so that an agent that refuses can be replaced by another.
        Some(via) => To::Agent(Box::new(
            Box::pin(cx.tunnel.open(&backend.name, via, first.into(), backend.connect_timeout, cx.metrics)).await?,
        )),
        None => {
            let mut upstream = Box::pin(backend.connect(client_addr.ip(), cx.metrics)).await?;
            Box::pin(upstream.stream.write_all(&first)).await?;
            To::Server(upstream)
        }
    };
    cx.counters.up.fetch_add(already_read.len() as u64, Ordering::Relaxed);
    Ok(Served::Forwarded { to, one_request })
}
