//! The gateway config's `tunnel` section: its key, the agents it accepts and
//! their groups, and the session's timers, checked into [`Settings`].

use super::keys::{PrivateKey, PublicKey};
use crate::config::{error, ConfigError};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSettings {
    key_file: PathBuf,
    agents: BTreeMap<String, Vec<String>>,
    #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
    handshake_timeout: Duration,
    #[serde(default = "default_keepalive_interval", with = "humantime_serde")]
    keepalive_interval: Duration,
    #[serde(default = "default_keepalive_timeout", with = "humantime_serde")]
    keepalive_timeout: Duration,
    #[serde(default = "default_max_handshakes")]
    max_handshakes: usize,
}

pub fn default_handshake_timeout() -> Duration {
    Duration::from_secs(5)
}

pub fn default_keepalive_interval() -> Duration {
    Duration::from_secs(1)
}

/// With a one-second interval, a dead peer is found within 4 s.
pub fn default_keepalive_timeout() -> Duration {
    Duration::from_secs(3)
}

fn default_max_handshakes() -> usize {
    64
}

/// The checked `tunnel` section.
#[derive(Debug, Clone)]
pub struct Settings {
    pub key: PrivateKey,
    /// Agent key → its group.
    pub agents: HashMap<PublicKey, String>,
    pub keepalive: Keepalive,
    pub handshake_timeout: Duration,
    /// TLS handshakes in progress at once on all tunnel listeners.
    pub max_handshakes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub interval: Duration,
    pub timeout: Duration,
}

impl Settings {
    pub fn has_group(&self, group: &str) -> bool {
        self.agents.values().any(|g| g == group)
    }

    pub fn groups(&self) -> Vec<&str> {
        let mut groups: Vec<&str> = self.agents.values().map(String::as_str).collect();
        groups.sort_unstable();
        groups.dedup();
        groups
    }
}

/// Checks the keepalive timers (both roles have them); the keys name them
/// in errors.
pub fn check_keepalive(
    (interval_key, interval): (&str, Duration),
    (timeout_key, timeout): (&str, Duration),
) -> Result<Keepalive, ConfigError> {
    if interval.is_zero() {
        return Err(error(interval_key, "must be longer than zero"));
    }
    if timeout <= interval {
        return Err(error(timeout_key, format!("must be longer than {interval_key}")));
    }
    Ok(Keepalive { interval, timeout })
}

impl RawSettings {
    /// `base` resolves a relative `key_file`.
    pub fn check(self, base: &Path) -> Result<Settings, ConfigError> {
        let key = PrivateKey::read(&base.join(&self.key_file)).map_err(|e| error("tunnel.key_file", e))?;
        if self.handshake_timeout.is_zero() {
            return Err(error("tunnel.handshake_timeout", "must be longer than zero"));
        }
        if self.max_handshakes == 0 {
            return Err(error("tunnel.max_handshakes", "must be at least 1"));
        }
        let keepalive = check_keepalive(
            ("tunnel.keepalive_interval", self.keepalive_interval),
            ("tunnel.keepalive_timeout", self.keepalive_timeout),
        )?;
        let mut agents = HashMap::new();
        let mut places: HashMap<PublicKey, String> = HashMap::new();
        if self.agents.is_empty() {
            return Err(error("tunnel.agents", "at least one group of agent keys is needed"));
        }
        for (group, keys) in self.agents {
            let place = format!("tunnel.agents.{group}");
            if group.is_empty() || !group.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                return Err(error(place, "a group name uses letters, digits, '-', '_' and '.' only"));
            }
            if keys.is_empty() {
                return Err(error(place, "a group needs at least one agent key"));
            }
            for (i, text) in keys.iter().enumerate() {
                let place = format!("{place}[{i}]");
                let public = PublicKey::parse(text).map_err(|e| error(&place, e))?;
                if public == key.public() {
                    return Err(error(
                        place,
                        "this is the gateway's own key (tunnel.key_file); each side needs its own",
                    ));
                }
                if let Some(first) = places.get(&public) {
                    return Err(error(place, format!("this key is already listed at {first}")));
                }
                places.insert(public, place);
                agents.insert(public, group.clone());
            }
        }
        Ok(Settings {
            key,
            agents,
            keepalive,
            handshake_timeout: self.handshake_timeout,
            max_handshakes: self.max_handshakes,
        })
    }
}
