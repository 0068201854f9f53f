//! The server: accept loops, connection limits, reload and graceful stop.
//!
//! Each listener's accept loop takes the current config at every accept, so
//! a reload changes routes for new connections while old ones keep the
//! config they started with. Sockets of listeners that stay in the config
//! are never closed by a reload.

use crate::config::{Config, Listener, Protocol};
use crate::engine::Engines;
use crate::forward::{forward, Connection};
use crate::inbound::is_trusted_proxy;
use crate::limits::{ClientKey, Evict, PendingPool};
use crate::metrics::{self, Metrics, Outcome, ReasonLabels};
use crate::outcome::{Limit, Refusal, Served, To};
use crate::relay::{relay, relay_answer, Counters, RelayEnd};
use crate::tunnel::gateway::Hub;
use crate::{health, http, systemd, tls};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{field::Empty, Instrument};

/// What the process asks of a running server (from signals, or from tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Re-read the config file; keep the running config if it is invalid.
    Reload,
    /// Stop accepting, drain, stop.
    Shutdown,
}

/// Binds a listening socket the way the gateway needs it: address reuse so
/// a restart does not wait for TIME_WAIT, IPv6 sockets that take only IPv6,
/// so `0.0.0.0:443` and `[::]:443` can both be listed, and TCP_NODELAY,
/// which accepted sockets inherit (one system call less per connection).
///
/// Not TCP_DEFER_ACCEPT (nginx's `deferred`): it saves a wake-up per
/// connection (2–15 % of its CPU), but in the bench it added 80 to 110 µs
/// to every connection's time to first byte (bench/results/ISSUE-12-NOTES.md).
pub fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(address), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_nodelay(true)?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

/// Every listener of a config: a socket passed by systemd for its address
/// if there is one (socket activation), else a new one.
pub fn bind_all(
    config: &Config,
    mut inherited: HashMap<SocketAddr, std::net::TcpListener>,
) -> io::Result<HashMap<SocketAddr, TcpListener>> {
    let mut listeners = HashMap::new();
    for listener in &config.listeners {
        let socket = match inherited.remove(&listener.address) {
            Some(socket) => {
                // As `bind` sets it on its own sockets.
                socket2::SockRef::from(&socket).set_nodelay(true)?;
                TcpListener::from_std(socket)?
            }
            None => bind(listener.address)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {}: {e}", listener.address)))?,
        };
        listeners.insert(listener.address, socket);
    }
    for address in inherited.keys() {
        tracing::warn!(%address, "systemd passed a socket that no listener in the config uses; closing it");
    }
    Ok(listeners)
}

/// State shared by all connections across reloads.
/// Open connections are counted once, by the `active_connections` gauge in
/// `metrics`, which the connection limit reads too.
#[derive(Default)]
pub(crate) struct Shared {
    per_client: Mutex<HashMap<ClientKey, usize>>,
    pub(crate) connections: TaskTracker,
    /// Cancelled when the drain deadline passes: every connection closes.
    pub(crate) cut: CancellationToken,
    pub(crate) metrics: Arc<Metrics>,
    /// Connected agents; kept across reloads.
    pub(crate) tunnel: Arc<Hub>,
}

struct AcceptLoop {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// What belongs to one config generation and is replaced by a reload.
struct Generation {
    health: CancellationToken,
    metrics_endpoint: Option<metrics::Endpoint>,
}

impl Generation {
    /// Starts the health checkers of `config`, and the metrics endpoint on
    /// `metrics_socket` if a new one was bound; stops what `previous` ran
    /// that is not kept.
    fn start(
        config: &Config,
        shared: &Shared,
        previous: Option<Generation>,
        metrics_socket: Option<TcpListener>,
    ) -> Generation {
        let health = CancellationToken::new();
        health::spawn_all(config, &shared.metrics, &health);
        let mut metrics_endpoint = None;
        if let Some(previous) = previous {
            previous.health.cancel();
            match previous.metrics_endpoint {
                Some(endpoint) if metrics_socket.is_none() && config.metrics.is_some() => {
                    metrics_endpoint = Some(endpoint);
                }
                Some(endpoint) => endpoint.stop.cancel(),
                None => {}
            }
        }
        if let (Some(socket), Some(wanted)) = (metrics_socket, &config.metrics) {
            let stop = CancellationToken::new();
            tracing::info!(address = %wanted.address, "serving metrics");
            tokio::spawn(metrics::serve(socket, shared.metrics.clone(), stop.clone()));
            metrics_endpoint = Some(metrics::Endpoint { address: wanted.address, stop });
        }
        Generation { health, metrics_endpoint }
    }

    fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics_endpoint.as_ref().map(|endpoint| endpoint.address)
    }

    fn stop(self) {
        self.health.cancel();
        if let Some(endpoint) = self.metrics_endpoint {
            endpoint.stop.cancel();
        }
    }
}

/// The metrics socket `config` needs, if its address is not the one already
/// served (`running`, as configured).
fn bind_metrics(config: &Config, running: Option<SocketAddr>) -> io::Result<Option<TcpListener>> {
    match &config.metrics {
        Some(wanted) if Some(wanted.address) != running => bind(wanted.address)
            .map(Some)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot serve metrics on {}: {e}", wanted.address))),
        _ => Ok(None),
    }
}

/// Runs the gateway on already-bound listeners until `Control::Shutdown`
/// (or until `control` closes). `config_path` is what a reload reads.
pub async fn run(
    config_path: Option<PathBuf>,
    config: Config,
    listeners: HashMap<SocketAddr, TcpListener>,
    mut control: mpsc::Receiver<Control>,
) -> anyhow::Result<()> {
    let shared = Arc::new(Shared::default());
    let metrics_socket = bind_metrics(&config, None)?;
    let mut generation = Generation::start(&config, &shared, None, metrics_socket);
    shared.metrics.reload(true);
    shared.tunnel.configure(config.tunnel.as_ref());
    let config = Arc::new(config);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut engines = Engines::start(cpus, &shared, &config)?;
    let (current, _) = watch::channel(config);
    let mut loops: HashMap<SocketAddr, AcceptLoop> = HashMap::new();
    for (address, socket) in listeners {
        let protocol = current.borrow().listeners.iter().find(|l| l.address == address).map(|l| l.protocol);
        let Some(protocol) = protocol else {
            tracing::warn!(%address, "a socket for no listener of the config; closing it");
            continue;
        };
        tracing::info!(%address, "listening");
        Listening::new(socket, protocol)?.serve(address, &current, &mut loops, &mut engines, &shared);
    }
    systemd::ready("accepting connections");
    // Memory that large unfinished hellos took is given back to the system
    // soon after they are gone, not kept by the allocator for ever.
    let trimmer = tokio::spawn(async {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            crate::limits::give_back_memory();
        }
    });

    while let Some(Control::Reload) = control.recv().await {
        let Some(path) = &config_path else {
            tracing::warn!("reload asked, but the config was not read from a file");
            continue;
        };
        systemd::reloading();
        match reload(path, &current, &mut loops, &mut engines, &shared, &generation) {
            Ok(metrics_socket) => {
                let config = current.borrow().clone();
                shared.tunnel.configure(config.tunnel.as_ref());
                generation = Generation::start(&config, &shared, Some(generation), metrics_socket);
                shared.metrics.reload(true);
                tracing::info!(config = %path.display(), "reloaded");
            }
            Err(e) => {
                shared.metrics.reload(false);
                tracing::error!(config = %path.display(), "reload failed, keeping the running config: {e:#}");
            }
        }
        systemd::ready("accepting connections");
    }

    systemd::stopping();
    let drain = current.borrow().timeouts.shutdown;
    tracing::info!(active = shared.metrics.active.get(), ?drain, "stopping: no new connections");
    for (_, accept) in loops.drain() {
        accept.stop.cancel();
        let _ = accept.task.await;
    }
    for address in engines.addresses() {
        engines.unlisten(address);
    }
    generation.stop();
    trimmer.abort();
    shared.connections.close();
    if tokio::time::timeout(drain, shared.connections.wait()).await.is_err() {
        tracing::warn!(remaining = shared.metrics.active.get(), "drain deadline passed, closing the rest");
        shared.cut.cancel();
        engines.cut();
        shared.connections.wait().await;
    }
    engines.quit();
    // Agents last: the connections drained above may have used them.
    shared.tunnel.close();
    tracing::info!("stopped");
    Ok(())
}

