//! The connection engine: a TLS listener's connections, from accept to
//! close, on an epoll loop of its own (one thread per CPU) instead of a tokio
//! task each. A connection here is a slab entry and a small state machine,
//! with no task, waker or timer-wheel entry of its own: that is what a new
//! connection cost on tokio beyond the work itself
//! (bench/results/ISSUE-12-NOTES.md).
//!
//! The data path is the same as on tokio, step by step, with the same parts:
//! accept and [`Admission`]; a PROXY header from a trusted load balancer
//! ([`proxy_header::parse`]); the ClientHello ([`hello::parse`]); the route
//! ([`Config::route_for`]); a non-blocking connect to the backend's servers
//! in the order [`Backend::first_server`] gives; the PROXY header and the
//! hello in one write; the relay, with splice for bulk (the pipes of
//! [`crate::relay`]), half-close passed on, an abort passed on as an abort.
//! A backend reached through the tunnel or named by DNS is handed to tokio
//! after the route (`server::forwarded`).
//!
//! Timeouts of one kind have one length, so a deadline set is enough: one
//! entry per connection, moved only when it fires (an idle relay's deadline
//! is checked lazily), and the clock is read once per turn of the loop.

use crate::backend::{Backend, ConnectError, ServerAddress, ServerSlot};
use crate::config::{Config, Route};
use crate::limits::{Evict, PendingPool};
use crate::names::Requested;
use crate::outcome::{Limit, Refusal};
use crate::relay::{Pipe, RelayEnd, BURSTS_PER_POLL, CHUNK, SMALL};
use crate::scheduling::Scheduling;
use crate::server::{Admission, Ended, Shared};
use crate::{hello, inbound, proxy_header, server, tls};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::task::task_tracker::TaskTrackerToken;

const WAKER: Token = Token(usize::MAX);
/// Listener tokens count down from here; a connection's two sockets are
/// `2 * slot` (client) and `2 * slot + 1` (server).
const LISTENERS: usize = usize::MAX - 1;

/// The engines of a server, one per CPU, sharing its TLS listeners.
pub(crate) struct Engines {
    inboxes: Vec<Arc<Inbox>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Each listener's socket; the engines poll copies of it.
    listening: Vec<(SocketAddr, Arc<std::net::TcpListener>)>,
}

impl Engines {
    pub(crate) fn start(count: usize, shared: &Arc<Shared>, config: &Arc<Config>) -> io::Result<Engines> {
        let runtime = tokio::runtime::Handle::current();
        let mut engines = Engines { inboxes: Vec::new(), threads: Vec::new(), listening: Vec::new() };
        for n in 0..count.max(1) {
            let poll = Poll::new()?;
            let inbox = Arc::new(Inbox { messages: Mutex::default(), waker: Waker::new(poll.registry(), WAKER)? });
            let engine = Engine {
                poll,
                inbox: inbox.clone(),
                shared: shared.clone(),
                config: config.clone(),
                runtime: runtime.clone(),
                listeners: Vec::new(),
                conns: Vec::new(),
                free: Vec::new(),
                timers: BTreeSet::new(),
                again: Vec::new(),
                now: Instant::now(),
                paused_until: None,
                backoff: Duration::from_millis(5),
                buf: vec![0; SMALL].into_boxed_slice(),
                generations: 0,
                // Read here: a thread starts on the policy of the one that spawns it.
                scheduling: Scheduling::new(Instant::now()),
            };
            let thread = std::thread::Builder::new().name(format!("engine-{n}")).spawn(move || engine.run())?;
            engines.inboxes.push(inbox);
            engines.threads.push(thread);
        }
        Ok(engines)
    }

    fn send_all(&self, message: impl Fn() -> Message) {
        for inbox in &self.inboxes {
            inbox.send(message());
        }
    }

    /// New connections get `config` from now on.
    pub(crate) fn configure(&self, config: &Arc<Config>) {
        self.send_all(|| Message::Config(config.clone()));
    }

    pub(crate) fn listens(&self, address: SocketAddr) -> bool {
        self.listening.iter().any(|(a, _)| *a == address)
    }

    /// Serves the TLS listener `socket` (non-blocking) from now on.
    pub(crate) fn listen(&mut self, address: SocketAddr, socket: std::net::TcpListener) {
        let socket = Arc::new(socket);
        // Each listener has its own pool, as on tokio, shared by the engines.
        let pool = Arc::new(PendingPool::default());
        self.send_all(|| Message::Listen(address, socket.clone(), pool.clone()));
        self.listening.push((address, socket));
    }

    /// A copy of the socket of listener `address`, for tokio to serve it.
    pub(crate) fn socket(&self, address: SocketAddr) -> io::Result<std::net::TcpListener> {
        let (_, socket) = self.listening.iter().find(|(a, _)| *a == address).ok_or(io::ErrorKind::NotFound)?;
        socket.try_clone()
    }

    /// Stops serving `address`. Its socket closes once every engine has let
    /// go of its copy, unless tokio has one (`socket`).
    pub(crate) fn unlisten(&mut self, address: SocketAddr) {
        if let Some(at) = self.listening.iter().position(|(a, _)| *a == address) {
            self.listening.swap_remove(at);
            self.send_all(|| Message::Unlisten(address));
        }
    }

