//! How a connection ended. The log line, the metrics and the refusal path
//! all match on these types, so a new reason cannot be logged but not
//! counted.

use crate::backend::ConnectError;
use crate::backend::Upstream;
use crate::hello::HelloError;
use crate::proxy_header::ProxyHeaderError;
use std::io;
use std::time::Duration;

/// What a listener's path decided for a connection it accepted.
#[derive(Debug)]
pub enum Served {
    /// Connected upstream, header and first bytes sent: relay next.
    /// `one_request`: those bytes were one HTTP request (an ACME challenge
    /// fetch); relay the answer back, and nothing more from the client.
    Forwarded { to: To, one_request: bool },
    /// Answered by the gateway itself (HTTP redirect or error).
    Answered(u16),
}

/// Where a forwarded connection's bytes go.
#[derive(Debug)]
pub enum To {
    /// A server's socket.
    Server(Upstream),
    /// A tunnel stream to an agent (boxed: it is larger, and every
    /// connection's future would reserve its size).
    Agent(Box<crate::tunnel::gateway::Tunneled>),
}

/// Why a connection was refused. Nothing was sent upstream for any of these.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("no server name (missing SNI, empty, or an IP address)")]
    NoName,
    #[error("{0} matches no route")]
    UnknownName(String),
    #[error(transparent)]
    BadHello(#[from] HelloError),
    #[error(transparent)]
    BadProxyHeader(#[from] ProxyHeaderError),
    #[error("bad HTTP request: {0}")]
    BadRequest(&'static str),
    #[error("nothing complete arrived within {0:?}")]
    Timeout(Duration),
    #[error("client closed the connection first")]
    ClosedEarly,
    #[error("more than {0} bytes before a complete message")]
    TooLarge(usize),
    #[error(transparent)]
    Backend(#[from] ConnectError),
    #[error("limit reached: {0}")]
    Limit(Limit),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("gateway stopping")]
    ShuttingDown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Limit {
    #[error("limits.max_connections")]
    Connections,
    #[error("limits.max_pending_handshakes")]
    PendingHandshakes,
    #[error("limits.max_connections_per_client")]
    PerClient,
    #[error("limits.max_pending_per_client")]
    PendingPerClient,
    #[error("limits.max_buffered_bytes")]
    Buffered,
}

impl Refusal {
    /// A short stable label, for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NoName => "no_sni",
            Refusal::UnknownName(_) => "unknown_name",
            Refusal::BadHello(HelloError::NotTls) => "not_tls",
            Refusal::BadHello(HelloError::InvalidName(_)) => "invalid_name",
            Refusal::BadHello(_) => "malformed_hello",
            Refusal::BadProxyHeader(_) => "bad_proxy_header",
            Refusal::BadRequest(_) => "bad_request",
            Refusal::Timeout(_) => "timeout",
            Refusal::ClosedEarly => "closed_early",
            Refusal::TooLarge(_) => "too_large",
            Refusal::Backend(ConnectError::Full { .. }) => "backend_full",
            Refusal::Backend(ConnectError::AllDown { .. }) => "backend_unhealthy",
            Refusal::Backend(ConnectError::Failed { .. }) => "backend_down",
            Refusal::Backend(ConnectError::Local { .. }) => "local_resources",
            Refusal::Backend(ConnectError::NoAgent { .. }) => "no_agent",
            Refusal::Limit(Limit::Connections) => "limit_connections",
            Refusal::Limit(Limit::PendingHandshakes) => "limit_pending",
            Refusal::Limit(Limit::PerClient) => "limit_per_client",
            Refusal::Limit(Limit::PendingPerClient) => "limit_pending_per_client",
            Refusal::Limit(Limit::Buffered) => "limit_buffered",
            Refusal::Io(_) => "io_error",
            Refusal::ShuttingDown => "shutting_down",
        }
    }
}
