//! The config file: JSON read once into raw structs (unknown keys refused),
//! then checked into [`Config`], whose types cannot hold an invalid value.
//! The running gateway only ever sees a [`Config`].
//!
//! Every error names where it is: the key path for JSON errors (through
//! serde_path_to_error) and for checks, the file and line for names files.

use crate::backend::{Backend, Balance, Server, ServerAddress};
use crate::health::HealthCheck;
use crate::names::{Matcher, Pattern};
use crate::proxy_header;
use ipnet::IpNet;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

// ---------------------------------------------------------------------------
// The file as written.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    log: LogSettings,
    listeners: Vec<RawListener>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    default_backend: Option<String>,
    backends: BTreeMap<String, RawBackend>,
    #[serde(default)]
    timeouts: Timeouts,
    #[serde(default)]
    http: HttpSettings,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    metrics: Option<MetricsSettings>,
    #[serde(default)]
    tunnel: Option<crate::tunnel::settings::RawSettings>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    address: SocketAddr,
    protocol: Protocol,
    #[serde(default)]
    proxy_protocol_from: Vec<IpNet>,
    /// Acknowledges a `proxy_protocol_from` that covers every address
    /// (anyone reaching the listener may then claim any client address).
    #[serde(default)]
    proxy_protocol_from_anyone: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    names_file: Option<PathBuf>,
    backend: String,
    #[serde(default)]
    acme_backend: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    #[serde(default)]
    servers: Vec<RawServer>,
    /// Instead of servers: the connected agents of this group (tunnel mode).
    #[serde(default)]
    agents: Option<String>,
    /// With `agents`: the name the agent maps to a local address.
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    proxy_protocol: proxy_header::Version,
    #[serde(default)]
    balance: Balance,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    connect_timeout: Duration,
    #[serde(default)]
    health_check: Option<HealthCheck>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawServer {
    Address(String),
    Detailed(RawServerDetails),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServerDetails {
    address: String,
    #[serde(default)]
    max_connections: Option<u32>,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

// ---------------------------------------------------------------------------
// Settings that are already valid once deserialised are used as they are.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TLS passthrough routed by SNI.
    Tls,
    /// Plain HTTP: redirects to https and ACME challenges.
    Http,
    /// Where agents dial in (tunnel mode).
    Tunnel,
}

impl Protocol {
    /// As the config and the metrics' `protocol` label write it.
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Tls => "tls",
            Protocol::Http => "http",
            Protocol::Tunnel => "tunnel",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    #[serde(default = "default_log_level")]
    pub level: LogLevel,
    #[serde(default)]
    pub format: LogFormat,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings { level: default_log_level(), format: LogFormat::default() }
    }
}