/// Loads the new config and switches to it, or changes nothing. Returns the
/// metrics socket the new config needs, if it moved.
fn reload(
    path: &Path,
    current: &watch::Sender<Arc<Config>>,
    loops: &mut HashMap<SocketAddr, AcceptLoop>,
    engines: &mut Engines,
    shared: &Arc<Shared>,
    generation: &Generation,
) -> anyhow::Result<Option<TcpListener>> {
    let config = Config::load(path)?;
    if let Ok((open_files, _)) = crate::limits::open_files_limit() {
        config.limits.check_descriptors(open_files).map_err(anyhow::Error::msg)?;
    }
    // Bind every new address before touching anything, so a port that is
    // taken fails the reload as a whole.
    let metrics_socket = bind_metrics(&config, generation.metrics_address())?;
    let mut opened = Vec::new();
    for listener in &config.listeners {
        if !loops.contains_key(&listener.address) && !engines.listens(listener.address) {
            let socket =
                bind(listener.address).map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", listener.address))?;
            opened.push((listener.address, Listening::new(socket, listener.protocol)?));
        }
    }
    // A server known to be down stays down until its checks say otherwise.
    {
        let old = current.borrow();
        for backend in &config.backends {
            if let Some(previous) = old.backends.iter().find(|b| b.name == backend.name) {
                backend.keep_health_of(previous);
            }
        }
    }
    let wanted: Vec<SocketAddr> = config.listeners.iter().map(|l| l.address).collect();
    // A TLS listener that stays with another protocol keeps its socket,
    // which moves from the engines to tokio; made ready here, before
    // anything changes, so that a failure changes nothing.
    let protocol_at = |address| config.listeners.iter().find(|l| l.address == address).map(|l| l.protocol);
    let mut handed = Vec::new();
    for address in engines.addresses() {
        if protocol_at(address).is_some_and(|p| p != Protocol::Tls) {
            handed.push((address, TcpListener::from_std(engines.socket(address)?)?));
        }
    }
    // The engines let go of what leaves them before they take the new
    // config: they never serve an address that is no longer TLS.
    for address in engines.addresses() {
        if protocol_at(address) != Some(Protocol::Tls) {
            engines.unlisten(address);
            if protocol_at(address).is_none() {
                tracing::info!(%address, "listener closed");
            }
        }
    }
    let config = Arc::new(config);
    engines.configure(&config);
    current.send_replace(config.clone());
    loops.retain(|address, accept| {
        let keep = wanted.contains(address);
        if !keep {
            tracing::info!(%address, "listener closed");
            accept.stop.cancel();
        }
        keep
    });
    for (address, socket) in handed {
        loops.insert(address, spawn_accept_loop(socket, address, current.subscribe(), shared.clone()));
    }
    for (address, socket) in opened {
        tracing::info!(%address, "listening");
        socket.serve(address, current, loops, engines, shared);
    }
    Ok(metrics_socket)
}

/// A bound listener and what serves it: the connection engines for TLS,
/// tokio for the other protocols, each with its accept loop.
enum Listening {
    Engines(std::net::TcpListener),
    Tokio(TcpListener),
}

impl Listening {
    /// Made before anything changes (a reload that fails changes nothing).
    fn new(socket: TcpListener, protocol: Protocol) -> io::Result<Listening> {
        Ok(match protocol {
            Protocol::Tls => Listening::Engines(socket.into_std()?),
            Protocol::Http | Protocol::Tunnel => Listening::Tokio(socket),
        })
    }

    fn serve(
        self,
        address: SocketAddr,
        current: &watch::Sender<Arc<Config>>,
        loops: &mut HashMap<SocketAddr, AcceptLoop>,
        engines: &mut Engines,
        shared: &Arc<Shared>,
    ) {
        match self {
            Listening::Engines(socket) => engines.listen(address, socket),
            Listening::Tokio(socket) => {
                loops.insert(address, spawn_accept_loop(socket, address, current.subscribe(), shared.clone()));
            }
        }
    }
}

fn spawn_accept_loop(
    socket: TcpListener,
    address: SocketAddr,
    config: watch::Receiver<Arc<Config>>,
    shared: Arc<Shared>,
) -> AcceptLoop {
    let stop = CancellationToken::new();
    // Each listener has its own pool, so that silent clients on one (say
    // port 80, with its longer timeout) cannot starve another.
    let pool = Arc::new(PendingPool::default());
    let task = tokio::spawn(accept_loop(socket, address, config, shared, pool, stop.clone()));
    AcceptLoop { stop, task }
}

