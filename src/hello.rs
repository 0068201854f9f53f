//! Reading the server name out of a TLS ClientHello without consuming it.
//!
//! [`parse`] looks at everything received so far and answers "need more",
//! "here is the hello" or "refuse". It is pure so that it can be fuzzed and
//! tested on captured bytes split at every offset; the caller keeps the
//! bytes and forwards them unchanged.
//!
//! The record layer is reassembled here: a ClientHello may span several TLS
//! records (allowed by RFC 8446 §5.1, and what post-quantum key shares
//! provoke) as well as several TCP reads. The message's fields are parsed
//! with tls-parser, and its extension block is walked here: every length that
//! decides where the server_name extension is and what it says (each
//! extension's, trailing bytes after the block, inside the SNI list) is
//! checked, because any ambiguity is a way for two parsers to see two
//! different names. What the other extensions hold is the server's to check.

use crate::names::{HostName, NameError, Requested};
use std::borrow::Cow;
use tls_parser::parse_tls_handshake_client_hello;

const RECORD_HEADER_LEN: usize = 5;
const HANDSHAKE_HEADER_LEN: usize = 4;
const CONTENT_TYPE_HANDSHAKE: u8 = 22;
const HANDSHAKE_TYPE_CLIENT_HELLO: u8 = 1;
/// RFC 8446 §5.1: a record carries at most 2^14 bytes of plaintext.
const MAX_RECORD_LEN: usize = 1 << 14;
/// The largest ClientHello the TLS 1.3 grammar allows: version, random,
/// session id, cipher suites, compression methods and extensions, each at its
/// maximum length.
pub const MAX_HELLO_LEN: usize = 2 + 32 + (1 + 32) + (2 + 65534) + (1 + 255) + (2 + 65535);
const EXT_SERVER_NAME: u16 = 0;
const SNI_TYPE_HOST_NAME: u8 = 0;

/// A complete ClientHello found at the start of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// What the client asked for.
    pub server_name: Requested,
    /// How many bytes of the input the records holding the hello take up.
    /// The caller forwards everything it read; the tests and the fuzz target
    /// use this to check where the hello ends.
    pub len: usize,
}

/// Why a stream was not accepted as a TLS ClientHello. Every variant is a
/// refusal: the gateway never guesses a name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    #[error("not TLS: the first byte is not a handshake record")]
    NotTls,
    #[error("bad TLS record header: {0}")]
    BadRecord(&'static str),
    #[error("the first handshake message is not a ClientHello")]
    NotClientHello,
    #[error("ClientHello of {0} bytes is larger than TLS allows")]
    TooLarge(usize),
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
    #[error("invalid server name: {0}")]
    InvalidName(#[from] NameError),
}

/// Looks for a complete ClientHello at the start of `buf`.
/// `Ok(None)` means every byte so far is consistent with one, send more.
pub fn parse(buf: &[u8]) -> Result<Option<ClientHello>, HelloError> {
    let Some((message, len)) = reassemble(buf)? else {
        return Ok(None);
    };
    let server_name = server_name(&message)?;
    Ok(Some(ClientHello { server_name, len }))
}

/// A whole handshake message body, and how many input bytes its records took.
type Reassembled<'a> = (Cow<'a, [u8]>, usize);

