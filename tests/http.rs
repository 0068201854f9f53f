//! The plain HTTP listener: redirects, ACME pass-through, refusals.

mod common;

use common::*;
use std::net::SocketAddr;

fn setup(tls: SocketAddr, http: SocketAddr, acme: SocketAddr, tls_backend: SocketAddr) -> String {
    let routes = r#"[
        { "names": ["app.example.test", "*.kube.example.test"], "backend": "cluster", "acme_backend": "cluster-http" },
        { "names": ["plain.example.test"], "backend": "cluster" }
    ]"#;
    let backends = format!(
        r#"{{ "cluster": {{ "servers": ["{tls_backend}"] }},
             "cluster-http": {{ "servers": ["{acme}"], "proxy_protocol": "v1" }} }}"#
    );
    config(tls, http, routes, &backends)
}

async fn get(gw: SocketAddr, head: &str) -> String {
    let (_, answer) = exchange(gw, head.as_bytes()).await;
    String::from_utf8(answer).unwrap()
}

#[tokio::test]
async fn allowed_names_are_redirected_to_https_without_the_port() {
    let (acme, _) = Backend::recording().await;
    let gw = Gateway::start(|tls, http| setup(tls, http, acme.addr, acme.addr)).await;
    let answer = get(gw.http, "GET /path/x?q=1&r=%2F HTTP/1.1\r\nHost: App.Example.test:80\r\n\r\n").await;
    assert_eq!(
        answer,
        "HTTP/1.1 308 Permanent Redirect\r\nLocation: https://app.example.test/path/x?q=1&r=%2F\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let answer = get(gw.http, "POST / HTTP/1.1\r\nHost: a.kube.example.test\r\nContent-Length: 0\r\n\r\n").await;
    assert!(
        answer.starts_with("HTTP/1.1 308 Permanent Redirect\r\nLocation: https://a.kube.example.test/\r\n"),
        "{answer}"
    );
    // A route without an ACME backend redirects challenges too, and the
    // HTTPS side answers them.
    let answer = get(gw.http, "GET /.well-known/acme-challenge/tok HTTP/1.1\r\nHost: plain.example.test\r\n\r\n").await;
    assert!(answer.contains("Location: https://plain.example.test/.well-known/acme-challenge/tok\r\n"), "{answer}");
    assert_eq!(acme.accepted(), 0);
    gw.stop().await;
}

#[tokio::test]
async fn the_redirect_status_is_configurable() {
    let gw = Gateway::start(|tls, http| {
        config(
            tls,
            http,
            r#"[{ "names": ["app.example.test"], "backend": "b" }]"#,
            r#"{ "b": { "servers": ["127.0.0.1:9"] } }"#,
        )
        .replacen("\"routes\"", "\"http\": { \"redirect_status\": 301 }, \"routes\"", 1)
    })
    .await;
    let answer = get(gw.http, "GET / HTTP/1.1\r\nHost: app.example.test\r\n\r\n").await;
    assert!(
        answer.starts_with("HTTP/1.1 301 Moved Permanently\r\nLocation: https://app.example.test/\r\n"),
        "{answer}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn refusals_answer_4xx_and_forward_nothing() {
    let (acme, _) = Backend::recording().await;
    let gw = Gateway::start(|tls, http| setup(tls, http, acme.addr, acme.addr)).await;
    let cases = [
        ("GET / HTTP/1.1\r\nHost: evil.example.test\r\n\r\n", "HTTP/1.1 421 Misdirected Request\r\n"),
        ("GET / HTTP/1.1\r\nHost: evilkube.example.test\r\n\r\n", "HTTP/1.1 421 Misdirected Request\r\n"),
        ("GET / HTTP/1.1\r\nHost: 198.51.100.1\r\n\r\n", "HTTP/1.1 421 Misdirected Request\r\n"),
        ("GET / HTTP/1.0\r\n\r\n", "HTTP/1.1 400 Bad Request\r\n"),
        ("GET / HTTP/1.1\r\nHost: app.example.test\r\nHost: evil.test\r\n\r\n", "HTTP/1.1 400 Bad Request\r\n"),
        ("GET / HTTP/1.1\r\nHost: bad_name.test\r\n\r\n", "HTTP/1.1 400 Bad Request\r\n"),
        ("GET http://app.example.test/ HTTP/1.1\r\nHost: app.example.test\r\n\r\n", "HTTP/1.1 400 Bad Request\r\n"),
        ("NOT HTTP AT ALL\r\n\r\n", "HTTP/1.1 400 Bad Request\r\n"),
        (
            "GET /.well-known/acme-challenge/../../admin HTTP/1.1\r\nHost: app.example.test\r\n\r\n",
            "HTTP/1.1 400 Bad Request\r\n",
        ),
        (
            "GET /.well-known/acme-challenge/%2e%2e/admin HTTP/1.1\r\nHost: app.example.test\r\n\r\n",
            "HTTP/1.1 400 Bad Request\r\n",
        ),
        (
            "GET /.well-known/acme-challenge/%2E%2E%2Fadmin HTTP/1.1\r\nHost: app.example.test\r\n\r\n",
            "HTTP/1.1 400 Bad Request\r\n",
        ),
        (
            "GET /.well-known/acme-challenge/tok HTTP/1.1\r\nHost: evil.example.test\r\n\r\n",
            "HTTP/1.1 421 Misdirected Request\r\n",
        ),
    ];
    for (request, status) in cases {
        let answer = get(gw.http, request).await;
        assert!(answer.starts_with(status), "{request:?} got {answer:?}");
        assert!(!answer.contains("Location"), "{request:?} got {answer:?}");
    }
    // Request heads over the limit.
    let huge = format!("GET / HTTP/1.1\r\nHost: app.example.test\r\nX: {}\r\n\r\n", "a".repeat(9000));
    assert!(get(gw.http, &huge).await.starts_with("HTTP/1.1 431 "));
    assert_eq!(acme.accepted(), 0, "a refused request reached the cluster");
    gw.stop().await;
}

#[tokio::test]
async fn acme_challenges_reach_the_cluster_with_the_client_address() {
    let (acme, mut received) = Backend::recording().await;
    let gw = Gateway::start(|tls, http| setup(tls, http, acme.addr, acme.addr)).await;
    let token = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0";
    for host in ["app.example.test", "x.kube.example.test"] {
        let request =
            format!("GET /.well-known/acme-challenge/{token} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: acme\r\n\r\n");
        let (client, answer) = exchange(gw.http, request.as_bytes()).await;
        assert_eq!(answer, b"bye", "the cluster's answer comes back");
        let got = within("acme backend", received.recv()).await.unwrap();
        assert_eq!(got, [proxy_v1(client, gw.http), request.into_bytes()].concat());
    }
    gw.stop().await;
}
