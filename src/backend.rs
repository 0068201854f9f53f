//! Backends: a named group of servers, how one is picked, and connecting to
//! it with a timeout and a retry on the next server.

use crate::health::HealthCheck;
use crate::metrics::{Metrics, ServerLabels};
use crate::names::{HostName, Requested};
use crate::proxy_header;
use prometheus_client::metrics::histogram::Histogram;
use serde::Deserialize;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::TcpStream;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Each new connection starts at the next server.
    #[default]
    RoundRobin,
    /// A client address always starts at the same server (seed 002's
    /// `balance source`), so per-client state on a server keeps working.
    SourceHash,
}

/// Where a server is: an address, or a DNS name resolved at each connect so
/// that a home IP that changes is followed without a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerAddress {
    Ip(SocketAddr),
    Dns(HostName, u16),
}

impl ServerAddress {
    pub fn parse(text: &str) -> Result<ServerAddress, String> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(ServerAddress::Ip(addr));
        }
        let (host, port) = text.rsplit_once(':').ok_or("expected host:port")?;
        let port: u16 = port.parse().map_err(|_| format!("bad port {port:?}"))?;
        if port == 0 {
            return Err("port 0".to_owned());
        }
        match HostName::parse(host.as_bytes()) {
            Ok(Requested::Host(name)) => Ok(ServerAddress::Dns(name, port)),
            Ok(Requested::NoName) => Err("expected host:port, IPv6 as [addr]:port".to_owned()),
            Err(e) => Err(e.to_string()),
        }
    }

    pub async fn resolve(&self) -> io::Result<Vec<SocketAddr>> {
        match self {
            ServerAddress::Ip(addr) => Ok(vec![*addr]),
            ServerAddress::Dns(host, port) => Ok(tokio::net::lookup_host((host.as_str(), *port)).await?.collect()),
        }
    }

    /// Connects to the first of its addresses that answers within
    /// `timeout`, with TCP_NODELAY: the hello and small TLS records must not
    /// wait for Nagle. Used for servers and for an agent's gateways and
    /// targets alike.
    pub async fn connect(&self, timeout: Duration) -> io::Result<(TcpStream, SocketAddr)> {
        let mut last = None;
        for addr in self.resolve().await? {
            match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    stream.set_nodelay(true)?;
                    return Ok((stream, addr));
                }
                Ok(Err(e)) => last = Some(e),
                Err(_) => last = Some(io::Error::new(io::ErrorKind::TimedOut, format!("connect to {addr} timed out"))),
            }
        }
        // Made only when needed: an io::Error with a message allocates.
        Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "name resolved to no address")))
    }
}

impl fmt::Display for ServerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerAddress::Ip(addr) => write!(f, "{addr}"),
            ServerAddress::Dns(host, port) => write!(f, "{host}:{port}"),
        }
    }
}

#[derive(Debug)]
pub struct Server {
    pub address: ServerAddress,
    pub max_connections: Option<u32>,
    active: Arc<AtomicUsize>,
    /// Cleared by the health checker while the server fails its checks.
    pub up: AtomicBool,
    /// Its metric labels, made once rather than at every connect.
    pub labels: ServerLabels,
    /// Its member of `connect_seconds`, looked up at the first connect and
    /// kept (as `metrics::RouteMetrics` keeps a route's).
    connect_seconds: OnceLock<Histogram>,
}

impl Server {
    pub fn new(backend: &str, address: ServerAddress, max_connections: Option<u32>) -> Server {
        let labels = ServerLabels { backend: backend.to_owned(), server: address.to_string() };
        Server {
            address,
            max_connections,
            active: Arc::default(),
            up: AtomicBool::new(true),
            labels,
            connect_seconds: OnceLock::new(),
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Takes a connection slot, or `None` when the server is at its maximum.
    pub(crate) fn take_slot(&self) -> Option<ServerSlot> {
        let max = self.max_connections.map_or(usize::MAX, |m| m as usize);
        let previous = self.active.fetch_add(1, Ordering::AcqRel);
        let slot = ServerSlot(self.active.clone());
        (previous < max).then_some(slot)
    }

    /// Counts a connect that succeeded after `elapsed`.
    pub(crate) fn connected(&self, metrics: &Metrics, elapsed: Duration) {
        let lookup = || metrics.connect_seconds.get_or_create(&self.labels).clone();
        self.connect_seconds.get_or_init(lookup).observe(elapsed.as_secs_f64());
    }
}

/// Held for as long as a connection to a server lasts.
#[derive(Debug)]
pub struct ServerSlot(Arc<AtomicUsize>);

impl Drop for ServerSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug)]
pub struct Backend {
    pub name: String,
    pub servers: Vec<Server>,
    pub proxy_protocol: proxy_header::Version,
    pub balance: Balance,
    pub connect_timeout: Duration,
    pub health_check: Option<HealthCheck>,
    /// Set for a backend whose servers are connected agents (tunnel mode):
    /// then `servers` is empty.
    pub tunnel: Option<crate::tunnel::gateway::Via>,
    next: AtomicUsize,
}

