use super::*;
use crate::names::{HostName, Requested};

const BASE: &str = r#"{
  "listeners": [{ "address": "127.0.0.1:8443", "protocol": "tls" }],
  "routes": [{ "names": ["app.example.test"], "backend": "b" }],
  "backends": { "b": { "servers": ["127.0.0.1:9443"] } }
}"#;

/// BASE with edits applied: `path` is a list of keys (numbers index arrays;
/// one past the end appends), `value` the new JSON value.
fn with(edits: &[(&[&str], serde_json::Value)]) -> String {
    let mut doc: serde_json::Value = serde_json::from_str(BASE).unwrap();
    for (path, value) in edits {
        let (last, parents) = path.split_last().unwrap();
        let mut node = &mut doc;
        for key in parents {
            node = match key.parse::<usize>() {
                Ok(i) => &mut node[i],
                Err(_) => node.as_object_mut().unwrap().entry(key.to_string()).or_insert(serde_json::json!({})),
            };
        }
        match last.parse::<usize>() {
            Ok(i) if i == node.as_array().unwrap().len() => node.as_array_mut().unwrap().push(value.clone()),
            Ok(i) => node[i] = value.clone(),
            Err(_) => {
                node.as_object_mut().unwrap().insert(last.to_string(), value.clone());
            }
        }
    }
    doc.to_string()
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("."))
}

/// The error for `text`, as "place: message".
fn error_of(text: &str) -> String {
    match parse(text) {
        Ok(_) => panic!("accepted: {text}"),
        Err(e) => e.to_string(),
    }
}

fn host(s: &str) -> HostName {
    match HostName::parse(s.as_bytes()).unwrap() {
        Requested::Host(h) => h,
        Requested::NoName => unreachable!(),
    }
}

#[test]
fn the_smallest_config_gets_every_default() {
    let c = parse(BASE).unwrap();
    assert_eq!(c.listeners.len(), 1);
    assert_eq!(c.timeouts, Timeouts::default());
    assert_eq!(c.timeouts.client_hello, Duration::from_secs(5));
    assert_eq!(c.http.redirect_status, 308);
    assert_eq!(c.limits, Limits::default());
    assert_eq!(c.log.level, LogLevel::Info);
    assert!(c.metrics.is_none());
    assert!(c.default_route.is_none());
    let b = &c.backends[0];
    assert_eq!(b.proxy_protocol, proxy_header::Version::None);
    assert_eq!(b.balance, Balance::RoundRobin);
    assert_eq!(b.connect_timeout, Duration::from_secs(5));
    assert_eq!(c.route_for(&host("app.example.test")).unwrap().name, "b");
    assert!(c.route_for(&host("other.example.test")).is_none());
}

