//! The gateway's end: agents dial the tunnel listener, authenticate, and
//! join their group; a backend whose servers are a group opens a stream on
//! one of its live agents, round robin, skipping agents that said they
//! cannot reach the target and trying the next one when a stream is refused.
//!
//! The hub outlives config reloads: sessions and their streams stay, agents
//! whose key left the config are disconnected.

use super::auth;
use super::keys::PublicKey;
use super::relay::Stream;
use super::session;
use super::settings::Settings;
use super::status::Lines;
use crate::backend::ConnectError;
use crate::metrics::{AgentLabels, DirectionLabels, GroupLabels, Metrics, ReasonLabels};
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Where a backend's connections go: a group of agents, and the name of the
/// target each agent maps to a local address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    pub group: String,
    pub target: String,
}

/// The connected agents and what new sessions are checked against.
#[derive(Default)]
pub struct Hub {
    current: RwLock<Option<Arc<Current>>>,
    agents: Mutex<HashMap<String, Vec<Arc<Agent>>>>,
    handshakes: AtomicUsize,
    next: AtomicUsize,
}

struct Current {
    settings: Settings,
    acceptor: tokio_rustls::TlsAcceptor,
}

/// One authenticated agent's session.
pub struct Agent {
    key: PublicKey,
    group: String,
    address: SocketAddr,
    requests: h2::client::SendRequest<Bytes>,
    /// Targets the agent said it cannot reach.
    down: Mutex<HashSet<String>>,
    stop: CancellationToken,
    labels: AgentLabels,
}

/// A stream open on an agent, counted in its `tunnel_streams` while held.
pub struct Tunneled {
    pub stream: Stream,
    _slot: StreamSlot,
}

impl std::fmt::Debug for Tunneled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tunneled({})", self._slot.labels.agent)
    }
}

struct StreamSlot {
    metrics: Arc<Metrics>,
    labels: AgentLabels,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.metrics.tunnel_streams.get_or_create(&self.labels).dec();
    }
}

/// Why an agent did not take a stream: the next agent is tried.
#[derive(Debug, thiserror::Error)]
enum OpenError {
    #[error("target {0} is down at this agent")]
    TargetDown(String),
    #[error("{0}")]
    Refused(String),
}

impl Hub {
    /// Takes the settings of a new config: new sessions are checked against
    /// them, and agents no longer listed in the same group are disconnected.
    pub fn configure(&self, settings: Option<&Settings>) {
        let current = settings.map(|settings| {
            let keys = settings.agents.keys().copied().collect();
            let config = auth::gateway_config(&settings.key, keys);
            Arc::new(Current { settings: settings.clone(), acceptor: tokio_rustls::TlsAcceptor::from(config) })
        });
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = current;
        let agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        for agent in agents.values().flatten() {
            let still = settings.and_then(|s| s.agents.get(&agent.key)).is_some_and(|group| *group == agent.group);
            if !still {
                tracing::info!(agent = %agent.key, address = %agent.address, "agent key removed from the config");
                agent.stop.cancel();
            }
        }
    }

    /// Disconnects every agent (at shutdown, once connections are drained).
    pub fn close(&self) {
        self.configure(None);
    }

    pub fn connected(&self, group: &str) -> usize {
        self.agents.lock().unwrap_or_else(|e| e.into_inner()).get(group).map_or(0, Vec::len)
    }

