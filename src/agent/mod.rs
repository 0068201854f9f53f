//! The agent: the home end of tunnel mode. It dials every configured
//! gateway and keeps a session to each (reconnecting with jittered
//! exponential backoff); for each stream a gateway opens it connects to the
//! named local target and relays both ways. It listens on nothing (except an
//! optional metrics address) and needs no capability.
//!
//! A target it cannot reach is reported on the status channel and its
//! streams are refused at once (503), so the gateway uses another agent; it
//! is tried again every keepalive interval until it answers.

pub mod config;

use crate::backend::ServerAddress;
use crate::metrics::{GatewayLabels, Metrics};
use crate::relay::Counters;
use crate::tunnel::relay::{relay, Stream};
use crate::tunnel::status::{self, Status};
use crate::tunnel::{auth, session};
use bytes::Bytes;
use config::{AgentConfig, Gateway};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// A session that lasted this long was healthy: the next dial starts again
/// from the shortest delay.
const HEALTHY_SESSION: Duration = Duration::from_secs(10);

/// What every session of this agent shares.
struct Shared {
    config: AgentConfig,
    targets: BTreeMap<String, Target>,
    /// Bumped whenever a target goes up or down, for the status channels.
    changes: watch::Sender<u64>,
    metrics: Arc<Metrics>,
}

struct Target {
    address: ServerAddress,
    up: AtomicBool,
    /// Set while a task retries it.
    probing: AtomicBool,
}

/// Runs the agent until `stop`.
pub async fn run(config: AgentConfig, metrics: Arc<Metrics>, stop: CancellationToken) {
    let targets = config
        .targets
        .iter()
        .map(|(name, address)| {
            let target =
                Target { address: address.clone(), up: AtomicBool::new(true), probing: AtomicBool::new(false) };
            (name.clone(), target)
        })
        .collect();
    let shared = Arc::new(Shared { config, targets, changes: watch::channel(0).0, metrics });
    let mut dialers = tokio::task::JoinSet::new();
    for gateway in shared.config.gateways.clone() {
        let span = tracing::info_span!("gateway", address = %gateway.address);
        dialers.spawn(dial_forever(shared.clone(), gateway, stop.clone()).instrument(span));
    }
    while dialers.join_next().await.is_some() {}
}

/// Keeps one gateway's session up: dial, serve until it ends, wait, again.
async fn dial_forever(shared: Arc<Shared>, gateway: Gateway, stop: CancellationToken) {
    let reconnect = &shared.config.reconnect;
    let labels = GatewayLabels { gateway: gateway.address.to_string() };
    let mut delay = reconnect.min_delay;
    loop {
        let started = Instant::now();
        let ended = tokio::select! {
            ended = session(&shared, &gateway) => ended,
            () = stop.cancelled() => return,
        };
        shared.metrics.tunnel_sessions.get_or_create(&labels).set(0);
        shared.metrics.tunnel_reconnects.get_or_create(&labels).inc();
        if started.elapsed() >= HEALTHY_SESSION {
            delay = reconnect.min_delay;
        }
        // Half to all of the delay: agents that lost the gateway together
        // do not all come back in the same instant.
        let wait = delay.mul_f64(0.5 + 0.5 * random_fraction());
        match ended {
            Ok(reason) => tracing::warn!(retry_in = ?wait, "session ended: {reason}"),
            Err(error) => tracing::warn!(retry_in = ?wait, "cannot reach the gateway: {error:#}"),
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return,
        }
        delay = (delay * 2).min(reconnect.max_delay);
    }
}

fn random_fraction() -> f64 {
    use ring::rand::SecureRandom;
    let mut bytes = [0; 4];
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX)
}

