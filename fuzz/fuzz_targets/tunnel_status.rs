//! Fuzzes the tunnel's status channel reader (`sni_edge::tunnel::status`),
//! the only bytes of a tunnel session this program parses itself (TLS and
//! h2 are parsed by rustls and h2), and the raw public key check.
//!
//! Beyond "never panics" it checks that the reading does not depend on
//! where the stream was split: the first byte chooses cut points, and
//! feeding the rest in those chunks gives the same statuses and the same
//! error as feeding it whole. Every status read is written back by `line`
//! to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sni_edge::tunnel::keys::PublicKey;
use sni_edge::tunnel::status::{line, parse_line, Lines, StatusError};

fn read(chunks: &[&[u8]]) -> (Vec<(String, bool)>, Result<(), StatusError>) {
    let mut lines = Lines::default();
    let mut seen = Vec::new();
    for chunk in chunks {
        if let Err(e) = lines.push(chunk, |s| seen.push((s.target.to_owned(), s.up))) {
            return (seen, Err(e));
        }
    }
    (seen, Ok(()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, body)) = data.split_first() else { return };
    let whole = read(&[body]);
    let step = usize::from(step).max(1);
    let chunks: Vec<&[u8]> = body.chunks(step).collect();
    assert_eq!(read(&chunks), whole, "split every {step} bytes");
    for (target, up) in &whole.0 {
        let text = line(sni_edge::tunnel::status::Status { target, up: *up });
        let parsed = parse_line(text.trim_end_matches('\n').as_bytes()).unwrap();
        assert_eq!((parsed.target, parsed.up), (target.as_str(), *up));
    }
    if let Some(key) = PublicKey::from_spki(body) {
        assert_eq!(key.spki(), body);
    }
});