    /// Serves one connection to a tunnel listener: authentication under a
    /// timeout and a limit on handshakes at once, then the session until it
    /// ends. Nothing is kept for a peer before its key is checked.
    pub async fn accept(self: Arc<Self>, stream: TcpStream, peer: SocketAddr, metrics: Arc<Metrics>) {
        let Some(current) = self.current.read().unwrap_or_else(|e| e.into_inner()).clone() else { return };
        let settings = &current.settings;
        let refuse = |reason: &'static str, error: &dyn std::fmt::Display| {
            metrics.tunnel_auth_failures.get_or_create(&ReasonLabels { reason }).inc();
            tracing::info!(address = %peer, reason, "tunnel peer refused: {error}");
        };
        let handshaking = HandshakeSlot::take(&self.handshakes, settings.max_handshakes);
        let Some(handshaking) = handshaking else {
            return refuse("busy", &"too many handshakes at once (tunnel.max_handshakes)");
        };
        let tls = match tokio::time::timeout(settings.handshake_timeout, current.acceptor.accept(stream)).await {
            Err(_) => return refuse("timeout", &"no complete handshake in time"),
            Ok(Err(error)) => return refuse("handshake", &error),
            Ok(Ok(tls)) => tls,
        };
        drop(handshaking);
        let Some((key, group)) = auth::peer_key(tls.get_ref().1.peer_certificates())
            .and_then(|key| Some((key, settings.agents.get(&key)?.clone())))
        else {
            // Cannot happen: the verifier accepted only listed keys.
            return refuse("handshake", &"no listed key after the handshake");
        };
        let (requests, connection) = match session::client_builder().handshake::<_, Bytes>(tls).await {
            Ok(pair) => pair,
            Err(error) => return refuse("session", &error),
        };
        let mut connection = connection;
        let pings = connection.ping_pong().expect("taken once");
        let labels = AgentLabels { group: group.clone(), agent: key.to_string() };
        let agent = Arc::new(Agent {
            key,
            group,
            address: peer,
            requests,
            down: Mutex::default(),
            stop: CancellationToken::new(),
            labels,
        });
        self.join(&agent, &metrics);
        tokio::spawn(read_status(agent.clone()));
        let reason = tokio::select! {
            result = &mut connection => match result {
                Ok(()) => "closed by the agent".to_owned(),
                Err(error) => error.to_string(),
            },
            reason = session::keepalive(pings, settings.keepalive) => reason,
            () = agent.stop.cancelled() => "its key is no longer in the config".to_owned(),
        };
        self.leave(&agent, &metrics, &reason);
    }

    fn join(&self, agent: &Arc<Agent>, metrics: &Metrics) {
        let mut agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        agents.entry(agent.group.clone()).or_default().push(agent.clone());
        let count = agents[&agent.group].len();
        metrics.tunnel_agents.get_or_create(&GroupLabels { group: agent.group.clone() }).set(count as i64);
        tracing::info!(agent = %agent.key, group = %agent.group, address = %agent.address, agents = count, "agent connected");
    }

    fn leave(&self, agent: &Arc<Agent>, metrics: &Metrics, reason: &str) {
        let mut agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        let group = agents.entry(agent.group.clone()).or_default();
        group.retain(|a| !Arc::ptr_eq(a, agent));
        let count = group.len();
        metrics.tunnel_agents.get_or_create(&GroupLabels { group: agent.group.clone() }).set(count as i64);
        tracing::info!(agent = %agent.key, group = %agent.group, address = %agent.address, agents = count, "agent disconnected: {reason}");
    }

    /// Opens a stream to `via.target` on an agent of `via.group` and sends
    /// `first` (the PROXY header and the client's first bytes) on it.
    pub async fn open(
        &self,
        backend: &str,
        via: &Via,
        first: Bytes,
        timeout: Duration,
        metrics: &Arc<Metrics>,
    ) -> Result<Tunneled, ConnectError> {
        let agents = self.agents.lock().unwrap_or_else(|e| e.into_inner()).get(&via.group).cloned().unwrap_or_default();
        if agents.is_empty() {
            return Err(ConnectError::NoAgent { backend: backend.to_owned(), group: via.group.clone() });
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last = None;
        for agent in (0..agents.len()).map(|i| &agents[(start + i) % agents.len()]) {
            if agent.is_down(&via.target) {
                last = Some((agent, OpenError::TargetDown(via.target.clone())));
                continue;
            }
            match tokio::time::timeout(timeout, agent.open(&via.target, first.clone())).await {
                Ok(Ok(stream)) => {
                    metrics.tunnel_streams.get_or_create(&agent.labels).inc();
                    tracing::Span::current().record("server", tracing::field::display(&agent.key));
                    let slot = StreamSlot { metrics: metrics.clone(), labels: agent.labels.clone() };
                    return Ok(Tunneled { stream, _slot: slot });
                }
                Ok(Err(error)) => {
                    if let OpenError::TargetDown(target) = &error {
                        agent.down.lock().unwrap_or_else(|e| e.into_inner()).insert(target.clone());
                    }
                    tracing::debug!(agent = %agent.key, %error, "agent did not take the stream");
                    last = Some((agent, error));
                }
                Err(_) => last = Some((agent, OpenError::Refused(format!("no answer within {timeout:?}")))),
            }
        }
        let (agent, error) = last.expect("at least one agent was tried");
        Err(ConnectError::Failed {
            backend: backend.to_owned(),
            server: format!("agent {}", agent.key),
            error: io::Error::other(error.to_string()),
        })
    }
}

