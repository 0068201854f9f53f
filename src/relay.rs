//! Relaying bytes both ways between client and server.
//!
//! The relay is one small future that polls both sockets' readiness
//! directly: waiting costs no buffer, no pipe and no per-wait state, so an
//! idle connection is cheap. When a socket is readable, the burst is moved at
//! once, inside `poll`: with splice(2) from the socket into a pipe and from
//! the pipe into the other socket, in the kernel, never copied through this
//! process. A pipe is borrowed from a shared pool and given back empty; if
//! none can be had (out of file descriptors), the burst is copied through a
//! stack buffer instead. Bytes the other side cannot take yet stay in the
//! pipe (or a small buffer) until it is writable.
//!
//! When one side ends its sending (EOF), the other side's sending direction
//! is shut down and the rest keeps flowing: half-closed connections lose
//! nothing. A failed write ends only its own direction, since the side that
//! stopped reading may still be sending its last bytes (a server that
//! answers and closes); a failed read means that side is gone, and ends the
//! relay.

use std::future::{poll_fn, Future};
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The most one splice or read moves: the default pipe capacity.
const CHUNK: usize = 64 * 1024;
/// Bursts one direction moves before letting other tasks run.
const BURSTS_PER_POLL: usize = 16;

/// Bytes moved each way, readable while the relay runs and after it stops.
#[derive(Debug, Default)]
pub struct Counters {
    /// Client to server.
    pub up: AtomicU64,
    /// Server to client.
    pub down: AtomicU64,
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
    let (client, server): (&TcpStream, &TcpStream) = (client, server);
    let mut up = Direction::default();
    let mut down = Direction::default();
    let mut last_activity = Instant::now();
    let timer = tokio::time::sleep(idle);
    tokio::pin!(timer);
    poll_fn(|cx| {
        let mut moved = false;
        for (direction, from, to, count) in
            [(&mut up, client, server, &counters.up), (&mut down, server, client, &counters.down)]
        {
            if direction.end.is_none() {
                match direction.poll_move(cx, from, to, count) {
                    Progress::Moved => moved = true,
                    Progress::Waiting => {}
                    Progress::Ended(end) => direction.end = Some(end),
                    Progress::ReadFailed(e) => return Poll::Ready(Err(RelayEnd::Io(e))),
                }
            }
        }
        match (&mut up.end, &mut down.end) {
            (Some(a), Some(b)) => return Poll::Ready(a.take().or(b.take()).map_or(Ok(()), |e| Err(RelayEnd::Io(e)))),
            _ if moved => last_activity = Instant::now(),
            _ => {}
        }
        // The timer is moved forward only when it fires, not at every burst.
        while timer.as_mut().poll(cx).is_ready() {
            if last_activity.elapsed() >= idle {
                return Poll::Ready(Err(RelayEnd::Idle(idle)));
            }
            timer.as_mut().reset(last_activity + idle);
        }
        Poll::Pending
    })
    .await
}

/// One direction: bytes read from one socket and not yet written to the other.
#[derive(Default)]
struct Direction {
    held: Held,
    /// `Some` once this direction is over: `None` inside after EOF, the
    /// error after a failed write.
    end: Option<Option<io::Error>>,
}

#[derive(Default)]
enum Held {
    #[default]
    Nothing,
    Pipe(Pipe, usize),
    Bytes(Vec<u8>),
}

enum Progress {
    Moved,
    Waiting,
    Ended(Option<io::Error>),
    ReadFailed(io::Error),
}

impl Direction {
    /// Moves what it can, adding what it reads to `count` as it goes (an
    /// EOF right after a burst must not lose the burst's count).
    fn poll_move(&mut self, cx: &mut Context<'_>, from: &TcpStream, to: &TcpStream, count: &AtomicU64) -> Progress {
        let mut total = 0;
        for _ in 0..BURSTS_PER_POLL {
            // First hand over what is held; only then read more.
            match self.poll_flush(cx, to) {
                Poll::Pending => return progress(total),
                Poll::Ready(Err(e)) => return Progress::Ended(Some(e)),
                Poll::Ready(Ok(())) => {}
            }
            match from.poll_read_ready(cx) {
                Poll::Pending => return progress(total),
                Poll::Ready(Err(e)) => return Progress::ReadFailed(e),
                Poll::Ready(Ok(())) => {}
            }
            match self.read(from) {
                Ok(0) => {
                    // The sender is done: pass the half-close on. An error
                    // here means the other side is gone already.
                    let _ = socket2::SockRef::from(to).shutdown(Shutdown::Write);
                    return Progress::Ended(None);
                }
                Ok(n) => {
                    count.fetch_add(n as u64, Ordering::Relaxed);
                    total += n;
                }
                // Readiness is cleared; the next poll_read_ready registers.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Progress::ReadFailed(e),
            }
        }
        // More may be ready: let other tasks run, then come back.
        cx.waker().wake_by_ref();
        progress(total)
    }

    /// Reads one burst into a pooled pipe, or into a buffer without one.
    fn read(&mut self, from: &TcpStream) -> io::Result<usize> {
        match Pipe::borrow() {
            Ok(pipe) => {
                match from.try_io(Interest::READABLE, || splice(from.as_raw_fd(), pipe.write.as_raw_fd(), CHUNK)) {
                    Ok(n) if n > 0 => {
                        self.held = Held::Pipe(pipe, n);
                        Ok(n)
                    }
                    other => {
                        pipe.give_back();
                        other
                    }
                }
            }
            Err(error) => {
                tracing::debug!(%error, "no pipe for splice, copying instead");
                let mut buffer = [0u8; 16 * 1024];
                let n = from.try_read(&mut buffer)?;
                self.held = Held::Bytes(buffer[..n].to_vec());
                Ok(n)
            }
        }
    }

    /// Writes out what is held; `Ready(Ok)` once nothing is.
    fn poll_flush(&mut self, cx: &mut Context<'_>, to: &TcpStream) -> Poll<io::Result<()>> {
        loop {
            let result = match &mut self.held {
                Held::Nothing => return Poll::Ready(Ok(())),
                Held::Pipe(_, 0) => {
                    if let Held::Pipe(pipe, _) = std::mem::take(&mut self.held) {
                        // Only an empty pipe may serve another connection.
                        pipe.give_back();
                    }
                    continue;
                }
                Held::Bytes(bytes) if bytes.is_empty() => {
                    self.held = Held::Nothing;
                    continue;
                }
                Held::Pipe(pipe, left) => to
                    .try_io(Interest::WRITABLE, || splice(pipe.read.as_raw_fd(), to.as_raw_fd(), *left))
                    .map(|n| *left -= n),
                Held::Bytes(bytes) => to.try_write(bytes).map(|n| {
                    bytes.drain(..n);
                }),
            };
            match result {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => match to.poll_write_ready(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {}
                },
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

fn progress(moved: usize) -> Progress {
    if moved > 0 {
        Progress::Moved
    } else {
        Progress::Waiting
    }
}

/// A non-blocking pipe: the kernel-side buffer of a burst.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

/// Empty pipes ready for the next burst. Bounded, so a moment with many
/// busy connections does not leave descriptors open for ever after.
static POOL: std::sync::Mutex<Vec<Pipe>> = std::sync::Mutex::new(Vec::new());
const POOL_MAX: usize = 64;

impl Pipe {
    fn borrow() -> io::Result<Pipe> {
        let pooled = POOL.lock().unwrap_or_else(|e| e.into_inner()).pop();
        pooled.map_or_else(Pipe::new, Ok)
    }

    fn give_back(self) {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < POOL_MAX {
            pool.push(self);
        }
    }

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
