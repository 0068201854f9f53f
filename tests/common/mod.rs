//! Test harness: the real server in-process on 127.0.0.1 port 0, backends
//! that record every byte they receive, and small clients.
#![allow(dead_code)]

use sni_edge::config::Config;
use sni_edge::server::{self, Control};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Every wait in these tests is bounded by this: 20 s, or
/// `SNI_EDGE_TEST_PATIENCE` seconds (tests/aarch64.sh gives more under qemu,
/// where a debug build moving tens of MiB through TLS is tens of times slower).
pub fn patience() -> Duration {
    let secs = std::env::var("SNI_EDGE_TEST_PATIENCE").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    Duration::from_secs(secs)
}

pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    let patience = patience();
    tokio::time::timeout(patience, future).await.unwrap_or_else(|_| panic!("{what}: took longer than {patience:?}"))
}

/// A backend server that hands each connection to `handler`.
pub struct Backend {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    pub async fn start<F, Fut>(handler: F) -> Backend
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let handler = Arc::new(handler);
        let task = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        count.fetch_add(1, Ordering::SeqCst);
                        tokio::spawn(handler(stream));
                    }
                    // Out of descriptors (a test takes them away from the
                    // whole process): the backend stays up, as a real one
                    // on another machine would.
                    Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
        });
        Backend { addr, accepted, task }
    }

    /// A backend that reads until the client finishes sending, reports all
    /// it received on the channel, then answers "bye" and closes.
    /// An HTTP server that reads a request head, sends `answer`, keeps the
    /// connection open and records everything it received (until 800 ms
    /// pass with nothing new): whether a second request ever reached it.
    pub async fn answering_once(answer: &'static [u8]) -> (Backend, mpsc::UnboundedReceiver<Vec<u8>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let backend = Backend::start(move |mut stream| {
            let tx = tx.clone();
            async move {
                let mut got = Vec::new();
                let mut chunk = [0; 4096];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&chunk[..n]),
                    }
                }
                stream.write_all(answer).await.unwrap();
                while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(800), stream.read(&mut chunk)).await {
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&chunk[..n]);
                }
                let _ = tx.send(got);
            }
        })
        .await;
        (backend, rx)
    }

    pub async fn recording() -> (Backend, mpsc::UnboundedReceiver<Vec<u8>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let backend = Backend::start(move |mut stream| {
            let tx = tx.clone();
            async move {
                let mut received = Vec::new();
                let _ = stream.read_to_end(&mut received).await;
                let _ = tx.send(received);
                let _ = stream.write_all(b"bye").await;
            }
        })
        .await;
        (backend, rx)
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub fn stop(&self) {
        self.task.abort();
    }
}

/// The real gateway, running in this test's runtime.
pub struct Gateway {
    pub tls: SocketAddr,
    pub http: SocketAddr,
    pub config_path: PathBuf,
    control: mpsc::Sender<Control>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    dir: PathBuf,
}

impl Gateway {
    /// `config` gets the TLS and HTTP listener addresses and returns the
    /// config JSON, which is written to a file so that reloads can change it.
    pub async fn start(config: impl Fn(SocketAddr, SocketAddr) -> String) -> Gateway {
        Gateway::start_on("127.0.0.1:0", config).await
    }

    /// Like `start`, with both listeners on `address` (port 0: any).
    pub async fn start_on(address: &str, config: impl Fn(SocketAddr, SocketAddr) -> String) -> Gateway {
        let tls_socket = server::bind(address.parse().unwrap()).unwrap();
        let http_socket = server::bind(address.parse().unwrap()).unwrap();
        let tls = tls_socket.local_addr().unwrap();
        let http = http_socket.local_addr().unwrap();
        let dir = std::env::temp_dir().join(format!("sni-edge-test-{}-{}", std::process::id(), tls.port()));
        std::fs::create_dir_all(&dir).unwrap();
        let config_path = dir.join("config.json");
        std::fs::write(&config_path, config(tls, http)).unwrap();
        let parsed = Config::load(&config_path).unwrap();
        let listeners = [(tls, tls_socket), (http, http_socket)].into_iter().collect();
        let (control, requests) = mpsc::channel(8);
        let task = tokio::spawn(server::run(Some(config_path.clone()), parsed, listeners, requests));
        Gateway { tls, http, config_path, control, task, dir }
    }

    pub async fn send(&self, request: Control) {
        self.control.send(request).await.unwrap();
    }

    /// Asks for a graceful stop and waits until the server has stopped.
    pub async fn stop(self) {
        self.send(Control::Shutdown).await;
        within("gateway stop", self.task).await.unwrap().unwrap();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A config with one TLS and one HTTP listener, and the given routes and
/// backends (JSON fragments).
pub fn config(tls: SocketAddr, http: SocketAddr, routes: &str, backends: &str) -> String {
    format!(
        r#"{{
          "log": {{ "level": "debug" }},
          "listeners": [
            {{ "address": "{tls}", "protocol": "tls" }},
            {{ "address": "{http}", "protocol": "http" }}
          ],
          "routes": {routes},
          "backends": {backends}
        }}"#
    )
}

/// Sends `bytes`, ends the sending side, and returns all the gateway sent back.
pub async fn exchange(to: SocketAddr, bytes: &[u8]) -> (SocketAddr, Vec<u8>) {
    let mut stream = TcpStream::connect(to).await.unwrap();
    let local = stream.local_addr().unwrap();
    stream.write_all(bytes).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut answer = Vec::new();
    // A reset is a valid way for the gateway to refuse.
    let _ = within("reading the answer", stream.read_to_end(&mut answer)).await;
    (local, answer)
}

