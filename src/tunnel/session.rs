//! What both ends of a session share: the h2 settings, and the keepalive
//! that finds a dead peer (killed, or its link cut without a FIN).

use super::settings::Keepalive;
use std::time::Duration;

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

/// Pings every `interval`; returns once a ping goes unanswered for
/// `timeout`, so a dead peer is found within interval + timeout.
pub async fn keepalive(mut pings: h2::PingPong, keepalive: Keepalive) -> String {
    loop {
        tokio::time::sleep(keepalive.interval).await;
        match tokio::time::timeout(keepalive.timeout, pings.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return format!("ping failed: {error}"),
            Err(_) => return format!("no answer to a ping for {}", humantime(keepalive.timeout)),
        }
    }
}

fn humantime(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}
