//! Relaying bytes both ways between client and server.
//!
//! The relay is one small future that polls both sockets' readiness
//! directly: waiting costs no buffer, no pipe and no per-wait state, so an
//! idle connection is cheap. When a socket is readable, the burst is moved at
//! once, inside `poll`. Its first 16 KiB go through a stack buffer (one read,
//! one write: enough for every handshake record); a burst larger than that
//! is bulk, and the rest moves with splice(2) from the socket into a pipe and
//! from the pipe into the other socket, in the kernel, never copied through
//! this process. A pipe is borrowed from a shared pool and given back empty.
//! Bytes the other side cannot take yet stay in the pipe (or a small buffer)
//! until it is writable.
//!
//! When one side ends its sending (EOF), the other side's sending direction
//! is shut down and the rest keeps flowing: half-closed connections lose
//! nothing. A failed write ends only its own direction, since the side that
//! stopped reading may still be sending its last bytes (a server that
//! answers and closes); a failed read means that side is gone (it reset),
//! and ends the relay with a reset of the other side: an abort is passed on
//! as an abort, never as a clean end of stream.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// The most one splice moves: the default pipe capacity.
pub(crate) const CHUNK: usize = 64 * 1024;
/// The stack buffer a burst is first read into; a burst that fills it is bulk.
pub(crate) const SMALL: usize = 16 * 1024;
/// Bursts one direction moves before letting other tasks run.
pub(crate) const BURSTS_PER_POLL: usize = 16;

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

pin_project_lite::pin_project! {
    /// The relay of one connection: both directions and the idle timer, in
    /// one struct rather than an async fn, so that nothing is stored twice.
    pub struct Relay<'a> {
        up: Direction<'a>,
        down: Direction<'a>,
        counters: &'a Counters,
        idle: Duration,
        last_activity: Instant,
        // The first failed write; the relay still finishes the other way.
        write_error: Option<io::Error>,
        #[pin]
        timer: Sleep,
    }
}

/// Relays until both directions have ended, or nothing moved for `idle`.
pub fn relay<'a>(
    client: &'a mut TcpStream,
    server: &'a mut TcpStream,
    idle: Duration,
    counters: &'a Counters,
) -> Relay<'a> {
    new_relay(client, server, idle, counters, false)
}

/// The relay after one forwarded HTTP request: the server's answer goes to
/// the client, and ends the relay when it ends; what the client sends is
/// read and dropped (a second request never reaches the server), though its
/// end of sending is still passed on.
pub fn relay_answer<'a>(
    client: &'a mut TcpStream,
    server: &'a mut TcpStream,
    idle: Duration,
    counters: &'a Counters,
) -> Relay<'a> {
    new_relay(client, server, idle, counters, true)
}

fn new_relay<'a>(
    client: &'a mut TcpStream,
    server: &'a mut TcpStream,
    idle: Duration,
    counters: &'a Counters,
    drop_client_bytes: bool,
) -> Relay<'a> {
    let (client_read, client_write) = client.split();
    let (server_read, server_write) = server.split();
    let mut up = Direction::new(client_read, server_write);
    up.discard = drop_client_bytes;
    Relay {
        up,
        down: Direction::new(server_read, client_write),
        counters,
        idle,
        last_activity: Instant::now(),
        write_error: None,
        timer: tokio::time::sleep(idle),
    }
}

impl Future for Relay<'_> {
    type Output = Result<(), RelayEnd>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let mut moved = false;
        for up in [true, false] {
            let (direction, other, count) = if up {
                (&mut *this.up, &*this.down, &this.counters.up)
            } else {
                (&mut *this.down, &*this.up, &this.counters.down)
            };
            if direction.done {
                continue;
            }
            match direction.poll_move(cx, count, other.done) {
                Progress::Moved => moved = true,
                Progress::Waiting => {}
                Progress::Ended(error) => {
                    direction.done = true;
                    if this.write_error.is_none() {
                        *this.write_error = error;
                    }
                }
                Progress::ReadFailed(e) => {
                    // That side aborted (a reset): abort the other side too,
                    // so that a truncated transfer never looks complete.
                    // With a zero linger, closing the socket sends RST, not FIN.
                    let _ = socket2::SockRef::from(direction.to.as_ref()).set_linger(Some(Duration::ZERO));
                    return Poll::Ready(Err(RelayEnd::Io(e)));
                }
            }
        }
        if this.down.done && (this.up.done || this.up.discard) {
            return Poll::Ready(this.write_error.take().map_or(Ok(()), |e| Err(RelayEnd::Io(e))));
        }
        if moved {
            *this.last_activity = Instant::now();
        }
        // The timer is moved forward only when it fires, not at every burst.
        while this.timer.as_mut().poll(cx).is_ready() {
            if this.last_activity.elapsed() >= *this.idle {
                return Poll::Ready(Err(RelayEnd::Idle(*this.idle)));
            }
            let next = *this.last_activity + *this.idle;
            this.timer.as_mut().reset(next);
        }
        Poll::Pending
    }
}

/// One direction: bytes read from one socket and not yet written to the other.
struct Direction<'a> {
    from: ReadHalf<'a>,
    to: WriteHalf<'a>,
    held: Held,
    done: bool,
    /// Read and drop (see `relay_answer`).
    discard: bool,
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
    /// The direction is over: after EOF (`None`) or a failed write.
    Ended(Option<io::Error>),
    ReadFailed(io::Error),
}

impl<'a> Direction<'a> {
    fn new(from: ReadHalf<'a>, to: WriteHalf<'a>) -> Self {
        Direction { from, to, held: Held::Nothing, done: false, discard: false }
    }