    pub(crate) fn addresses(&self) -> Vec<SocketAddr> {
        self.listening.iter().map(|(a, _)| *a).collect()
    }

    /// The drain deadline passed: every connection closes now.
    pub(crate) fn cut(&self) {
        self.send_all(|| Message::Cut);
    }

    /// Stops the engines and waits for them; their connections must be
    /// over (drained or cut).
    pub(crate) fn quit(mut self) {
        self.send_all(|| Message::Quit);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Engines {
    /// A server that ends early (an error) stops its engines too.
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.send_all(|| Message::Quit);
        }
    }
}

/// What an engine is asked, from tokio's side or from another engine.
enum Message {
    Config(Arc<Config>),
    Listen(SocketAddr, Arc<std::net::TcpListener>, Arc<PendingPool<Evicted>>),
    Unlisten(SocketAddr),
    Evict(Key),
    Cut,
    Quit,
}

struct Inbox {
    messages: Mutex<Vec<Message>>,
    waker: Waker,
}

impl Inbox {
    fn send(&self, message: Message) {
        self.messages.lock().unwrap_or_else(|e| e.into_inner()).push(message);
        if let Err(error) = self.waker.wake() {
            tracing::error!(%error, "cannot wake a connection engine");
        }
    }
}

/// A slab slot and the generation of the connection in it: a message for a
/// connection that is gone never reaches the one that took its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    slot: usize,
    generation: u64,
}

/// How the pending pool closes one of an engine's connections.
pub(crate) struct Evicted {
    inbox: Arc<Inbox>,
    key: Key,
}

impl Evict for Evicted {
    fn evict(self) {
        self.inbox.send(Message::Evict(self.key));
    }
}

struct EngineListener {
    address: SocketAddr,
    socket: TcpListener,
    pool: Arc<PendingPool<Evicted>>,
    token: usize,
}

