//! Log output: the journal when running under systemd, text otherwise.

use crate::config::{LogFormat, LogLevel};
use std::io::IsTerminal;
use std::os::unix::fs::MetadataExt;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::prelude::*;

pub fn init(level: LogLevel, format: LogFormat) -> anyhow::Result<()> {
    let filter = LevelFilter::from_level(match level {
        LogLevel::Trace => tracing::Level::TRACE,
        LogLevel::Debug => tracing::Level::DEBUG,
        LogLevel::Info => tracing::Level::INFO,
        LogLevel::Warn => tracing::Level::WARN,
        LogLevel::Error => tracing::Level::ERROR,
    });
    let journald = match format {
        LogFormat::Journald => true,
        LogFormat::Text => false,
        LogFormat::Auto => stderr_is_journal(),
    };
    let registry = tracing_subscriber::registry().with(filter);
    if journald {
        registry.with(tracing_journald::layer()?).try_init()?;
    } else {
        // Colours only for a person at a terminal, never in a file or a pipe.
        let ansi = std::io::stderr().is_terminal();
        let text = tracing_subscriber::fmt::layer().with_target(false).with_ansi(ansi).with_writer(std::io::stderr);
        registry.with(text).try_init()?;
    }
    Ok(())
}

/// systemd sets JOURNAL_STREAM to the device and inode of the stream it
/// connected stderr to; if ours still matches, the journal is listening
/// (a shell pipe inherited from a unit would not match).
fn stderr_is_journal() -> bool {
    let Ok(expected) = std::env::var("JOURNAL_STREAM") else { return false };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else { return false };
    expected == format!("{}:{}", meta.dev(), meta.ino())
}
