//! Open file descriptors: the limit is raised at start and checked against
//! `limits.max_connections`, and running out of descriptors never marks a
//! healthy backend server down. Its own test binary, since one test lowers
//! the whole process's limit.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn set_open_files(soft: u64, hard: u64) {
    let limit = libc::rlimit { rlim_cur: soft, rlim_max: hard };
    // SAFETY: setrlimit with a valid pointer to a local struct.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0, "{}", std::io::Error::last_os_error());
}

fn open_files() -> (u64, u64) {
    sni_edge::limits::open_files_limit().unwrap()
}

fn open_descriptors() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64
}

/// CPU time this process has used (user and system); needs no descriptor.
fn cpu_time() -> Duration {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage with a valid pointer to a local struct.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) }, 0);
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

/// One test at a time: one of them takes the process's descriptors away.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn running_out_of_descriptors_never_marks_a_healthy_server_down() {
    let _serial = SERIAL.lock().await;
    let backend = Backend::start(|mut stream| async move {
        let mut request = Vec::new();
        let _ = stream.read_to_end(&mut request).await;
        let _ = stream.write_all(b"bye").await;
    })
    .await;
    // A probe every 20 ms; one failure takes the server out, and only 1,000
    // successes in a row (20 s) bring it back: one wrongly counted failure
    // would refuse the client at the end.
    let gw = Gateway::start(|tls, http| {
        let backends = format!(
            r#"{{ "app": {{ "servers": ["{}"], "health_check": {{ "interval": "20ms", "timeout": "1s", "fall": 1, "rise": 1000 }} }} }}"#,
            backend.addr
        );
        config(tls, http, r#"[{ "names": ["app.example.test"], "backend": "app" }]"#, &backends)
    })
    .await;
    let hello = sni_edge::hello::build(Some("app.example.test"));
    assert_eq!(exchange(gw.tls, &hello).await.1, b"bye");

    // Leave 30 descriptors, and use them up with silent connections (each
    // takes one here and one in the gateway, which then cannot accept).
    let (soft, hard) = open_files();
    set_open_files(open_descriptors() + 30, hard);
    let mut silent = Vec::new();
    let exhausted = within("using up the descriptors", async {
        loop {
            match TcpStream::connect(gw.tls).await {
                Ok(stream) => silent.push(stream),
                Err(e) => return e,
            }
        }
    })
    .await;
    assert!(sni_edge::limits::is_local_resource_error(&exhausted), "connect failed with {exhausted}");
    // Out of descriptors for half a second: 25 health checks cannot open a
    // socket, and the accept loop keeps failing. It must back off, not spin.
    let cpu_before = cpu_time();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu = cpu_time() - cpu_before;
    drop(silent);
    set_open_files(soft, hard);
    assert!(cpu < Duration::from_millis(250), "{cpu:?} of CPU in 500 ms without descriptors: spinning");
    // The server is still up: the client is served at once.
    assert_eq!(exchange(gw.tls, &hello).await.1, b"bye", "the server was taken out for the gateway's own shortage");
    gw.stop().await;
}

const CONFIG: &str = r#"{ "listeners": [{ "address": "ADDRESS", "protocol": "tls" }],
  "routes": [{ "names": ["app.example.test"], "backend": "b" }],
  "backends": { "b": { "servers": ["127.0.0.1:9"] } } LIMITS }"#;

#[test]
fn the_soft_limit_is_raised_to_the_hard_one_and_logged() {
    let _serial = SERIAL.blocking_lock();
    let mut gw = RealGateway::start(&CONFIG.replace("LIMITS", ""), Some((64, 1024)), Stdio::piped());
    let stderr = BufReader::new(gw.child.stderr.take().unwrap());
    let line = stderr
        .lines()
        .map_while(Result::ok)
        .find(|l| l.contains("open files limit"))
        .expect("no log line with the open files limit");
    // 1,024 descriptors: 192 kept, 2 per connection.
    for field in ["soft=1024", "hard=1024", "max_connections=416"] {
        assert!(line.contains(field), "{field} not in {line:?}");
    }
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", gw.child.id())).unwrap();
    let open_files = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    assert_eq!(open_files.split_whitespace().collect::<Vec<_>>()[3..5], ["1024", "1024"], "{open_files}");
}

#[test]
fn a_max_connections_that_cannot_fit_refuses_to_start_and_check_warns() {
    let _serial = SERIAL.blocking_lock();
    let config = CONFIG.replace("LIMITS", r#", "limits": { "max_connections": 1000 }"#);
    let mut gw = RealGateway::start(&config, Some((1024, 1024)), Stdio::piped());
    let status = gw.child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut gw.child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "started though max_connections cannot fit");
    assert!(stderr.contains("limits.max_connections is 1000, which needs about 2192 open files"), "{stderr}");
    assert!(stderr.contains("but the limit is 1024"), "{stderr}");

    let path = gw.dir.join("config.json");
    let mut check = Command::new(env!("CARGO_BIN_EXE_sni-edge"));
    check.args(["check", "--config"]).arg(&path);
    // SAFETY: setrlimit is async-signal-safe, the only call between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut check, || {
            let limit = libc::rlimit { rlim_cur: 1024, rlim_max: 1024 };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = check.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "check refused: {stderr}");
    assert!(stderr.starts_with("warning: limits.max_connections is 1000"), "{stderr}");
}