    /// Moves what it can, adding what it reads to `count` as it goes (an
    /// EOF right after a burst must not lose the burst's count). `last`:
    /// the other direction is over, so this one ending ends the relay.
    ///
    /// A burst is first read into a stack buffer through tokio's read path,
    /// which takes a short read as "drained" and so needs no extra read to
    /// learn that the socket would block: the small records of a handshake
    /// cost one read and one write each. A burst that fills the buffer is
    /// bulk, and the rest of it goes through a pipe with splice.
    fn poll_move(&mut self, cx: &mut Context<'_>, count: &AtomicU64, last: bool) -> Progress {
        let mut total = 0;
        for _ in 0..BURSTS_PER_POLL {
            // First hand over what is held; only then read more.
            match self.poll_flush(cx) {
                Poll::Pending => return progress(total),
                Poll::Ready(Err(e)) => return Progress::Ended(Some(e)),
                Poll::Ready(Ok(())) => {}
            }
            let mut stack = [MaybeUninit::<u8>::uninit(); SMALL];
            let mut buf = ReadBuf::uninit(&mut stack);
            match Pin::new(&mut self.from).poll_read(cx, &mut buf) {
                Poll::Pending => return progress(total),
                Poll::Ready(Err(e)) => return Progress::ReadFailed(e),
                Poll::Ready(Ok(())) => {}
            }
            let read = buf.filled();
            if read.is_empty() {
                // The sender is done: pass the half-close on. An error here
                // means the other side is gone already. When this was the
                // last direction, both sockets are closed right away and the
                // close sends the FIN: a shutdown first would be a system
                // call per connection for nothing.
                if !last {
                    let _ = socket2::SockRef::from(self.to.as_ref()).shutdown(Shutdown::Write);
                }
                return Progress::Ended(None);
            }
            if self.discard {
                continue;
            }
            count.fetch_add(read.len() as u64, Ordering::Relaxed);
            total += read.len();
            match Pin::new(&mut self.to).poll_write(cx, read) {
                Poll::Ready(Ok(n)) if n < read.len() => self.held = Held::Bytes(read[n..].to_vec()),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Progress::Ended(Some(e)),
                Poll::Pending => self.held = Held::Bytes(read.to_vec()),
            }
            if read.len() == SMALL {
                match self.splice_burst(cx, count, &mut total) {
                    Ok(()) => {}
                    Err(Progress::Waiting) => return progress(total),
                    Err(end) => return end,
                }
            }
        }
        // More may be ready: let other tasks run, then come back.
        cx.waker().wake_by_ref();
        progress(total)
    }

    /// The rest of a bulk burst, through a pooled pipe (or the stack buffer
    /// when no pipe can be had). `Err(Progress::Waiting)` when the writer is
    /// full; other `Err`s end as they say.
    fn splice_burst(&mut self, cx: &mut Context<'_>, count: &AtomicU64, total: &mut usize) -> Result<(), Progress> {
        loop {
            match self.poll_flush(cx) {
                Poll::Pending => return Err(Progress::Waiting),
                Poll::Ready(Err(e)) => return Err(Progress::Ended(Some(e))),
                Poll::Ready(Ok(())) => {}
            }
            let Ok(pipe) = Pipe::borrow() else {
                // No pipe: the next round reads into the stack buffer.
                return Ok(());
            };
            let from = self.from.as_ref();
            match from.try_io(Interest::READABLE, || splice(from.as_raw_fd(), pipe.write.as_raw_fd(), CHUNK)) {
                Ok(0) => {
                    pipe.give_back();
                    // EOF: the next poll_read sees it too and ends the direction.
                    return Ok(());
                }
                Ok(n) => {
                    count.fetch_add(n as u64, Ordering::Relaxed);
                    *total += n;
                    self.held = Held::Pipe(pipe, n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    pipe.give_back();
                    return Ok(());
                }
                Err(e) => return Err(Progress::ReadFailed(e)),
            }
        }
    }

    /// Writes out what is held; `Ready(Ok)` once nothing is.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match &mut self.held {
                Held::Nothing => return Poll::Ready(Ok(())),
                Held::Pipe(_, 0) => {
                    if let Held::Pipe(pipe, _) = std::mem::take(&mut self.held) {
                        // Only an empty pipe may serve another connection.
                        pipe.give_back();
                    }
                }
                Held::Bytes(bytes) if bytes.is_empty() => self.held = Held::Nothing,
                Held::Pipe(pipe, left) => {
                    let to = self.to.as_ref();
                    match to.try_io(Interest::WRITABLE, || splice(pipe.read.as_raw_fd(), to.as_raw_fd(), *left)) {
                        Ok(n) => *left -= n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => match to.poll_write_ready(cx) {
                            Poll::Pending => return Poll::Pending,
                            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                            Poll::Ready(Ok(())) => {}
                        },
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
                Held::Bytes(bytes) => match Pin::new(&mut self.to).poll_write(cx, bytes) {
                    Poll::Ready(Ok(n)) => {
                        bytes.drain(..n);
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                },
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
pub(crate) struct Pipe {
    pub(crate) read: OwnedFd,
    pub(crate) write: OwnedFd,
}

/// Empty pipes ready for the next burst. Bounded, so a moment with many
/// busy connections does not leave descriptors open for ever after.
static POOL: std::sync::Mutex<Vec<Pipe>> = std::sync::Mutex::new(Vec::new());
const POOL_MAX: usize = 64;

impl Pipe {
    pub(crate) fn borrow() -> io::Result<Pipe> {
        let pooled = POOL.lock().unwrap_or_else(|e| e.into_inner()).pop();
        pooled.map_or_else(Pipe::new, Ok)
    }

    pub(crate) fn give_back(self) {
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

pub(crate) fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
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
