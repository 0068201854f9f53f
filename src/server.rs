//! The server: accept loops, connection limits, reload and graceful stop.
//!
//! Each listener's accept loop takes the current config at every accept, so
//! a reload changes routes for new connections while old ones keep the
//! config they started with. Sockets of listeners that stay in the config
//! are never closed by a reload.

use crate::config::{Config, Listener, Protocol};
use crate::inbound::is_trusted_proxy;
use crate::outcome::{Limit, Refusal, Served};
use crate::relay::Counters;
use crate::{http, tls};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
/// a restart does not wait for TIME_WAIT, and IPv6 sockets that take only
/// IPv6, so `0.0.0.0:443` and `[::]:443` can both be listed.
pub fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(address), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

/// Binds every listener of a config.
pub fn bind_all(config: &Config) -> io::Result<HashMap<SocketAddr, TcpListener>> {
    config
        .listeners
        .iter()
        .map(|l| {
            bind(l.address)
                .map(|socket| (l.address, socket))
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {}: {e}", l.address)))
        })
        .collect()
}

/// State shared by all connections across reloads.
#[derive(Default)]
struct Shared {
    active: AtomicUsize,
    pending: AtomicUsize,
    per_client: Mutex<HashMap<IpAddr, usize>>,
    connections: TaskTracker,
    /// Cancelled when the drain deadline passes: every connection closes.
    cut: CancellationToken,
}

struct AcceptLoop {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
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
    let (current, _) = watch::channel(Arc::new(config));
    let mut loops: HashMap<SocketAddr, AcceptLoop> = HashMap::new();
    for (address, socket) in listeners {
        tracing::info!(%address, "listening");
        loops.insert(address, spawn_accept_loop(socket, address, current.subscribe(), shared.clone()));
    }

    while let Some(Control::Reload) = control.recv().await {
        let Some(path) = &config_path else {
            tracing::warn!("reload asked, but the config was not read from a file");
            continue;
        };
        match reload(path, &current, &mut loops, &shared) {
            Ok(()) => tracing::info!(config = %path.display(), "reloaded"),
            Err(e) => tracing::error!(config = %path.display(), "reload failed, keeping the running config: {e:#}"),
        }
    }

    let drain = current.borrow().timeouts.shutdown;
    tracing::info!(active = shared.active.load(Ordering::Relaxed), ?drain, "stopping: no new connections");
    for (_, accept) in loops.drain() {
        accept.stop.cancel();
        let _ = accept.task.await;
    }
    shared.connections.close();
    if tokio::time::timeout(drain, shared.connections.wait()).await.is_err() {
        tracing::warn!(remaining = shared.active.load(Ordering::Relaxed), "drain deadline passed, closing the rest");
        shared.cut.cancel();
        shared.connections.wait().await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Loads the new config and switches to it, or changes nothing.
fn reload(
    path: &Path,
    current: &watch::Sender<Arc<Config>>,
    loops: &mut HashMap<SocketAddr, AcceptLoop>,
    shared: &Arc<Shared>,
) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    // Bind every new address before touching anything, so a port that is
    // taken fails the reload as a whole.
    let mut opened = HashMap::new();
    for listener in &config.listeners {
        if !loops.contains_key(&listener.address) {
            let socket =
                bind(listener.address).map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", listener.address))?;
            opened.insert(listener.address, socket);
        }
    }
    let wanted: Vec<SocketAddr> = config.listeners.iter().map(|l| l.address).collect();
    current.send_replace(Arc::new(config));
    loops.retain(|address, accept| {
        let keep = wanted.contains(address);
        if !keep {
            tracing::info!(%address, "listener closed");
            accept.stop.cancel();
        }
        keep
    });
    for (address, socket) in opened {
        tracing::info!(%address, "listening");
        loops.insert(address, spawn_accept_loop(socket, address, current.subscribe(), shared.clone()));
    }
    Ok(())
}

fn spawn_accept_loop(
    socket: TcpListener,
    address: SocketAddr,
    config: watch::Receiver<Arc<Config>>,
    shared: Arc<Shared>,
) -> AcceptLoop {
    let stop = CancellationToken::new();
    let task = tokio::spawn(accept_loop(socket, address, config, shared, stop.clone()));
    AcceptLoop { stop, task }
}

/// Never dies on an accept error (out of file descriptors, a reset in the
/// queue): it logs, backs off and goes on.
async fn accept_loop(
    socket: TcpListener,
    address: SocketAddr,
    config: watch::Receiver<Arc<Config>>,
    shared: Arc<Shared>,
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
        let Some(listener) = config.listeners.iter().find(|l| l.address == address).cloned() else {
            return;
        };
        let _ = stream.set_nodelay(true);
        shared.connections.spawn(connection(stream, peer, listener, config, shared.clone()));
    }
}

