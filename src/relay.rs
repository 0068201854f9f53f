//! Relaying bytes both ways between client and server.
//!
//! Each direction waits for readiness without holding a buffer, so an idle
//! connection costs no user-space memory. Data moves with splice(2): from
//! the socket into a pipe and from the pipe into the other socket, inside
//! the kernel, never copied through this process. The pipe is made when a
//! direction first has data; if the kernel will not give one (out of file
//! descriptors), that direction copies through a buffer instead.
//!
//! When one side ends its sending (EOF), the other side's sending direction
//! is shut down and the rest keeps flowing: half-closed connections lose
//! nothing. A failed write ends only its own direction, since the side that
//! stopped reading may still be sending its last bytes (a server that
//! answers and closes); a failed read means that side is gone, and ends the
//! relay.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The most one splice moves: the default pipe capacity.
const CHUNK: usize = 64 * 1024;

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
    let mut pipe: Option<Pipe> = None;
    let mut no_pipe = false;
    loop {
        from.as_ref().readable().await?;
        if pipe.is_none() && !no_pipe {
            match Pipe::new() {
                Ok(p) => pipe = Some(p),
                Err(error) => {
                    tracing::debug!(%error, "no pipe for splice, copying instead");
                    no_pipe = true;
                }
            }
        }
        let step = match &mut pipe {
            Some(pipe) => splice_ready(&from, &to, pipe).await,
            None => copy_ready(&from, &mut to).await,
        };
        match step {
            Step::Moved(0) => {}
            Step::Moved(n) => {
                moved.fetch_add(n as u64, Ordering::Relaxed);
                counters.last_activity.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
            }
            Step::Eof => {
                // The sender is done: pass the half-close on. An error here
                // means the other side is gone already.
                let _ = to.shutdown().await;
                return Ok(None);
            }
            Step::WriteFailed(e) => return Ok(Some(e)),
            Step::ReadFailed(e) => return Err(e),
        }
    }
}

enum Step {
    /// Bytes moved; more may follow once the source is readable again.
    Moved(usize),
    Eof,
    ReadFailed(io::Error),
    WriteFailed(io::Error),
}

/// Moves what is ready through the pipe. Returns after the source would
/// block, with the pipe empty again.
async fn splice_ready(from: &ReadHalf<'_>, to: &WriteHalf<'_>, pipe: &mut Pipe) -> Step {
    let source = from.as_ref();
    let sink = to.as_ref();
    let mut total = 0;
    loop {
        let filled =
            match source.try_io(Interest::READABLE, || splice(source.as_raw_fd(), pipe.write.as_raw_fd(), CHUNK)) {
                Ok(0) if total == 0 => return Step::Eof,
                // EOF after data: report the data now, the EOF on the next call.
                Ok(0) => return Step::Moved(total),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Moved(total),
                Err(e) => return Step::ReadFailed(e),
            };
        let mut left = filled;
        while left > 0 {
            match sink.try_io(Interest::WRITABLE, || splice(pipe.read.as_raw_fd(), sink.as_raw_fd(), left)) {
                Ok(n) => left -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(e) = sink.writable().await {
                        return Step::WriteFailed(e);
                    }
                }
                Err(e) => return Step::WriteFailed(e),
            }
        }
        total += filled;
    }
}

/// The same with a buffer that exists only while data is moving.
async fn copy_ready(from: &ReadHalf<'_>, to: &mut WriteHalf<'_>) -> Step {
    // Uninitialised capacity: try_read_buf fills it without zeroing first.
    let mut buffer = Vec::with_capacity(CHUNK);
    let mut total = 0;
    loop {
        buffer.clear();
        match from.as_ref().try_read_buf(&mut buffer) {
            Ok(0) if total == 0 => return Step::Eof,
            Ok(0) => return Step::Moved(total),
            Ok(n) => {
                if let Err(e) = to.write_all(&buffer[..n]).await {
                    return Step::WriteFailed(e);
                }
                total += n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Moved(total),
            Err(e) => return Step::ReadFailed(e),
        }
    }
}

/// A non-blocking pipe, the kernel-side buffer of one direction.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 writes two descriptors into the array it is given.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and are owned here only.
        Ok(unsafe { Pipe { read: OwnedFd::from_raw_fd(fds[0]), write: OwnedFd::from_raw_fd(fds[1]) } })
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: plain descriptors and null offsets (both ends are streams).
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
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