/// Collects the handshake message from consecutive records. Returns the
/// message body (after its 4-byte header) and how many input bytes the
/// records took, or `None` while it is still incomplete. A message in one
/// record, the common case, is borrowed from `buf` rather than copied.
///
/// This runs again after every read, so until a message spread over several
/// records is complete only its 4-byte header is copied: a large hello
/// arriving in many reads is not copied again at each one.
fn reassemble(buf: &[u8]) -> Result<Option<Reassembled<'_>>, HelloError> {
    // The first bytes of the payload (up to the handshake header), and how
    // many payload bytes there are in all.
    let mut payload: Vec<u8> = Vec::new();
    let mut payload_len = 0;
    let mut pos = 0;
    let mut wanted: Option<usize> = None;
    loop {
        // Check the header bytes we have, even before a whole header arrived,
        // so that non-TLS bytes are refused on the first read.
        let header = &buf[pos..buf.len().min(pos + RECORD_HEADER_LEN)];
        check_record_header(header)?;
        if header.len() < RECORD_HEADER_LEN {
            return Ok(None);
        }
        let record_len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        let start = pos + RECORD_HEADER_LEN;
        let available = &buf[start..buf.len().min(start + record_len)];
        if pos == 0 && available.len() == record_len {
            if let Some(message) = whole_message(available)? {
                return Ok(Some((Cow::Borrowed(message), start + record_len)));
            }
        }
        let head_missing = HANDSHAKE_HEADER_LEN.saturating_sub(payload.len());
        payload.extend_from_slice(&available[..available.len().min(head_missing)]);
        payload_len += available.len();
        if wanted.is_none() && payload.len() >= HANDSHAKE_HEADER_LEN {
            if payload[0] != HANDSHAKE_TYPE_CLIENT_HELLO {
                return Err(HelloError::NotClientHello);
            }
            let len = usize::from(payload[1]) << 16 | usize::from(payload[2]) << 8 | usize::from(payload[3]);
            if len > MAX_HELLO_LEN {
                return Err(HelloError::TooLarge(len));
            }
            wanted = Some(HANDSHAKE_HEADER_LEN + len);
        } else if wanted.is_none() && !payload.is_empty() && payload[0] != HANDSHAKE_TYPE_CLIENT_HELLO {
            return Err(HelloError::NotClientHello);
        }
        if available.len() < record_len {
            return Ok(None);
        }
        pos = start + record_len;
        if let Some(total) = wanted {
            if payload_len >= total {
                return Ok(Some((Cow::Owned(message(buf, pos, total)), pos)));
            }
        }
    }
}

/// The handshake message in the records of `buf[..end]` (already checked by
/// `reassemble`), without its header: `total` payload bytes, the header
/// included. Bytes after the hello in its last record are another message's;
/// they are forwarded, not interpreted.
fn message(buf: &[u8], end: usize, total: usize) -> Vec<u8> {
    let mut payload = Vec::with_capacity(total);
    let mut pos = 0;
    while pos < end {
        let record_len = usize::from(u16::from_be_bytes([buf[pos + 3], buf[pos + 4]]));
        payload.extend_from_slice(&buf[pos + RECORD_HEADER_LEN..pos + RECORD_HEADER_LEN + record_len]);
        pos += RECORD_HEADER_LEN + record_len;
    }
    payload.truncate(total);
    payload.drain(..HANDSHAKE_HEADER_LEN);
    payload
}

/// The message body when `record` (a whole first record) holds all of the
/// handshake message; `None` when it continues in the next record.
fn whole_message(record: &[u8]) -> Result<Option<&[u8]>, HelloError> {
    let [kind, l0, l1, l2, body @ ..] = record else { return Ok(None) };
    if *kind != HANDSHAKE_TYPE_CLIENT_HELLO {
        return Err(HelloError::NotClientHello);
    }
    let len = usize::from(*l0) << 16 | usize::from(*l1) << 8 | usize::from(*l2);
    if len > MAX_HELLO_LEN {
        return Err(HelloError::TooLarge(len));
    }
    Ok(body.get(..len))
}

/// Checks whichever of the 5 header bytes are present.
fn check_record_header(header: &[u8]) -> Result<(), HelloError> {
    match *header {
        [] => Ok(()),
        [content_type, ..] if content_type != CONTENT_TYPE_HANDSHAKE => Err(HelloError::NotTls),
        [_, major, ..] if major != 3 => Err(HelloError::BadRecord("version is not 3.x")),
        [_, _, minor, ..] if minor > 4 => Err(HelloError::BadRecord("unknown minor version")),
        [_, _, _, hi, lo] => match usize::from(u16::from_be_bytes([hi, lo])) {
            0 => Err(HelloError::BadRecord("empty handshake record")),
            n if n > MAX_RECORD_LEN => Err(HelloError::BadRecord("record longer than 2^14 bytes")),
            _ => Ok(()),
        },
        _ => Ok(()),
    }
}

