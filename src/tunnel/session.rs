//! What both ends of a session share: the h2 settings, and the keepalive
//! that finds a dead peer (killed, or its link cut without a FIN).

use super::settings::Keepalive;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Per-stream receive window: enough for one stream to fill a long, fast
/// link, small enough that a stalled client holds little memory.
pub const STREAM_WINDOW: u32 = 1 << 20;
/// The whole session's receive window, shared by its streams.
pub const SESSION_WINDOW: u32 = 16 << 20;
pub const MAX_FRAME: u32 = 64 * 1024;
/// Streams one session may carry at once.
pub const MAX_STREAMS: u32 = 16 * 1024;

pub fn client_builder() -> h2::client::Builder {
    let mut builder = h2::client::Builder::new();
    builder
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(SESSION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_concurrent_streams(0)
        .enable_push(false)
        .max_send_buffer_size(256 * 1024);
    builder
}

pub fn server_builder() -> h2::server::Builder {
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(SESSION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_concurrent_streams(MAX_STREAMS)
        .max_send_buffer_size(256 * 1024)
        .max_concurrent_reset_streams(1024);
    builder
}

/// A session's socket, noting when the peer last sent anything: a busy
/// session's ping answer can wait behind a window's worth of data on a slow
/// or loaded machine, and the data shows the peer is alive just as well.
pub struct Heard<S> {
    inner: S,
    last: Arc<Liveness>,
}

/// When a session's peer was last heard from.
pub struct Liveness {
    start: Instant,
    /// Milliseconds since `start` of the last byte read from the peer.
    last_ms: AtomicU64,
}

impl Liveness {
    fn silent_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

impl<S> Heard<S> {
    pub fn new(inner: S) -> (Heard<S>, Arc<Liveness>) {
        let last = Arc::new(Liveness { start: Instant::now(), last_ms: AtomicU64::new(0) });
        (Heard { inner, last: last.clone() }, last)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Heard<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.last.last_ms.store(this.last.start.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Heard<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Pings every `interval`; returns once nothing at all (neither the ping's
/// answer nor any other frame) has come from the peer for `timeout`, so a
/// dead peer is found within interval + timeout.
pub async fn keepalive(mut pings: h2::PingPong, keepalive: Keepalive, heard: Arc<Liveness>) -> String {
    loop {
        tokio::time::sleep(keepalive.interval).await;
        let mut answer = std::pin::pin!(pings.ping(h2::Ping::opaque()));
        loop {
            let silent = heard.silent_for();
            if silent >= keepalive.timeout {
                return format!("nothing heard for {}", humantime(keepalive.timeout));
            }
            match tokio::time::timeout(keepalive.timeout - silent, &mut answer).await {
                Ok(Ok(_)) => break,
                Ok(Err(error)) => return format!("ping failed: {error}"),
                // Not answered yet: whether anything else came meanwhile decides.
                Err(_) => continue,
            }
        }
    }
}

fn humantime(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}