/// An open connection to one of a backend's servers. Kept small: it lives
/// as long as the relayed connection.
#[derive(Debug)]
pub struct Upstream {
    pub stream: TcpStream,
    _slot: ServerSlot,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("every server of backend {backend} fails its health checks")]
    AllDown { backend: String },
    #[error("the gateway is out of a resource: {error}")]
    Local { error: io::Error },
    #[error("no agent of group {group} is connected (backend {backend})")]
    NoAgent { backend: String, group: String },
    #[error("every server of backend {backend} is at max_connections")]
    Full { backend: String },
    #[error("no server of backend {backend} answered (last: {server}: {error})")]
    Failed { backend: String, server: String, error: io::Error },
}

impl Backend {
    pub fn new(
        name: String,
        servers: Vec<Server>,
        proxy_protocol: proxy_header::Version,
        balance: Balance,
        connect_timeout: Duration,
        health_check: Option<HealthCheck>,
    ) -> Backend {
        Backend {
            name,
            servers,
            proxy_protocol,
            balance,
            connect_timeout,
            health_check,
            tunnel: None,
            next: AtomicUsize::new(0),
        }
    }

    /// Takes over the health state of the same servers in the config being
    /// replaced, so a reload does not send traffic to a server known to be down.
    pub fn keep_health_of(&self, old: &Backend) {
        for server in &self.servers {
            if let Some(previous) = old.servers.iter().find(|s| s.address == server.address) {
                server.up.store(previous.is_up(), Ordering::Release);
            }
        }
    }

    /// Where a new connection of `client` starts in `servers`, as the
    /// balance policy says; it then tries each following one that is up.
    pub(crate) fn first_server(&self, client: IpAddr) -> Result<usize, ConnectError> {
        if !self.servers.iter().any(Server::is_up) {
            return Err(ConnectError::AllDown { backend: self.name.clone() });
        }
        Ok(match self.balance {
            Balance::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed),
            Balance::SourceHash => {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                client.hash(&mut hasher);
                hasher.finish() as usize
            }
        })
    }

    /// Connects to a server: starting where the balance policy says, then
    /// each following one in turn, so one dead server costs a client at most
    /// one connect timeout.
    pub async fn connect(&self, client: IpAddr, metrics: &Metrics) -> Result<Upstream, ConnectError> {
        let start = self.first_server(client)?;
        let n = self.servers.len();
        let mut last = None;
        for server in (0..n).map(|i| &self.servers[(start + i) % n]).filter(|s| s.is_up()) {
            let Some(slot) = server.take_slot() else { continue };
            let labels = &server.labels;
            let started = std::time::Instant::now();
            match server.address.connect(self.connect_timeout).await {
                Ok((stream, address)) => {
                    server.connected(metrics, started.elapsed());
                    tracing::Span::current().record("server", tracing::field::display(address));
                    return Ok(Upstream { stream, _slot: slot });
                }
                Err(error) if crate::limits::is_local_resource_error(&error) => {
                    // Not the server's fault, and the next would fail alike.
                    return Err(ConnectError::Local { error });
                }
                Err(error) => {
                    metrics.connect_failures.get_or_create(labels).inc();
                    tracing::debug!(backend = %self.name, server = %server.address, %error, "connect failed");
                    last = Some((server.address.to_string(), error));
                }
            }
        }
        match last {
            Some((server, error)) => Err(ConnectError::Failed { backend: self.name.clone(), server, error }),
            None => Err(ConnectError::Full { backend: self.name.clone() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_addresses() {
        assert_eq!(ServerAddress::parse("192.0.2.20:443"), Ok(ServerAddress::Ip("192.0.2.20:443".parse().unwrap())));
        assert_eq!(
            ServerAddress::parse("[2001:db8::20]:443"),
            Ok(ServerAddress::Ip("[2001:db8::20]:443".parse().unwrap()))
        );
        assert!(
            matches!(ServerAddress::parse("Node.Test:443"), Ok(ServerAddress::Dns(h, 443)) if h.as_str() == "node.test")
        );
        for bad in
            ["192.0.2.20", "node.test", "node.test:0", "node.test:99999", "2001:db8::20:443", "no_de.test:80", ":443"]
        {
            assert!(ServerAddress::parse(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn slots_stop_at_max_connections() {
        let server = Server::new("b", ServerAddress::parse("192.0.2.20:443").unwrap(), Some(2));
        let a = server.take_slot().unwrap();
        let _b = server.take_slot().unwrap();
        assert!(server.take_slot().is_none());
        drop(a);
        assert!(server.take_slot().is_some());
    }
}