fn server_name(message: &[u8]) -> Result<Requested, HelloError> {
    let (rest, hello) =
        parse_tls_handshake_client_hello(message).map_err(|_| HelloError::Malformed("ClientHello body"))?;
    if !rest.is_empty() {
        return Err(HelloError::Malformed("bytes after the extensions"));
    }
    let Some(block) = hello.ext else {
        return Ok(Requested::NoName);
    };
    // Only the framing of the extensions is checked, not what each one
    // holds: the name is all that is read here, and the server checks the
    // rest (as HAProxy's and nginx's SNI readers do). The framing is what
    // decides which bytes are the server_name extension, so it must be exact.
    let mut found = None;
    // The first types seen, for the duplicate check of the common case.
    let mut seen = [0u16; 32];
    let mut count = 0;
    for extension in extensions(block) {
        let (kind, data) = extension?;
        if count < seen.len() {
            // RFC 8446 §4.2: no extension type may appear twice.
            if seen[..count].contains(&kind) {
                return Err(HelloError::Malformed("duplicate extension"));
            }
            seen[count] = kind;
        }
        count += 1;
        if kind == EXT_SERVER_NAME {
            found = Some(data);
        }
    }
    if count > seen.len() && has_duplicate_type(block) {
        return Err(HelloError::Malformed("duplicate extension"));
    }
    match found {
        None => Ok(Requested::NoName),
        Some(data) => Ok(HostName::parse(sni_host_name(data)?)?),
    }
}

/// The (type, data) of each extension in a block. Each must fit in what is
/// left of the block, so that the walk ends exactly at its end.
fn extensions(mut block: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), HelloError>> {
    std::iter::from_fn(move || {
        if block.is_empty() {
            return None;
        }
        let Some((&[t0, t1, l0, l1], rest)) = block.split_first_chunk() else {
            block = &[];
            return Some(Err(HelloError::Malformed("extension header")));
        };
        let len = usize::from(u16::from_be_bytes([l0, l1]));
        let Some(data) = rest.get(..len) else {
            block = &[];
            return Some(Err(HelloError::Malformed("extension length")));
        };
        block = &rest[len..];
        Some(Ok((u16::from_be_bytes([t0, t1]), data)))
    })
}

/// For a block of many extensions (already walked whole): sorted, so that a
/// hello of thousands of empty extensions costs no quadratic search.
fn has_duplicate_type(block: &[u8]) -> bool {
    let mut types: Vec<u16> = extensions(block).filter_map(|e| e.ok().map(|(kind, _)| kind)).collect();
    types.sort_unstable();
    types.windows(2).any(|pair| pair[0] == pair[1])
}

/// RFC 6066 §3: a list of (type, name) whose length must fill the extension
/// exactly, with at most one host_name. Other name types are skipped, as the
/// RFC asks of servers that do not know them.
fn sni_host_name(data: &[u8]) -> Result<&[u8], HelloError> {
    let [l0, l1, list @ ..] = data else {
        return Err(HelloError::Malformed("server_name extension too short"));
    };
    let mut list: &[u8] = list;
    if usize::from(u16::from_be_bytes([*l0, *l1])) != list.len() || list.is_empty() {
        return Err(HelloError::Malformed("server_name list length"));
    }
    let mut host = None;
    while !list.is_empty() {
        let &[kind, n0, n1, ref rest @ ..] = list else {
            return Err(HelloError::Malformed("server_name entry header"));
        };
        let len = usize::from(u16::from_be_bytes([n0, n1]));
        let name = rest.get(..len).ok_or(HelloError::Malformed("server_name entry length"))?;
        if kind == SNI_TYPE_HOST_NAME {
            if host.is_some() {
                return Err(HelloError::Malformed("two host names in server_name"));
            }
            host = Some(name);
        }
        list = &rest[len..];
    }
    host.ok_or(HelloError::Malformed("server_name without a host name"))
}

/// A small valid ClientHello asking for `server_name` (none if `None`):
/// what a TLS health check sends, and what tests send.
pub fn build(server_name: Option<&str>) -> Vec<u8> {
    let extensions =
        server_name.map(|name| sni_extension(&[(SNI_TYPE_HOST_NAME, name.as_bytes())])).unwrap_or_default();
    hello_with_extensions(&extensions)
}