#[test]
fn every_error_names_its_place() {
    use serde_json::json;
    let cases: Vec<(String, &str)> = vec![
        ("{".to_owned(), "line 1: EOF while parsing an object"),
        ("\n[]".to_owned(), "line 2: the config must be a JSON object, starting with '{'"),
        (with(&[(&["listener"], json!([]))]), "listener (line 1): unknown field `listener`, expected one of `log`, `listeners`, `routes`, `default_backend`, `backends`, `timeouts`, `http`, `limits`, `metrics`, `tunnel`"),
        (with(&[(&["listeners"], json!([]))]), "listeners: at least one listener is needed"),
        (with(&[(&["listeners", "0", "address"], json!("127.0.0.1"))]), "listeners[0].address (line 1): invalid socket address syntax"),
        (with(&[(&["listeners", "0", "protocol"], json!("https"))]), "listeners[0].protocol (line 1): unknown variant `https`, expected one of `tls`, `http`, `tunnel`"),
        (with(&[(&["listeners", "0", "proxy_protocol_from"], json!(["10.0.0.0/33"]))]), "listeners[0].proxy_protocol_from[0] (line 1): invalid IP address syntax"),
        (with(&[(&["listeners", "0", "tls"], json!(true))]), "listeners[0].tls (line 1): unknown field `tls`, expected one of `address`, `protocol`, `proxy_protocol_from`, `proxy_protocol_from_anyone`"),
        (with(&[(&["routes", "0", "names", "0"], json!("bad_name.test"))]), "routes[0].names[0]: \"bad_name.test\": name contains a character other than letters, digits, hyphens and dots"),
        (with(&[(&["routes", "0", "names", "0"], json!("a.*.test"))]), "routes[0].names[0]: \"a.*.test\": a wildcard must be the whole first label, as in \"*.example.com\""),
        (with(&[(&["routes", "0", "names"], json!([]))]), "routes[0]: a route needs at least one name in names or names_file"),
        (with(&[(&["routes", "0", "backend"], json!("nope"))]), "routes[0].backend: no backend named \"nope\" (backends: b)"),
        (with(&[(&["routes", "0", "acme_backend"], json!("nope"))]), "routes[0].acme_backend: no backend named \"nope\" (backends: b)"),
        (with(&[(&["routes", "0", "names_file"], json!("/nonexistent/names.txt"))]), "/nonexistent/names.txt: No such file or directory (os error 2)"),
        (with(&[(&["routes", "1"], json!({ "names": ["APP.example.test."], "backend": "b" }))]), "routes[1].names[0]: app.example.test is already listed at routes[0].names[0]"),
        (with(&[(&["routes"], json!([]))]), "routes: no route and no default_backend: every connection would be refused"),
        (with(&[(&["default_backend"], json!("nope"))]), "default_backend: no backend named \"nope\" (backends: b)"),
        (with(&[(&["backends", "b", "servers"], json!([]))]), "backends.b.servers: at least one server is needed"),
        (with(&[(&["backends", "b", "servers"], json!(["node.test"]))]), "backends.b.servers[0]: \"node.test\": expected host:port"),
        (with(&[(&["backends", "b", "servers"], json!([{ "address": "node.test:80", "max_connections": 0 }]))]), "backends.b.servers[0].max_connections: must be at least 1"),
        (with(&[(&["backends", "b", "proxy_protocol"], json!("v3"))]), "backends.b.proxy_protocol (line 1): unknown variant `v3`, expected one of `none`, `v1`, `v2`"),
        (with(&[(&["backends", "b", "balance"], json!("random"))]), "backends.b.balance (line 1): unknown variant `random`, expected `round_robin` or `source_hash`"),
        (with(&[(&["backends", "b", "connect_timeout"], json!("5 parsecs"))]), "backends.b.connect_timeout (line 1): invalid value: string \"5 parsecs\", expected a duration"),
        (with(&[(&["backends", "b", "connect_timeout"], json!("0s"))]), "backends.b.connect_timeout: must be longer than zero"),
        (with(&[(&["backends", "b c"], json!({ "servers": ["127.0.0.1:1"] }))]), "backends.b c: a backend name uses letters, digits, '-', '_' and '.' only"),
        (with(&[(&["timeouts", "client_hello"], json!("0ms"))]), "timeouts.client_hello: must be longer than zero"),
        (with(&[(&["timeouts", "hello"], json!("1s"))]), "timeouts.hello (line 1): unknown field `hello`, expected one of `client_hello`, `idle`, `http_request`, `shutdown`"),
        (with(&[(&["http", "redirect_status"], json!(200))]), "http.redirect_status: must be one of 301, 302, 303, 307, 308"),
        (with(&[(&["http", "max_request_bytes"], json!(10))]), "http.max_request_bytes: must be at least 256"),
        (with(&[(&["limits", "max_connections"], json!(0))]), "limits.max_connections: must be at least 1"),
        (with(&[(&["limits", "max_connections"], json!(-1))]), "limits.max_connections (line 1): invalid value: integer `-1`, expected usize"),
        (with(&[(&["log", "level"], json!("loud"))]), "log.level (line 1): unknown variant `loud`, expected one of `trace`, `debug`, `info`, `warn`, `error`"),
        (with(&[(&["metrics", "address"], json!("localhost:9113"))]), "metrics.address (line 1): invalid socket address syntax"),
        // Durations whose deadline arithmetic would overflow.
        (with(&[(&["timeouts", "client_hello"], json!("500000000000years"))]), "timeouts.client_hello: must be at most 365 days"),
        (with(&[(&["timeouts", "idle"], json!("366days"))]), "timeouts.idle: must be at most 365 days"),
        (with(&[(&["timeouts", "http_request"], json!("1000years"))]), "timeouts.http_request: must be at most 365 days"),
        (with(&[(&["timeouts", "shutdown"], json!("1000years"))]), "timeouts.shutdown: must be at most 365 days"),
        (with(&[(&["backends", "b", "connect_timeout"], json!("400days"))]), "backends.b.connect_timeout: must be at most 365 days"),
        (with(&[(&["backends", "b", "health_check"], json!({ "interval": "1000years" }))]), "backends.b.health_check.interval: must be at most 365 days"),
        (with(&[(&["backends", "b", "health_check"], json!({ "timeout": "0s" }))]), "backends.b.health_check.timeout: must be longer than zero"),
        // Listeners that parse but cannot all be bound.
        (with(&[(&["listeners", "0", "address"], json!("[::ffff:127.0.0.2]:8443"))]), "listeners[0].address: [::ffff:127.0.0.2]:8443 is an IPv4-mapped IPv6 address, which an IPv6-only socket cannot listen on; write 127.0.0.2:8443"),
        (with(&[(&["listeners", "1"], json!({ "address": "0.0.0.0:8443", "protocol": "tls" }))]), "listeners[1].address: 0.0.0.0:8443 and listeners[0] (127.0.0.1:8443) share a port, and one is a wildcard address, which already takes that port on every address: keep the wildcard alone, or list specific addresses only"),
        (with(&[(&["listeners", "0", "address"], json!("[::]:8443")), (&["listeners", "1"], json!({ "address": "[::1]:8443", "protocol": "tls" }))]), "listeners[1].address: [::1]:8443 and listeners[0] ([::]:8443) share a port, and one is a wildcard address, which already takes that port on every address: keep the wildcard alone, or list specific addresses only"),
        (with(&[(&["metrics", "address"], json!("127.0.0.1:8443"))]), "metrics.address: 127.0.0.1:8443 is already listeners[0]"),
        // A PROXY header trusted from everyone, unless acknowledged.
        (with(&[(&["listeners", "0", "proxy_protocol_from"], json!(["10.0.0.0/8", "0.0.0.0/0"]))]), "listeners[0].proxy_protocol_from[1]: 0.0.0.0/0 lets anyone who reaches the listener claim any client address; list the load balancer's addresses, or set listeners[0].proxy_protocol_from_anyone: true if only trusted load balancers can reach it"),
        (with(&[(&["listeners", "0", "proxy_protocol_from"], json!(["::/0"]))]), "listeners[0].proxy_protocol_from[0]: ::/0 lets anyone who reaches the listener claim any client address; list the load balancer's addresses, or set listeners[0].proxy_protocol_from_anyone: true if only trusted load balancers can reach it"),
    ];
    let wrong: Vec<String> = cases
        .iter()
        .filter(|(text, expected)| error_of(text) != *expected)
        .map(|(text, expected)| format!("config {text}\n  expected: {expected}\n  got:      {}", error_of(text)))
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let duplicate = BASE.replace(
        r#"[{ "address": "127.0.0.1:8443", "protocol": "tls" }]"#,
        r#"[{ "address": "127.0.0.1:8443", "protocol": "tls" }, { "address": "127.0.0.1:8443", "protocol": "http" }]"#,
    );
    assert_eq!(error_of(&duplicate), "listeners[1].address: 127.0.0.1:8443 is already listeners[0]");
}