/// Polls a listener: level-triggered, and with EPOLLEXCLUSIVE, since every
/// engine polls the same listening socket and one of them is enough to wake
/// for a connection (mio has neither option).
fn watch(poll: &Poll, listener: &EngineListener) -> io::Result<()> {
    let mut event =
        libc::epoll_event { events: (libc::EPOLLIN | libc::EPOLLEXCLUSIVE) as u32, u64: listener.token as u64 };
    // SAFETY: both descriptors are open; the event is read during the call only.
    let added =
        unsafe { libc::epoll_ctl(poll.as_raw_fd(), libc::EPOLL_CTL_ADD, listener.socket.as_raw_fd(), &mut event) };
    if added < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Stops polling a listener; it may not be polled (paused) already.
fn unwatch(poll: &Poll, listener: &EngineListener) {
    // SAFETY: both descriptors are open; DEL reads no event.
    unsafe {
        libc::epoll_ctl(poll.as_raw_fd(), libc::EPOLL_CTL_DEL, listener.socket.as_raw_fd(), std::ptr::null_mut());
    }
}

struct Engine {
    poll: Poll,
    inbox: Arc<Inbox>,
    shared: Arc<Shared>,
    config: Arc<Config>,
    runtime: tokio::runtime::Handle,
    listeners: Vec<Option<EngineListener>>,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    /// Every connection's next deadline.
    timers: BTreeSet<(Instant, Key)>,
    /// Connections that stopped moving bytes to let others run.
    again: Vec<Key>,
    /// Read once per turn of the loop.
    now: Instant,
    /// Accepting paused after an error (out of descriptors), until then.
    paused_until: Option<Instant>,
    backoff: Duration,
    /// Where a burst is read before it is written on.
    buf: Box<[u8]>,
    /// The last connection's generation (see `Key`).
    generations: u64,
    scheduling: Scheduling,
}

/// Readiness seen and not yet used up (epoll is edge-triggered). An end
/// of stream or an error is for good: once seen, the socket stays ready, or
/// an EOF that came with the last bytes would never be read.
///
/// A connected socket is taken as writable until a write would block, and
/// only then is epoll asked to report writability (`watching_write`):
/// epoll reports a socket registered for it at once, since it is writable,
/// which cost a turn of the loop per connection for nothing (measured:
/// bench/results/ISSUE-12-NOTES.md).
#[derive(Default, Clone, Copy)]
struct Ready {
    read: bool,
    write: bool,
    read_closed: bool,
    failed: bool,
    watching_write: bool,
}

impl Ready {
    /// A socket just connected: writable, and not yet watched for it.
    fn connected() -> Ready {
        Ready { write: true, ..Ready::default() }
    }

    /// A socket whose connect or first write has not finished: epoll says
    /// when it is writable.
    fn watched() -> Ready {
        Ready { watching_write: true, ..Ready::default() }
    }

    /// What epoll is asked to report for the socket.
    fn interest(&self) -> Interest {
        if self.watching_write {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        }
    }

    fn seen(&mut self, event: &mio::event::Event) {
        self.read_closed |= event.is_read_closed();
        self.failed |= event.is_error() || event.is_write_closed();
        self.read |= event.is_readable() || self.read_closed || self.failed;
        self.write |= event.is_writable() || self.failed;
    }

    /// A read took less than asked, or would block.
    fn drained(&mut self) {
        self.read = self.read_closed || self.failed;
    }

    /// A write took less than given, or would block.
    fn full(&mut self) {
        self.write = self.failed;
    }
}

struct Conn {
    generation: u64,
    client: TcpStream,
    client_ready: Ready,
    peer: SocketAddr,
    /// The client and the address it reached: the socket's, or a trusted
    /// load balancer's PROXY header's.
    addresses: (SocketAddr, SocketAddr),
    listener: usize,
    config: Arc<Config>,
    admission: Option<Admission<Evicted>>,
    started: Instant,
    deadline: Option<Instant>,
    step: Step,
    route: Option<Arc<Route>>,
    sni: Option<crate::names::HostName>,
    server: Option<Upstream>,
    moved: [u64; 2],
    _tracked: TaskTrackerToken,
}

struct Upstream {
    stream: TcpStream,
    ready: Ready,
    address: SocketAddr,
    /// Its place in the backend's `servers`.
    index: usize,
    _slot: ServerSlot,
}

enum Step {
    /// Reading a trusted load balancer's PROXY header, then the hello.
    Header(inbound::Received),
    Hello(inbound::Received),
    Connecting(Box<Connecting>),
    Relaying(Box<Relay>),
}

struct Connecting {
    /// What goes first to the server: the PROXY header and the bytes read.
    first: Vec<u8>,
    /// Of which the client's bytes.
    already_read: usize,
    start: usize,
    tried: usize,
    since: Instant,
    last: Option<(String, io::Error)>,
}

struct Relay {
    up: Direction,
    down: Direction,
    last_activity: Instant,
    write_error: Option<io::Error>,
}

#[derive(Default)]
struct Direction {
    held: Held,
    done: bool,
}

#[derive(Default)]
enum Held {
    #[default]
    Nothing,
    Bytes(Vec<u8>, usize),
    Pipe(Pipe, usize),
}

/// What a turn did to a connection.
enum Turn {
    Wait,
    /// Stopped with more to move, to let others run.
    Again,
    Done(Result<Ended, Refusal>),
    /// Given to tokio.
    HandedOver,
}

impl Engine {
    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let next = self.timers.first().map(|(at, _)| *at);
            let next = match (next, self.paused_until) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let timeout = if self.again.is_empty() {
                // Rounded up: a deadline is never found not yet passed.
                next.map(|at| at.saturating_duration_since(Instant::now()) + Duration::from_millis(1))
            } else {
                Some(Duration::ZERO)
            };
            if let Err(error) = self.poll.poll(&mut events, timeout) {
                if error.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(%error, "connection engine: poll failed");
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            self.now = Instant::now();
            let mut woken = false;
            for event in &events {
                let token = event.token().0;
                if token == WAKER.0 {
                    woken = true;
                } else if token > LISTENERS - self.listeners.len() && token <= LISTENERS {
                    self.accept(LISTENERS - token);
                } else {
                    let slot = token / 2;
                    let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else { continue };
                    let ready = if token % 2 == 0 {
                        &mut conn.client_ready
                    } else if let Some(server) = &mut conn.server {
                        &mut server.ready
                    } else {
                        continue;
                    };
                    ready.seen(event);
                    let key = Key { slot, generation: conn.generation };
                    self.drive(key);
                }
            }
            if woken && self.messages() {
                return;
            }
            self.expire();
            for key in std::mem::take(&mut self.again) {
                self.drive(key);
            }
            if let Err(error) = self.scheduling.turn(self.now, self.conns.len() - self.free.len()) {
                tracing::warn!(%error, "connection engine stays on its scheduling policy");
            }
            if self.paused_until.is_some_and(|until| until <= self.now) {
                self.paused_until = None;
                for listener in self.listeners.iter().flatten() {
                    if let Err(error) = watch(&self.poll, listener) {
                        tracing::error!(address = %listener.address, %error, "cannot accept again");
                    }
                }
            }
        }
    }

    /// Handles what the inbox holds; true when the engine must stop.
    fn messages(&mut self) -> bool {
        let messages = std::mem::take(&mut *self.inbox.messages.lock().unwrap_or_else(|e| e.into_inner()));
        for message in messages {
            match message {
                Message::Config(config) => self.config = config,
                Message::Listen(address, socket, pool) => {
                    if let Err(error) = self.add_listener(address, &socket, pool) {
                        tracing::error!(%address, %error, "connection engine cannot serve a listener");
                    }
                }
                Message::Unlisten(address) => {
                    for entry in &mut self.listeners {
                        if let Some(listener) = entry.take_if(|l| l.address == address) {
                            // Removed by hand: closing this copy would not
                            // remove it while other copies of the socket are
                            // open, and its connections would keep waking
                            // this engine instead of their new owner.
                            unwatch(&self.poll, &listener);
                        }
                    }
                }
                Message::Evict(key) => {
                    let pending = self.conn(key).is_some_and(|c| matches!(c.step, Step::Header(_) | Step::Hello(_)));
                    if pending {
                        self.close(key, Err(Refusal::Limit(Limit::PendingHandshakes)));
                    }
                }
                Message::Cut => {
                    let keys: Vec<Key> = self
                        .conns
                        .iter()
                        .enumerate()
                        .filter_map(|(slot, c)| c.as_ref().map(|c| Key { slot, generation: c.generation }))
                        .collect();
                    for key in keys {
                        self.close(key, Err(Refusal::ShuttingDown));
                    }
                }
                Message::Quit => return true,
            }
        }
        false
    }

    fn add_listener(
        &mut self,
        address: SocketAddr,
        socket: &std::net::TcpListener,
        pool: Arc<PendingPool<Evicted>>,
    ) -> io::Result<()> {
        let socket = TcpListener::from_std(socket.try_clone()?);
        let at = match self.listeners.iter().position(Option::is_none) {
            Some(at) => at,
            None => {
                self.listeners.push(None);
                self.listeners.len() - 1
            }
        };
        let listener = EngineListener { address, socket, pool, token: LISTENERS - at };
        if self.paused_until.is_none() {
            watch(&self.poll, &listener)?;
        }
        self.listeners[at] = Some(listener);
        Ok(())
    }

    /// Accepts one connection of listener `at`, which epoll said has one
    /// queued. One, as nginx does by default: the listener is polled
    /// level-triggered, so the next turn reports it again if more wait, and
    /// no accept ends in EAGAIN (measured: bench/results/ISSUE-12-NOTES.md).
    fn accept(&mut self, at: usize) {
        let Some(listener) = self.listeners.get(at).and_then(Option::as_ref) else { return };
        match listener.socket.accept() {
            Ok((stream, peer)) => {
                self.backoff = Duration::from_millis(5);
                self.scheduling.accepted();
                let (address, pool) = (listener.address, listener.pool.clone());
                self.start(stream, peer, address, &pool);
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
            Err(error) => {
                // Out of descriptors, or a reset in the queue: stop polling
                // the listeners for a while (level-triggered, they would wake
                // this loop at once), then go on; never die.
                tracing::warn!(address = %listener.address, %error, "accept failed");
                for listener in self.listeners.iter().flatten() {
                    unwatch(&self.poll, listener);
                }
                self.paused_until = Some(self.now + self.backoff);
                self.backoff = (self.backoff * 2).min(Duration::from_secs(1));
            }
        }
    }

    /// A new connection: admission, then the first read.
    fn start(&mut self, stream: TcpStream, peer: SocketAddr, address: SocketAddr, pool: &Arc<PendingPool<Evicted>>) {
        let config = self.config.clone();
        let Some(listener) = config.listeners.iter().position(|l| l.address == address) else {
            return;
        };
        let slot = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        self.generations += 1;
        let generation = self.generations;
        let key = Key { slot, generation };
        let settings = &config.listeners[listener];
        let trusted = inbound::is_trusted_proxy(settings, peer);
        let evict = Evicted { inbox: self.inbox.clone(), key };
        let admission = Admission::new(&self.shared, pool, evict, &config, settings, peer);
        let local = inbound::asked_address(settings, || stream.local_addr()).unwrap_or(settings.address);
        let budget = config.limits.max_buffered_bytes;
        let deadline = self.now + config.timeouts.client_hello;
        let mut client = stream;
        let client_ready = Ready::connected();
        let registered = self.poll.registry().register(&mut client, Token(slot * 2), client_ready.interest());
        let conn = Conn {
            generation,
            client,
            client_ready,
            peer,
            addresses: (peer, local),
            listener,
            config: config.clone(),
            admission: None,
            started: self.now,
            deadline: None,
            step: if trusted {
                Step::Header(inbound::Received::new(budget))
            } else {
                Step::Hello(inbound::Received::new(budget))
            },
            route: None,
            sni: None,
            server: None,
            moved: [0, 0],
            _tracked: self.shared.connections.token(),
        };
        self.conns[slot] = Some(conn);
        match (admission, registered) {
            (Err(limit), _) => self.close(key, Err(Refusal::Limit(limit))),
            (_, Err(e)) => self.close(key, Err(Refusal::Io(e))),
            (Ok(admission), Ok(())) => {
                let conn = self.conns[slot].as_mut().expect("just stored");
                conn.admission = Some(admission);
                // Not read now: epoll reports a hello already in when the
                // socket is registered, and one not yet in would cost a read
                // for nothing (measured: bench/results/ISSUE-12-NOTES.md).
                self.set_deadline(key, Some(deadline));
            }
        }
    }

    fn conn(&mut self, key: Key) -> Option<&mut Conn> {
        self.conns.get_mut(key.slot)?.as_mut().filter(|c| c.generation == key.generation)
    }

    fn set_deadline(&mut self, key: Key, deadline: Option<Instant>) {
        let Some(conn) = self.conns.get_mut(key.slot).and_then(Option::as_mut) else { return };
        if let Some(old) = conn.deadline.take() {
            self.timers.remove(&(old, key));
        }
        conn.deadline = deadline;
        if let Some(at) = deadline {
            self.timers.insert((at, key));
        }
    }

    /// Deadlines that passed: a pending connection's hello timeout, a
    /// connect's timeout, an idle relay.
    fn expire(&mut self) {
        while let Some(&(at, key)) = self.timers.first() {
            if at > self.now {
                return;
            }
            self.timers.remove(&(at, key));
            let now = self.now;
            let Some(conn) = self.conn(key) else { continue };
            conn.deadline = None;
            match &mut conn.step {
                Step::Header(_) | Step::Hello(_) => {
                    let waited = conn.config.timeouts.client_hello;
                    self.close(key, Err(Refusal::Timeout(waited)));
                }
                Step::Connecting(_) => {
                    let address = conn.server.as_ref().map_or_else(String::new, |s| s.address.to_string());
                    let error = io::Error::new(io::ErrorKind::TimedOut, format!("connect to {address} timed out"));
                    self.connect_failed(key, error);
                }
                Step::Relaying(relay) => {
                    let idle = conn.config.timeouts.idle;
                    let next = relay.last_activity + idle;
                    if next <= now {
                        self.close(key, Ok(Ended::Relayed(Some(RelayEnd::Idle(idle)))));
                    } else {
                        self.set_deadline(key, Some(next));
                    }
                }
            }
        }
    }

    /// Moves a connection on as far as its sockets allow.
    fn drive(&mut self, key: Key) {
        let turn = loop {
            let conn = self.conns.get_mut(key.slot).and_then(Option::as_mut);
            let Some(conn) = conn.filter(|c| c.generation == key.generation) else { return };
            let turn = match &mut conn.step {
                Step::Header(_) | Step::Hello(_) => match read_client(conn) {
                    Ok(None) => Turn::Wait,
                    Ok(Some(hello)) => match self.routed(key, hello) {
                        Ok(Some(turn)) => turn,
                        Ok(None) => continue,
                        Err(refusal) => Turn::Done(Err(refusal)),
                    },
                    Err(refusal) => Turn::Done(Err(refusal)),
                },
                Step::Connecting(_) => match check_connect(conn) {
                    Ok(false) => Turn::Wait,
                    Ok(true) => {
                        self.connected(key, 0);
                        continue;
                    }
                    Err(error) => {
                        self.connect_failed(key, error);
                        continue;
                    }
                },
                Step::Relaying(_) => relay(conn, &mut self.buf, self.now),
            };
            break turn;
        };
        let watched = match turn {
            Turn::HandedOver => return,
            Turn::Wait => self.watch_writes(key),
            Turn::Again => {
                self.again.push(key);
                self.watch_writes(key)
            }
            Turn::Done(result) => return self.close(key, result),
        };
        if let Err(e) = watched {
            self.close(key, Err(Refusal::Io(e)));
        }
    }

    /// Asks epoll to report writability of a socket whose write would block.
    fn watch_writes(&mut self, key: Key) -> io::Result<()> {
        let registry = self.poll.registry();
        let conn = self.conns.get_mut(key.slot).and_then(Option::as_mut);
        let Some(conn) = conn.filter(|c| c.generation == key.generation) else { return Ok(()) };
        if !conn.client_ready.write && !conn.client_ready.watching_write {
            conn.client_ready.watching_write = true;
            registry.reregister(&mut conn.client, Token(key.slot * 2), conn.client_ready.interest())?;
        }
        if let Some(server) = conn.server.as_mut().filter(|s| !s.ready.write && !s.ready.watching_write) {
            server.ready.watching_write = true;
            registry.reregister(&mut server.stream, Token(key.slot * 2 + 1), server.ready.interest())?;
        }
        Ok(())
    }

    /// The hello is in: route it. `Ok(None)`: go on with the connection's
    /// next step; `Ok(Some)`: it is over or handed over.
    fn routed(&mut self, key: Key, hello: hello::ClientHello) -> Result<Option<Turn>, Refusal> {
        let now = self.now;
        let metrics = self.shared.metrics.clone();
        let conn = self.conn(key).expect("driven");
        if let Some(admission) = &conn.admission {
            admission.handshake_done();
        }
        metrics.client_hello_seconds.observe(now.duration_since(conn.started).as_secs_f64());
        let name = match hello.server_name {
            Requested::Host(name) => name,
            Requested::NoName => return Err(refuse(conn, Refusal::NoName)),
        };
        let Some(route) = conn.config.route_for(&name).cloned() else {
            let refusal = Refusal::UnknownName(name.to_string());
            conn.sni = Some(name);
            return Err(refuse(conn, refusal));
        };
        conn.sni = Some(name);
        let backend = route.backend.clone();
        conn.route = Some(route);
        let direct =
            backend.tunnel.is_none() && backend.servers.iter().all(|s| matches!(s.address, ServerAddress::Ip(_)));
        if !direct {
            self.hand_over(key);
            return Ok(Some(Turn::HandedOver));
        }
        let start = backend.first_server(conn.addresses.0.ip())?;
        let Step::Hello(received) = &mut conn.step else { unreachable!("routed after the hello only") };
        // The bytes go on; their charge on the buffer budget ends with the hello.
        let (client, local) = conn.addresses;
        let first = proxy_header::encode_before(backend.proxy_protocol, client, local, &received.bytes);
        let already_read = received.bytes.len();
        conn.step =
            Step::Connecting(Box::new(Connecting { first, already_read, start, tried: 0, since: now, last: None }));
        self.set_deadline(key, None);
        if let Some(written) = self.connect_next(key)? {
            self.connected(key, written);
        }
        Ok(None)
    }

    /// Starts a connect to the next server that is up and has a free slot.
    /// `Ok(Some(n))`: connected already, and the first `n` bytes are sent.
    fn connect_next(&mut self, key: Key) -> Result<Option<usize>, Refusal> {
        let now = self.now;
        let registry = self.poll.registry();
        let conn = self.conns[key.slot].as_mut().expect("driven");
        let backend: &Backend = &conn.route.as_ref().expect("routed").backend;
        let Step::Connecting(connecting) = &mut conn.step else { unreachable!("connecting") };
        conn.server = None;
        let n = backend.servers.len();
        while connecting.tried < n {
            let index = (connecting.start + connecting.tried) % n;
            let server = &backend.servers[index];
            connecting.tried += 1;
            if !server.is_up() {
                continue;
            }
            let Some(slot) = server.take_slot() else { continue };
            let ServerAddress::Ip(address) = server.address else { unreachable!("names are resolved on tokio") };
            let first = &connecting.first;
            let attempt = TcpStream::connect(address).and_then(|mut stream| {
                stream.set_nodelay(true)?;
                // A server on this host or a near one has usually answered the
                // SYN before connect returns: the first bytes then go at once,
                // not a turn of the loop later. Before that a send is EAGAIN.
                let written = match (&stream).write(first) {
                    Ok(n) => Some(n),
                    Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => None,
                    Err(e) => return Err(e),
                };
                // Until all is sent, epoll says when the connect ends or there is room.
                let ready = if written == Some(first.len()) { Ready::connected() } else { Ready::watched() };
                registry.register(&mut stream, Token(key.slot * 2 + 1), ready.interest())?;
                Ok((stream, ready, written))
            });
            match attempt {
                Ok((stream, ready, written)) => {
                    connecting.since = now;
                    conn.server = Some(Upstream { stream, ready, address, index, _slot: slot });
                    if written.is_none() {
                        let deadline = now + backend.connect_timeout;
                        self.set_deadline(key, Some(deadline));
                    }
                    return Ok(written);
                }
                Err(error) if crate::limits::is_local_resource_error(&error) => {
                    return Err(Refusal::Backend(ConnectError::Local { error }));
                }
                Err(error) => {
                    self.shared.metrics.connect_failures.get_or_create(&server.labels).inc();
                    tracing::debug!(backend = %backend.name, server = %server.address, %error, "connect failed");
                    connecting.last = Some((server.address.to_string(), error));
                }
            }
        }
        let backend = backend.name.clone();
        Err(Refusal::Backend(match connecting.last.take() {
            Some((server, error)) => ConnectError::Failed { backend, server, error },
            None => ConnectError::Full { backend },
        }))
    }

    fn connect_failed(&mut self, key: Key, error: io::Error) {
        let metrics = self.shared.metrics.clone();
        let Some(conn) = self.conn(key) else { return };
        if let (Some(server), Some(route), Step::Connecting(connecting)) = (&conn.server, &conn.route, &mut conn.step) {
            let backend = &route.backend;
            metrics.connect_failures.get_or_create(&backend.servers[server.index].labels).inc();
            tracing::debug!(backend = %backend.name, server = %server.address, %error, "connect failed");
            connecting.last = Some((server.address.to_string(), error));
        }
        conn.server = None;
        match self.connect_next(key) {
            Ok(Some(written)) => self.connected(key, written),
            Ok(None) => {}
            Err(refusal) => self.close(key, Err(refusal)),
        }
    }

    /// Connected, with the first `written` bytes of what goes first sent: the
    /// rest of the PROXY header and the bytes read, then the relay.
    fn connected(&mut self, key: Key, written: usize) {
        let now = self.now;
        let metrics = self.shared.metrics.clone();
        let conn = self.conn(key).expect("driven");
        let Step::Connecting(connecting) = std::mem::replace(&mut conn.step, Step::Header(inbound::Received::new(0)))
        else {
            unreachable!("connecting")
        };
        let route = conn.route.as_ref().expect("routed");
        let server = conn.server.as_ref().expect("connected");
        route.backend.servers[server.index].connected(&metrics, now.duration_since(connecting.since));
        conn.moved[0] += connecting.already_read as u64;
        let idle = conn.config.timeouts.idle;
        conn.step = Step::Relaying(Box::new(Relay {
            up: Direction { held: Held::Bytes(connecting.first, written), done: false },
            down: Direction::default(),
            last_activity: now,
            write_error: None,
        }));
        self.set_deadline(key, Some(now + idle));
    }

    /// Gives a routed connection to tokio, for a backend this engine does not
    /// connect itself.
    fn hand_over(&mut self, key: Key) {
        let Some(mut conn) = self.remove(key) else { return };
        let span = conn.span();
        let _ = self.poll.registry().deregister(&mut conn.client);
        // SAFETY: the descriptor is taken from the mio socket, which gives up its ownership.
        let stream = unsafe { std::net::TcpStream::from_raw_fd(conn.client.into_raw_fd()) };
        let Step::Hello(mut received) = conn.step else { unreachable!("handed over after the hello") };
        let route = conn.route.expect("routed");
        let admission = conn.admission.expect("admitted");
        let shared = self.shared.clone();
        let tracker = shared.connections.clone();
        let (peer, listener, config, addresses, started) =
            (conn.peer, conn.listener, conn.config, conn.addresses, conn.started);
        let bytes = std::mem::take(&mut received.bytes);
        drop(received);
        self.runtime.spawn(tracker.track_future(async move {
            match tokio::net::TcpStream::from_std(stream) {
                Ok(stream) => {
                    let served = server::forwarded(
                        stream, peer, listener, config, shared, admission, route, addresses, bytes, started, span,
                    );
                    served.await;
                }
                Err(error) => tracing::error!(%error, "cannot hand a connection to tokio"),
            }
        }));
    }

    /// Takes a connection out of the slab and its deadline out of the timers.
    fn remove(&mut self, key: Key) -> Option<Conn> {
        self.conn(key)?;
        let conn = self.conns[key.slot].take()?;
        self.free.push(key.slot);
        if let Some(at) = conn.deadline {
            self.timers.remove(&(at, key));
        }
        Some(conn)
    }

    /// Ends a connection: its one log line and metrics, then its sockets close.
    fn close(&mut self, key: Key, result: Result<Ended, Refusal>) {
        let Some(conn) = self.remove(key) else { return };
        let span = conn.span();
        let _entered = span.enter();
        let elapsed = self.now.saturating_duration_since(conn.started);
        let protocol = conn.config.listeners[conn.listener].protocol;
        server::finish(&self.shared.metrics, protocol, conn.route.as_deref(), conn.moved, elapsed, result);
        // Dropped here: the admission gives its places back, the sockets
        // close (which removes them from epoll) and the pipes go back.
    }
}

impl Conn {
    /// Its span, made when its line is logged (or it is handed over), with
    /// the fields the tokio path records as it goes.
    fn span(&self) -> tracing::Span {
        let span = server::span(self.peer, self.config.listeners[self.listener].address);
        if span.is_disabled() {
            return span;
        }
        let client = self.addresses.0;
        if client != self.peer {
            span.record("client", tracing::field::display(client));
        }
        if let Some(name) = &self.sni {
            span.record("sni", tracing::field::display(name));
        }
        if let Some(route) = &self.route {
            span.record("route", route.name.as_str());
        }
        if let Some(server) = &self.server {
            span.record("server", tracing::field::display(server.address));
        }
        span
    }
}

/// The alert that tells a refused client why, best effort.
fn refuse(conn: &mut Conn, refusal: Refusal) -> Refusal {
    let _ = conn.client.write(&tls::ALERT_UNRECOGNIZED_NAME);
    refusal
}

/// Reads what the client sent until the hello is complete: `Ok(Some)` then.
fn read_client(conn: &mut Conn) -> Result<Option<hello::ClientHello>, Refusal> {
    loop {
        match &mut conn.step {
            Step::Header(received) => {
                if let Some(header) = proxy_header::parse(&received.bytes)? {
                    received.bytes.drain(..header.len);
                    if let Some(addresses) = header.addresses {
                        conn.addresses = addresses;
                    }
                    let received = std::mem::replace(received, inbound::Received::new(0));
                    conn.step = Step::Hello(received);
                    continue;
                }
            }
            Step::Hello(received) => {
                if let Some(hello) = hello::parse(&received.bytes)? {
                    return Ok(Some(hello));
                }
            }
            _ => unreachable!("reading the client before the route only"),
        }
        if !conn.client_ready.read {
            return Ok(None);
        }
        let (max, received) = match &mut conn.step {
            Step::Header(received) => (proxy_header::MAX_HEADER_LEN, received),
            Step::Hello(received) => (tls::MAX_READ, received),
            _ => unreachable!("reading the client before the route only"),
        };
        let step = received.make_room(max)?;
        let buf = &mut received.bytes;
        let len = buf.len();
        buf.resize(len + step, 0);
        match conn.client.read(&mut buf[len..]) {
            Ok(0) => return Err(Refusal::ClosedEarly),
            Ok(n) => {
                buf.truncate(len + n);
                if n < step {
                    // Short: the socket is drained, the next edge says when more came.
                    conn.client_ready.drained();
                }
            }
            Err(e) => {
                buf.truncate(len);
                match e.kind() {
                    io::ErrorKind::WouldBlock => conn.client_ready.drained(),
                    io::ErrorKind::Interrupted => {}
                    _ => return Err(Refusal::Io(e)),
                }
            }
        }
    }
}

/// Whether the connect in progress is done: `Ok(true)` connected, `Err` failed.
fn check_connect(conn: &mut Conn) -> io::Result<bool> {
    let server = conn.server.as_mut().expect("connecting");
    if !server.ready.write {
        return Ok(false);
    }
    if let Some(error) = server.stream.take_error()? {
        return Err(error);
    }
    match server.stream.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => {
            server.ready.full();
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// One turn of a relayed connection: both directions, as far as they go.
fn relay(conn: &mut Conn, buf: &mut [u8], now: Instant) -> Turn {
    let Step::Relaying(relay) = &mut conn.step else { unreachable!("relaying") };
    let server = conn.server.as_mut().expect("relaying has a server");
    let mut moved = false;
    let mut again = false;
    for up in [true, false] {
        let (direction, other_done) =
            if up { (&mut relay.up, relay.down.done) } else { (&mut relay.down, relay.up.done) };
        if direction.done {
            continue;
        }
        let (from, from_ready, to, to_ready, count) = if up {
            (&conn.client, &mut conn.client_ready, &server.stream, &mut server.ready, &mut conn.moved[0])
        } else {
            (&server.stream, &mut server.ready, &conn.client, &mut conn.client_ready, &mut conn.moved[1])
        };
        let mut ends = Ends { from, from_ready, to, to_ready };
        match ends.move_bytes(direction, buf, count, other_done) {
            Progress::Moved => moved = true,
            Progress::Waiting => {}
            Progress::Again => {
                moved = true;
                again = true;
            }
            Progress::Ended(error) => {
                direction.done = true;
                if relay.write_error.is_none() {
                    relay.write_error = error;
                }
            }
            Progress::ReadFailed(e) => {
                // That side aborted: abort the other too (a zero linger
                // makes the close send RST), so a cut transfer never looks whole.
                let _ = socket2::SockRef::from(to).set_linger(Some(Duration::ZERO));
                return Turn::Done(Ok(Ended::Relayed(Some(RelayEnd::Io(e)))));
            }
        }
    }
    if relay.up.done && relay.down.done {
        return Turn::Done(Ok(Ended::Relayed(relay.write_error.take().map(RelayEnd::Io))));
    }
    if moved {
        relay.last_activity = now;
    }
    if again {
        Turn::Again
    } else {
        Turn::Wait
    }
}

enum Progress {
    Moved,
    Waiting,
    /// Moved, and stopped with more to move.
    Again,
    Ended(Option<io::Error>),
    ReadFailed(io::Error),
}

/// One direction's sockets and what is known of their readiness.
struct Ends<'a> {
    from: &'a TcpStream,
    from_ready: &'a mut Ready,
    to: &'a TcpStream,
    to_ready: &'a mut Ready,
}

impl Ends<'_> {
    /// As `relay::Direction::poll_move`: a burst through `buf`, the rest of a
    /// bulk burst through a pipe; the half-close passed on unless `last`.
    fn move_bytes(&mut self, direction: &mut Direction, buf: &mut [u8], count: &mut u64, last: bool) -> Progress {
        let mut total = 0;
        for _ in 0..BURSTS_PER_POLL {
            match self.flush(&mut direction.held) {
                Ok(false) => return progress(total),
                Err(e) => return Progress::Ended(Some(e)),
                Ok(true) => {}
            }
            if !self.from_ready.read {
                return progress(total);
            }
            let n = match (&mut &*self.from).read(buf) {
                Ok(0) => {
                    if !last {
                        let _ = self.to.shutdown(Shutdown::Write);
                    }
                    return Progress::Ended(None);
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.from_ready.drained();
                    return progress(total);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Progress::ReadFailed(e),
            };
            if n < buf.len() {
                self.from_ready.drained();
            }
            *count += n as u64;
            total += n;
            // Written straight from `buf`; only what the other side cannot
            // take yet is copied out.
            let written = if self.to_ready.write {
                match (&mut &*self.to).write(&buf[..n]) {
                    Ok(w) => w,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.to_ready.full();
                        0
                    }
                    Err(e) => return Progress::Ended(Some(e)),
                }
            } else {
                0
            };
            if written < n {
                self.to_ready.full();
                direction.held = Held::Bytes(buf[written..n].to_vec(), 0);
            }
            if n == buf.len() {
                if let Err(end) = self.splice_burst(&mut direction.held, count, &mut total) {
                    return end;
                }
            }
        }
        // More may be ready: let other connections run, then come back.
        Progress::Again
    }

    /// The rest of a bulk burst, through a pooled pipe.
    fn splice_burst(&mut self, held: &mut Held, count: &mut u64, total: &mut usize) -> Result<(), Progress> {
        loop {
            match self.flush(held) {
                Ok(false) => return Err(progress(*total)),
                Err(e) => return Err(Progress::Ended(Some(e))),
                Ok(true) => {}
            }
            if !self.from_ready.read {
                return Ok(());
            }
            let Ok(pipe) = Pipe::borrow() else { return Ok(()) };
            match crate::relay::splice(self.from.as_raw_fd(), pipe.write.as_raw_fd(), CHUNK) {
                Ok(0) => {
                    pipe.give_back();
                    return Ok(());
                }
                Ok(n) => {
                    *count += n as u64;
                    *total += n;
                    *held = Held::Pipe(pipe, n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    pipe.give_back();
                    self.from_ready.drained();
                    return Ok(());
                }
                Err(e) => {
                    pipe.give_back();
                    return Err(Progress::ReadFailed(e));
                }
            }
        }
    }

    /// Writes out what is held: `Ok(true)` once nothing is.
    fn flush(&mut self, held: &mut Held) -> io::Result<bool> {
        loop {
            match held {
                Held::Nothing => return Ok(true),
                Held::Bytes(bytes, at) if *at == bytes.len() => *held = Held::Nothing,
                Held::Pipe(_, 0) => {
                    if let Held::Pipe(pipe, _) = std::mem::take(held) {
                        pipe.give_back();
                    }
                }
                _ if !self.to_ready.write => return Ok(false),
                Held::Bytes(bytes, at) => match (&mut &*self.to).write(&bytes[*at..]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => *at += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.to_ready.full(),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                },
                Held::Pipe(pipe, left) => match crate::relay::splice(pipe.read.as_raw_fd(), self.to.as_raw_fd(), *left)
                {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => *left -= n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.to_ready.full(),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle relayed connection holds its `Conn` and its `Relay`, and the
    /// kernel's socket buffers: nothing else of this process.
    #[test]
    fn an_idle_connection_stays_small() {
        let size = std::mem::size_of::<Option<Conn>>() + std::mem::size_of::<Relay>();
        eprintln!("engine connection: {size} bytes");
        assert!(size <= 512, "an engine connection grew to {size} bytes");
    }
}
