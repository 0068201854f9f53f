//! The whole path on one machine, without root: a TLS client, the gateway,
//! and a "cluster node" that terminates TLS behind it and reports the
//! client address it learned from the PROXY header.
//!
//!     cargo run --release --example demo            # run the checks, then stop
//!     cargo run --release --example demo -- --keep  # leave it running for curl
//!
//! The gateway is the library's `server::run`, exactly what `sni-edge run`
//! calls, on 127.0.0.1 with ports picked by the kernel. The node and the
//! client use rustls with a CA made at start; nothing leaves loopback.

use anyhow::{bail, Context};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sni_edge::config::Config;
use sni_edge::server::{self, Control};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn main() -> anyhow::Result<()> {
    let keep = std::env::args().any(|a| a == "--keep");
    rustls::crypto::ring::default_provider().install_default().ok();
    sni_edge::logging::init(sni_edge::config::LogLevel::Info, sni_edge::config::LogFormat::Text)?;
    let dir = std::env::temp_dir().join(format!("sni-edge-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;

    // A CA and a certificate for the node, as cert-manager would issue in a cluster.
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "sni-edge demo CA");
    let ca = ca_params.self_signed(&ca_key)?;
    let node_key = rcgen::KeyPair::generate()?;
    let node_cert = rcgen::CertificateParams::new(vec!["app.example.test".into(), "*.kube.example.test".into()])?
        .signed_by(&node_key, &ca, &ca_key)?;
    std::fs::write(dir.join("ca.pem"), ca.pem())?;

    // The cluster node: PROXY v2 header, then TLS, then a one-line answer.
    let node = TcpListener::bind("127.0.0.1:0")?;
    let node_addr = node.local_addr()?;
    let node_connections = Arc::new(AtomicUsize::new(0));
    let tls = Arc::new(
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![node_cert.der().clone()], PrivateKeyDer::Pkcs8(node_key.serialize_der().into()))?,
    );
    let counter = node_connections.clone();
    std::thread::spawn(move || {
        for stream in node.incoming().flatten() {
            counter.fetch_add(1, Ordering::SeqCst);
            let tls = tls.clone();
            std::thread::spawn(move || {
                if let Err(e) = serve_node(stream, tls) {
                    eprintln!("node: {e:#}");
                }
            });
        }
    });

    // The gateway's config, written where you can read it.
    let https = free_port()?;
    let http = free_port()?;
    let config_path = dir.join("config.json");
    std::fs::write(
        &config_path,
        format!(
            r#"{{
  "listeners": [
    {{ "address": "{https}", "protocol": "tls" }},
    {{ "address": "{http}", "protocol": "http" }}
  ],
  "routes": [
    {{ "name": "cluster", "names": ["app.example.test", "*.kube.example.test"], "backend": "node" }}
  ],
  "backends": {{
    "node": {{ "servers": ["{node_addr}"], "proxy_protocol": "v2" }}
  }}
}}
"#
        ),
    )?;
    let config = Config::load(&config_path)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let listeners = runtime.block_on(async { server::bind_all(&config, Default::default()) })?;
    let (control, requests) = tokio::sync::mpsc::channel(1);
    let gateway = runtime.spawn(server::run(Some(config_path.clone()), config, listeners, requests));
    println!(
        "\nsni-edge demo: gateway on {https} (TLS) and {http} (HTTP), node on {node_addr}, config {}\n",
        config_path.display()
    );

    let roots = {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(ca.der().to_vec()))?;
        Arc::new(rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth())
    };
    let mut failures = 0;
    let mut report = |ok: bool, what: String| {
        println!("{} {what}", if ok { "ok  " } else { "FAIL" });
        failures += usize::from(!ok);
    };

    for name in ["app.example.test", "x.kube.example.test"] {
        match https_get(&roots, https, name) {
            Ok(body) => report(
                body.contains("client=127.0.0.1:"),
                format!("https://{name}/ through the gateway answered: {}", body.trim()),
            ),
            Err(e) => report(false, format!("https://{name}/ failed: {e:#}")),
        }
    }
    let before = node_connections.load(Ordering::SeqCst);
    for name in ["evil.example.test", "evilkube.example.test"] {
        match https_get(&roots, https, name) {
            Ok(body) => report(false, format!("{name} was let through: {body}")),
            Err(e) => report(true, format!("{name} refused by the gateway: {e:#}")),
        }
    }
    let after = node_connections.load(Ordering::SeqCst);
    report(before == after, format!("the node saw {} connections for refused names", after - before));
    match http_get(http, "app.example.test", "/some/path?x=1") {
        Ok(head) => report(
            head.contains("308") && head.contains("Location: https://app.example.test/some/path?x=1"),
            format!(
                "http://app.example.test/some/path?x=1 answered: {}",
                head.lines().take(2).collect::<Vec<_>>().join(" | ")
            ),
        ),
        Err(e) => report(false, format!("HTTP request failed: {e:#}")),
    }

    if keep {
        println!(
            "\nThe gateway keeps running. Try (Ctrl-C to stop):\n  \
             curl --cacert {ca} --resolve app.example.test:{port}:127.0.0.1 https://app.example.test:{port}/\n  \
             curl --cacert {ca} --resolve evil.example.test:{port}:127.0.0.1 https://evil.example.test:{port}/\n  \
             curl -i -H 'Host: app.example.test' http://{http}/path?q=1",
            ca = dir.join("ca.pem").display(),
            port = https.port()
        );
        runtime.block_on(tokio::signal::ctrl_c())?;
    }
    runtime.block_on(async {
        control.send(Control::Shutdown).await?;
        gateway.await?
    })?;
    std::fs::remove_dir_all(&dir).ok();
    println!();
    if failures > 0 {
        bail!("{failures} checks failed");
    }
    println!("All checks passed: allowed names reach the node with the client's address, others get nothing.");
    Ok(())
}

fn free_port() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// The node: read the PROXY header (a byte at a time, so that no TLS byte is
/// taken with it), then serve one HTTPS request.
fn serve_node(mut stream: TcpStream, tls: Arc<rustls::ServerConfig>) -> anyhow::Result<()> {
    let peer = stream.peer_addr()?;
    let mut header = Vec::new();
    let inbound = loop {
        let mut byte = [0u8];
        stream.read_exact(&mut byte).context("reading the PROXY header")?;
        header.push(byte[0]);
        if let Some(inbound) = sni_edge::proxy_header::parse(&header)? {
            break inbound;
        }
    };
    let client = inbound.addresses.map(|(client, _)| client.to_string()).unwrap_or_default();
    let mut tls = rustls::StreamOwned::new(rustls::ServerConnection::new(tls)?, stream);
    let mut request = Vec::new();
    while !request.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        tls.read_exact(&mut byte)?;
        request.push(byte[0]);
    }
    let body = format!("hello from the node: client={client} (from the PROXY header), tcp peer={peer} (the gateway)\n");
    write!(tls, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())?;
    tls.conn.send_close_notify();
    tls.flush()?;
    Ok(())
}

fn https_get(roots: &Arc<rustls::ClientConfig>, gateway: SocketAddr, name: &str) -> anyhow::Result<String> {
    let connection = rustls::ClientConnection::new(roots.clone(), ServerName::try_from(name.to_owned())?)?;
    let stream = TcpStream::connect(gateway)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = rustls::StreamOwned::new(connection, stream);
    write!(tls, "GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    tls.read_to_string(&mut response)?;
    Ok(response.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned())
}

fn http_get(gateway: SocketAddr, host: &str, path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(gateway)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}
