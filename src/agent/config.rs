//! The agent's config file (its own JSON file): its key, the gateways it
//! dials and their keys, and the local targets it may connect to. Checked
//! once into [`AgentConfig`], like the gateway's.

use crate::backend::ServerAddress;
use crate::config::{error, from_json, ConfigError, LogSettings, MetricsSettings};
use crate::tunnel::keys::{PrivateKey, PublicKey};
use crate::tunnel::settings::{check_keepalive, default_keepalive_interval, default_keepalive_timeout, Keepalive};
use crate::tunnel::status::valid_target;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgentConfig {
    key_file: PathBuf,
    gateways: Vec<RawGateway>,
    targets: BTreeMap<String, String>,
    #[serde(default)]
    timeouts: AgentTimeouts,
    #[serde(default)]
    reconnect: Reconnect,
    #[serde(default)]
    keepalive: RawKeepalive,
    #[serde(default)]
    log: LogSettings,
    #[serde(default)]
    metrics: Option<MetricsSettings>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    address: String,
    public_key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentTimeouts {
    /// TCP connect, to a gateway or a target.
    #[serde(with = "humantime_serde")]
    pub connect: Duration,
    /// The TLS and h2 handshakes with a gateway.
    #[serde(with = "humantime_serde")]
    pub handshake: Duration,
    /// A relayed connection with no byte either way for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle: Duration,
}

impl Default for AgentTimeouts {
    fn default() -> Self {
        AgentTimeouts {
            connect: Duration::from_secs(5),
            handshake: Duration::from_secs(5),
            idle: Duration::from_secs(15 * 60),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Reconnect {
    #[serde(with = "humantime_serde")]
    pub min_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect { min_delay: Duration::from_millis(250), max_delay: Duration::from_secs(30) }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawKeepalive {
    #[serde(with = "humantime_serde")]
    interval: Duration,
    #[serde(with = "humantime_serde")]
    timeout: Duration,
}

impl Default for RawKeepalive {
    fn default() -> Self {
        RawKeepalive { interval: default_keepalive_interval(), timeout: default_keepalive_timeout() }
    }
}

#[derive(Debug)]
pub struct AgentConfig {
    pub key: PrivateKey,
    pub gateways: Vec<Gateway>,
    /// Target name → where it is (resolved at each connect).
    pub targets: BTreeMap<String, ServerAddress>,
    pub timeouts: AgentTimeouts,
    pub reconnect: Reconnect,
    pub keepalive: Keepalive,
    pub log: LogSettings,
    pub metrics: Option<MetricsSettings>,
}

#[derive(Debug, Clone)]
pub struct Gateway {
    pub address: ServerAddress,
    pub key: PublicKey,
}

/// Whether a config file's text is an agent's: a JSON object with a
/// top-level `gateways` key.
pub fn is_agent_config(text: &str) -> bool {
    serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text)
        .is_ok_and(|object| object.contains_key("gateways"))
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| error(path.display().to_string(), e.to_string()))?;
        AgentConfig::parse(&text, path.parent().unwrap_or(Path::new(".")))
            .map_err(|e| error(format!("{}: {}", path.display(), e.place), e.message))
    }

    /// `base` resolves a relative `key_file`.
    pub fn parse(text: &str, base: &Path) -> Result<AgentConfig, ConfigError> {
        let raw: RawAgentConfig = from_json(text)?;
        let key = PrivateKey::read(&base.join(&raw.key_file)).map_err(|e| error("key_file", e))?;
        if raw.gateways.is_empty() {
            return Err(error("gateways", "at least one gateway is needed"));
        }
        let mut gateways = Vec::new();
        for (i, gateway) in raw.gateways.iter().enumerate() {
            let place = format!("gateways[{i}]");
            let address = ServerAddress::parse(&gateway.address)
                .map_err(|e| error(format!("{place}.address"), format!("{:?}: {e}", gateway.address)))?;
            let public = PublicKey::parse(&gateway.public_key).map_err(|e| error(format!("{place}.public_key"), e))?;
            if public == key.public() {
                return Err(error(
                    format!("{place}.public_key"),
                    "this is the agent's own key (key_file); the gateway has its own",
                ));
            }
            gateways.push(Gateway { address, key: public });
        }
        if raw.targets.is_empty() {
            return Err(error("targets", "at least one target is needed"));
        }
        let mut targets = BTreeMap::new();
        for (name, text) in raw.targets {
            let place = format!("targets.{name}");
            if !valid_target(&name) {
                return Err(error(place, "a target name uses letters, digits, '-', '_' and '.' only"));
            }
            let address = ServerAddress::parse(&text).map_err(|e| error(&place, format!("{text:?}: {e}")))?;
            targets.insert(name, address);
        }
        for (key, value) in [
            ("timeouts.connect", raw.timeouts.connect),
            ("timeouts.handshake", raw.timeouts.handshake),
            ("timeouts.idle", raw.timeouts.idle),
            ("reconnect.min_delay", raw.reconnect.min_delay),
        ] {
            if value.is_zero() {
                return Err(error(key, "must be longer than zero"));
            }
        }
        if raw.reconnect.max_delay < raw.reconnect.min_delay {
            return Err(error("reconnect.max_delay", "must be at least reconnect.min_delay"));
        }
        let keepalive = check_keepalive(
            ("keepalive.interval", raw.keepalive.interval),
            ("keepalive.timeout", raw.keepalive.timeout),
        )?;
        Ok(AgentConfig {
            key,
            gateways,
            targets,
            timeouts: raw.timeouts,
            reconnect: raw.reconnect,
            keepalive,
            log: raw.log,
            metrics: raw.metrics,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn setup(test: &str) -> (PathBuf, PrivateKey, PublicKey) {
        let dir = std::env::temp_dir().join(format!("sni-edge-agent-config-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = PrivateKey::generate();
        std::fs::write(dir.join("agent.key"), key.to_text()).unwrap();
        (dir, key, PrivateKey::generate().public())
    }

    fn base(gateway: &PublicKey) -> Value {
        json!({
            "key_file": "agent.key",
            "gateways": [{ "address": "gateway.example.test:7443", "public_key": gateway.to_string() }],
            "targets": { "https": "10.43.0.10:443", "http": "traefik.kube-system.svc.cluster.local:80" }
        })
    }

    #[test]
    fn an_agent_config_is_read_with_its_defaults() {
        let (dir, key, gateway) = setup("defaults");
        let config = AgentConfig::parse(&base(&gateway).to_string(), &dir).unwrap();
        assert_eq!(config.key.public(), key.public());
        assert_eq!(config.gateways[0].key, gateway);
        assert_eq!(config.gateways[0].address.to_string(), "gateway.example.test:7443");
        assert_eq!(config.targets["http"].to_string(), "traefik.kube-system.svc.cluster.local:80");
        assert_eq!(config.timeouts, AgentTimeouts::default());
        assert_eq!(config.reconnect, Reconnect::default());
        assert!(is_agent_config(&base(&gateway).to_string()));
        assert!(!is_agent_config(r#"{ "listeners": [] }"#));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn every_agent_error_names_its_key() {
        let (dir, key, gateway) = setup("errors");
        let edit = |f: &dyn Fn(&mut Value)| {
            let mut v = base(&gateway);
            f(&mut v);
            v.to_string()
        };
        let cases: Vec<(String, String)> = vec![
            (edit(&|v| v["key_file"] = json!("none.key")), format!("key_file: {}: No such file or directory (os error 2)", dir.join("none.key").display())),
            (edit(&|v| v["gateways"] = json!([])), "gateways: at least one gateway is needed".into()),
            (edit(&|v| v["gateways"][0]["address"] = json!("gateway.example.test")), "gateways[0].address: \"gateway.example.test\": expected host:port".into()),
            (edit(&|v| v["gateways"][0]["public_key"] = json!("sni-edge-key:AAAA")), "gateways[0].public_key: 3 bytes, expected 32".into()),
            (edit(&|v| v["gateways"][0]["public_key"] = json!(key.public().to_string())), "gateways[0].public_key: this is the agent's own key (key_file); the gateway has its own".into()),
            (edit(&|v| { v["gateways"][0].as_object_mut().unwrap().remove("public_key"); }), "gateways[0] (line 1): missing field `public_key`".into()),
            (edit(&|v| v["targets"] = json!({})), "targets: at least one target is needed".into()),
            (edit(&|v| v["targets"]["a/b"] = json!("127.0.0.1:1")), "targets.a/b: a target name uses letters, digits, '-', '_' and '.' only".into()),
            (edit(&|v| v["targets"]["https"] = json!("10.43.0.10")), "targets.https: \"10.43.0.10\": expected host:port".into()),
            (edit(&|v| v["timeouts"] = json!({ "connect": "0s" })), "timeouts.connect: must be longer than zero".into()),
            (edit(&|v| v["reconnect"] = json!({ "min_delay": "2s", "max_delay": "1s" })), "reconnect.max_delay: must be at least reconnect.min_delay".into()),
            (edit(&|v| v["keepalive"] = json!({ "interval": "2s", "timeout": "2s" })), "keepalive.timeout: must be longer than keepalive.interval".into()),
            (edit(&|v| v["listeners"] = json!([])), "listeners (line 1): unknown field `listeners`, expected one of `key_file`, `gateways`, `targets`, `timeouts`, `reconnect`, `keepalive`, `log`, `metrics`".into()),
        ];
        let wrong = crate::config::wrong_errors(&cases, |text| AgentConfig::parse(text, &dir));
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