pub fn proxy_v1(client: SocketAddr, gateway: SocketAddr) -> Vec<u8> {
    format!("PROXY TCP4 {} {} {} {}\r\n", client.ip(), gateway.ip(), client.port(), gateway.port()).into_bytes()
}

pub const HELLO_CURL: &[u8] = include_bytes!("../fixtures/hello-curl-tls13.bin");
pub const HELLO_CHROMIUM: &[u8] = include_bytes!("../fixtures/hello-chromium.bin");
pub const HELLO_OPENSSL_NO_SNI: &[u8] = include_bytes!("../fixtures/hello-openssl-nosni.bin");
/// The fatal unrecognized_name alert a refused name gets.
pub const ALERT_UNRECOGNIZED_NAME: &[u8] = &[21, 3, 3, 0, 2, 2, 112];

/// The real `sni-edge` binary, running `config` (which must use `ADDRESS`
/// for its one TLS listener) on a listening socket this test made and
/// passes as systemd does (fd 3, LISTEN_FDS), so that the address is known
/// before the binary starts. Killed when dropped.
pub struct RealGateway {
    pub address: SocketAddr,
    pub child: std::process::Child,
    pub dir: PathBuf,
}

impl RealGateway {
    /// `open_files`: an RLIMIT_NOFILE (soft, hard) for the binary, if given.
    pub fn start(config: &str, open_files: Option<(u64, u64)>, stderr: std::process::Stdio) -> RealGateway {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = socket.local_addr().unwrap();
        let dir = std::env::temp_dir().join(format!("sni-edge-real-{}-{}", std::process::id(), address.port()));
        std::fs::create_dir_all(&dir).unwrap();
        let config_path = dir.join("config.json");
        std::fs::write(&config_path, config.replace("ADDRESS", &address.to_string())).unwrap();
        let mut command = std::process::Command::new("/bin/sh");
        // LISTEN_PID must be the service's own pid: the shell's, kept by exec.
        command
            .args(["-c", "export LISTEN_PID=$$; exec \"$0\" run --config \"$1\"", env!("CARGO_BIN_EXE_sni-edge")])
            .arg(&config_path)
            .env("LISTEN_FDS", "1")
            .env_remove("NOTIFY_SOCKET")
            .stdout(std::process::Stdio::null())
            .stderr(stderr);
        let fd = socket.as_raw_fd();
        // SAFETY: dup2, fcntl and setrlimit are async-signal-safe, the only calls
        // made between fork and exec.
        unsafe {
            command.pre_exec(move || {
                // dup2 onto itself would keep the socket's close-on-exec flag.
                let moved = if fd == 3 { libc::fcntl(3, libc::F_SETFD, 0) } else { libc::dup2(fd, 3) };
                if moved < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some((soft, hard)) = open_files {
                    let limit = libc::rlimit { rlim_cur: soft, rlim_max: hard };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = command.spawn().unwrap();
        RealGateway { address, child, dir }
    }

    /// Resident memory of the binary, from /proc.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status");
        kib * 1024
    }
}

impl Drop for RealGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Raises this test process's soft open files limit to the hard one (the
/// attack tests hold a few thousand sockets); returns the limit.
pub fn open_files_to_hard() -> u64 {
    sni_edge::limits::raise_open_files_limit().unwrap().0
}

// Metrics: the endpoint as a scraper sees it.

pub fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// Fetches the metrics and returns every sample as "name{label=value,...}" → value,
/// labels sorted, as the prometheus-parse crate reads them.
pub async fn scrape(address: SocketAddr) -> HashMap<String, f64> {
    // The endpoint is opened by the server task, which may not have run yet.
    let mut stream = within("connecting to the metrics endpoint", async {
        loop {
            match TcpStream::connect(address).await {
                Ok(stream) => return stream,
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    })
    .await;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\n\r\n").await.unwrap();
    let mut response = String::new();
    within("scrape", stream.read_to_string(&mut response)).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap();
    assert!(!scrape.samples.is_empty());
    scrape
        .samples
        .into_iter()
        .map(|s| {
            let mut labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            labels.sort();
            let value = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                prometheus_parse::Value::Histogram(buckets) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
                prometheus_parse::Value::Summary(_) => f64::NAN,
            };
            (format!("{}{{{}}}", s.metric, labels.join(",")), value)
        })
        .collect()
}

pub fn get(samples: &HashMap<String, f64>, key: &str) -> f64 {
    *samples.get(key).unwrap_or_else(|| {
        let mut keys: Vec<_> = samples.keys().collect();
        keys.sort();
        panic!("no sample {key}; samples: {keys:#?}")
    })
}

/// Polls the metrics until `key` has `value`, within `patience()`.
pub async fn wait_for(metrics: SocketAddr, key: &str, value: f64) {
    within(&format!("waiting for {key} = {value}"), async {
        loop {
            if scrape(metrics).await.get(key) == Some(&value) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await
}

/// Closes with a reset (RST) instead of a FIN.
pub fn abort(stream: TcpStream) {
    socket2::SockRef::from(&stream).set_linger(Some(std::time::Duration::ZERO)).unwrap();
    drop(stream);
}

/// Reads until the end; `Err` if the stream was aborted rather than ended.
pub async fn read_to_end_or_reset(stream: &mut TcpStream) -> Result<usize, std::io::ErrorKind> {
    let mut total = 0;
    let mut buf = vec![0; 1 << 16];
    loop {
        match within("reading to the end", stream.read(&mut buf)).await {
            Ok(0) => return Ok(total),
            Ok(n) => total += n,
            Err(e) => return Err(e.kind()),
        }
    }
}
