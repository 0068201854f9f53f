//! The gateway end to end on loopback: what reaches a backend, byte for
//! byte, and what a refused client gets.

mod common;

use common::*;
use sni_edge::hello;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ROUTES: &str = r#"[{ "names": ["app.example.test", "*.kube.example.test"], "backend": "cluster" }]"#;

fn cluster(server: SocketAddr, proxy: &str) -> String {
    format!(r#"{{ "cluster": {{ "servers": ["{server}"], "proxy_protocol": "{proxy}" }} }}"#)
}

#[tokio::test]
async fn allowed_names_arrive_intact_after_a_proxy_v1_header() {
    let (backend, mut received) = Backend::recording().await;
    let gw = Gateway::start(|tls, http| config(tls, http, ROUTES, &cluster(backend.addr, "v1"))).await;
    for hello in [HELLO_CURL, HELLO_CHROMIUM, &hello::build(Some("Deep.A.Kube.Example.Test."))[..]] {
        let sent = [hello, b"application data after the hello"].concat();
        let (client, answer) = exchange(gw.tls, &sent).await;
        assert_eq!(answer, b"bye");
        let got = within("backend", received.recv()).await.unwrap();
        assert_eq!(got, [proxy_v1(client, gw.tls), sent].concat());
    }
    gw.stop().await;
}

#[tokio::test]
async fn proxy_v2_header_carries_the_client_address() {
    let (backend, mut received) = Backend::recording().await;
    let gw = Gateway::start(|tls, http| config(tls, http, ROUTES, &cluster(backend.addr, "v2"))).await;
    let (client, answer) = exchange(gw.tls, HELLO_CURL).await;
    assert_eq!(answer, b"bye");
    let got = within("backend", received.recv()).await.unwrap();
    let header = [
        &b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c"[..],
        &[127, 0, 0, 1, 127, 0, 0, 1],
        &client.port().to_be_bytes(),
        &gw.tls.port().to_be_bytes(),
    ]
    .concat();
    assert_eq!(got, [&header[..], HELLO_CURL].concat());
    gw.stop().await;
}

#[tokio::test]
async fn an_ipv6_listener_sends_ipv6_addresses() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("SKIPPED: no IPv6 loopback on this machine");
        return;
    }
    let (backend, mut received) = Backend::recording().await;
    let gw = Gateway::start_on("[::1]:0", |tls, http| config(tls, http, ROUTES, &cluster(backend.addr, "v2"))).await;
    let (client, answer) = exchange(gw.tls, HELLO_CURL).await;
    assert_eq!(answer, b"bye");
    let header = [
        &b"\r\n\r\n\0\r\nQUIT\n\x21\x21\x00\x24"[..],
        &std::net::Ipv6Addr::LOCALHOST.octets(),
        &std::net::Ipv6Addr::LOCALHOST.octets(),
        &client.port().to_be_bytes(),
        &gw.tls.port().to_be_bytes(),
    ]
    .concat();
    assert_eq!(within("backend", received.recv()).await.unwrap(), [&header[..], HELLO_CURL].concat());
    gw.stop().await;
}

#[tokio::test]
async fn a_hello_trickling_in_byte_by_byte_arrives_intact() {
    let (backend, mut received) = Backend::recording().await;
    let gw = Gateway::start(|tls, http| config(tls, http, ROUTES, &cluster(backend.addr, "none"))).await;
    let mut stream = TcpStream::connect(gw.tls).await.unwrap();
    stream.set_nodelay(true).unwrap();
    for byte in HELLO_CHROMIUM {
        stream.write_all(&[*byte]).await.unwrap();
        tokio::task::yield_now().await;
    }
    stream.shutdown().await.unwrap();
    let mut answer = Vec::new();
    within("answer", stream.read_to_end(&mut answer)).await.unwrap();
    assert_eq!(answer, b"bye");
    assert_eq!(within("backend", received.recv()).await.unwrap(), HELLO_CHROMIUM);
    gw.stop().await;
}

#[tokio::test]
async fn refused_connections_deliver_nothing_upstream() {
    let (backend, _received) = Backend::recording().await;
    let gw = Gateway::start(|tls, http| config(tls, http, ROUTES, &cluster(backend.addr, "v2"))).await;
    let alert = ALERT_UNRECOGNIZED_NAME.to_vec();
    let cases: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
        ("unlisted name", hello::build(Some("evil.example.test")), alert.clone()),
        ("look-alike of a suffix", hello::build(Some("evilkube.example.test")), alert.clone()),
        ("the suffix itself", hello::build(Some("kube.example.test")), alert.clone()),
        ("allowed name as a prefix", hello::build(Some("app.example.test.evil.test")), alert.clone()),
        ("no SNI", HELLO_OPENSSL_NO_SNI.to_vec(), alert.clone()),
        ("IP literal as SNI", hello::build(Some("127.0.0.1")), alert.clone()),
        ("empty SNI", hello::build(Some("")), alert.clone()),
        ("NUL in the name", hello::build(Some("x\0.kube.example.test")), vec![]),
        ("slash in the name", hello::build(Some("a/b.kube.example.test")), vec![]),
        ("plain HTTP", b"GET / HTTP/1.1\r\nHost: app.example.test\r\n\r\n".to_vec(), vec![]),
        (
            "PROXY header from an untrusted peer",
            [&b"PROXY TCP4 203.0.113.9 127.0.0.1 1 443\r\n"[..], HELLO_CURL].concat(),
            vec![],
        ),
        ("truncated hello", HELLO_CURL[..100].to_vec(), vec![]),
        ("nothing at all", vec![], vec![]),
    ];
    for (case, bytes, expected) in cases {
        let (_, answer) = exchange(gw.tls, &bytes).await;
        assert_eq!(answer, expected, "{case}");
    }
    assert_eq!(backend.accepted(), 0, "a refused connection reached the backend");
    gw.stop().await;
}

