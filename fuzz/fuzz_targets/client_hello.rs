//! Fuzzes `sni_edge::hello::parse`, the ClientHello reader that sees every
//! byte an untrusted client sends first.
//!
//! Beyond "never panics" it checks that the answer is stable as bytes arrive,
//! which is what the gateway relies on when it calls `parse` again after each
//! read: for the prefixes `data[..k]`, the answer is `Ok(None)` up to some
//! point and from there on always the same final answer (the same hello with
//! the same length, or the same error). Checking every prefix would make each
//! run quadratic, so a fixed set of prefixes is checked (see `cuts`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sni_edge::hello::{parse, ClientHello, HelloError};
use sni_edge::names::{HostName, Requested};

fuzz_target!(|data: &[u8]| {
    let full = parse(data);
    let mut settled = false;
    for cut in cuts(data.len(), &full) {
        let part = parse(&data[..cut]);
        if part == full {
            settled = true;
        } else {
            assert!(
                !settled && part == Ok(None),
                "prefix of {cut} of {} bytes gave {part:?}, the whole input {full:?}",
                data.len()
            );
        }
    }
    if let Ok(Some(hello)) = &full {
        check_hello(data, hello);
    }
});

/// Prefix lengths to compare with the whole input, ascending and ending with
/// `len` itself: every length up to 16, about 16 spread over the rest, and
/// the lengths either side of the hello's end.
fn cuts(len: usize, full: &Result<Option<ClientHello>, HelloError>) -> Vec<usize> {
    let mut cuts: Vec<usize> = (0..=len.min(16)).collect();
    let step = (len / 16).max(1);
    cuts.extend((16..len).step_by(step));
    if let Ok(Some(hello)) = full {
        cuts.extend([hello.len.saturating_sub(1), hello.len, hello.len + 1]);
    }
    cuts.push(len);
    cuts.retain(|&cut| cut <= len);
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

fn check_hello(data: &[u8], hello: &ClientHello) {
    // The records holding the hello: at least a record and a handshake header
    // plus the fixed part of a ClientHello, never more than was given.
    assert!(hello.len > 5 + 4 + 2 + 32 && hello.len <= data.len(), "len {} of {}", hello.len, data.len());
    // The hello alone reads the same as the hello followed by anything.
    assert_eq!(parse(&data[..hello.len]), Ok(Some(hello.clone())));
    if let Requested::Host(name) = &hello.server_name {
        // A name that reaches routing is normalised: parsing it again is a no-op.
        let text = name.as_str();
        assert!(!text.is_empty() && text.len() <= 253 && !text.ends_with('.'), "{text:?}");
        assert!(text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'), "{text:?}");
        assert_eq!(HostName::parse(text.as_bytes()), Ok(hello.server_name.clone()));
    }
}