/// Never dies on an accept error (out of file descriptors, a reset in the
/// queue): it logs, backs off and goes on.
async fn accept_loop(
    socket: TcpListener,
    address: SocketAddr,
    config: watch::Receiver<Arc<Config>>,
    shared: Arc<Shared>,
    pool: Arc<PendingPool>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            accepted = socket.accept() => accepted,
            () = stop.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff = Duration::from_millis(5);
                accepted
            }
            Err(error) => {
                tracing::warn!(%address, %error, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let config = config.borrow().clone();
        let Some(listener) = config.listeners.iter().position(|l| l.address == address) else {
            return;
        };
        if config.listeners[listener].protocol == Protocol::Tunnel {
            // An agent dialing in: a session, not a client connection.
            tokio::spawn(shared.tunnel.clone().accept(stream, peer, shared.metrics.clone()));
            continue;
        }
        shared.connections.spawn(connection(stream, peer, listener, config, shared.clone(), pool.clone()));
    }
}

type BoxedServe<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Served, Refusal>> + Send + 'a>>;

/// How a served connection ended.
pub(crate) enum Ended {
    /// Relayed until both sides finished (`None`), or ended otherwise.
    Relayed(Option<RelayEnd>),
    Answered(u16),
}

/// A connection's span: every line logged for it carries these fields.
pub(crate) fn span(peer: SocketAddr, listener: SocketAddr) -> tracing::Span {
    tracing::info_span!("conn", client = %peer, listener = %listener, sni = Empty, route = Empty, server = Empty)
}

/// One connection: admission, the protocol's path up to the decision, the
/// relay, then one log line and the metrics, from the same outcome.
///
/// A plain fn returning the future, not an `async fn`: an async fn keeps
/// room for its arguments after moving them, for the connection's whole life.
fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    listener: usize,
    config: Arc<Config>,
    shared: Arc<Shared>,
    pool: Arc<PendingPool>,
) -> impl std::future::Future<Output = ()> {
    let span = span(peer, config.listeners[listener].address);
    async move {
        let listener = &config.listeners[listener];
        let started = Instant::now();
        let counters = Counters::default();
        let metrics = &shared.metrics;
        let cx = context(peer, listener, &config, &counters, &shared);
        // Cancelled by the drain deadline, or by the pool to make room
        // while the connection is pending.
        let cut = shared.cut.child_token();
        let result = match Admission::new(&shared, &pool, cut.clone(), &config, listener, peer) {
            Err(limit) => Err(Refusal::Limit(limit)),
            Ok(admission) => {
                let handshake_done = || {
                    admission.handshake_done();
                    metrics.client_hello_seconds.observe(started.elapsed().as_secs_f64());
                };
                // Everything up to the relay is boxed: its state is freed
                // before the relay starts, and a relayed connection, which
                // may stay open for hours, keeps only the relay's.
                let served = async {
                    let decide = match listener.protocol {
                        Protocol::Tls => Box::pin(tls::serve(&mut stream, &cx, handshake_done)) as BoxedServe<'_>,
                        Protocol::Http => Box::pin(http::serve(&mut stream, &cx, handshake_done)),
                        Protocol::Tunnel => unreachable!("agents are served by the tunnel hub"),
                    };
                    let decided = decide.await?;
                    relay_decided(&mut stream, decided, &cx).await
                };
                tokio::select! {
                    result = served => result,
                    () = cut.cancelled() => Err(if shared.cut.is_cancelled() {
                        Refusal::ShuttingDown
                    } else {
                        // Evicted while pending, to make room in a full pool.
                        Refusal::Limit(Limit::PendingHandshakes)
                    }),
                }
            }
        };
        let moved = [counters.up.load(Ordering::Relaxed), counters.down.load(Ordering::Relaxed)];
        finish(metrics, listener.protocol, cx.route.get().copied(), moved, started.elapsed(), result);
    }
    .instrument(span)
}

