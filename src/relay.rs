//! Relaying bytes both ways between client and server.
//!
//! Each direction waits for readiness without holding a buffer, so an idle
//! connection costs no user-space buffer at all; a buffer exists only while
//! a burst of data is being moved. When one side ends its sending (EOF), the
//! other side's sending direction is shut down and the rest keeps flowing:
//! half-closed connections lose nothing. A failed write ends only its own
//! direction, since the side that stopped reading may still be sending its
//! last bytes (a server that answers and closes); a failed read means that
//! side is gone, and ends the relay.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;

const BUFFER_LEN: usize = 64 * 1024;

/// Bytes moved each way, readable while the relay runs and after it stops.
#[derive(Debug, Default)]
pub struct Counters {
    /// Client to server.
    pub up: AtomicU64,
    /// Server to client.
    pub down: AtomicU64,
    /// Milliseconds since `start` at the last byte moved, either way.
    last_activity: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayEnd {
    #[error("idle for {0:?}")]
    Idle(Duration),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Relays until both directions have ended, or nothing moved for `idle`.
pub async fn relay(
    client: &mut TcpStream,
    server: &mut TcpStream,
    idle: Duration,
    counters: &Counters,
) -> Result<(), RelayEnd> {
    let start = Instant::now();
    let (client_read, client_write) = client.split();
    let (server_read, server_write) = server.split();
    let both = async {
        tokio::try_join!(
            pump(client_read, server_write, &counters.up, counters, start),
            pump(server_read, client_write, &counters.down, counters, start),
        )
    };
    tokio::select! {
        result = both => match result {
            Ok((None, None)) => Ok(()),
            Ok((Some(e), _) | (None, Some(e))) | Err(e) => Err(RelayEnd::Io(e)),
        },
        () = idle_for(idle, counters, start) => Err(RelayEnd::Idle(idle)),
    }
}

/// Moves one direction until EOF. Returns `Ok(Some(e))` when writing failed
/// (only this direction ends) and `Err(e)` when reading failed (all ends).
async fn pump(
    from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    moved: &AtomicU64,
    counters: &Counters,
    start: Instant,
) -> io::Result<Option<io::Error>> {
    loop {
        from.as_ref().readable().await?;
        // Uninitialised capacity: try_read_buf fills it without zeroing first.
        let mut buffer = Vec::with_capacity(BUFFER_LEN);
        // Move everything that is ready, then give the buffer back before
        // waiting again.
        loop {
            buffer.clear();
            match from.as_ref().try_read_buf(&mut buffer) {
                Ok(0) => {
                    // The sender is done: pass the half-close on. An error
                    // here means the other side is gone already.
                    let _ = to.shutdown().await;
                    return Ok(None);
                }
                Ok(n) => {
                    if let Err(e) = to.write_all(&buffer[..n]).await {
                        return Ok(Some(e));
                    }
                    moved.fetch_add(n as u64, Ordering::Relaxed);
                    counters.last_activity.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Completes once no byte has moved for `idle`.
async fn idle_for(idle: Duration, counters: &Counters, start: Instant) {
    loop {
        let last = Duration::from_millis(counters.last_activity.load(Ordering::Relaxed));
        let deadline = start + last + idle;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}