fn default_log_level() -> LogLevel {
    LogLevel::Info
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// journald when stderr is connected to the journal, else text.
    #[default]
    Auto,
    Text,
    Journald,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// From accept until the whole ClientHello (or HTTP request head) is in.
    #[serde(with = "humantime_serde")]
    pub client_hello: Duration,
    /// A relayed connection with no byte in either direction for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle: Duration,
    /// Time to read an HTTP request head on a plain HTTP listener.
    #[serde(with = "humantime_serde")]
    pub http_request: Duration,
    /// On SIGTERM, how long established connections may take to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            client_hello: Duration::from_secs(5),
            idle: Duration::from_secs(15 * 60),
            http_request: Duration::from_secs(10),
            shutdown: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    pub redirect_status: u16,
    pub max_request_bytes: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        // 308: permanent, and unlike 301 it keeps the method and body, so a
        // form POSTed to http:// is not silently turned into a GET.
        HttpSettings { redirect_status: 308, max_request_bytes: 8192 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Connections open at once, all listeners together. Unset: 20,000, or
    /// fewer if the open files limit cannot hold that many (see
    /// [`Limits::max_connections`]).
    #[serde(rename = "max_connections")]
    pub max_connections_set: Option<usize>,
    /// Per listener, connections that have not yet sent a complete
    /// ClientHello or request head. When full, the oldest pending connection
    /// of the client holding the most is closed to make room.
    pub max_pending_handshakes: usize,
    /// Pending connections of one client on one listener.
    pub max_pending_per_client: usize,
    /// Connections open at once from one client.
    pub max_connections_per_client: usize,
    /// What counts as one client: IPv4 addresses with this prefix in common.
    pub client_prefix_v4: u8,
    /// What counts as one client: IPv6 addresses with this prefix in common
    /// (a subscriber usually has a whole /64).
    pub client_prefix_v6: u8,
    /// Bytes all unfinished ClientHellos and request heads together may
    /// hold beyond the first 16 KiB of each (which every connection may
    /// always use).
    pub max_buffered_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections_set: None,
            max_pending_handshakes: 2_000,
            max_pending_per_client: 64,
            max_connections_per_client: 512,
            client_prefix_v4: 32,
            client_prefix_v6: 64,
            max_buffered_bytes: 64 << 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    pub address: SocketAddr,
}

/// The longest any duration setting may be. The gateway computes deadlines
/// as now plus a setting, which must not overflow; a year is beyond any
/// sensible timeout or interval.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

fn check_duration(place: impl Into<String>, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() {
        return Err(error(place, "must be longer than zero"));
    }
    if value > MAX_DURATION {
        return Err(error(place, "must be at most 365 days"));
    }
    Ok(())
}

/// Refuses addresses that pass parsing but that `run` could not all bind:
/// an IPv4-mapped IPv6 address (listeners' IPv6 sockets take IPv6 only), and
/// a wildcard and a specific address of one family on the same port (the
/// wildcard already holds every address of that port).
/// `addresses` are (what, address) pairs, such as ("listeners[0]", ..).
fn check_addresses(addresses: &[(String, SocketAddr)]) -> Result<(), ConfigError> {
    for (i, (what, address)) in addresses.iter().enumerate() {
        let place = format!("{what}.address");
        if let std::net::IpAddr::V6(ip) = address.ip() {
            if let Some(v4) = ip.to_ipv4_mapped() {
                return Err(error(
                    &place,
                    format!(
                        "{address} is an IPv4-mapped IPv6 address, which an IPv6-only socket cannot listen on; write {}",
                        SocketAddr::new(v4.into(), address.port())
                    ),
                ));
            }
        }
        for (other_place, other) in &addresses[..i] {
            if other == address {
                return Err(error(place, format!("{address} is already {other_place}")));
            }
            let clash = other.port() == address.port()
                && other.is_ipv4() == address.is_ipv4()
                && (other.ip().is_unspecified() || address.ip().is_unspecified());
            if clash {
                return Err(error(
                    place,
                    format!(
                        "{address} and {other_place} ({other}) share a port, and one is a wildcard address, which \
                         already takes that port on every address: keep the wildcard alone, or list specific addresses only"
                    ),
                ));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The checked config.

#[derive(Debug)]
pub struct Config {
    pub log: LogSettings,
    pub listeners: Vec<Listener>,
    pub routes: Vec<Arc<Route>>,
    /// Name → index into `routes`.
    pub matcher: Matcher<usize>,
    /// For valid names that match no route. `None`: refuse them.
    pub default_route: Option<Arc<Route>>,
    pub backends: Vec<Arc<Backend>>,
    pub timeouts: Timeouts,
    pub http: HttpSettings,
    pub limits: Limits,
    pub metrics: Option<MetricsSettings>,
    /// Present when agents dial in (a tunnel listener or an agents backend).
    pub tunnel: Option<crate::tunnel::settings::Settings>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub address: SocketAddr,
    pub protocol: Protocol,
    /// Peers whose connections start with a PROXY header. Empty: nobody.
    pub proxy_protocol_from: Vec<IpNet>,
}

#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub backend: Arc<Backend>,
    pub acme_backend: Option<Arc<Backend>>,
    /// What its connections count in, looked up once.
    pub metrics: crate::metrics::RouteMetrics,
}

/// A config error; its message always says where.
#[derive(Debug)]
pub struct ConfigError {
    pub place: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.place, self.message)
    }
}

impl std::error::Error for ConfigError {}

pub(crate) fn error(place: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError { place: place.into(), message: message.into() }
}

impl Config {
    /// The route for an allowed name: the most specific match, else the
    /// default route if one is configured.
    pub fn route_for(&self, name: &crate::names::HostName) -> Option<&Arc<Route>> {
        match self.matcher.lookup(name) {
            Some(&i) => Some(&self.routes[i]),
            None => self.default_route.as_ref(),
        }
    }

    /// Reads and checks a config file. Relative `names_file` paths are taken
    /// relative to the config file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| error(path.display().to_string(), e.to_string()))?;
        Config::parse(&text, path.parent().unwrap_or(Path::new(".")))
            .map_err(|e| error(format!("{}: {}", path.display(), e.place), e.message))
    }

    /// Parses and checks config text; `base` resolves relative names files.
    pub fn parse(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = from_json(text)?;
        raw.check(base)
    }
}

/// Reads a JSON object into `T`; an error names the key path and line.
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    // serde would read a JSON array as a struct's fields in order, with
    // a baffling message; say plainly what the top level must be.
    let body = text.trim_start();
    if !body.is_empty() && !body.starts_with('{') {
        let line = 1 + text[..text.len() - body.len()].matches('\n').count();
        return Err(error(format!("line {line}"), "the config must be a JSON object, starting with '{'"));
    }
    let deserializer = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let inner = e.inner();
        let place = match e.path().to_string().as_str() {
            "." | "?" => format!("line {}", inner.line()),
            path => format!("{path} (line {})", inner.line()),
        };
        // serde_json's own message ends in " at line L column C", already said.
        let message = inner.to_string();
        let message = message.split(" at line ").next().unwrap_or(&message).to_owned();
        error(place, message)
    })
}