impl Agent {
    fn is_down(&self, target: &str) -> bool {
        self.down.lock().unwrap_or_else(|e| e.into_inner()).contains(target)
    }

    async fn open(&self, target: &str, first: Bytes) -> Result<Stream, OpenError> {
        let refused = |e: h2::Error| OpenError::Refused(e.to_string());
        let mut requests = self.requests.clone().ready().await.map_err(refused)?;
        let request = http::Request::post(format!("http://tunnel/{target}")).body(()).expect("a valid request");
        let (response, mut send) = requests.send_request(request, false).map_err(refused)?;
        // Sent at once, with the request: no round trip is spent before it.
        send.send_data(first, false).map_err(refused)?;
        let response = response.await.map_err(refused)?;
        match response.status() {
            http::StatusCode::OK => Ok(Stream { send, recv: response.into_body() }),
            http::StatusCode::SERVICE_UNAVAILABLE => Err(OpenError::TargetDown(target.to_owned())),
            status => Err(OpenError::Refused(format!("answered {status}"))),
        }
    }
}

/// Follows the agent's status channel until the session ends.
async fn read_status(agent: Arc<Agent>) {
    let result: Result<(), String> = async {
        let mut requests = agent.requests.clone().ready().await.map_err(|e| e.to_string())?;
        let request = http::Request::get("http://tunnel/status").body(()).expect("a valid request");
        let (response, _send) = requests.send_request(request, true).map_err(|e| e.to_string())?;
        let mut body = response.await.map_err(|e| e.to_string())?.into_body();
        let mut lines = Lines::default();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|e| e.to_string())?;
            let _ = body.flow_control().release_capacity(chunk.len());
            lines
                .push(&chunk, |status| {
                    tracing::info!(agent = %agent.key, target = status.target, up = status.up, "agent status");
                    let mut down = agent.down.lock().unwrap_or_else(|e| e.into_inner());
                    if status.up {
                        down.remove(status.target);
                    } else {
                        down.insert(status.target.to_owned());
                    }
                })
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
    .await;
    if let Err(error) = result {
        tracing::debug!(agent = %agent.key, %error, "status channel ended");
    }
}

/// A place among the handshakes in progress, given back on drop.
struct HandshakeSlot<'a>(&'a AtomicUsize);

impl<'a> HandshakeSlot<'a> {
    fn take(count: &'a AtomicUsize, max: usize) -> Option<Self> {
        let slot = HandshakeSlot(count);
        (count.fetch_add(1, Ordering::AcqRel) < max).then_some(slot)
    }
}

impl Drop for HandshakeSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The gateway's relay for a tunneled connection: the client socket and the
/// stream, counted in the tunnel's bytes too. `one_request`: only the bytes
/// sent with the opening go up (an ACME challenge fetch); what the client
/// sends after them is dropped.
pub async fn relay(
    client: &mut TcpStream,
    upstream: Box<Tunneled>,
    idle: Duration,
    counters: &crate::relay::Counters,
    metrics: &Metrics,
    one_request: bool,
) -> Option<crate::relay::RelayEnd> {
    let before = (counters.up.load(Ordering::Relaxed), counters.down.load(Ordering::Relaxed));
    let Tunneled { stream, _slot } = *upstream;
    let end = super::relay::relay(client, stream, idle, counters, one_request).await.err();
    let up = counters.up.load(Ordering::Relaxed) - before.0;
    let down = counters.down.load(Ordering::Relaxed) - before.1;
    metrics.tunnel_bytes.get_or_create(&DirectionLabels { direction: "up" }).inc_by(up);
    metrics.tunnel_bytes.get_or_create(&DirectionLabels { direction: "down" }).inc_by(down);
    end
}