#[tokio::test]
async fn half_close_keeps_every_byte_of_the_reply() {
    // The backend reads the request to EOF, then answers at length: the
    // client's FIN must not cut the reply.
    let backend = Backend::start(|mut stream| async move {
        let mut request = Vec::new();
        stream.read_to_end(&mut request).await.unwrap();
        let reply: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        stream.write_all(&reply).await.unwrap();
    })
    .await;
    let gw = Gateway::start(|tls, http| config(tls, http, ROUTES, &cluster(backend.addr, "none"))).await;
    let (_, answer) = exchange(gw.tls, HELLO_CURL).await;
    assert_eq!(answer.len(), 3_000_000);
    assert!(answer.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
    gw.stop().await;
}

#[tokio::test]
async fn a_backend_reset_reaches_the_client_as_a_reset() {
    // The backend sends 3 MiB of a download, then aborts: the client must
    // not see a clean end of stream, which would pass for a complete file.
    let backend = Backend::start(|mut stream| async move {
        let mut first = vec![0; 512];
        let _ = stream.read(&mut first).await;
        let _ = stream.write_all(&vec![7u8; 3 << 20]).await;
        abort(stream);
    })
    .await;
    let gw = Gateway::start(|tls, http| config(tls, http, ROUTES, &cluster(backend.addr, "none"))).await;
    let mut client = TcpStream::connect(gw.tls).await.unwrap();
    client.write_all(HELLO_CURL).await.unwrap();
    let end = read_to_end_or_reset(&mut client).await;
    assert_eq!(end, Err(std::io::ErrorKind::ConnectionReset), "the backend's abort reached the client as {end:?}");
    gw.stop().await;
}

#[tokio::test]
async fn a_client_reset_reaches_the_backend_as_a_reset() {
    let (ends, mut backend_ends) = tokio::sync::mpsc::unbounded_channel();
    let backend = Backend::start(move |mut stream| {
        let ends = ends.clone();
        async move {
            let _ = ends.send(read_to_end_or_reset(&mut stream).await);
        }
    })
    .await;
    let gw = Gateway::start(|tls, http| config(tls, http, ROUTES, &cluster(backend.addr, "none"))).await;
    let mut client = TcpStream::connect(gw.tls).await.unwrap();
    client.write_all(&[HELLO_CURL, &vec![1u8; 1 << 20]].concat()).await.unwrap();
    // Wait until the backend is connected, so the reset hits the relay.
    within("the backend connection", async {
        while backend.accepted() == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    abort(client);
    let end = within("backend", backend_ends.recv()).await.unwrap();
    assert_eq!(end, Err(std::io::ErrorKind::ConnectionReset), "the client's abort reached the backend as {end:?}");
    gw.stop().await;
}

/// FNV-1a, enough to tell two 50 MiB streams apart.
const FNV_START: u64 = 0xcbf29ce484222325;

fn checksum(hash: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *hash = (*hash ^ u64::from(*b)).wrapping_mul(0x100000001b3);
    }
}

fn sum_of(bytes: &[u8]) -> u64 {
    let mut hash = FNV_START;
    checksum(&mut hash, bytes);
    hash
}

/// Reads to EOF; returns how many bytes came and their checksum.
async fn read_summed(mut read: impl tokio::io::AsyncRead + Unpin) -> (usize, u64) {
    let (mut hash, mut total, mut buf) = (FNV_START, 0usize, vec![0; 1 << 16]);
    loop {
        let n = read.read(&mut buf).await.unwrap();
        if n == 0 {
            return (total, hash);
        }
        checksum(&mut hash, &buf[..n]);
        total += n;
    }
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_mib_each_way_arrive_unchanged() {
    const SIZE: usize = 50 << 20;
    let down = pattern(2, SIZE);
    let down_sum = sum_of(&down);
    let (sums, mut backend_sums) = tokio::sync::mpsc::unbounded_channel();
    let backend = Backend::start(move |stream| {
        let sums = sums.clone();
        let down = down.clone();
        async move {
            let (read, mut write) = stream.into_split();
            let sender = tokio::spawn(async move {
                write.write_all(&down).await.unwrap();
                write.shutdown().await.unwrap();
            });
            let received = read_summed(read).await;
            sender.await.unwrap();
            sums.send(received).unwrap();
        }
    })
    .await;
    let gw = Gateway::start(|tls, http| config(tls, http, ROUTES, &cluster(backend.addr, "none"))).await;

    let up = [HELLO_CURL.to_vec(), pattern(1, SIZE)].concat();
    let up_sum = sum_of(&up);
    let stream = TcpStream::connect(gw.tls).await.unwrap();
    let (read, mut write) = stream.into_split();
    let sender = tokio::spawn(async move {
        write.write_all(&up).await.unwrap();
        write.shutdown().await.unwrap();
    });
    let downloaded = within("download", read_summed(read)).await;
    sender.await.unwrap();
    assert_eq!(downloaded, (SIZE, down_sum), "server to client");
    let (backend_total, backend_hash) = within("backend", backend_sums.recv()).await.unwrap();
    assert_eq!((backend_total, backend_hash), (SIZE + HELLO_CURL.len(), up_sum), "client to server");
    gw.stop().await;
}

#[tokio::test]
async fn a_dead_server_is_skipped_for_the_next() {
    let (backend, mut received) = Backend::recording().await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let backends =
        format!(r#"{{ "cluster": {{ "servers": ["{dead}", "{}"], "connect_timeout": "2s" }} }}"#, backend.addr);
    let gw = Gateway::start(|tls, http| config(tls, http, ROUTES, &backends)).await;
    for _ in 0..4 {
        let (_, answer) = exchange(gw.tls, HELLO_CURL).await;
        assert_eq!(answer, b"bye");
        assert_eq!(within("backend", received.recv()).await.unwrap(), HELLO_CURL);
    }
    gw.stop().await;
}

#[tokio::test]
async fn every_server_down_refuses_quickly() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let gw = Gateway::start(|tls, http| config(tls, http, ROUTES, &cluster(dead, "v2"))).await;
    let (_, answer) = exchange(gw.tls, HELLO_CURL).await;
    assert!(answer.is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn source_hash_keeps_a_client_on_one_server() {
    let (a, mut got_a) = Backend::recording().await;
    let (b, mut got_b) = Backend::recording().await;
    let backends =
        format!(r#"{{ "cluster": {{ "servers": ["{}", "{}"], "balance": "source_hash" }} }}"#, a.addr, b.addr);
    let gw = Gateway::start(|tls, http| config(tls, http, ROUTES, &backends)).await;
    for _ in 0..6 {
        exchange(gw.tls, HELLO_CURL).await;
    }
    let counts = (a.accepted(), b.accepted());
    assert!(counts == (6, 0) || counts == (0, 6), "{counts:?}");
    while let Ok(bytes) = got_a.try_recv() {
        assert_eq!(bytes, HELLO_CURL);
    }
    while let Ok(bytes) = got_b.try_recv() {
        assert_eq!(bytes, HELLO_CURL);
    }
    gw.stop().await;
}

#[tokio::test]
async fn a_trusted_load_balancer_passes_on_the_real_client() {
    let (backend, mut received) = Backend::recording().await;
    let gw = Gateway::start(|tls, http| {
        format!(
            r#"{{
              "listeners": [
                {{ "address": "{tls}", "protocol": "tls", "proxy_protocol_from": ["127.0.0.0/8"] }},
                {{ "address": "{http}", "protocol": "http" }}
              ],
              "routes": {ROUTES},
              "backends": {}
            }}"#,
            cluster(backend.addr, "v1")
        )
    })
    .await;
    let inbound = b"PROXY TCP4 203.0.113.10 198.51.100.1 40000 443\r\n";
    let (_, answer) = exchange(gw.tls, &[&inbound[..], HELLO_CURL].concat()).await;
    assert_eq!(answer, b"bye");
    let got = within("backend", received.recv()).await.unwrap();
    assert_eq!(got, [&b"PROXY TCP4 203.0.113.10 198.51.100.1 40000 443\r\n"[..], HELLO_CURL].concat());

    // v2 from the load balancer, IPv6 client.
    let v2 = [
        &b"\r\n\r\n\0\r\nQUIT\n\x21\x21\x00\x24"[..],
        &"2001:db8::10".parse::<std::net::Ipv6Addr>().unwrap().octets(),
        &"2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap().octets(),
        &40000u16.to_be_bytes(),
        &443u16.to_be_bytes(),
    ]
    .concat();
    let (_, answer) = exchange(gw.tls, &[&v2[..], HELLO_CURL].concat()).await;
    assert_eq!(answer, b"bye");
    let got = within("backend", received.recv()).await.unwrap();
    assert_eq!(got, [&b"PROXY TCP6 2001:db8::10 2001:db8::1 40000 443\r\n"[..], HELLO_CURL].concat());

    // Without a header, a trusted peer's connection is refused.
    let (_, answer) = exchange(gw.tls, HELLO_CURL).await;
    assert!(answer.is_empty());
    assert_eq!(backend.accepted(), 2);
    gw.stop().await;
}
