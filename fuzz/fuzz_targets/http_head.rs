//! Fuzzes `sni_edge::http::parse_head`, the request-head reader of the plain
//! HTTP listener, and `forwarded_head`, which rewrites a head for the ACME
//! pass-through.
//!
//! Beyond "never panics" it checks what the gateway relies on:
//! - a complete head is never refused because of where a read ended: every
//!   prefix shorter than the head is `Ok(None)`, and the head alone, or
//!   followed by anything, reads the same;
//! - what decides routing is clean: the Host (or the authority standing for
//!   it) and the path hold no CR, LF or NUL, and the path is in origin form
//!   when it starts with '/';
//! - the forwarded head reads back as one request with the same method,
//!   path and Host, no body, and `Connection: close`, and is exactly one
//!   head: nothing the client sent after its head can ride along.
//! A fixed set of prefixes is checked (see `cuts`), not all of them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sni_edge::http::{forwarded_head, parse_head, Request, MAX_HEADERS};

fuzz_target!(|data: &[u8]| {
    let full = parse_head(data);
    let Ok(Some(request)) = &full else {
        // No head: no prefix may be one either.
        for cut in cuts(data.len(), None) {
            assert!(!matches!(parse_head(&data[..cut]), Ok(Some(_))), "prefix of {cut} is a head, the whole {full:?}");
        }
        return;
    };
    for cut in cuts(data.len(), Some(request.head_len)) {
        let part = parse_head(&data[..cut]);
        if cut < request.head_len {
            assert!(matches!(part, Ok(None)), "prefix of {cut} < {} gave {part:?}", request.head_len);
        } else {
            assert!(matches!(&part, Ok(Some(r)) if r == request), "prefix of {cut} gave {part:?}, the whole {request:?}");
        }
    }
    check_request(request);
    // What the gateway forwards: heads with a Host, a path, and room for
    // the Connection header it adds.
    if let Some(host) = request.host.as_deref() {
        if request.path.starts_with('/') && request.header_count < MAX_HEADERS - 1 {
            check_forwarded(data, request, host);
        }
    }
});

fn clean(text: &str) -> bool {
    !text.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0))
}

fn check_request(request: &Request) {
    assert!(request.head_len >= 4, "head of {} bytes", request.head_len);
    assert!(clean(&request.path), "path {:?}", request.path);
    assert!(request.host.as_deref().is_none_or(clean), "host {:?}", request.host);
    assert!(!request.path.to_ascii_lowercase().starts_with("http://"), "absolute form left: {:?}", request.path);
}

fn check_forwarded(data: &[u8], request: &Request, host: &str) {
    let head = forwarded_head(data, request, host);
    let again = match parse_head(&head) {
        Ok(Some(again)) => again,
        other => panic!("the forwarded head {:?} reads as {other:?}", String::from_utf8_lossy(&head)),
    };
    assert_eq!(again.head_len, head.len(), "the forwarded head is not exactly one head");
    assert_eq!((&again.method, &again.path), (&request.method, &request.path));
    assert_eq!(again.host.as_deref(), Some(host.trim()));
    assert!(!again.has_body, "the forwarded head declares a body");
    let text = String::from_utf8_lossy(&head);
    assert!(text.ends_with("\r\nConnection: close\r\n\r\n"), "{text:?}");
    assert_eq!(text.matches("\r\n\r\n").count(), 1, "{text:?}");
}

/// Prefix lengths to check, ascending: every length up to 16, about 16
/// spread over the rest, and the lengths either side of the head's end.
fn cuts(len: usize, head_len: Option<usize>) -> Vec<usize> {
    let mut cuts: Vec<usize> = (0..=len.min(16)).collect();
    let step = (len / 16).max(1);
    cuts.extend((16..len).step_by(step));
    if let Some(end) = head_len {
        cuts.extend([end.saturating_sub(1), end, end + 1]);
    }
    cuts.push(len);
    cuts.retain(|&cut| cut <= len);
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}