/// One connection: admission, the protocol's data path, one log line.
async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    listener: Listener,
    config: Arc<Config>,
    shared: Arc<Shared>,
) {
    let span = tracing::info_span!("conn", client = %peer, listener = %listener.address, sni = Empty, route = Empty, server = Empty);
    async move {
        let started = Instant::now();
        let counters = Counters::default();
        let result = match Admission::new(&shared, &config, &listener, peer) {
            Err(limit) => Err(Refusal::Limit(limit)),
            Ok(admission) => {
                let handshake_done = || admission.handshake_done();
                let served = async {
                    match listener.protocol {
                        Protocol::Tls => {
                            tls::serve(&mut stream, peer, &listener, &config, &counters, handshake_done).await
                        }
                        Protocol::Http => {
                            http::serve(&mut stream, peer, &listener, &config, &counters, handshake_done).await
                        }
                    }
                };
                tokio::select! {
                    result = served => result,
                    () = shared.cut.cancelled() => Err(Refusal::ShuttingDown),
                }
            }
        };
        let up = counters.up.load(Ordering::Relaxed);
        let down = counters.down.load(Ordering::Relaxed);
        let ms = started.elapsed().as_millis() as u64;
        match result {
            Ok(Served::Relayed(None)) => tracing::info!(outcome = "relayed", up, down, ms, "closed"),
            Ok(Served::Relayed(Some(end))) => tracing::info!(outcome = "relayed", up, down, ms, "closed: {end}"),
            Ok(Served::Answered(status)) => tracing::info!(outcome = "answered", status, ms, "answered"),
            Err(refusal) => {
                tracing::info!(outcome = "refused", reason = refusal.reason(), up, down, ms, "refused: {refusal}")
            }
        }
    }
    .instrument(span)
    .await
}

/// A connection's places in the limits, given back on drop.
struct Admission<'a> {
    shared: &'a Shared,
    client: Option<IpAddr>,
    pending: AtomicBool,
}

impl<'a> Admission<'a> {
    fn new(shared: &'a Shared, config: &Config, listener: &Listener, peer: SocketAddr) -> Result<Self, Limit> {
        let limits = &config.limits;
        // Each count is taken, then checked; Drop gives back what was taken.
        shared.active.fetch_add(1, Ordering::AcqRel);
        let mut admission = Admission { shared, client: None, pending: AtomicBool::new(false) };
        if shared.active.load(Ordering::Acquire) > limits.max_connections {
            return Err(Limit::Connections);
        }
        // A trusted load balancer carries many clients: its own address is
        // not one client, so it is not held to the per-client limit.
        if !is_trusted_proxy(listener, peer) {
            let ip = crate::proxy_header::unmap(peer).ip();
            let mut per_client = shared.per_client.lock().unwrap_or_else(|e| e.into_inner());
            let count = per_client.entry(ip).or_insert(0);
            *count += 1;
            admission.client = Some(ip);
            if *count > limits.max_connections_per_client {
                return Err(Limit::PerClient);
            }
        }
        admission.pending.store(true, Ordering::Release);
        if shared.pending.fetch_add(1, Ordering::AcqRel) >= limits.max_pending_handshakes {
            return Err(Limit::PendingHandshakes);
        }
        Ok(admission)
    }

    fn handshake_done(&self) {
        if self.pending.swap(false, Ordering::AcqRel) {
            self.shared.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.handshake_done();
        self.shared.active.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.client {
            let mut per_client = self.shared.per_client.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(count) = per_client.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    per_client.remove(&ip);
                }
            }
        }
    }
}