/// A TLS connection that the engine accepted, read and routed, to a backend
/// it does not connect itself (agents through the tunnel, or servers named by
/// DNS): the rest of its path, on tokio. `span` has its fields recorded.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forwarded<E: Evict>(
    mut stream: TcpStream,
    peer: SocketAddr,
    listener: usize,
    config: Arc<Config>,
    shared: Arc<Shared>,
    admission: Admission<E>,
    route: Arc<crate::config::Route>,
    addresses: (SocketAddr, SocketAddr),
    already_read: Vec<u8>,
    started: std::time::Instant,
    span: tracing::Span,
) -> impl std::future::Future<Output = ()> {
    async move {
        let _admission = admission;
        let listener = &config.listeners[listener];
        let counters = Counters::default();
        let metrics = &shared.metrics;
        let cx = context(peer, listener, &config, &counters, &shared);
        let _ = cx.route.set(&route);
        let served = async {
            let decided = Box::pin(forward(&cx, addresses, &route.backend, already_read, false)).await?;
            relay_decided(&mut stream, decided, &cx).await
        };
        let result = tokio::select! {
            result = served => result,
            () = shared.cut.cancelled() => Err(Refusal::ShuttingDown),
        };
        let moved = [counters.up.load(Ordering::Relaxed), counters.down.load(Ordering::Relaxed)];
        finish(metrics, listener.protocol, Some(&route), moved, started.elapsed(), result);
    }
    .instrument(span)
}

/// A connection's context on tokio, before its route is known.
fn context<'a>(
    peer: SocketAddr,
    listener: &'a Listener,
    config: &'a Config,
    counters: &'a Counters,
    shared: &'a Shared,
) -> Connection<'a> {
    Connection {
        peer,
        listener,
        config,
        counters,
        metrics: &shared.metrics,
        tunnel: &shared.tunnel,
        route: Default::default(),
    }
}

/// The relay a decision asks for, to its end.
async fn relay_decided(stream: &mut TcpStream, decided: Served, cx: &Connection<'_>) -> Result<Ended, Refusal> {
    let idle = cx.config.timeouts.idle;
    let counters = cx.counters;
    Ok(match decided {
        Served::Forwarded { to: To::Server(mut upstream), one_request: false } => {
            Ended::Relayed(relay(stream, &mut upstream.stream, idle, counters).await.err())
        }
        Served::Forwarded { to: To::Server(mut upstream), one_request: true } => {
            Ended::Relayed(relay_answer(stream, &mut upstream.stream, idle, counters).await.err())
        }
        Served::Forwarded { to: To::Agent(upstream), one_request } => {
            let relay = crate::tunnel::gateway::relay(stream, upstream, idle, counters, cx.metrics, one_request);
            Ended::Relayed(Box::pin(relay).await)
        }
        Served::Answered(status) => Ended::Answered(status),
    })
}

/// A connection's one log line and its metrics, from the same outcome.
/// Logged in the connection's span. `moved`: bytes up, down.
pub(crate) fn finish(
    metrics: &Metrics,
    protocol: Protocol,
    route: Option<&crate::config::Route>,
    [up, down]: [u64; 2],
    elapsed: Duration,
    result: Result<Ended, Refusal>,
) {
    let ms = elapsed.as_millis() as u64;
    let outcome = match &result {
        Ok(Ended::Relayed(_)) => Outcome::Relayed,
        Ok(Ended::Answered(_)) => Outcome::Answered,
        Err(_) => Outcome::Refused,
    };
    let (name, counted) = match route {
        Some(route) => (route.name.as_str(), &route.metrics),
        None => ("", &metrics.unrouted),
    };
    counted.count(metrics, name, protocol, outcome, [up, down]);
    let outcome = outcome.label();
    match result {
        Ok(Ended::Relayed(None)) => tracing::info!(outcome, up, down, ms, "closed"),
        Ok(Ended::Relayed(Some(end))) => tracing::info!(outcome, up, down, ms, "closed: {end}"),
        Ok(Ended::Answered(status)) => tracing::info!(outcome, status, ms, "answered"),
        Err(refusal) => {
            metrics.refusals.get_or_create(&ReasonLabels { reason: refusal.reason() }).inc();
            tracing::info!(outcome, reason = refusal.reason(), up, down, ms, "refused: {refusal}")
        }
    }
}

/// A connection's places in the limits, given back on drop. It owns what it
/// counts in, so that a connection can move between the engine and tokio.
pub(crate) struct Admission<E: Evict = CancellationToken> {
    shared: Arc<Shared>,
    pool: Arc<PendingPool<E>>,
    client: ClientKey,
    /// Counted in the per-client limit of open connections.
    counted: bool,
    /// Its id in the pending pool while pending, else 0.
    pending: AtomicU64,
}

