//! Running the gateway: reloads under load, graceful stop, limits and
//! timeouts, end to end on loopback. Each test fails if the behaviour it
//! names is missing.

mod common;

use common::*;
use serde_json::{json, Value};
use sni_edge::config::Config;
use sni_edge::hello;
use sni_edge::server::{self, Control};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

// ---------------------------------------------------------------------------
// Helpers.

fn app_hello() -> Vec<u8> {
    hello::build(Some("app.example.test"))
}

fn new_hello() -> Vec<u8> {
    hello::build(Some("new.example.test"))
}

fn stream_hello() -> Vec<u8> {
    hello::build(Some("stream.example.test"))
}

/// A config with one TLS and one HTTP listener; tests add or change keys.
fn settings(tls: SocketAddr, http: SocketAddr, routes: Value, backends: Value) -> Value {
    json!({
        "listeners": [
            { "address": tls.to_string(), "protocol": "tls" },
            { "address": http.to_string(), "protocol": "http" }
        ],
        "routes": routes,
        "backends": backends
    })
}

/// app.example.test to one backend named "app".
fn app_only(tls: SocketAddr, http: SocketAddr, app: SocketAddr) -> Value {
    settings(
        tls,
        http,
        json!([{ "names": ["app.example.test"], "backend": "app" }]),
        json!({ "app": { "servers": [app.to_string()] } }),
    )
}

/// What one client connection got.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    /// The connect itself failed: nothing listens there any more.
    NotListening,
    /// All the gateway sent before it closed (empty for a bare close or reset).
    Answer(Vec<u8>),
}

impl Got {
    fn served(&self) -> bool {
        *self == Got::Answer(b"bye".to_vec())
    }

    /// Refused without an answer from a backend: not listening, closed,
    /// reset, or the unrecognized_name alert.
    fn refused(&self) -> bool {
        match self {
            Got::NotListening => true,
            Got::Answer(answer) => answer.is_empty() || answer == ALERT_UNRECOGNIZED_NAME,
        }
    }
}

/// Like `common::exchange`, from `from` if given, and a refusal at any
/// step (connect, write, read) is an answer rather than a panic.
async fn attempt_from(from: Option<IpAddr>, to: SocketAddr, bytes: &[u8]) -> Got {
    let socket = TcpSocket::new_v4().unwrap();
    if let Some(ip) = from {
        socket.bind(SocketAddr::new(ip, 0)).unwrap();
    }
    let Ok(mut stream) = within("connect", socket.connect(to)).await else {
        return Got::NotListening;
    };
    if stream.write_all(bytes).await.is_ok() {
        let _ = stream.shutdown().await;
    }
    let mut answer = Vec::new();
    let _ = within("reading the answer", stream.read_to_end(&mut answer)).await;
    Got::Answer(answer)
}

async fn attempt(to: SocketAddr, bytes: &[u8]) -> Got {
    attempt_from(None, to, bytes).await
}

/// Tries `bytes` until a client is served (each try must be a refusal until
/// then): for a state the gateway reaches soon but not at once.
async fn served_soon(what: &str, to: SocketAddr, bytes: &[u8]) {
    within(what, async {
        for _ in 0..1000 {
            let got = attempt(to, bytes).await;
            if got.served() {
                return;
            }
            assert!(got.refused(), "{what}: neither served nor refused: {got:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("{what}: still refused after 1000 tries");
    })
    .await
}

/// Polls `condition` every few milliseconds, bounded by `within`.
async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    within(what, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
}

/// Connections that connect and then send nothing (or `bytes`), held open.
async fn hold(count: usize, to: SocketAddr, bytes: &[u8]) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        let mut stream = within("connect", TcpStream::connect(to)).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        held.push(stream);
    }
    held
}

/// True while the gateway has not closed `stream` (no EOF, no reset).
fn still_open(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ (i >> 16) as u8).collect()
}

