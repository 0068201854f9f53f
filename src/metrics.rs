//! Prometheus metrics: what the gateway counts, and the endpoint that
//! serves them in the text format.
//!
//! Everything is counted where the connection's one log line is written
//! (`server.rs`), from the same [`Refusal`](crate::outcome::Refusal) and
//! [`Served`](crate::outcome::Served) values, so logs and metrics agree.

use crate::config::Protocol;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub protocol: &'static str,
    /// Empty when the connection was refused before a route was found.
    pub route: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BytesLabels {
    pub route: String,
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabels {
    pub backend: String,
    pub server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    pub group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentLabels {
    pub group: String,
    /// The agent's public key.
    pub agent: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GatewayLabels {
    pub gateway: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// 0.5 ms to about 8 s: from a loopback connect to a slow client's hello.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 15))
}

pub struct Metrics {
    registry: Registry,
    pub connections: Family<ConnectionLabels, Counter>,
    pub refusals: Family<ReasonLabels, Counter>,
    pub bytes: Family<BytesLabels, Counter>,
    pub active: Gauge,
    pub client_hello_seconds: Histogram,
    pub server_up: Family<ServerLabels, Gauge>,
    pub connect_seconds: HistogramFamily<ServerLabels>,
    pub connect_failures: Family<ServerLabels, Counter>,
    pub reloads: Family<ResultLabels, Counter>,
    pub last_reload_success: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub last_reload_failure: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub tunnel_agents: Family<GroupLabels, Gauge>,
    pub tunnel_streams: Family<AgentLabels, Gauge>,
    pub tunnel_bytes: Family<DirectionLabels, Counter>,
    pub tunnel_auth_failures: Family<ReasonLabels, Counter>,
    pub tunnel_reconnects: Family<GatewayLabels, Counter>,
    pub tunnel_sessions: Family<GatewayLabels, Gauge>,
    /// The per-connection members of connections refused before a route.
    pub unrouted: RouteMetrics,
}

/// How a connection ended: its `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Relayed,
    Answered,
    Refused,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Relayed => "relayed",
            Outcome::Answered => "answered",
            Outcome::Refused => "refused",
        }
    }
}

/// The members of `connections` and `bytes` that one route's connections
/// count in, each looked up in its family at its first use (so that a route
/// shows no series for what never happened to it) and kept: a connection
/// then costs no hashing of labels and no lock. A family never drops a
/// member, so a kept handle is the one the endpoint encodes. A config, and
/// so its routes, is served by one server with one `Metrics`
/// (`server::run` takes it by value).
#[derive(Debug, Default)]
pub struct RouteMetrics {
    /// Up, down.
    bytes: [OnceLock<Counter>; 2],
    /// At `protocol * 3 + outcome`, in the order of their variants.
    connections: [OnceLock<Counter>; 9],
}

impl RouteMetrics {
    /// Counts one ended connection of `route` ("" before a route was found)
    /// and the bytes it moved each way.
    pub fn count(&self, metrics: &Metrics, route: &str, protocol: Protocol, outcome: Outcome, moved: [u64; 2]) {
        if moved.iter().any(|&n| n > 0) {
            for ((kept, direction), n) in self.bytes.iter().zip(["up", "down"]).zip(moved) {
                let lookup =
                    || metrics.bytes.get_or_create(&BytesLabels { route: route.to_owned(), direction }).clone();
                kept.get_or_init(lookup).inc_by(n);
            }
        }
        let labels =
            || ConnectionLabels { protocol: protocol.label(), route: route.to_owned(), outcome: outcome.label() };
        self.connections[protocol as usize * 3 + outcome as usize]
            .get_or_init(|| metrics.connections.get_or_create(&labels()).clone())
            .inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("sni_edge");
        let connections = Family::default();
        registry.register("connections", "Connections ended, by protocol, route and outcome", connections.clone());
        let refusals = Family::default();
        registry.register("refusals", "Refused connections, by reason (nothing was sent upstream)", refusals.clone());
        let bytes = Family::default();
        registry.register("bytes", "Bytes relayed, by route and direction (up: client to server)", bytes.clone());
        let active = Gauge::default();
        registry.register("active_connections", "Connections open now", active.clone());
        let client_hello_seconds = latency_histogram();
        registry.register(
            "client_hello_seconds",
            "Time from accept to a complete ClientHello or HTTP request head",
            client_hello_seconds.clone(),
        );
        let server_up = Family::default();
        registry.register("backend_server_up", "1 if the server passes its health checks", server_up.clone());
        let connect_seconds = HistogramFamily::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register("backend_connect_seconds", "Time to connect to a backend server", connect_seconds.clone());
        let connect_failures = Family::default();
        registry.register("backend_connect_failures", "Failed connects to a backend server", connect_failures.clone());
        let reloads = Family::default();
        registry.register("reloads", "Config reloads, by result", reloads.clone());
        let last_reload_success = Gauge::default();
        registry.register(
            "last_reload_success_timestamp_seconds",
            "When the config was last loaded successfully (start or reload)",
            last_reload_success.clone(),
        );
        let last_reload_failure = Gauge::default();
        registry.register(
            "last_reload_failure_timestamp_seconds",
            "When a reload last failed (0: never)",
            last_reload_failure.clone(),
        );
        let tunnel_agents = Family::default();
        registry.register("tunnel_agents", "Agents connected now, by group", tunnel_agents.clone());
        let tunnel_streams = Family::default();
        registry.register("tunnel_streams", "Tunnel streams open now, by agent", tunnel_streams.clone());
        let tunnel_bytes = Family::default();
        registry.register("tunnel_bytes", "Bytes relayed through tunnel streams, by direction", tunnel_bytes.clone());
        let tunnel_auth_failures = Family::default();
        registry.register(
            "tunnel_auth_failures",
            "Peers of the tunnel listener refused before a session, by reason",
            tunnel_auth_failures.clone(),
        );
        let tunnel_reconnects = Family::default();
        registry.register(
            "tunnel_reconnects",
            "Agent: sessions to a gateway lost or failed (each is followed by a new dial)",
            tunnel_reconnects.clone(),
        );
        let tunnel_sessions = Family::default();
        registry.register("tunnel_sessions", "Agent: 1 while a session to the gateway is up", tunnel_sessions.clone());
        Metrics {
            tunnel_agents,
            tunnel_streams,
            tunnel_bytes,
            tunnel_auth_failures,
            tunnel_reconnects,
            tunnel_sessions,
            registry,
            connections,
            refusals,
            bytes,
            active,
            client_hello_seconds,
            server_up,
            connect_seconds,
            connect_failures,
            reloads,
            last_reload_success,
            last_reload_failure,
            unrouted: RouteMetrics::default(),
        }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    pub fn reload(&self, ok: bool) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs_f64();
        if ok {
            self.last_reload_success.set(now);
        } else {
            self.last_reload_failure.set(now);
        }
        self.reloads.get_or_create(&ResultLabels { result: if ok { "success" } else { "failure" } }).inc();
    }
}

/// Serves the metrics on `listener` until `stop`: any GET answers with the
/// text format. Kept minimal on purpose; it is meant for a local scraper.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, stop: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), answer(stream, &metrics)).await;
        });
    }
}

async fn answer(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        if stream.read_buf(&mut head).await? == 0 {
            return Ok(());
        }
    }
    let response = if head.starts_with(b"GET ") {
        let body = metrics.encode();
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    } else {
        "HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
    };
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Where the metrics listener runs, so a reload can move it.
pub struct Endpoint {
    pub address: SocketAddr,
    pub stop: CancellationToken,
}
