//! Active health checks: each checked server is probed every `interval`;
//! `fall` failures in a row take it out of rotation, `rise` successes bring
//! it back. Transitions are logged and shown in `sni_edge_backend_server_up`.
//!
//! A probe sends the backend's PROXY header in its LOCAL form (the form meant
//! for health checks) first, so an ingress that requires the header does not
//! log every probe as a broken connection.

use crate::backend::{Backend, Server};
use crate::config::Config;
use crate::hello;
use crate::limits::is_local_resource_error;
use crate::metrics::Metrics;
use crate::proxy_header;
use serde::Deserialize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// `tcp`: the connect must succeed. `tls`: also send a ClientHello and
    /// get a TLS record back (any handshake or alert record: the server speaks TLS).
    #[serde(default)]
    pub kind: CheckKind,
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Successes in a row that bring a down server back.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Failures in a row that take an up server out.
    #[serde(default = "default_fall")]
    pub fall: u32,
    /// The SNI of a `tls` probe; none by default.
    #[serde(default)]
    pub server_name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    #[default]
    Tcp,
    Tls,
}

fn default_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}

/// Starts one checker per checked server of `config`; they stop with `stop`.
pub fn spawn_all(config: &Config, metrics: &Arc<Metrics>, stop: &CancellationToken) {
    for backend in &config.backends {
        for (index, server) in backend.servers.iter().enumerate() {
            metrics.server_up.get_or_create(&server.labels).set(i64::from(server.is_up()));
            if let Some(check) = &backend.health_check {
                let task = watch(backend.clone(), index, check.clone(), metrics.clone());
                let stop = stop.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        () = task => {}
                        () = stop.cancelled() => {}
                    }
                });
            }
        }
    }
}

async fn watch(backend: Arc<Backend>, index: usize, check: HealthCheck, metrics: Arc<Metrics>) {
    let server = &backend.servers[index];
    let labels = &server.labels;
    let (mut successes, mut failures) = (0u32, 0u32);
    let mut ticks = tokio::time::interval(check.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let result = match tokio::time::timeout(check.timeout, probe(&backend, server, &check)).await {
            Ok(Err(ProbeError::Local(error))) => {
                // Out of descriptors or memory here says nothing of the
                // server: this probe does not count either way.
                tracing::warn!(backend = %backend.name, server = %server.address, %error, "health check skipped: the gateway is out of a resource");
                continue;
            }
            Ok(Err(ProbeError::Failed(error))) => Err(error),
            Ok(Ok(())) => Ok(()),
            Err(_) => Err(format!("no answer within {:?}", check.timeout)),
        };
        let up = server.is_up();
        match result {
            Ok(()) => {
                failures = 0;
                successes = successes.saturating_add(1);
                if !up && successes >= check.rise {
                    server.up.store(true, Ordering::Release);
                    metrics.server_up.get_or_create(labels).set(1);
                    tracing::info!(backend = %backend.name, server = %server.address, "server up");
                }
            }
            Err(error) => {
                successes = 0;
                failures = failures.saturating_add(1);
                if up && failures >= check.fall {
                    server.up.store(false, Ordering::Release);
                    metrics.server_up.get_or_create(labels).set(0);
                    tracing::warn!(backend = %backend.name, server = %server.address, %error, "server down");
                } else {
                    tracing::debug!(backend = %backend.name, server = %server.address, %error, "health check failed");
                }
            }
        }
    }
}

/// Why a probe did not succeed.
enum ProbeError {
    /// The gateway itself is out of a resource (see `is_local_resource_error`).
    Local(std::io::Error),
    /// The server failed the check.
    Failed(String),
}

impl From<std::io::Error> for ProbeError {
    fn from(error: std::io::Error) -> Self {
        if is_local_resource_error(&error) {
            ProbeError::Local(error)
        } else {
            ProbeError::Failed(error.to_string())
        }
    }
}

impl From<String> for ProbeError {
    fn from(error: String) -> Self {
        ProbeError::Failed(error)
    }
}

async fn probe(backend: &Backend, server: &Server, check: &HealthCheck) -> Result<(), ProbeError> {
    let addresses = server.address.resolve().await?;
    let address = addresses.first().ok_or_else(|| "the name resolved to no address".to_owned())?;
    let mut stream = TcpStream::connect(address).await?;
    let mut probe = proxy_header::encode_local(backend.proxy_protocol);
    if check.kind == CheckKind::Tls {
        probe.extend_from_slice(&hello::build(check.server_name.as_deref()));
    }
    stream.write_all(&probe).await?;
    if check.kind == CheckKind::Tls {
        let mut record = [0u8; 5];
        stream.read_exact(&mut record).await.map_err(|e| format!("no TLS answer: {e}"))?;
        // A handshake (22) or alert (21) record of TLS 1.x: a TLS server answered.
        if !matches!(record, [21 | 22, 3, ..]) {
            return Err(format!("not a TLS answer: {record:02x?}").into());
        }
    }
    Ok(())
}
