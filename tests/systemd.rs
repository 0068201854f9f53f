//! The binary under a systemd-like parent: a listening socket passed as
//! fd 3 (socket activation) and a notify socket (Type=notify).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

fn receive(notify: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = notify.recv(&mut buf).expect("no notification from sni-edge within the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn serves_on_a_socket_from_systemd_and_notifies_ready_reloading_stopping() {
    let dir = std::env::temp_dir().join(format!("sni-edge-systemd-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let notify_path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(20))).unwrap();

    // The "socket unit": bound and listening before the service starts. The
    // test keeps its own copy open, so the service could not bind this
    // address itself: serving on it proves the inherited socket is used.
    let socket = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = socket.local_addr().unwrap();
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let config = dir.join("config.json");
    std::fs::write(
        &config,
        format!(
            r#"{{ "listeners": [{{ "address": "{address}", "protocol": "tls" }}],
                 "routes": [{{ "names": ["app.example.test"], "backend": "b" }}],
                 "backends": {{ "b": {{ "servers": ["{}"] }} }} }}"#,
            backend.local_addr().unwrap()
        ),
    )
    .unwrap();

    let fd = socket.as_raw_fd();
    let mut command = Command::new("/bin/sh");
    // LISTEN_PID must be the service's own pid: the shell's, kept by exec.
    command
        .args(["-c", "export LISTEN_PID=$$; exec \"$0\" run --config \"$1\"", env!("CARGO_BIN_EXE_sni-edge")])
        .arg(&config)
        .env("LISTEN_FDS", "1")
        .env("NOTIFY_SOCKET", &notify_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: dup2 is async-signal-safe, the only call made between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().unwrap();

    let ready = receive(&notify);
    assert!(ready.contains("READY=1"), "{ready}");

    let mut client = TcpStream::connect(address).unwrap();
    client.write_all(&sni_edge::hello::build(Some("app.example.test"))).unwrap();
    backend.set_nonblocking(false).unwrap();
    let (mut upstream, _) = backend.accept().unwrap();
    let mut first = [0u8; 5];
    upstream.read_exact(&mut first).unwrap();
    assert_eq!(first[0], 22, "the hello reached the backend through the inherited socket");

    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    let reloading = receive(&notify);
    assert!(reloading.contains("RELOADING=1") && reloading.contains("MONOTONIC_USEC="), "{reloading}");
    assert!(receive(&notify).contains("READY=1"));

    drop(client);
    drop(upstream);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(receive(&notify).contains("STOPPING=1"));
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The agent (Type=notify too): ready once it runs, whether or not a
/// gateway answers yet (boot must not wait for the internet), and stopping
/// on SIGTERM.
#[test]
fn the_agent_notifies_ready_and_stopping() {
    let dir = std::env::temp_dir().join(format!("sni-edge-systemd-agent-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let notify_path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let key = sni_edge::tunnel::keys::PrivateKey::generate();
    std::fs::write(dir.join("agent.key"), key.to_text()).unwrap();
    // A gateway address where nothing listens: the agent keeps retrying.
    let nobody = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let gateway = sni_edge::tunnel::keys::PrivateKey::generate().public();
    std::fs::write(
        dir.join("agent.json"),
        format!(
            r#"{{ "key_file": "agent.key", "gateways": [{{ "address": "{nobody}", "public_key": "{gateway}" }}],
                 "targets": {{ "https": "127.0.0.1:9" }} }}"#
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sni-edge"))
        .args(["agent", "--config"])
        .arg(dir.join("agent.json"))
        .env("NOTIFY_SOCKET", &notify_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(receive(&notify).contains("READY=1"));
    // A reload request (SIGHUP) must not end it.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none(), "SIGHUP ended the agent");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(receive(&notify).contains("STOPPING=1"));
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    std::fs::remove_dir_all(&dir).unwrap();
}