/// One session: connect, authenticate, then serve streams until the
/// gateway goes away or stops answering pings.
async fn session(shared: &Arc<Shared>, gateway: &Gateway) -> anyhow::Result<String> {
    use anyhow::Context;
    let timeouts = &shared.config.timeouts;
    let (tcp, _) = gateway.address.connect(timeouts.connect).await.context("connecting")?;
    let local = tcp.local_addr()?;
    let tls_config = auth::agent_config(&shared.config.key, gateway.key);
    let connector = tokio_rustls::TlsConnector::from(tls_config);
    let tls = tokio::time::timeout(timeouts.handshake, connector.connect(auth::server_name(), tcp))
        .await
        .context("TLS handshake timed out")?
        .context("TLS handshake (is gateways[].public_key the gateway's key, and this agent's key listed there?)")?;
    let mut connection = tokio::time::timeout(timeouts.handshake, session::server_builder().handshake(tls))
        .await
        .context("session handshake timed out")?
        .context("session handshake")?;
    let pings = connection.ping_pong().context("keepalive")?;
    tracing::info!(gateway = %gateway.key, %local, "connected to the gateway");
    let labels = GatewayLabels { gateway: gateway.address.to_string() };
    shared.metrics.tunnel_sessions.get_or_create(&labels).set(1);
    crate::systemd::status(&format!("connected to {}", gateway.address));
    let keepalive = session::keepalive(pings, shared.config.keepalive);
    tokio::pin!(keepalive);
    loop {
        tokio::select! {
            next = connection.accept() => match next {
                Some(Ok((request, respond))) => {
                    tokio::spawn(serve_stream(shared.clone(), request, respond));
                }
                Some(Err(error)) => return Ok(format!("session error: {error}")),
                None => return Ok("closed by the gateway".to_owned()),
            },
            reason = &mut keepalive => return Ok(reason),
        }
    }
}

/// One stream from the gateway: the status channel (GET), or a connection
/// to a target (POST /NAME).
async fn serve_stream(
    shared: Arc<Shared>,
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
) {
    let name = request.uri().path().trim_start_matches('/').to_owned();
    if request.method() == http::Method::GET {
        return send_status(&shared, respond).await;
    }
    let Some(target) = shared.targets.get(&name).filter(|_| request.method() == http::Method::POST) else {
        tracing::warn!(target = %name, "the gateway asked for a target not in targets");
        return respond.send_reset(h2::Reason::REFUSED_STREAM);
    };
    let span = tracing::info_span!("stream", target = %name);
    async {
        let mut socket = match target.address.connect(shared.config.timeouts.connect).await {
            Ok((socket, _)) => socket,
            Err(error) => {
                tracing::warn!(address = %target.address, %error, "target unreachable; refusing its streams");
                mark_down(&shared, &name);
                let refusal = http::Response::builder().status(503).body(()).expect("a valid response");
                let _ = respond.send_response(refusal, true);
                return;
            }
        };
        let ok = http::Response::new(());
        let send = match respond.send_response(ok, false) {
            Ok(send) => send,
            Err(error) => return tracing::debug!(%error, "stream gone before it started"),
        };
        let counters = Counters::default();
        let stream = Stream { send, recv: request.into_body() };
        let end = relay(&mut socket, stream, shared.config.timeouts.idle, &counters, false).await.err();
        let (up, down) = (counters.up.load(Ordering::Relaxed), counters.down.load(Ordering::Relaxed));
        match end {
            None => tracing::debug!(up, down, "stream closed"),
            Some(end) => tracing::debug!(up, down, "stream closed: {end}"),
        }
    }
    .instrument(span)
    .await
}

/// Marks a target down, tells the gateways, and retries it until it answers.
fn mark_down(shared: &Arc<Shared>, name: &str) {
    let target = &shared.targets[name];
    target.up.store(false, Ordering::Release);
    shared.changes.send_modify(|n| *n += 1);
    if target.probing.swap(true, Ordering::AcqRel) {
        return;
    }
    let (shared, name) = (shared.clone(), name.to_owned());
    tokio::spawn(async move {
        let target = &shared.targets[&name];
        loop {
            tokio::time::sleep(shared.config.keepalive.interval).await;
            if target.address.connect(shared.config.timeouts.connect).await.is_ok() {
                break;
            }
        }
        tracing::info!(target = %name, "target reachable again");
        target.up.store(true, Ordering::Release);
        target.probing.store(false, Ordering::Release);
        shared.changes.send_modify(|n| *n += 1);
    });
}

/// The status channel: every target's state now, then again at each change.
async fn send_status(shared: &Shared, mut respond: h2::server::SendResponse<Bytes>) {
    let Ok(mut send) = respond.send_response(http::Response::new(()), false) else { return };
    let mut changes = shared.changes.subscribe();
    loop {
        changes.mark_unchanged();
        let lines: String = shared
            .targets
            .iter()
            .map(|(name, t)| status::line(Status { target: name, up: t.up.load(Ordering::Acquire) }))
            .collect();
        if send.send_data(Bytes::from(lines), false).is_err() {
            return;
        }
        // Ends with the session (the stream is reset then), so no task is
        // left waiting for changes of a gateway that is gone.
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = std::future::poll_fn(|cx| send.poll_reset(cx)) => return,
        }
    }
}