impl RawConfig {
    fn check(self, base: &Path) -> Result<Config, ConfigError> {
        if self.listeners.is_empty() {
            return Err(error("listeners", "at least one listener is needed"));
        }
        let mut addresses: Vec<(String, SocketAddr)> =
            self.listeners.iter().enumerate().map(|(i, l)| (format!("listeners[{i}]"), l.address)).collect();
        if let Some(metrics) = &self.metrics {
            addresses.push(("metrics".to_owned(), metrics.address));
        }
        check_addresses(&addresses)?;
        for (i, listener) in self.listeners.iter().enumerate() {
            let everyone = listener.proxy_protocol_from.iter().position(|net| net.prefix_len() == 0);
            if let (Some(k), false) = (everyone, listener.proxy_protocol_from_anyone) {
                return Err(error(
                    format!("listeners[{i}].proxy_protocol_from[{k}]"),
                    format!(
                        "{} lets anyone who reaches the listener claim any client address; list the load \
                         balancer's addresses, or set listeners[{i}].proxy_protocol_from_anyone: true if only \
                         trusted load balancers can reach it",
                        listener.proxy_protocol_from[k]
                    ),
                ));
            }
        }
        if ![301, 302, 303, 307, 308].contains(&self.http.redirect_status) {
            return Err(error("http.redirect_status", "must be one of 301, 302, 303, 307, 308"));
        }
        if self.http.max_request_bytes < 256 {
            return Err(error("http.max_request_bytes", "must be at least 256"));
        }
        if self.limits.max_connections_set == Some(0) {
            return Err(error("limits.max_connections", "must be at least 1"));
        }
        for (key, value) in [
            ("limits.max_pending_handshakes", self.limits.max_pending_handshakes),
            ("limits.max_pending_per_client", self.limits.max_pending_per_client),
            ("limits.max_connections_per_client", self.limits.max_connections_per_client),
        ] {
            if value == 0 {
                return Err(error(key, "must be at least 1"));
            }
        }
        if !(1..=32).contains(&self.limits.client_prefix_v4) {
            return Err(error("limits.client_prefix_v4", "must be from 1 to 32"));
        }
        if !(1..=128).contains(&self.limits.client_prefix_v6) {
            return Err(error("limits.client_prefix_v6", "must be from 1 to 128"));
        }
        for (key, value) in [
            ("timeouts.client_hello", self.timeouts.client_hello),
            ("timeouts.idle", self.timeouts.idle),
            ("timeouts.http_request", self.timeouts.http_request),
        ] {
            check_duration(key, value)?;
        }
        // Zero is a valid drain: stop at once.
        if self.timeouts.shutdown > MAX_DURATION {
            return Err(error("timeouts.shutdown", "must be at most 365 days"));
        }

        let tunnel = match self.tunnel {
            Some(raw) => Some(raw.check(base)?),
            None => None,
        };
        for (i, listener) in self.listeners.iter().enumerate() {
            if listener.protocol == Protocol::Tunnel {
                if tunnel.is_none() {
                    return Err(error("tunnel", format!("required by listeners[{i}] (protocol tunnel)")));
                }
                if !listener.proxy_protocol_from.is_empty() {
                    return Err(error(
                        format!("listeners[{i}].proxy_protocol_from"),
                        "a tunnel listener reads no PROXY header",
                    ));
                }
            }
        }
        let mut backends = BTreeMap::new();
        for (name, raw) in self.backends {
            let backend = raw.check(&name, tunnel.as_ref())?;
            backends.insert(name, Arc::new(backend));
        }
        let find = |place: String, name: &str| {
            backends.get(name).cloned().ok_or_else(|| {
                let known: Vec<_> = backends.keys().map(String::as_str).collect();
                error(place, format!("no backend named {name:?} (backends: {})", known.join(", ")))
            })
        };

        let mut routes = Vec::new();
        let mut matcher = Matcher::default();
        // Where each pattern was first listed, to name both places when the
        // matcher reports a duplicate.
        let mut places: HashMap<Pattern, String> = HashMap::new();
        for (i, raw) in self.routes.iter().enumerate() {
            let backend = find(format!("routes[{i}].backend"), &raw.backend)?;
            let acme_backend = match &raw.acme_backend {
                Some(name) => Some(find(format!("routes[{i}].acme_backend"), name)?),
                None => None,
            };
            let mut patterns = Vec::new();
            for (j, text) in raw.names.iter().enumerate() {
                let place = format!("routes[{i}].names[{j}]");
                let pattern = Pattern::parse(text).map_err(|e| error(&place, format!("{text:?}: {e}")))?;
                patterns.push((place, pattern));
            }
            if let Some(file) = &raw.names_file {
                let file = base.join(file);
                patterns.extend(read_names_file(&file)?);
            }
            if patterns.is_empty() {
                return Err(error(format!("routes[{i}]"), "a route needs at least one name in names or names_file"));
            }
            for (place, pattern) in patterns {
                if matcher.insert(pattern.clone(), routes.len()).is_some() {
                    return Err(error(place, format!("{pattern} is already listed at {}", places[&pattern])));
                }
                places.insert(pattern, place);
            }
            let name = raw.name.clone().unwrap_or_else(|| raw.backend.clone());
            routes.push(Arc::new(Route { name, backend, acme_backend, metrics: Default::default() }));
        }
        let default_route = match &self.default_backend {
            Some(name) => Some(Arc::new(Route {
                name: "default".to_owned(),
                backend: find("default_backend".to_owned(), name)?,
                acme_backend: None,
                metrics: Default::default(),
            })),
            None => None,
        };
        if routes.is_empty() && default_route.is_none() {
            return Err(error("routes", "no route and no default_backend: every connection would be refused"));
        }

        let listeners = self
            .listeners
            .into_iter()
            .map(|l| Listener { address: l.address, protocol: l.protocol, proxy_protocol_from: l.proxy_protocol_from })
            .collect();
        Ok(Config {
            log: self.log,
            listeners,
            routes,
            matcher,
            default_route,
            backends: backends.into_values().collect(),
            timeouts: self.timeouts,
            http: self.http,
            limits: self.limits,
            metrics: self.metrics,
            tunnel,
        })
    }
}

