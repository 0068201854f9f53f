use anyhow::Context;
use clap::{Parser, Subcommand};
use sni_edge::config::{Config, LogLevel};
use sni_edge::server::{self, Control};
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
    /// Check a config file and exit: 0 if valid, 1 with the error and its place if not.
    Check {
        /// The JSON config file.
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    match Cli::parse().command {
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
            Err(e) => {
                eprintln!("error: {e}");
                std::process::ExitCode::FAILURE
            }
        },
        Command::Run { config, log_level } => match run(config, log_level) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                std::process::ExitCode::FAILURE
            }
        },
    }
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