#[test]
fn errors_in_a_file_name_the_file_and_line() {
    let dir = std::env::temp_dir().join(format!("sni-edge-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("names.txt"),
        "# allowed\nblog.example.test\n\n*.kube.example.test # cluster\nbad name.test\n",
    )
    .unwrap();
    let text = with(&[(&["routes", "0", "names_file"], serde_json::json!("names.txt"))]);
    std::fs::write(dir.join("config.json"), &text).unwrap();
    let error = Config::load(&dir.join("config.json")).unwrap_err().to_string();
    let names = dir.join("names.txt");
    assert_eq!(
        error,
        format!(
            "{}: {} line 5: \"bad name.test\": name contains a character other than letters, digits, hyphens and dots",
            dir.join("config.json").display(),
            names.display()
        )
    );

    std::fs::write(&names, "# allowed\nblog.example.test\n\n*.kube.example.test # cluster\n").unwrap();
    let c = Config::load(&dir.join("config.json")).unwrap();
    assert!(c.route_for(&host("blog.example.test")).is_some());
    assert!(c.route_for(&host("a.kube.example.test")).is_some());
    assert!(c.route_for(&host("app.example.test")).is_some());
    assert!(c.route_for(&host("kube.example.test")).is_none());

    let pretty = "{\n  \"listeners\": [],\n  \"backends\": {}\n}\n";
    std::fs::write(dir.join("config.json"), pretty).unwrap();
    let error = Config::load(&dir.join("config.json")).unwrap_err().to_string();
    assert_eq!(error, format!("{}: listeners: at least one listener is needed", dir.join("config.json").display()));
    std::fs::write(dir.join("config.json"), "{\n  \"listeners\": [\n    {\"address\": \"1.2.3.4\"}\n  ]\n}\n").unwrap();
    let error = Config::load(&dir.join("config.json")).unwrap_err().to_string();
    assert_eq!(
        error,
        format!("{}: listeners[0].address (line 3): invalid socket address syntax", dir.join("config.json").display())
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn what_check_refuses_has_a_valid_neighbour() {
    use serde_json::json;
    for text in [
        with(&[(&["timeouts", "idle"], json!("365days")), (&["timeouts", "shutdown"], json!("0s"))]),
        with(&[
            (&["listeners", "0", "proxy_protocol_from"], json!(["0.0.0.0/0"])),
            (&["listeners", "0", "proxy_protocol_from_anyone"], json!(true)),
        ]),
        with(&[(&["listeners", "1"], json!({ "address": "127.0.0.2:8443", "protocol": "tls" }))]),
        with(&[(&["listeners", "1"], json!({ "address": "[::]:8443", "protocol": "tls" }))]),
        with(&[
            (&["listeners", "0", "address"], json!("0.0.0.0:443")),
            (&["listeners", "1"], json!({ "address": "[::]:443", "protocol": "tls" })),
        ]),
    ] {
        assert!(parse(&text).is_ok(), "refused: {text}");
    }
}

#[test]
fn default_backend_takes_unlisted_names() {
    let c = parse(&with(&[(&["default_backend"], serde_json::json!("b"))])).unwrap();
    assert_eq!(c.route_for(&host("anything.test")).unwrap().name, "default");
    assert_eq!(c.route_for(&host("app.example.test")).unwrap().name, "b");
}

#[test]
fn server_objects_and_durations() {
    let c = parse(&with(&[
        (
            &["backends", "b", "servers"],
            serde_json::json!(["127.0.0.1:1", { "address": "node.test:443", "max_connections": 128 }]),
        ),
        (&["backends", "b", "connect_timeout"], serde_json::json!("250ms")),
        (&["timeouts", "idle"], serde_json::json!("1h")),
    ]))
    .unwrap();
    assert_eq!(c.backends[0].servers[1].max_connections, Some(128));
    assert_eq!(c.backends[0].connect_timeout, Duration::from_millis(250));
    assert_eq!(c.timeouts.idle, Duration::from_secs(3600));
}
