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

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::tunnel::keys::PrivateKey;
    use serde_json::{json, Value};
    use std::path::PathBuf;

    /// A directory with a gateway key (gateway.key) and a bad key file.
    fn keys(test: &str) -> (PathBuf, PrivateKey) {
        let dir = std::env::temp_dir().join(format!("sni-edge-tunnel-config-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = PrivateKey::generate();
        std::fs::write(dir.join("gateway.key"), key.to_text()).unwrap();
        std::fs::write(dir.join("bad.key"), "sni-edge-private-key:AAAA\n").unwrap();
        (dir, key)
    }

    fn base(agent: &str) -> Value {
        json!({
            "listeners": [{ "address": "127.0.0.1:8443", "protocol": "tls" },
                          { "address": "127.0.0.1:7443", "protocol": "tunnel" }],
            "tunnel": { "key_file": "gateway.key", "agents": { "home": [agent] } },
            "routes": [{ "names": ["app.example.test"], "backend": "home" }],
            "backends": { "home": { "agents": "home", "target": "https", "proxy_protocol": "v2" } }
        })
    }

    #[test]
    fn a_tunnel_config_is_read_with_its_defaults() {
        let (dir, _) = keys("defaults");
        let agent = PrivateKey::generate().public();
        let config = Config::parse(&base(&agent.to_string()).to_string(), &dir).unwrap();
        let tunnel = config.tunnel.unwrap();
        assert_eq!(tunnel.agents[&agent], "home");
        assert_eq!(tunnel.keepalive.interval, super::default_keepalive_interval());
        assert_eq!(tunnel.handshake_timeout, super::default_handshake_timeout());
        let via = config.backends[0].tunnel.clone().unwrap();
        assert_eq!((via.group.as_str(), via.target.as_str()), ("home", "https"));
        assert!(config.backends[0].servers.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn every_tunnel_error_names_its_key() {
        let (dir, key) = keys("errors");
        let agent = PrivateKey::generate().public().to_string();
        let gateway = key.public().to_string();
        let edit = |f: &dyn Fn(&mut Value)| {
            let mut v = base(&agent);
            f(&mut v);
            v.to_string()
        };
        let cases: Vec<(String, String)> = vec![
            (edit(&|v| v["tunnel"]["key_file"] = json!("missing.key")), format!("tunnel.key_file: {}: No such file or directory (os error 2)", dir.join("missing.key").display())),
            (edit(&|v| v["tunnel"]["key_file"] = json!("bad.key")), format!("tunnel.key_file: {}: 3 bytes, expected 32", dir.join("bad.key").display())),
            (edit(&|v| v["tunnel"]["agents"] = json!({})), "tunnel.agents: at least one group of agent keys is needed".into()),
            (edit(&|v| v["tunnel"]["agents"]["home"] = json!([])), "tunnel.agents.home: a group needs at least one agent key".into()),
            (edit(&|v| v["tunnel"]["agents"]["home"] = json!(["ssh-ed25519 AAAA"])), "tunnel.agents.home[0]: a public key starts with sni-edge-key:".into()),
            (edit(&|v| v["tunnel"]["agents"]["home"] = json!([agent, agent])), "tunnel.agents.home[1]: this key is already listed at tunnel.agents.home[0]".into()),
            (edit(&|v| v["tunnel"]["agents"]["away"] = json!([agent])), "tunnel.agents.home[0]: this key is already listed at tunnel.agents.away[0]".into()),
            (edit(&|v| v["tunnel"]["agents"]["home"] = json!([gateway])), "tunnel.agents.home[0]: this is the gateway's own key (tunnel.key_file); each side needs its own".into()),
            (edit(&|v| v["tunnel"]["agents"]["a b"] = json!([])), "tunnel.agents.a b: a group name uses letters, digits, '-', '_' and '.' only".into()),
            (edit(&|v| v["tunnel"]["handshake_timeout"] = json!("0s")), "tunnel.handshake_timeout: must be longer than zero".into()),
            (edit(&|v| v["tunnel"]["max_handshakes"] = json!(0)), "tunnel.max_handshakes: must be at least 1".into()),
            (edit(&|v| v["tunnel"]["keepalive_interval"] = json!("0s")), "tunnel.keepalive_interval: must be longer than zero".into()),
            (edit(&|v| v["tunnel"]["keepalive_timeout"] = json!("1s")), "tunnel.keepalive_timeout: must be longer than tunnel.keepalive_interval".into()),
            (edit(&|v| v["tunnel"]["keys"] = json!([])), "tunnel.keys (line 1): unknown field `keys`, expected one of `key_file`, `agents`, `handshake_timeout`, `keepalive_interval`, `keepalive_timeout`, `max_handshakes`".into()),
            (edit(&|v| { v.as_object_mut().unwrap().remove("tunnel"); v["backends"]["home"] = json!({ "servers": ["127.0.0.1:1"] }); }), "tunnel: required by listeners[1] (protocol tunnel)".into()),
            (edit(&|v| { v.as_object_mut().unwrap().remove("tunnel"); v["listeners"].as_array_mut().unwrap().pop(); }), "tunnel: required by backends.home.agents".into()),
            (edit(&|v| v["listeners"][1]["proxy_protocol_from"] = json!(["10.0.0.0/8"])), "listeners[1].proxy_protocol_from: a tunnel listener reads no PROXY header".into()),
            (edit(&|v| v["backends"]["home"]["servers"] = json!(["127.0.0.1:1"])), "backends.home: a backend has either servers or agents, not both".into()),
            (edit(&|v| { v["backends"]["home"].as_object_mut().unwrap().remove("target"); }), "backends.home.target: required with agents".into()),
            (edit(&|v| { v["backends"]["home"] = json!({ "servers": ["127.0.0.1:1"], "target": "https" }); }), "backends.home.target: only a backend with agents has a target".into()),
            (edit(&|v| v["backends"]["home"]["target"] = json!("http s")), "backends.home.target: a target name uses letters, digits, '-', '_' and '.' only".into()),
            (edit(&|v| v["backends"]["home"]["agents"] = json!("away")), "backends.home.agents: no group \"away\" in tunnel.agents (groups: home)".into()),
            (edit(&|v| v["backends"]["home"]["health_check"] = json!({})), "backends.home.health_check: agents are checked by the tunnel's keepalives".into()),
        ];
        let wrong = crate::config::wrong_errors(&cases, |text| Config::parse(text, &dir));
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