/// A ClientHello record around `extensions`, offering the common TLS 1.2
/// and 1.3 AEAD suites.
/// A ClientHello for `server_name` in one record of exactly `record_len`
/// bytes (at most 2^14), filled with a padding extension (RFC 7685) as
/// real clients pad theirs: for tests of large hellos.
pub fn build_padded(server_name: &str, record_len: usize) -> Vec<u8> {
    let sni = sni_extension(&[(SNI_TYPE_HOST_NAME, server_name.as_bytes())]);
    let unpadded = hello_with_extensions(&sni).len() - RECORD_HEADER_LEN;
    let padding = record_len.checked_sub(unpadded + 4).expect("record_len too small for the hello");
    let mut extensions = sni;
    extensions.extend_from_slice(&21u16.to_be_bytes());
    extensions.extend_from_slice(&(padding as u16).to_be_bytes());
    extensions.resize(extensions.len() + padding, 0);
    let hello = hello_with_extensions(&extensions);
    assert_eq!(hello.len(), RECORD_HEADER_LEN + record_len);
    hello
}

fn hello_with_extensions(extensions: &[u8]) -> Vec<u8> {
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[7; 32]);
    body.push(0);
    let suites: [u16; 5] = [0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f];
    body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    suites.iter().for_each(|s| body.extend_from_slice(&s.to_be_bytes()));
    body.extend_from_slice(&[0x01, 0x00]);
    body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    body.extend_from_slice(extensions);
    wrap(&body)
}

fn wrap(body: &[u8]) -> Vec<u8> {
    let mut message = vec![HANDSHAKE_TYPE_CLIENT_HELLO];
    message.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    message.extend_from_slice(body);
    let mut record = vec![CONTENT_TYPE_HANDSHAKE, 3, 1];
    record.extend_from_slice(&(message.len() as u16).to_be_bytes());
    record.extend_from_slice(&message);
    record
}