impl<E: Evict> Admission<E> {
    /// Takes the connection's places; `evict` closes it if the pending pool
    /// needs its place. Refused with the limit it hit.
    pub(crate) fn new(
        shared: &Arc<Shared>,
        pool: &Arc<PendingPool<E>>,
        evict: E,
        config: &Config,
        listener: &Listener,
        peer: SocketAddr,
    ) -> Result<Self, Limit> {
        let limits = &config.limits;
        // Each count is taken, then checked; Drop gives back what was taken.
        let open_before = shared.metrics.active.inc();
        let key = ClientKey::of(crate::proxy_header::unmap(peer).ip(), limits);
        let mut admission = Admission {
            shared: shared.clone(),
            pool: pool.clone(),
            client: key,
            counted: false,
            pending: AtomicU64::new(0),
        };
        if open_before >= limits.max_connections() as i64 {
            return Err(Limit::Connections);
        }
        // A trusted load balancer carries many clients: its own address is
        // not one client, so it is not held to the per-client limits.
        let trusted = is_trusted_proxy(listener, peer);
        if !trusted {
            let mut per_client = shared.per_client.lock().unwrap_or_else(|e| e.into_inner());
            let count = per_client.entry(key).or_insert(0);
            *count += 1;
            admission.counted = true;
            if *count > limits.max_connections_per_client {
                return Err(Limit::PerClient);
            }
        }
        let per_client = (!trusted).then_some(limits.max_pending_per_client);
        let slot =
            pool.admit(key, per_client, limits.max_pending_handshakes, evict).map_err(|_| Limit::PendingPerClient)?;
        admission.pending.store(slot, Ordering::Release);
        Ok(admission)
    }

    /// The connection is no longer pending: its place in the pool is free.
    pub(crate) fn handshake_done(&self) {
        let slot = self.pending.swap(0, Ordering::AcqRel);
        if slot != 0 {
            self.pool.release(self.client, slot);
        }
    }
}

impl<E: Evict> Drop for Admission<E> {
    fn drop(&mut self) {
        self.handshake_done();
        self.shared.metrics.active.dec();
        if self.counted {
            let mut per_client = self.shared.per_client.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(count) = per_client.get_mut(&self.client) {
                *count -= 1;
                if *count == 0 {
                    per_client.remove(&self.client);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_sockets_have_nodelay_from_the_listener() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(accepted.nodelay().unwrap());
    }

    fn tls_config(address: SocketAddr) -> Config {
        Config::parse(
            &format!(
                r#"{{ "listeners": [{{ "address": "{address}", "protocol": "tls" }}],
                     "routes": [{{ "names": ["a.test"], "backend": "b" }}],
                     "backends": {{ "b": {{ "servers": ["127.0.0.1:9"] }} }} }}"#
            ),
            Path::new("."),
        )
        .unwrap()
    }

    /// Sockets passed by systemd get the listener options too, and a client
    /// that connects and stays silent is handed over at once, so it counts
    /// against the pending limits and the `client_hello` timeout from its
    /// first moment.
    #[tokio::test]
    async fn listeners_from_systemd_are_tuned_and_hand_over_silent_clients() {
        let passed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        passed.set_nonblocking(true).unwrap();
        let address = passed.local_addr().unwrap();
        let mut listeners = bind_all(&tls_config(address), [(address, passed)].into()).unwrap();
        let listener = listeners.remove(&address).unwrap();

        let silent = TcpStream::connect(address).await.unwrap();
        let accepted = tokio::time::timeout(std::time::Duration::from_millis(500), listener.accept()).await;
        let (accepted, peer) = accepted.expect("a silent client was held back by the kernel").unwrap();
        assert_eq!(peer, silent.local_addr().unwrap());
        assert!(accepted.nodelay().unwrap(), "a socket from systemd without TCP_NODELAY");
    }

    /// Every open connection holds its task's future: this is most of what an
    /// idle relayed connection costs in user space.
    #[tokio::test]
    async fn a_connection_future_stays_small() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let config = tls_config(address);
        let client = TcpStream::connect(address).await.unwrap();
        let future = connection(client, address, 0, Arc::new(config), Arc::default(), Arc::default());
        let size = std::mem::size_of_val(&future);
        eprintln!("connection future: {size} bytes");
        // 900 before the pending pool, which added the client's key (an
        // IPv6 prefix: 17 bytes), the listener's pool and the eviction token;
        // 984 since the relay step is shared with the connections the engine
        // hands over. TLS connections are the engine's (`engine::Conn`).
        assert!(size <= 984, "the connection future grew to {size} bytes");
    }
}
