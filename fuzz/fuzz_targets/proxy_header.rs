//! Fuzzes `sni_edge::proxy_header::parse`, the PROXY v1/v2 reader used on
//! connections from trusted load balancers.
//!
//! Beyond "never panics" it checks what the gateway relies on when it calls
//! `parse` again after each read, for the prefixes `data[..k]`:
//! - if the whole input is a header of `len` bytes, every shorter prefix is
//!   `Ok(None)` (a valid header is never refused because of how TCP split it)
//!   and every longer one gives the same header;
//! - otherwise no prefix is a header;
//! - a v1 header is one line ending in its first CRLF, so its length cannot
//!   depend on where a read ended.
//! It does not require an error to stay an error as bytes arrive: ppp's v1
//! parser guesses "partial" from the line's end, so `P ` is an error but
//! `P TCP` is incomplete again (it ends with the `P` of the prefix). That only
//! delays the refusal of garbage from a trusted balancer, within 107 bytes.
//! A fixed set of prefixes is checked (see `cuts`), not all of them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sni_edge::proxy_header::{parse, Inbound, ProxyHeaderError, MAX_HEADER_LEN};

type Answer = Result<Option<Inbound>, ProxyHeaderError>;

fuzz_target!(|data: &[u8]| {
    let full = parse(data);
    for cut in cuts(data, &full) {
        let part = parse(&data[..cut]);
        if let Ok(Some(header)) = &part {
            check_header(&data[..cut], header);
        }
        let why = || format!("prefix of {cut} of {} bytes gave {part:?}, the whole input {full:?}", data.len());
        match &full {
            Ok(Some(header)) if cut < header.len => assert!(part == Ok(None), "{}", why()),
            Ok(Some(_)) => assert!(part == full, "{}", why()),
            _ => assert!(!matches!(part, Ok(Some(_))), "{}", why()),
        }
    }
});

/// A header found in `data`: its length is within the input and the limits
/// of the protocol, a v1 line ends in its first CRLF and nowhere else, and
/// the header alone reads the same as the header followed by anything.
fn check_header(data: &[u8], header: &Inbound) {
    assert!(header.len <= data.len() && header.len <= MAX_HEADER_LEN, "len {} of {}", header.len, data.len());
    let bytes = &data[..header.len];
    if data.starts_with(b"PROXY") {
        assert!(header.len <= 107, "v1 header of {} bytes", header.len);
        let line = bytes.strip_suffix(b"\r\n");
        assert!(
            line.is_some_and(|line| !line.contains(&b'\r') && !line.contains(&b'\n')),
            "v1 header {:?} does not end at its first CRLF",
            String::from_utf8_lossy(bytes)
        );
    } else {
        assert!(header.len >= 16, "v2 header of {} bytes", header.len);
    }
    assert_eq!(parse(bytes), Ok(Some(header.clone())));
}

/// Prefix lengths to compare with the whole input, ascending and ending with
/// `len`: every length up to 32 (both signatures and a v2 fixed header), about
/// 16 spread over the rest, every end of a line within v1's 107 bytes, and the
/// lengths either side of the header's end.
fn cuts(data: &[u8], full: &Answer) -> Vec<usize> {
    let len = data.len();
    let mut cuts: Vec<usize> = (0..=len.min(32)).collect();
    let step = (len / 16).max(1);
    cuts.extend((32..len).step_by(step));
    cuts.extend(data.iter().take(107).enumerate().filter(|(_, &b)| b == b'\n').map(|(i, _)| i + 1));
    if let Ok(Some(header)) = full {
        cuts.extend([header.len.saturating_sub(1), header.len, header.len + 1]);
    }
    cuts.push(len);
    cuts.retain(|&cut| cut <= len);
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}