impl RawBackend {
    fn check(self, name: &str, tunnel: Option<&crate::tunnel::settings::Settings>) -> Result<Backend, ConfigError> {
        let place = format!("backends.{name}");
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(error(&place, "a backend name uses letters, digits, '-', '_' and '.' only"));
        }
        if let Some(via) = self.via(&place, tunnel)? {
            if self.health_check.is_some() {
                return Err(error(format!("{place}.health_check"), "agents are checked by the tunnel's keepalives"));
            }
            let mut backend = Backend::new(
                name.to_owned(),
                Vec::new(),
                self.proxy_protocol,
                self.balance,
                self.connect_timeout,
                None,
            );
            backend.tunnel = Some(via);
            return Ok(backend);
        }
        if self.servers.is_empty() {
            return Err(error(format!("{place}.servers"), "at least one server is needed"));
        }
        check_duration(format!("{place}.connect_timeout"), self.connect_timeout)?;
        let mut servers = Vec::new();
        for (i, raw) in self.servers.into_iter().enumerate() {
            let (text, max_connections) = match raw {
                RawServer::Address(text) => (text, None),
                RawServer::Detailed(d) => (d.address, d.max_connections),
            };
            let server_place = format!("{place}.servers[{i}]");
            let address = ServerAddress::parse(&text).map_err(|e| error(&server_place, format!("{text:?}: {e}")))?;
            if max_connections == Some(0) {
                return Err(error(format!("{server_place}.max_connections"), "must be at least 1"));
            }
            servers.push(Server::new(name, address, max_connections));
        }
        if let Some(check) = &self.health_check {
            let place = format!("{place}.health_check");
            check_duration(format!("{place}.interval"), check.interval)?;
            check_duration(format!("{place}.timeout"), check.timeout)?;
            if check.rise == 0 || check.fall == 0 {
                return Err(error(place, "rise and fall must be at least 1"));
            }
            if let Some(name) = &check.server_name {
                Pattern::parse(name)
                    .ok()
                    .filter(|p| matches!(p, Pattern::Exact(_)))
                    .ok_or_else(|| error(format!("{place}.server_name"), format!("{name:?} is not a host name")))?;
            }
        }
        Ok(Backend::new(
            name.to_owned(),
            servers,
            self.proxy_protocol,
            self.balance,
            self.connect_timeout,
            self.health_check,
        ))
    }

    /// The agent group and target of a tunnel backend, checked; `None` for
    /// a backend of servers.
    fn via(
        &self,
        place: &str,
        tunnel: Option<&crate::tunnel::settings::Settings>,
    ) -> Result<Option<crate::tunnel::gateway::Via>, ConfigError> {
        let (group, target) = match (&self.agents, &self.target) {
            (None, None) => return Ok(None),
            (None, Some(_)) => return Err(error(format!("{place}.target"), "only a backend with agents has a target")),
            (Some(_), None) => return Err(error(format!("{place}.target"), "required with agents")),
            (Some(group), Some(target)) => (group, target),
        };
        if !self.servers.is_empty() {
            return Err(error(place, "a backend has either servers or agents, not both"));
        }
        if !crate::tunnel::status::valid_target(target) {
            return Err(error(format!("{place}.target"), "a target name uses letters, digits, '-', '_' and '.' only"));
        }
        let Some(tunnel) = tunnel else {
            return Err(error("tunnel", format!("required by {place}.agents")));
        };
        if !tunnel.has_group(group) {
            return Err(error(
                format!("{place}.agents"),
                format!("no group {group:?} in tunnel.agents (groups: {})", tunnel.groups().join(", ")),
            ));
        }
        Ok(Some(crate::tunnel::gateway::Via { group: group.clone(), target: target.clone() }))
    }
}

/// One name or pattern per line; `#` starts a comment; blank lines are skipped.
fn read_names_file(path: &Path) -> Result<Vec<(String, Pattern)>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| error(path.display().to_string(), e.to_string()))?;
    let mut patterns = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let entry = line.split('#').next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        let place = format!("{} line {}", path.display(), n + 1);
        let pattern = Pattern::parse(entry).map_err(|e| error(&place, format!("{entry:?}: {e}")))?;
        patterns.push((place, pattern));
    }
    Ok(patterns)
}

/// For tests of config errors: each case whose error is not the expected
/// "place: message", described; empty when every case is right.
#[cfg(test)]
pub(crate) fn wrong_errors<T>(
    cases: &[(String, String)],
    parse: impl Fn(&str) -> Result<T, ConfigError>,
) -> Vec<String> {
    cases
        .iter()
        .filter_map(|(text, expected)| {
            let got = match parse(text) {
                Ok(_) => "accepted".to_owned(),
                Err(e) => e.to_string(),
            };
            (got != *expected).then(|| format!("config {text}\n  expected: {expected}\n  got:      {got}"))
        })
        .collect()
}

#[cfg(test)]
mod tests;