/// A backend that reads a hello of `hello_len` bytes, sends the first half
/// of `data` in 64 KiB chunks with a pause after each, waits for `gate` to
/// open, sends the rest the same way, ends its side, and reads until the
/// client ends. The gate lets a test hold transfers in flight across a
/// reload or a stop without guessing how long they take.
async fn streaming_backend(hello_len: usize, data: Arc<Vec<u8>>, gate: watch::Receiver<bool>) -> Backend {
    Backend::start(move |mut stream| {
        let data = data.clone();
        let mut gate = gate.clone();
        async move {
            let mut hello = vec![0; hello_len];
            if stream.read_exact(&mut hello).await.is_err() {
                return;
            }
            let (first, second) = data.split_at(data.len() / 2);
            for (i, half) in [first, second].into_iter().enumerate() {
                if i == 1 && gate.wait_for(|open| *open).await.is_err() {
                    return;
                }
                for chunk in half.chunks(64 << 10) {
                    if stream.write_all(chunk).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            let _ = stream.shutdown().await;
            let _ = stream.read_to_end(&mut Vec::new()).await;
        }
    })
    .await
}

/// A client of `streaming_backend`: sends `hello`, says on `started` once
/// the first bytes are back, reads until the server ends, then ends its side.
fn download(to: SocketAddr, hello: Vec<u8>, started: oneshot::Sender<()>) -> tokio::task::JoinHandle<Vec<u8>> {
    tokio::spawn(async move {
        let mut stream = TcpStream::connect(to).await.unwrap();
        stream.write_all(&hello).await.unwrap();
        let mut received = Vec::new();
        let mut started = Some(started);
        let mut buf = vec![0; 64 << 10];
        loop {
            let n = stream.read(&mut buf).await.expect("download cut");
            if n == 0 {
                break;
            }
            received.extend_from_slice(&buf[..n]);
            if let Some(started) = started.take() {
                let _ = started.send(());
            }
        }
        stream.shutdown().await.unwrap();
        received
    })
}

/// Starts `count` downloads and returns once each has its first bytes.
async fn downloads(count: usize, to: SocketAddr) -> Vec<tokio::task::JoinHandle<Vec<u8>>> {
    let mut handles = Vec::new();
    for _ in 0..count {
        let (started, first_bytes) = oneshot::channel();
        handles.push(download(to, stream_hello(), started));
        within("first bytes of a download", first_bytes).await.unwrap();
    }
    handles
}

/// The gateway like `common::Gateway`, but the test keeps the control
/// channel and the server task: it can tell when the server has taken a
/// reload, and watch `run()` return after a stop it asked for.
struct Owned {
    tls: SocketAddr,
    http: SocketAddr,
    config_path: PathBuf,
    control: mpsc::Sender<Control>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    dir: PathBuf,
}

impl Owned {
    async fn start(config: impl Fn(SocketAddr, SocketAddr) -> Value) -> Owned {
        let tls_socket = server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let http_socket = server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let tls = tls_socket.local_addr().unwrap();
        let http = http_socket.local_addr().unwrap();
        let dir = std::env::temp_dir().join(format!("sni-edge-ops-{}-{}", std::process::id(), tls.port()));
        std::fs::create_dir_all(&dir).unwrap();
        let config_path = dir.join("config.json");
        std::fs::write(&config_path, config(tls, http).to_string()).unwrap();
        let parsed = Config::load(&config_path).unwrap();
        let listeners = [(tls, tls_socket), (http, http_socket)].into_iter().collect();
        let (control, requests) = mpsc::channel(8);
        let task = tokio::spawn(server::run(Some(config_path.clone()), parsed, listeners, requests));
        Owned { tls, http, config_path, control, task, dir }
    }

    /// Writes `text` as the config file and asks for a reload; returns once
    /// the server has taken the request off the channel. The server handles
    /// a reload without yielding, so on the current-thread runtime (these
    /// tests' default) taken means done.
    async fn reload_with(&self, text: &str) {
        std::fs::write(&self.config_path, text).unwrap();
        self.control.send(Control::Reload).await.unwrap();
        until("the server taking the reload", || self.control.capacity() == self.control.max_capacity()).await;
    }

    async fn ask_to_stop(&self) {
        self.control.send(Control::Shutdown).await.unwrap();
    }

    /// Waits (bounded by `limit`) until `run()` returns, and returns its result.
    async fn stopped(&mut self, limit: Duration) -> anyhow::Result<()> {
        tokio::time::timeout(limit, &mut self.task)
            .await
            .unwrap_or_else(|_| panic!("the gateway did not stop within {limit:?}"))
            .unwrap()
    }

    async fn stop(mut self) {
        self.ask_to_stop().await;
        self.stopped(patience()).await.unwrap();
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The slow-clients test holds about two descriptors per client in this
/// one process (client and gateway side).
fn raise_open_files_limit(want: libc::rlim_t) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain calls with a valid pointer to a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < want {
            limit.rlim_cur = want.min(limit.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
    assert!(limit.rlim_cur >= want, "RLIMIT_NOFILE is {}, this test needs {want}", limit.rlim_cur);
}

// ---------------------------------------------------------------------------
// Reload.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_under_load_changes_a_route_and_fails_no_connection() {
    let (app, mut app_got) = Backend::recording().await;
    let (new, mut new_got) = Backend::recording().await;
    let data = Arc::new(pattern(4 << 20));
    let (gate, gate_rx) = watch::channel(false);
    let streamer = streaming_backend(stream_hello().len(), data.clone(), gate_rx).await;
    let config = |tls, http, with_new: bool| {
        let mut routes = vec![
            json!({ "names": ["app.example.test"], "backend": "app" }),
            json!({ "names": ["stream.example.test"], "backend": "streamer" }),
        ];
        if with_new {
            routes.push(json!({ "names": ["new.example.test"], "backend": "new" }));
        }
        let backends = json!({
            "app": { "servers": [app.addr.to_string()] },
            "new": { "servers": [new.addr.to_string()] },
            "streamer": { "servers": [streamer.addr.to_string()] }
        });
        settings(tls, http, Value::Array(routes), backends).to_string()
    };
    let gw = Gateway::start(|tls, http| config(tls, http, false)).await;

    // Before: the new name is refused.
    assert_eq!(attempt(gw.tls, &new_hello()).await, Got::Answer(ALERT_UNRECOGNIZED_NAME.to_vec()));

    // Transfers established before the reload, held open across it.
    let transfers = downloads(3, gw.tls).await;

    // 300 sequential clients; the reload comes after the 100th.
    let (progress, mut done) = mpsc::unbounded_channel();
    let to = gw.tls;
    let load = tokio::spawn(async move {
        for i in 0..300 {
            let sent = [app_hello(), format!("request {i}").into_bytes()].concat();
            let (_, answer) = exchange(to, &sent).await;
            assert_eq!(answer, b"bye", "client {i} was not served");
            let _ = progress.send(i);
        }
    });
    within("100 clients", async { while done.recv().await.unwrap() < 100 {} }).await;
    std::fs::write(&gw.config_path, config(gw.tls, gw.http, true)).unwrap();
    gw.send(Control::Reload).await;
    assert!(!load.is_finished(), "the reload came after the load");

    // After: the new name reaches the new backend, while the load goes on.
    served_soon("the new name after the reload", gw.tls, &new_hello()).await;
    for _ in 0..5 {
        assert!(attempt(gw.tls, &new_hello()).await.served());
    }
    assert!(!load.is_finished(), "the new route was checked while the load ran");

    // The transfers finish their second half after the reload, intact.
    gate.send(true).unwrap();
    within("the load", load).await.unwrap();
    for transfer in transfers {
        let received = within("a transfer", transfer).await.unwrap();
        assert_eq!(received.len(), data.len());
        assert!(received == *data, "a transfer arrived changed");
    }
    for i in 0..300 {
        let got = within("app backend", app_got.recv()).await.unwrap();
        assert_eq!(got, [app_hello(), format!("request {i}").into_bytes()].concat());
    }
    assert!(app_got.try_recv().is_err(), "the app backend got more than the load");
    assert_eq!(new.accepted(), 6);
    while let Ok(got) = new_got.try_recv() {
        assert_eq!(got, new_hello());
    }
    gw.stop().await;
}

/// The old route works and the new name is refused.
async fn served_as_before(tls: SocketAddr) {
    assert!(attempt(tls, &app_hello()).await.served(), "the old route stopped working");
    assert_eq!(attempt(tls, &new_hello()).await, Got::Answer(ALERT_UNRECOGNIZED_NAME.to_vec()));
}

#[tokio::test]
async fn a_reload_with_a_broken_file_changes_nothing() {
    let (app, _app_got) = Backend::recording().await;
    let (new, _new_got) = Backend::recording().await;
    let gw = Owned::start(|tls, http| app_only(tls, http, app.addr)).await;
    served_as_before(gw.tls).await;

    let mut with_new = app_only(gw.tls, gw.http, app.addr);
    with_new["routes"].as_array_mut().unwrap().push(json!({ "names": ["new.example.test"], "backend": "new" }));
    // Invalid JSON: the first half of a good file.
    let good = with_new.to_string();
    gw.reload_with(&good[..good.len() / 2]).await;
    served_as_before(gw.tls).await;
    // Valid JSON, but the new route names a backend that does not exist.
    gw.reload_with(&good).await;
    served_as_before(gw.tls).await;

    // The same file with the backend added: now it takes effect.
    with_new["backends"]["new"] = json!({ "servers": [new.addr.to_string()] });
    gw.reload_with(&with_new.to_string()).await;
    assert!(attempt(gw.tls, &new_hello()).await.served(), "a good reload after bad ones did not take");
    assert!(attempt(gw.tls, &app_hello()).await.served());
    assert_eq!(new.accepted(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn a_reload_opens_an_added_listener_and_closes_a_removed_one() {
    let (app, _app_got) = Backend::recording().await;
    let extra = {
        let probe = server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        probe.local_addr().unwrap()
    };
    let gw = Owned::start(|tls, http| app_only(tls, http, app.addr)).await;
    assert_eq!(attempt(extra, &app_hello()).await, Got::NotListening);

    let mut added = app_only(gw.tls, gw.http, app.addr);
    added["listeners"].as_array_mut().unwrap().push(json!({ "address": extra.to_string(), "protocol": "tls" }));
    gw.reload_with(&added.to_string()).await;
    assert!(attempt(extra, &app_hello()).await.served(), "the added listener does not serve");

    // A connection through the extra listener, open while it is removed.
    let mut established = TcpStream::connect(extra).await.unwrap();
    established.write_all(&app_hello()).await.unwrap();
    until("the established connection reaching the backend", || app.accepted() == 2).await;

    gw.reload_with(&app_only(gw.tls, gw.http, app.addr).to_string()).await;
    // The port is given back without anyone having to connect first:
    // binding it is how to see that without waking the old listener.
    within("the removed listener closing", async {
        while server::bind(extra).is_err() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    assert_eq!(attempt(extra, &app_hello()).await, Got::NotListening);
    assert!(attempt(gw.tls, &app_hello()).await.served(), "the remaining listener stopped serving");
    assert!(attempt(gw.tls, &app_hello()).await.served());

    // Removing the listener did not cut what it had accepted.
    established.shutdown().await.unwrap();
    let mut answer = Vec::new();
    within("the established connection", established.read_to_end(&mut answer)).await.unwrap();
    assert_eq!(answer, b"bye");
    gw.stop().await;
}

/// A listener that stays at its address with another protocol keeps its
/// socket, which serves the new protocol from the reload on: TLS listeners
/// are served by the connection engine and HTTP ones on tokio, so the
/// socket changes hands both ways.
#[tokio::test]
async fn a_reload_can_change_the_protocol_of_a_listener() {
    let (app, _app_got) = Backend::recording().await;
    let gw = Owned::start(|tls, http| app_only(tls, http, app.addr)).await;
    let request = b"GET /page HTTP/1.1\r\nHost: app.example.test\r\n\r\n";
    let redirected = |got: Got| match got {
        Got::Answer(bytes) => {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            text.starts_with("HTTP/1.1 30") && text.contains("Location: https://app.example.test/page\r\n")
        }
        Got::NotListening => false,
    };
    assert!(attempt(gw.tls, &app_hello()).await.served());
    assert!(redirected(attempt(gw.http, request).await));

    let mut swapped = app_only(gw.tls, gw.http, app.addr);
    swapped["listeners"][0]["protocol"] = json!("http");
    swapped["listeners"][1]["protocol"] = json!("tls");
    gw.reload_with(&swapped.to_string()).await;
    within("the swapped listeners serving", async {
        while !redirected(attempt(gw.tls, request).await) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(attempt(gw.http, &app_hello()).await.served(), "the listener made TLS does not serve TLS");
    assert!(redirected(attempt(gw.tls, request).await));

    gw.reload_with(&app_only(gw.tls, gw.http, app.addr).to_string()).await;
    within("the listeners serving as at first", async {
        while !attempt(gw.tls, &app_hello()).await.served() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(redirected(attempt(gw.http, request).await));
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// Graceful stop.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_refuses_new_clients_and_lets_transfers_finish() {
    let (app, _app_got) = Backend::recording().await;
    let data = Arc::new(pattern(3 << 20));
    let (gate, gate_rx) = watch::channel(false);
    let streamer = streaming_backend(stream_hello().len(), data.clone(), gate_rx).await;
    let drain = Duration::from_secs(10);
    let mut gw = Owned::start(|tls, http| {
        let mut config = app_only(tls, http, app.addr);
        config["routes"]
            .as_array_mut()
            .unwrap()
            .push(json!({ "names": ["stream.example.test"], "backend": "streamer" }));
        config["backends"]["streamer"] = json!({ "servers": [streamer.addr.to_string()] });
        config["timeouts"] = json!({ "shutdown": "10s" });
        config
    })
    .await;
    let transfers = downloads(3, gw.tls).await;

    let asked = Instant::now();
    gw.ask_to_stop().await;
    // Clients that connected before the stop took effect may be served;
    // from a listener's first refusal on, every new client is refused.
    let redirect = b"GET / HTTP/1.1\r\nHost: app.example.test\r\n\r\n";
    let mut served_before = 0;
    for (listener, request) in [(gw.tls, &app_hello()[..]), (gw.http, &redirect[..])] {
        within("a refusal after the stop", async {
            loop {
                let got = attempt(listener, request).await;
                if got.refused() {
                    break;
                }
                served_before += usize::from(listener == gw.tls);
            }
        })
        .await;
        for _ in 0..3 {
            let got = attempt(listener, request).await;
            assert!(got.refused(), "{listener} answered a new client during the drain: {got:?}");
        }
    }
    assert_eq!(app.accepted(), served_before, "a refused client reached the backend");
    assert!(!gw.task.is_finished(), "the gateway stopped with transfers in flight");

    gate.send(true).unwrap();
    for transfer in transfers {
        let received = within("a transfer", transfer).await.unwrap();
        assert_eq!(received.len(), data.len());
        assert!(received == *data, "a transfer arrived changed");
    }
    gw.stopped(drain).await.unwrap();
    assert!(asked.elapsed() < drain);
}

#[tokio::test]
async fn a_stop_closes_a_stalled_connection_at_the_drain_deadline() {
    let (closed, mut backend_saw_close) = mpsc::unbounded_channel();
    let stalled = Backend::start(move |mut stream| {
        let closed = closed.clone();
        async move {
            let mut hello = vec![0; app_hello().len()];
            stream.read_exact(&mut hello).await.unwrap();
            stream.write_all(&[7; 1024]).await.unwrap();
            // Then nothing, until the gateway closes.
            let _ = stream.read_to_end(&mut Vec::new()).await;
            let _ = closed.send(());
        }
    })
    .await;
    let mut gw = Owned::start(|tls, http| {
        let mut config = app_only(tls, http, stalled.addr);
        config["timeouts"] = json!({ "shutdown": "300ms" });
        config
    })
    .await;
    let mut client = TcpStream::connect(gw.tls).await.unwrap();
    client.write_all(&app_hello()).await.unwrap();
    let mut first = [0; 1024];
    within("the first bytes", client.read_exact(&mut first)).await.unwrap();

    let asked = Instant::now();
    gw.ask_to_stop().await;
    gw.stopped(Duration::from_secs(3)).await.unwrap();
    let took = asked.elapsed();
    assert!(took >= Duration::from_millis(300), "stopped after {took:?}, before the drain deadline");
    assert!(took < Duration::from_millis(1500), "stopped after {took:?}, long after the drain deadline");

    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(2), client.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the stalled client's connection is still open");
    assert!(rest.is_empty());
    within("the backend seeing the close", backend_saw_close.recv()).await.unwrap();
}

// ---------------------------------------------------------------------------
// Limits. TLS connections are accepted by the connection engines on threads
// of their own, so a connect that returned is not yet a counted connection:
// each test waits until the gateway counts what it holds (`admitted`) before
// it tries the connection that meets the limit.

/// Waits until the gateway counts `count` open connections (its metrics
/// listen on `metrics`).
async fn admitted(metrics: SocketAddr, count: usize) {
    wait_for(metrics, "sni_edge_active_connections{}", count as f64).await;
}

#[tokio::test]
async fn a_full_pending_pool_closes_the_oldest_of_the_biggest_holder() {
    let (app, mut app_got) = Backend::recording().await;
    let metrics = free_port();
    let gw = Gateway::start(|tls, http| {
        let mut config = app_only(tls, http, app.addr);
        config["limits"] = json!({ "max_pending_handshakes": 50, "max_pending_per_client": 100 });
        config["timeouts"] = json!({ "client_hello": "60s", "http_request": "60s" });
        config["metrics"] = json!({ "address": metrics.to_string() });
        config.to_string()
    })
    .await;
    // 127.0.0.1 fills both listeners' pools. The first is admitted before
    // the others connect: each CPU has an engine thread, and two of them
    // can admit connections accepted microseconds apart in either order, so
    // the gateway's oldest is idle[0] only once the others come after it.
    let mut idle = hold(1, gw.tls, b"").await;
    admitted(metrics, 1).await;
    idle.extend(hold(49, gw.tls, b"").await);
    let idle_http = hold(50, gw.http, b"").await;
    admitted(metrics, 100).await;
    // A newcomer is not refused: 127.0.0.1's oldest pending connection on
    // that listener makes room, and nothing on the other listener moves.
    let other: IpAddr = "127.0.0.2".parse().unwrap();
    assert!(attempt_from(Some(other), gw.tls, &app_hello()).await.served(), "the newcomer was refused");
    assert_eq!(within("app backend", app_got.recv()).await.unwrap(), app_hello());
    until("the oldest idle connection closed", || !still_open(&idle[0])).await;
    assert!(idle[1..].iter().all(still_open), "more than the oldest was closed");
    assert!(idle_http.iter().all(still_open), "the full TLS pool closed a connection of the HTTP listener");
    drop((idle, idle_http));
    gw.stop().await;
}

#[tokio::test]
async fn max_pending_per_client_refuses_that_client_only() {
    let (app, _app_got) = Backend::recording().await;
    let metrics = free_port();
    let gw = Gateway::start(|tls, http| {
        let mut config = app_only(tls, http, app.addr);
        config["limits"] = json!({ "max_pending_per_client": 5 });
        config["timeouts"] = json!({ "client_hello": "60s" });
        config["metrics"] = json!({ "address": metrics.to_string() });
        config.to_string()
    })
    .await;
    let idle = hold(5, gw.tls, b"").await;
    admitted(metrics, 5).await;
    assert_eq!(attempt(gw.tls, &app_hello()).await, Got::Answer(vec![]), "a 6th pending connection of one client");
    assert_eq!(app.accepted(), 0);
    let other: IpAddr = "127.0.0.2".parse().unwrap();
    assert!(attempt_from(Some(other), gw.tls, &app_hello()).await.served());
    assert!(idle.iter().all(still_open));
    // Pending only: a client whose hellos are in is not held to it.
    let mut idle = idle;
    for stream in &mut idle {
        stream.write_all(&app_hello()).await.unwrap();
    }
    served_soon("the client once its hellos were in", gw.tls, &app_hello()).await;
    drop(idle);
    gw.stop().await;
}

#[tokio::test]
async fn a_thousand_slow_clients_do_not_stop_a_normal_one() {
    // Every test client is 127.0.0.1: with the default
    // max_connections_per_client (512) and max_pending_per_client (64) those
    // limits, not the handshake handling, would decide. They are raised so the test measures the latter;
    // the other limits keep their defaults (max_pending_handshakes 2000).
    raise_open_files_limit(4096);
    let (app, mut app_got) = Backend::recording().await;
    let gw = Gateway::start(|tls, http| {
        let mut config = app_only(tls, http, app.addr);
        config["limits"] = json!({ "max_connections_per_client": 5000, "max_pending_per_client": 5000 });
        // So that no slow client times out while the others connect.
        config["timeouts"] = json!({ "client_hello": "60s" });
        config.to_string()
    })
    .await;
    // Each sends the first 5 bytes of a hello (a record header), then stalls.
    let slow = hold(1000, gw.tls, &app_hello()[..5]).await;
    let sent = [app_hello(), b"normal".to_vec()].concat();
    let asked = Instant::now();
    let (_, answer) = exchange(gw.tls, &sent).await;
    assert_eq!(answer, b"bye");
    assert!(asked.elapsed() < Duration::from_secs(3), "the normal client waited {:?}", asked.elapsed());
    assert_eq!(within("app backend", app_got.recv()).await.unwrap(), sent);
    assert!(slow.iter().all(still_open), "slow clients were dropped though under every limit");
    drop(slow);
    gw.stop().await;
}

#[tokio::test]
async fn max_connections_per_client_refuses_that_client_only() {
    let (app, _app_got) = Backend::recording().await;
    let metrics = free_port();
    let gw = Gateway::start(|tls, http| {
        let mut config = app_only(tls, http, app.addr);
        config["limits"] = json!({ "max_connections_per_client": 3 });
        config["timeouts"] = json!({ "client_hello": "60s" });
        config["metrics"] = json!({ "address": metrics.to_string() });
        config.to_string()
    })
    .await;
    let idle = hold(3, gw.tls, b"").await;
    admitted(metrics, 3).await;
    assert_eq!(attempt(gw.tls, &app_hello()).await, Got::Answer(vec![]), "a 4th connection from one client");
    assert_eq!(app.accepted(), 0);
    // Another client address is not held to 127.0.0.1's count.
    let other: IpAddr = "127.0.0.2".parse().unwrap();
    assert!(attempt_from(Some(other), gw.tls, &app_hello()).await.served());
    assert!(idle.iter().all(still_open));

    drop(idle);
    served_soon("the client once its idle connections closed", gw.tls, &app_hello()).await;
    gw.stop().await;
}

#[tokio::test]
async fn max_connections_counts_relayed_connections_of_all_clients() {
    let (app, _app_got) = Backend::recording().await;
    let gw = Gateway::start(|tls, http| {
        let mut config = app_only(tls, http, app.addr);
        config["limits"] = json!({ "max_connections": 3 });
        config.to_string()
    })
    .await;
    let mut relayed = hold(3, gw.tls, &app_hello()).await;
    until("3 relayed connections", || app.accepted() == 3).await;
    assert_eq!(attempt(gw.tls, &app_hello()).await, Got::Answer(vec![]), "a 4th connection in all");
    let other: IpAddr = "127.0.0.2".parse().unwrap();
    assert_eq!(attempt_from(Some(other), gw.tls, &app_hello()).await, Got::Answer(vec![]), "a 4th from elsewhere");
    assert_eq!(app.accepted(), 3);

    // One ends: there is room again.
    let mut first = relayed.remove(0);
    first.shutdown().await.unwrap();
    let mut answer = Vec::new();
    within("the first relayed connection", first.read_to_end(&mut answer)).await.unwrap();
    assert_eq!(answer, b"bye");
    served_soon("a client once a connection ended", gw.tls, &app_hello()).await;
    drop(relayed);
    gw.stop().await;
}

#[tokio::test]
async fn a_server_at_max_connections_refuses_until_a_connection_ends() {
    let (app, _app_got) = Backend::recording().await;
    let gw = Gateway::start(|tls, http| {
        let mut config = app_only(tls, http, app.addr);
        config["backends"]["app"] = json!({ "servers": [{ "address": app.addr.to_string(), "max_connections": 1 }] });
        config.to_string()
    })
    .await;
    let mut first = TcpStream::connect(gw.tls).await.unwrap();
    first.write_all(&app_hello()).await.unwrap();
    until("the first connection reaching the server", || app.accepted() == 1).await;
    assert_eq!(attempt(gw.tls, &app_hello()).await, Got::Answer(vec![]), "a second connection to a full server");
    assert_eq!(app.accepted(), 1);

    first.shutdown().await.unwrap();
    let mut answer = Vec::new();
    within("the first connection", first.read_to_end(&mut answer)).await.unwrap();
    assert_eq!(answer, b"bye");
    served_soon("a client once the server had room", gw.tls, &app_hello()).await;
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// Timeouts.

#[tokio::test]
async fn the_idle_timeout_closes_a_silent_connection_but_not_a_busy_one() {
    let (app, mut app_got) = Backend::recording().await;
    let gw = Gateway::start(|tls, http| {
        let mut config = app_only(tls, http, app.addr);
        config["timeouts"] = json!({ "idle": "300ms" });
        config.to_string()
    })
    .await;
    let silent = async {
        let started = Instant::now();
        let mut stream = TcpStream::connect(gw.tls).await.unwrap();
        stream.write_all(&app_hello()).await.unwrap();
        let mut answer = Vec::new();
        let _ = within("the silent connection", stream.read_to_end(&mut answer)).await;
        (started.elapsed(), answer)
    };
    let busy = async {
        let mut stream = TcpStream::connect(gw.tls).await.unwrap();
        stream.write_all(&app_hello()).await.unwrap();
        for i in 0..10u8 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            stream.write_all(&[i]).await.expect("the busy connection was cut");
        }
        stream.shutdown().await.unwrap();
        let mut answer = Vec::new();
        within("the busy connection", stream.read_to_end(&mut answer)).await.unwrap();
        answer
    };
    let ((silent_for, silent_answer), busy_answer) = tokio::join!(silent, busy);
    assert!(silent_answer.is_empty(), "{silent_answer:?}");
    assert!(silent_for >= Duration::from_millis(300), "closed after {silent_for:?}, before the idle timeout");
    assert!(silent_for < Duration::from_secs(2), "closed after {silent_for:?}");
    assert_eq!(busy_answer, b"bye", "the busy connection was cut");

    let mut got = vec![
        within("app backend", app_got.recv()).await.unwrap(),
        within("app backend", app_got.recv()).await.unwrap(),
    ];
    got.sort_by_key(Vec::len);
    assert_eq!(got, [app_hello(), [app_hello(), (0..10).collect()].concat()]);
    gw.stop().await;
}

#[tokio::test]
async fn the_client_hello_timeout_closes_a_half_sent_hello() {
    let (app, mut app_got) = Backend::recording().await;
    let gw = Gateway::start(|tls, http| {
        let mut config = app_only(tls, http, app.addr);
        config["timeouts"] = json!({ "client_hello": "300ms" });
        config.to_string()
    })
    .await;
    let hello = app_hello();
    let started = Instant::now();
    let mut stream = TcpStream::connect(gw.tls).await.unwrap();
    stream.write_all(&hello[..hello.len() / 2]).await.unwrap();
    let mut answer = Vec::new();
    let _ = within("the half hello", stream.read_to_end(&mut answer)).await;
    let took = started.elapsed();
    assert!(answer.is_empty());
    assert!(took >= Duration::from_millis(300), "closed after {took:?}, before the timeout");
    assert!(took < Duration::from_secs(2), "closed after {took:?}");
    assert_eq!(app.accepted(), 0, "a half hello reached the backend");

    // A hello that takes a while but completes in time is served.
    let mut stream = TcpStream::connect(gw.tls).await.unwrap();
    stream.write_all(&hello[..hello.len() / 2]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream.write_all(&hello[hello.len() / 2..]).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut answer = Vec::new();
    within("the slow hello", stream.read_to_end(&mut answer)).await.unwrap();
    assert_eq!(answer, b"bye");
    assert_eq!(within("app backend", app_got.recv()).await.unwrap(), hello);
    gw.stop().await;
}
