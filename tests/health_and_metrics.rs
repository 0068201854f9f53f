//! Health checks take a failing server out and bring it back; the metrics
//! endpoint's counters match what was done, read with a Prometheus parser.

mod common;

use common::*;
use sni_edge::hello;
use sni_edge::server::Control;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A gateway config with metrics on `metrics` and one route,
/// app.example.test (named "cluster"), to backend "b" given as JSON.
fn with_metrics(tls: SocketAddr, http: SocketAddr, metrics: SocketAddr, backend_b: &str) -> String {
    format!(
        r#"{{
          "listeners": [{{ "address": "{tls}", "protocol": "tls" }}, {{ "address": "{http}", "protocol": "http" }}],
          "routes": [{{ "name": "cluster", "names": ["app.example.test"], "backend": "b" }}],
          "backends": {{ "b": {backend_b} }},
          "metrics": {{ "address": "{metrics}" }}
        }}"#
    )
}

#[tokio::test]
async fn counters_match_what_the_clients_did() {
    let (backend, mut received) = Backend::recording().await;
    let metrics = free_port();
    let backend_b = format!(r#"{{ "servers": ["{}"], "proxy_protocol": "v2" }}"#, backend.addr);
    let gw = Gateway::start(|tls, http| with_metrics(tls, http, metrics, &backend_b)).await;
    for _ in 0..3 {
        assert_eq!(exchange(gw.tls, HELLO_CURL).await.1, b"bye");
        received.recv().await.unwrap();
    }
    for name in ["evil.example.test", "other.example.test"] {
        exchange(gw.tls, &hello::build(Some(name))).await;
    }
    exchange(gw.tls, HELLO_OPENSSL_NO_SNI).await;
    exchange(gw.tls, b"GET / HTTP/1.1\r\n\r\n").await;
    exchange(gw.http, b"GET / HTTP/1.1\r\nHost: app.example.test\r\n\r\n").await;

    // The log line and the counters are written when a connection's task
    // ends, just after the client sees the close: poll for the last one.
    let key = "sni_edge_connections_total{outcome=answered,protocol=http,route=cluster}";
    wait_for(metrics, key, 1.0).await;
    let m = scrape(metrics).await;
    assert_eq!(get(&m, "sni_edge_connections_total{outcome=relayed,protocol=tls,route=cluster}"), 3.0);
    assert_eq!(get(&m, "sni_edge_connections_total{outcome=refused,protocol=tls,route=}"), 4.0);
    assert_eq!(get(&m, "sni_edge_refusals_total{reason=unknown_name}"), 2.0);
    assert_eq!(get(&m, "sni_edge_refusals_total{reason=no_sni}"), 1.0);
    assert_eq!(get(&m, "sni_edge_refusals_total{reason=not_tls}"), 1.0);
    assert_eq!(get(&m, "sni_edge_bytes_total{direction=up,route=cluster}"), 3.0 * HELLO_CURL.len() as f64);
    assert_eq!(get(&m, "sni_edge_bytes_total{direction=down,route=cluster}"), 3.0 * 3.0);
    assert_eq!(get(&m, "sni_edge_active_connections{}"), 0.0);
    // Hellos completed: 3 relayed, 3 refused by name (the non-TLS one never completes), 1 HTTP head.
    assert_eq!(get(&m, "sni_edge_client_hello_seconds_count{}"), 7.0);
    let server = format!("backend=b,server={}", backend.addr);
    assert_eq!(get(&m, &format!("sni_edge_backend_server_up{{{server}}}")), 1.0);
    assert_eq!(get(&m, &format!("sni_edge_backend_connect_seconds_count{{{server}}}")), 3.0);
    assert_eq!(get(&m, "sni_edge_reloads_total{result=success}"), 1.0);
    assert!(get(&m, "sni_edge_last_reload_success_timestamp_seconds{}") > 1.7e9);

    // A broken reload is counted as a failure and changes nothing.
    let good = std::fs::read_to_string(&gw.config_path).unwrap();
    std::fs::write(&gw.config_path, "{ broken").unwrap();
    gw.send(Control::Reload).await;
    wait_for(metrics, "sni_edge_reloads_total{result=failure}", 1.0).await;
    assert!(get(&scrape(metrics).await, "sni_edge_last_reload_failure_timestamp_seconds{}") > 1.7e9);
    assert_eq!(exchange(gw.tls, HELLO_CURL).await.1, b"bye");
    std::fs::write(&gw.config_path, good).unwrap();
    gw.send(Control::Reload).await;
    wait_for(metrics, "sni_edge_reloads_total{result=success}", 2.0).await;
    gw.stop().await;
}

/// A server that answers any first bytes with a TLS alert record while
/// `speaking` is set (as a TLS server does to a hello it dislikes), and
/// otherwise holds the connection and says nothing. It counts clients apart
/// from health probes: a probe's PROXY v2 header says LOCAL (0x20), a
/// client's says PROXY (0x21).
struct TlsIsh {
    backend: Backend,
    clients: Arc<std::sync::atomic::AtomicUsize>,
}

impl TlsIsh {
    async fn start(speaking: Arc<AtomicBool>) -> TlsIsh {
        let clients = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = clients.clone();
        let backend = Backend::start(move |mut stream: TcpStream| {
            let speaking = speaking.clone();
            let counter = counter.clone();
            async move {
                let mut header = [0u8; 16];
                if stream.read_exact(&mut header).await.is_err() {
                    return;
                }
                if header[12] == 0x21 {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                if speaking.load(Ordering::SeqCst) {
                    let _ = stream.write_all(&[21, 3, 3, 0, 2, 2, 40]).await;
                } else {
                    let mut sink = Vec::new();
                    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut sink)).await;
                }
            }
        })
        .await;
        TlsIsh { backend, clients }
    }

    fn clients(&self) -> usize {
        self.clients.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn a_silent_server_is_taken_out_and_comes_back() {
    let a_speaks = Arc::new(AtomicBool::new(true));
    let a = TlsIsh::start(a_speaks.clone()).await;
    let b = TlsIsh::start(Arc::new(AtomicBool::new(true))).await;
    let (a_addr, b_addr) = (a.backend.addr, b.backend.addr);
    let metrics = free_port();
    let backend_b = format!(
        r#"{{ "servers": ["{a_addr}", "{b_addr}"], "proxy_protocol": "v2",
             "health_check": {{ "kind": "tls", "interval": "50ms", "timeout": "150ms", "rise": 2, "fall": 2 }} }}"#
    );
    let gw = Gateway::start(|tls, http| with_metrics(tls, http, metrics, &backend_b)).await;
    let a_up = format!("sni_edge_backend_server_up{{backend=b,server={a_addr}}}");
    let b_up = format!("sni_edge_backend_server_up{{backend=b,server={b_addr}}}");
    assert_eq!(get(&scrape(metrics).await, &a_up), 1.0);

    // A still accepts TCP but stops speaking TLS: only the TLS check can see it.
    a_speaks.store(false, Ordering::SeqCst);
    wait_for(metrics, &a_up, 0.0).await;
    assert_eq!(get(&scrape(metrics).await, &b_up), 1.0);
    // Every client now goes to B, and gets B's answer (the alert).
    let (a_before, b_before) = (a.clients(), b.clients());
    for _ in 0..6 {
        let (_, answer) = exchange(gw.tls, HELLO_CURL).await;
        assert_eq!(answer, [21, 3, 3, 0, 2, 2, 40]);
    }
    assert_eq!(a.clients(), a_before, "a client was sent to the silent server");
    assert_eq!(b.clients(), b_before + 6);

    // A recovers and is taken back after `rise` good checks: round robin
    // sends it every other client again.
    a_speaks.store(true, Ordering::SeqCst);
    wait_for(metrics, &a_up, 1.0).await;
    let (a_before, b_before) = (a.clients(), b.clients());
    for _ in 0..4 {
        exchange(gw.tls, HELLO_CURL).await;
    }
    assert_eq!((a.clients() - a_before, b.clients() - b_before), (2, 2));
    gw.stop().await;
}

#[tokio::test]
async fn with_every_server_down_connections_are_refused_at_once_and_counted() {
    let silent = TlsIsh::start(Arc::new(AtomicBool::new(false))).await;
    let addr = silent.backend.addr;
    let metrics = free_port();
    let backend_b = format!(
        r#"{{ "servers": ["{addr}"], "health_check": {{ "kind": "tls", "interval": "50ms", "timeout": "100ms", "fall": 1 }} }}"#
    );
    let gw = Gateway::start(|tls, http| with_metrics(tls, http, metrics, &backend_b)).await;
    wait_for(metrics, &format!("sni_edge_backend_server_up{{backend=b,server={addr}}}"), 0.0).await;
    let started = std::time::Instant::now();
    let (_, answer) = exchange(gw.tls, HELLO_CURL).await;
    assert!(answer.is_empty());
    assert_eq!(silent.clients(), 0);
    assert!(started.elapsed() < Duration::from_secs(1), "refusing took {:?}", started.elapsed());
    wait_for(metrics, "sni_edge_refusals_total{reason=backend_unhealthy}", 1.0).await;
    gw.stop().await;
}
