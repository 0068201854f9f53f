//! Experiment only (bench/runtime-floor/README.md): sni-edge's own ClientHello parser, PROXY header
//! and relay on a current-thread tokio runtime, without the rest of its per-connection path (limits,
//! pending pool, cancellation, timeouts, metrics, spans, boxed phases): what tokio itself costs.
use sni_edge::{hello, proxy_header, relay};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn conn(mut client: TcpStream, peer: SocketAddr, local: SocketAddr, upstream: SocketAddr) {
    let mut buf = Vec::with_capacity(4096);
    loop {
        match hello::parse(&buf) {
            Ok(Some(_)) => break,
            Ok(None) => {}
            Err(_) => return,
        }
        match client.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else { return };
    let _ = server.set_nodelay(true);
    let first = proxy_header::encode_before(proxy_header::Version::V2, peer, local, &buf);
    drop(buf);
    if server.write_all(&first).await.is_err() {
        return;
    }
    drop(first);
    let counters = relay::Counters::default();
    let _ = relay::relay(&mut client, &mut server, Duration::from_secs(600), &counters).await;
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let listen: SocketAddr = args[1].parse().unwrap();
    let upstream: SocketAddr = args[2].parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let listener = TcpListener::bind(listen).await.unwrap();
        loop {
            let (client, peer) = listener.accept().await.unwrap();
            let _ = client.set_nodelay(true);
            tokio::spawn(conn(client, peer, listen, upstream));
        }
    });
}
