//! Attacks on the pending-connection pool, against the real server on
//! loopback: silent connections from several client addresses, re-opened as
//! soon as the gateway closes them, while a legitimate client from another
//! address keeps asking. Scaled down from the defaults (a pool of 200, 16 per
//! client) so that the attackers can fill the pool many times over.

mod common;

use common::*;
use sni_edge::hello;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

const POOL: usize = 200;
const PER_CLIENT: usize = 16;
/// Connections each attacking address keeps trying to hold open.
const HOLDERS_PER_ADDRESS: usize = 24;
const LEGIT_TRIES: usize = 100;

fn gateway_config(tls: SocketAddr, http: SocketAddr, backend: SocketAddr) -> String {
    let routes = r#"[{ "names": ["app.example.test"], "backend": "app" }]"#;
    let backends = format!(r#"{{ "app": {{ "servers": ["{backend}"] }} }}"#);
    config(tls, http, routes, &backends).replacen(
        "\"routes\"",
        &format!(
            r#""limits": {{ "max_pending_handshakes": {POOL}, "max_pending_per_client": {PER_CLIENT} }},
               "timeouts": {{ "client_hello": "60s", "http_request": "60s" }},
               "routes""#
        ),
        1,
    )
}

async fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = if to.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(to).await
}

/// One attacking connection slot: connect, send nothing, and as soon as the
/// gateway closes it, connect again; until `end`. Counts its connects.
async fn hold_silently(from: IpAddr, to: SocketAddr, end: Instant, connects: Arc<AtomicUsize>) {
    while Instant::now() < end {
        match connect_from(from, to).await {
            Ok(mut stream) => {
                connects.fetch_add(1, Ordering::Relaxed);
                let mut byte = [0; 1];
                let _ = tokio::time::timeout_at(end, stream.read(&mut byte)).await;
                // Bounds the spin of a refused slot (the test shares 2 cores).
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
}

/// One legitimate request: a ClientHello, the backend's "bye" back.
async fn served(from: IpAddr, to: SocketAddr) -> bool {
    let Ok(mut stream) = within("connect", connect_from(from, to)).await else {
        return false;
    };
    if stream.write_all(&hello::build(Some("app.example.test"))).await.is_err() {
        return false;
    }
    let _ = stream.shutdown().await;
    let mut answer = Vec::new();
    let _ = within("the answer", stream.read_to_end(&mut answer)).await;
    answer == b"bye"
}

/// Runs the attack from `attackers` against both listeners while `legit`
/// asks `LEGIT_TRIES` times on the TLS one; returns how often it was served.
async fn attack(gw: &Gateway, attackers: &[IpAddr], legit: IpAddr) -> usize {
    // Attackers' sockets and the gateway's, in this one process.
    open_files_to_hard();
    let end = Instant::now() + Duration::from_secs(30);
    let connects = Arc::new(AtomicUsize::new(0));
    let mut holders = Vec::new();
    for &from in attackers {
        for i in 0..HOLDERS_PER_ADDRESS {
            // Both listeners: port 80's pool is attacked too.
            let to = if i % 3 == 0 { gw.http } else { gw.tls };
            holders.push(tokio::spawn(hold_silently(from, to, end, connects.clone())));
        }
    }
    // Until the attackers hold their places.
    let wanted = attackers.len() * HOLDERS_PER_ADDRESS;
    within("the attackers connecting", async {
        while connects.load(Ordering::Relaxed) < wanted {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let mut ok = 0;
    for _ in 0..LEGIT_TRIES {
        if served(legit, gw.tls).await {
            ok += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let attacker_connects = connects.load(Ordering::Relaxed);
    for holder in holders {
        holder.abort();
    }
    eprintln!(
        "legitimate client served {ok} of {LEGIT_TRIES} times; attackers connected {attacker_connects} times \
         ({} slots)",
        wanted
    );
    // The attack was real: far more connects than slots, i.e. the gateway
    // kept closing attackers, who kept coming back.
    assert!(attacker_connects > wanted + LEGIT_TRIES, "the attack did not press: {attacker_connects} connects");
    ok
}

#[tokio::test]
async fn silent_clients_from_several_ipv4_addresses_do_not_lock_others_out() {
    let (backend, _received) = Backend::recording().await;
    let gw = Gateway::start(|tls, http| gateway_config(tls, http, backend.addr)).await;
    // 20 addresses × 16 places = 320 pending connections wanted per
    // listener, for a pool of 200.
    let attackers: Vec<IpAddr> = (2..22).map(|i| IpAddr::from([127, 0, 0, i])).collect();
    let ok = attack(&gw, &attackers, IpAddr::from([127, 0, 0, 100])).await;
    assert!(ok * 100 >= LEGIT_TRIES * 95, "the legitimate client was served {ok} of {LEGIT_TRIES} times");
    gw.stop().await;
}

/// Runs `test` on a current-thread runtime in a thread of its own in a new
/// network namespace (only `lo`, with the addresses given added), so that
/// the test can use addresses the machine does not have. `None` when this
/// process may not create one (not root).
fn in_new_netns(addresses: &[String], test: impl std::future::Future<Output = ()> + Send + 'static) -> Option<()> {
    let addresses = addresses.to_vec();
    let thread = std::thread::spawn(move || {
        // SAFETY: unshare changes only this thread's network namespace;
        // sockets this thread opens from now on are in the new one.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            eprintln!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
            return None;
        }
        // Children inherit this thread's namespace.
        let mut batch = "link set lo up\n".to_owned();
        for address in &addresses {
            batch.push_str(&format!("addr add {address} dev lo nodad\n"));
        }
        let mut ip = std::process::Command::new("ip")
            .args(["-batch", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("running ip");
        std::io::Write::write_all(&mut ip.stdin.take().unwrap(), batch.as_bytes()).unwrap();
        assert!(ip.wait().unwrap().success(), "ip -batch failed on:\n{batch}");
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(test);
        Some(())
    });
    thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

#[test]
fn silent_clients_from_one_ipv6_64_count_as_one_client() {
    const PREFIX: &str = "2001:db8:0:1";
    let attackers: Vec<IpAddr> = (1..=20).map(|i| format!("{PREFIX}::{i:x}").parse().unwrap()).collect();
    let addresses: Vec<String> = attackers.iter().map(|a| format!("{a}/128")).collect();
    let ran = in_new_netns(&addresses, async move {
        let (backend, _received) = Backend::recording().await;
        let gw = Gateway::start_on("[::1]:0", |tls, http| gateway_config(tls, http, backend.addr)).await;

        // One address each, 20 addresses of one /64: only 16 are held.
        let mut silent = Vec::new();
        for &from in &attackers {
            silent.push(connect_from(from, gw.tls).await.unwrap());
        }
        let open = |silent: &[TcpStream]| {
            silent
                .iter()
                .filter(|s| matches!(s.try_read(&mut [0; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock))
                .count()
        };
        within("the /64's connections beyond its limit closed", async {
            while open(&silent) > PER_CLIENT {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(open(&silent), PER_CLIENT, "the /64 holds other than max_pending_per_client places");
        drop(silent);

        // The attack from the whole /64 leaves ::1 served.
        let ok = attack(&gw, &attackers, "::1".parse().unwrap()).await;
        assert!(ok * 100 >= LEGIT_TRIES * 95, "the legitimate client was served {ok} of {LEGIT_TRIES} times");
        gw.stop().await;
    });
    if ran.is_none() {
        eprintln!("SKIPPED: cannot create a network namespace (needs root): the IPv6 /64 attack did not run");
    }
}

/// With no budget left for large hellos (`max_buffered_bytes` 0), a hello
/// of one full record (16 KiB, more than any real client sends) is still
/// served; a larger one is refused.
#[tokio::test]
async fn a_hello_of_one_full_record_never_needs_the_budget() {
    let (backend, mut received) = Backend::recording().await;
    let gw = Gateway::start(|tls, http| {
        gateway_config(tls, http, backend.addr).replacen(
            "\"max_pending_handshakes\"",
            "\"max_buffered_bytes\": 0, \"max_pending_handshakes\"",
            1,
        )
    })
    .await;
    for legit in [HELLO_CHROMIUM.to_vec(), hello::build_padded("app.example.test", 1 << 14)] {
        let (_, answer) = exchange(gw.tls, &legit).await;
        assert_eq!(answer, b"bye", "a hello of {} bytes", legit.len());
        assert_eq!(within("backend", received.recv()).await.unwrap(), legit);
    }
    // More than 16 KiB of a hello that is not complete yet: closed at once,
    // not held until timeouts.client_hello (60 s here).
    let mut large = vec![1, 1, 0, 0];
    large.resize(1 << 14, 0x41);
    let records = [&[22, 3, 1, 0x40, 0][..], &large, &[22, 3, 1, 0x10, 0], &large[..0x1000]].concat();
    let mut client = TcpStream::connect(gw.tls).await.unwrap();
    let _ = client.write_all(&records).await;
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "a hello beyond 16 KiB with no budget left was held");
    assert_eq!(backend.accepted(), 2);
    gw.stop().await;
}
