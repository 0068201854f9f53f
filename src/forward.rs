//! The last steps of the data path: connect upstream, write the PROXY header
//! and the bytes read so far in one write, then relay.

use crate::backend::Backend;
use crate::outcome::{Refusal, Served};
use crate::proxy_header;
use crate::relay::{self, Counters};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

pub async fn forward(
    client: &mut TcpStream,
    client_addr: SocketAddr,
    local: SocketAddr,
    backend: &Backend,
    already_read: &[u8],
    idle: Duration,
    counters: &Counters,
) -> Result<Served, Refusal> {
    let mut upstream = backend.connect(client_addr.ip()).await?;
    tracing::Span::current().record("server", tracing::field::display(&upstream.address));
    let mut first = proxy_header::encode(backend.proxy_protocol, client_addr, local);
    first.extend_from_slice(already_read);
    upstream.stream.write_all(&first).await?;
    counters.up.fetch_add(already_read.len() as u64, Ordering::Relaxed);
    let end = relay::relay(client, &mut upstream.stream, idle, counters).await.err();
    Ok(Served::Relayed(end))
}
