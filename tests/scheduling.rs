//! The connection engine's scheduling policy on the real binary: its threads
//! are on the normal policy, go batch during a burst of new connections and
//! come back once it is over (src/scheduling.rs).

mod common;

use common::*;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

const CONFIG: &str = r#"{ "listeners": [{ "address": "ADDRESS", "protocol": "tls" }],
  "routes": [{ "names": ["app.example.test"], "backend": "b" }],
  "backends": { "b": { "servers": ["127.0.0.1:9"] } },
  "limits": { "max_pending_per_client": 1000, "max_connections_per_client": 1000 },
  "timeouts": { "client_hello": "60s" } }"#;

/// A burst: more connections than the engine's threshold (32 accepted in
/// 100 ms with 32 open).
const BURST: usize = 200;

/// Keeps the calling thread, and so the gateway it starts, on one CPU: the
/// gateway then has one engine thread, which sees every connection and
/// judges at each of their events.
fn one_cpu() {
    // SAFETY: the sets are local; pid 0 is the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set), 0);
        let cpu = (0..libc::CPU_SETSIZE as usize).find(|&c| libc::CPU_ISSET(c, &set)).unwrap();
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut one);
        assert_eq!(libc::sched_setaffinity(0, std::mem::size_of_val(&one), &one), 0);
    }
}

/// The scheduling policy of each of the binary's engine threads
/// (`SCHED_OTHER` 0, `SCHED_BATCH` 3), from /proc.
fn engine_policies(pid: u32) -> Vec<u32> {
    let mut policies = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = task.unwrap().path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if !comm.starts_with("engine-") {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("stat")).unwrap();
        // Fields after the name (in parentheses) start at the 3rd; the policy is the 41st.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        policies.push(rest.split_whitespace().nth(41 - 3).unwrap().parse().unwrap());
    }
    policies
}

/// A connection that sends a record header and waits: pending.
fn pending(to: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(to).unwrap();
    stream.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).unwrap();
    stream
}

/// Waits, for up to `patience()`, until `done` holds. With `poke`, opens a
/// connection there every 10 ms meanwhile (fewer than a burst): the engine
/// judges at its turns, and these make them.
fn until(what: &str, poke: Option<std::net::SocketAddr>, mut done: impl FnMut() -> bool) {
    let give_up = Instant::now() + patience();
    while !done() {
        assert!(Instant::now() < give_up, "{what}: not within {:?}", patience());
        if let Some(to) = poke {
            drop(pending(to));
        }
        std::thread::sleep(Duration::from_millis(if poke.is_some() { 10 } else { 5 }));
    }
}

#[test]
fn a_burst_of_new_connections_makes_the_engine_batch_until_it_ends() {
    one_cpu();
    let gw = RealGateway::start(CONFIG, None, std::process::Stdio::null());
    let pid = gw.child.id();
    // The test made the listening socket, so connects succeed before the
    // binary runs (under qemu, a while before): wait for its engine thread.
    until("an engine thread in /proc", None, || !engine_policies(pid).is_empty());
    // Connections one at a time, over more than a window: no burst.
    for _ in 0..30 {
        drop(pending(gw.address));
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(engine_policies(pid), [libc::SCHED_OTHER as u32], "normal before the burst");

    // Watched from the start: a slow engine (a debug build under qemu) may
    // judge the burst while it is still accepting it, and again later.
    let batch = |pid| engine_policies(pid) == [libc::SCHED_BATCH as u32];
    let mut seen = false;
    let mut burst = Vec::new();
    for _ in 0..BURST {
        burst.push(pending(gw.address));
        seen |= batch(pid);
    }
    // A window later, a byte more of each hello: the engine judges at the
    // first of these events.
    std::thread::sleep(Duration::from_millis(150));
    for stream in &mut burst {
        stream.write_all(&[0x01]).unwrap();
        seen |= batch(pid);
    }
    until("the engine thread batch during the burst", None, || {
        seen |= batch(pid);
        seen
    });

    drop(burst);
    // Equal, not "all": an empty list (no engine thread) must not pass.
    until("the engine thread normal after the burst", Some(gw.address), || {
        engine_policies(pid) == [libc::SCHED_OTHER as u32]
    });
}
