use anyhow::Context;
use clap::{Parser, Subcommand};
use sni_edge::agent::config::{is_agent_config, AgentConfig};
use sni_edge::config::{Config, LogLevel};
use sni_edge::server::{self, Control};
use sni_edge::tunnel::keys::PrivateKey;
use std::path::PathBuf;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

/// Edge gateway: routes TLS connections by server name (SNI) without
/// decrypting them, adds a PROXY protocol header so the backend sees the
/// real client address, redirects HTTP to HTTPS and passes ACME http-01
/// challenges through. Names not listed get nothing.
#[derive(Parser)]
#[command(
    version,
    after_help = "Examples:\n  \
    sni-edge check --config /etc/sni-edge/config.json\n  \
    sni-edge run --config /etc/sni-edge/config.json --log-level debug\n\n\
    Signals: SIGHUP re-reads the config (an invalid file is logged and the running config stays);\n\
    SIGTERM or SIGINT stops accepting and lets connections finish for up to timeouts.shutdown.\n\
    The config format is documented in the README, section \"Configuration\"."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// The JSON config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Overrides log.level from the config.
        #[arg(long, value_enum)]
        log_level: Option<LogLevel>,
    },
    /// Check a config file (gateway or agent) and exit: 0 if valid, 1 with the error and its place if not.
    Check {
        /// The JSON config file. One with a top-level "gateways" key is an agent's.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the agent (tunnel mode, at home): dial the gateways, serve their streams.
    Agent {
        /// The agent's JSON config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Overrides log.level from the config.
        #[arg(long, value_enum)]
        log_level: Option<LogLevel>,
    },
    /// Write a new tunnel private key to a file (mode 0600, never overwritten) and print its public key.
    Keygen {
        /// Where to write the private key.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the public key of a tunnel private key file.
    Pubkey {
        /// The private key file.
        #[arg(long)]
        key: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    match Cli::parse().command {
        Command::Check { config } if is_agent_file(&config) => match AgentConfig::load(&config) {
            Ok(c) => {
                println!(
                    "ok: {}: agent {} of {} gateways, {} targets",
                    config.display(),
                    c.key.public(),
                    c.gateways.len(),
                    c.targets.len()
                );
                std::process::ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Command::Check { config } => match Config::load(&config) {
            Ok(c) => {
                // The service's own limit may differ from this shell's (for
                // example LimitNOFILE= in its unit): a warning, not an error.
                if let Ok((_, hard)) = sni_edge::limits::open_files_limit() {
                    if let Err(e) = c.limits.check_descriptors(hard) {
                        eprintln!("warning: {e} (checked against this shell's hard limit)");
                    }
                }
                println!(
                    "ok: {}: {} listeners, {} routes with {} names, {} backends",
                    config.display(),
                    c.listeners.len(),
                    c.routes.len(),
                    c.matcher.len(),
                    c.backends.len()
                );
                std::process::ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Command::Run { config, log_level } => done(run(config, log_level)),
        Command::Agent { config, log_level } => done(agent(config, log_level)),
        Command::Keygen { out } => {
            let key = PrivateKey::generate();
            match key.write_new(&out) {
                Ok(()) => {
                    println!("{}", key.public());
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => fail(format!("{}: {e}", out.display())),
            }
        }
        Command::Pubkey { key } => match PrivateKey::read(&key) {
            Ok(key) => {
                println!("{}", key.public());
                std::process::ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
    }
}

fn fail(error: impl std::fmt::Display) -> std::process::ExitCode {
    eprintln!("error: {error}");
    std::process::ExitCode::FAILURE
}

fn done(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => fail(format!("{e:#}")),
    }
}

/// An unreadable file is left to the gateway's loader, which says why.
fn is_agent_file(path: &std::path::Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|text| is_agent_config(&text))
}

fn agent(path: PathBuf, log_level: Option<LogLevel>) -> anyhow::Result<()> {
    let config = AgentConfig::load(&path)?;
    sni_edge::logging::init(log_level.unwrap_or(config.log.level), config.log.format)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async {
        let metrics = std::sync::Arc::new(sni_edge::metrics::Metrics::default());
        let stop = tokio_util::sync::CancellationToken::new();
        if let Some(wanted) = &config.metrics {
            let socket =
                server::bind(wanted.address).with_context(|| format!("cannot serve metrics on {}", wanted.address))?;
            tokio::spawn(sni_edge::metrics::serve(socket, metrics.clone(), stop.clone()));
        }
        tracing::info!(key = %config.key.public(), gateways = config.gateways.len(), "agent starting");
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut hangup = signal(SignalKind::hangup())?;
        let agent = tokio::spawn(sni_edge::agent::run(config, metrics, stop.clone()));
        sni_edge::systemd::ready("dialing the gateways");
        loop {
            tokio::select! {
                _ = terminate.recv() => break,
                _ = interrupt.recv() => break,
                // Not the default (which ends the process): a reload request must not drop sessions.
                _ = hangup.recv() => tracing::warn!("the agent does not reload its config; restart it to apply changes"),
            }
        }
        sni_edge::systemd::stopping();
        stop.cancel();
        let _ = agent.await;
        tracing::info!("stopped");
        Ok(())
    })
}

fn run(path: PathBuf, log_level: Option<LogLevel>) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    sni_edge::logging::init(log_level.unwrap_or(config.log.level), config.log.format)?;
    let (soft, hard) = sni_edge::limits::raise_open_files_limit().context("reading the open files limit")?;
    tracing::info!(soft, hard, max_connections = config.limits.max_connections(), "open files limit");
    config.limits.check_descriptors(soft).map_err(anyhow::Error::msg)?;
    let runtime = runtime().context("starting the runtime")?;
    runtime.block_on(async {
        // Sockets from a systemd socket unit, if any, are used for their addresses.
        let inherited = sni_edge::systemd::inherited_listeners().context("taking sockets from systemd")?;
        let listeners = server::bind_all(&config, inherited)?;
        let (control, requests) = mpsc::channel(8);
        let mut hangup = signal(SignalKind::hangup())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        tokio::spawn(async move {
            loop {
                let request = tokio::select! {
                    _ = hangup.recv() => Control::Reload,
                    _ = terminate.recv() => Control::Shutdown,
                    _ = interrupt.recv() => Control::Shutdown,
                };
                if control.send(request).await.is_err() {
                    return;
                }
            }
        });
        server::run(Some(path), config, listeners, requests).await
    })
}

/// With one CPU (a one-vCPU VPS, or a process pinned with taskset) tokio's
/// current-thread scheduler: every task runs on this thread, with none of the
/// multi-thread scheduler's bookkeeping per task poll and no hand-over to a
/// worker thread. With more CPUs, the multi-thread scheduler, a worker each.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut builder = if cpus == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder.enable_all().build()
}