fn sni_extension(names: &[(u8, &[u8])]) -> Vec<u8> {
    let mut list = Vec::new();
    for (kind, name) in names {
        list.push(*kind);
        list.extend_from_slice(&(name.len() as u16).to_be_bytes());
        list.extend_from_slice(name);
    }
    let mut data = (list.len() as u16).to_be_bytes().to_vec();
    data.extend_from_slice(&list);
    let mut ext = EXT_SERVER_NAME.to_be_bytes().to_vec();
    ext.extend_from_slice(&(data.len() as u16).to_be_bytes());
    ext.extend_from_slice(&data);
    ext
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name_of(buf: &[u8]) -> Result<Option<Requested>, HelloError> {
        parse(buf).map(|h| h.map(|h| h.server_name))
    }

    fn host(s: &str) -> Requested {
        HostName::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn reads_a_minimal_hello() {
        let buf = hello_with_extensions(&sni_extension(&[(0, b"App.Example.test")]));
        let hello = parse(&buf).unwrap().unwrap();
        assert_eq!(hello.server_name, host("app.example.test"));
        assert_eq!(hello.len, buf.len());
    }

    #[test]
    fn asks_for_more_on_every_proper_prefix() {
        let buf = hello_with_extensions(&sni_extension(&[(0, b"app.example.test")]));
        for cut in 0..buf.len() {
            assert_eq!(parse(&buf[..cut]), Ok(None), "prefix of {cut} bytes");
        }
    }

    #[test]
    fn refuses_non_tls_on_the_first_byte() {
        assert_eq!(parse(b"G"), Err(HelloError::NotTls));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(HelloError::NotTls));
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4"), Err(HelloError::NotTls));
        assert_eq!(parse(&[0x80, 0x2e, 0x01]), Err(HelloError::NotTls), "SSLv2 hello");
        assert_eq!(parse(&[22, 2]), Err(HelloError::BadRecord("version is not 3.x")));
        assert_eq!(parse(&[22, 3, 1, 0, 0]), Err(HelloError::BadRecord("empty handshake record")));
        assert_eq!(parse(&[22, 3, 1, 0x40, 1]), Err(HelloError::BadRecord("record longer than 2^14 bytes")));
        assert_eq!(parse(&[22, 3, 1, 0, 4, 2]), Err(HelloError::NotClientHello));
        assert_eq!(parse(&[21, 3, 1, 0, 2, 2, 40]), Err(HelloError::NotTls), "an alert record");
    }

    #[test]
    fn missing_sni_and_ip_literals_are_no_name() {
        assert_eq!(name_of(&hello_with_extensions(&[])), Ok(Some(Requested::NoName)));
        let ip = hello_with_extensions(&sni_extension(&[(0, b"192.0.2.1")]));
        assert_eq!(name_of(&ip), Ok(Some(Requested::NoName)));
    }

    #[test]
    fn refuses_bad_names_instead_of_matching_their_suffix() {
        for bad in
            [&b"x\0.kube.example.com"[..], b"a/b.kube.example.com", b"a..kube.example.com", b"-.kube.example.com"]
        {
            let buf = hello_with_extensions(&sni_extension(&[(0, bad)]));
            assert!(matches!(parse(&buf), Err(HelloError::InvalidName(_))), "{bad:?}");
        }
    }

    #[test]
    fn refuses_inconsistent_lengths() {
        let good = sni_extension(&[(0, b"app.example.test")]);
        // SNI list length one short of its extension.
        let mut short_list = good.clone();
        short_list[5] -= 1;
        assert!(matches!(parse(&hello_with_extensions(&short_list)), Err(HelloError::Malformed(_))));
        // Two host names: which would a backend believe?
        let two = sni_extension(&[(0, b"app.example.test"), (0, b"evil.test")]);
        assert!(matches!(parse(&hello_with_extensions(&two)), Err(HelloError::Malformed(_))));
        // The same extension twice.
        let twice = [good.clone(), sni_extension(&[(0, b"evil.test")])].concat();
        assert!(matches!(parse(&hello_with_extensions(&twice)), Err(HelloError::Malformed(_))));
        // Trailing junk after the extension block, inside the message.
        let mut body = hello_with_extensions(&good)[9..].to_vec();
        body.push(0);
        assert!(matches!(parse(&wrap(&body)), Err(HelloError::Malformed(_))));
        // A message longer than TLS allows.
        let huge = [22, 3, 1, 0, 4, 1, 0xff, 0xff, 0xff];
        assert!(matches!(parse(&huge), Err(HelloError::TooLarge(_))));
    }

    #[test]
    fn refuses_extensions_that_overrun_their_block() {
        let good = sni_extension(&[(0, b"app.example.test")]);
        // An extension header cut short at the end of the block.
        let cut = [good.clone(), vec![0, 16, 0]].concat();
        assert_eq!(parse(&hello_with_extensions(&cut)), Err(HelloError::Malformed("extension header")));
        // An extension whose length runs past the block.
        let long = [good.clone(), vec![0, 16, 0, 9, 1, 2]].concat();
        assert_eq!(parse(&hello_with_extensions(&long)), Err(HelloError::Malformed("extension length")));
        // The same, with the overrun hiding a second server_name.
        let hiding = [vec![0, 21, 0, 200], good].concat();
        assert_eq!(parse(&hello_with_extensions(&hiding)), Err(HelloError::Malformed("extension length")));
    }

    #[test]
    fn leaves_other_extensions_contents_to_the_server() {
        // A supported_groups extension whose list length is wrong: the
        // server refuses it, the name is still read.
        let odd = [sni_extension(&[(0, b"app.example.test")]), vec![0, 10, 0, 3, 0, 9, 1]].concat();
        assert_eq!(name_of(&hello_with_extensions(&odd)), Ok(Some(host("app.example.test"))));
    }

    #[test]
    fn finds_duplicates_among_many_extensions() {
        // Thousands of empty extensions of distinct types (reserved range),
        // then one type again: past the first 32, duplicates are found by sorting.
        let many: Vec<u8> = (0..4000u16).flat_map(|t| [(0x4000 + t).to_be_bytes(), [0, 0]].concat()).collect();
        let sni = sni_extension(&[(0, b"app.example.test")]);
        let distinct = [sni.clone(), many.clone()].concat();
        assert_eq!(name_of(&hello_with_extensions(&distinct)), Ok(Some(host("app.example.test"))));
        let again = [sni, many, vec![0x4f, 0x9f, 0, 0]].concat();
        assert_eq!(parse(&hello_with_extensions(&again)), Err(HelloError::Malformed("duplicate extension")));
    }

    #[test]
    fn reassembles_a_hello_split_across_records() {
        let whole = hello_with_extensions(&sni_extension(&[(0, b"app.example.test")]));
        let message = &whole[5..];
        for split in 1..message.len() {
            let mut buf = Vec::new();
            for part in [&message[..split], &message[split..]] {
                buf.extend_from_slice(&[22, 3, 1]);
                buf.extend_from_slice(&(part.len() as u16).to_be_bytes());
                buf.extend_from_slice(part);
            }
            assert_eq!(name_of(&buf), Ok(Some(host("app.example.test"))), "split at {split}");
        }
    }

    #[test]
    fn forwards_but_ignores_bytes_after_the_hello() {
        let mut buf = hello_with_extensions(&sni_extension(&[(0, b"app.example.test")]));
        let len = buf.len();
        buf.extend_from_slice(&[20, 3, 3, 0, 1, 1]);
        assert_eq!(parse(&buf).unwrap().unwrap().len, len);
    }

    /// Hellos recorded from real clients (tests/fixtures/README.md says which).
    const RECORDED: [(&str, &[u8], Option<&str>); 5] = [
        ("curl TLS 1.3", include_bytes!("../tests/fixtures/hello-curl-tls13.bin"), Some("app.example.test")),
        ("curl TLS 1.2", include_bytes!("../tests/fixtures/hello-curl-tls12.bin"), Some("app.example.test")),
        ("openssl s_client", include_bytes!("../tests/fixtures/hello-openssl.bin"), Some("app.example.test")),
        ("openssl -noservername", include_bytes!("../tests/fixtures/hello-openssl-nosni.bin"), None),
        ("chromium (X25519MLKEM768)", include_bytes!("../tests/fixtures/hello-chromium.bin"), Some("app.example.test")),
    ];

    fn expected(name: Option<&str>) -> Requested {
        name.map_or(Requested::NoName, host)
    }

    #[test]
    fn reads_recorded_hellos_whole_and_byte_by_byte() {
        for (client, bytes, name) in RECORDED {
            let hello = parse(bytes).unwrap_or_else(|e| panic!("{client}: {e}")).unwrap();
            assert_eq!(hello.server_name, expected(name), "{client}");
            assert_eq!(hello.len, bytes.len(), "{client}");
            // What a reader sees when the bytes trickle in one at a time.
            for cut in 0..bytes.len() {
                assert_eq!(parse(&bytes[..cut]), Ok(None), "{client}: prefix of {cut} bytes");
            }
        }
    }

    #[test]
    fn recorded_chromium_hello_is_post_quantum_and_larger_than_a_segment() {
        let (_, bytes, _) = RECORDED[4];
        assert!(bytes.len() > 1500, "{} bytes", bytes.len());
        // X25519MLKEM768 (0x11ec) in the key_share extension.
        assert!(bytes.windows(2).any(|w| w == [0x11, 0xec]));
    }

    #[test]
    fn reads_recorded_hellos_split_across_two_records() {
        for (client, bytes, name) in RECORDED {
            let message = &bytes[5..];
            // Every split point for the small ones; a spread for Chromium's.
            let step = (message.len() / 300).max(1);
            for split in (1..message.len()).step_by(step) {
                let mut buf = Vec::new();
                for part in [&message[..split], &message[split..]] {
                    buf.extend_from_slice(&bytes[..3]);
                    buf.extend_from_slice(&(part.len() as u16).to_be_bytes());
                    buf.extend_from_slice(part);
                }
                for cut in [buf.len() - 1, 5 + split, 5 + split + 3] {
                    assert_eq!(parse(&buf[..cut]), Ok(None), "{client}: split {split}, prefix {cut}");
                }
                assert_eq!(name_of(&buf), Ok(Some(expected(name))), "{client}: split at {split}");
            }
        }
    }
}
