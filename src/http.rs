//! The plain HTTP listener: redirect allowed names to https, pass ACME
//! http-01 challenges to the route's cluster, refuse everything else.
//!
//! Only the request head is read. Responses close the connection, which
//! keeps this listener free of keep-alive state; browsers follow a redirect
//! on a new connection anyway.

use crate::forward::{forward, Connection};
use crate::inbound::{addresses, read_until, Received};
use crate::names::{HostName, Requested};
use crate::outcome::{Refusal, Served};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::field::display;

const ACME_PREFIX: &str = "/.well-known/acme-challenge/";
pub const MAX_HEADERS: usize = 64;

/// The parts of a request head that decide what happens to it.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The target in origin form (`/path?query`); an absolute-form target
    /// (`http://host/path`) is reduced to its path here.
    pub path: String,
    /// The Host header, or the authority of an absolute-form target, which
    /// stands for it (RFC 9112 §3.2.2).
    pub host: Option<String>,
    /// `HTTP/1.0` or `HTTP/1.1`.
    pub minor_version: u8,
    /// A body follows: `Content-Length` other than 0, or any `Transfer-Encoding`.
    pub has_body: bool,
    /// An `Upgrade` header asks to switch protocols.
    pub upgrade: bool,
    /// How many header fields the head has.
    pub header_count: usize,
    /// Bytes of the head, up to and including its blank line.
    pub head_len: usize,
}

/// Parses a complete request head; `Ok(None)` until the blank line arrives.
pub fn parse_head(buf: &[u8]) -> Result<Option<Request>, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(head_len)) => {
            let target = request.path.unwrap_or_default();
            let mut hosts = request.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("host"));
            let mut host = hosts.next().map(|h| String::from_utf8_lossy(h.value).trim().to_owned());
            if hosts.next().is_some() {
                return Err(Refusal::BadRequest("more than one Host header"));
            }
            let path = match absolute_form(target)? {
                Some((authority, path)) => {
                    if host.as_deref().is_some_and(|host| !same_host(host, authority)) {
                        return Err(Refusal::BadRequest("Host differs from the request target's authority"));
                    }
                    host = Some(authority.to_owned());
                    path
                }
                None => target.to_owned(),
            };
            let headers = &*request.headers;
            let named = |name: &'static str| headers.iter().filter(move |h| h.name.eq_ignore_ascii_case(name));
            let has_body = named("transfer-encoding").next().is_some()
                || named("content-length").any(|h| h.value.trim_ascii() != b"0");
            Ok(Some(Request {
                method: request.method.unwrap_or_default().to_owned(),
                path,
                host,
                minor_version: request.version.unwrap_or(1),
                has_body,
                upgrade: named("upgrade").next().is_some(),
                header_count: headers.len(),
                head_len,
            }))
        }
        Err(httparse::Error::TooManyHeaders) => Err(Refusal::BadRequest("too many headers")),
        Err(_) => Err(Refusal::BadRequest("malformed request head")),
    }
}

/// Splits an absolute-form target `http://authority/path` into its
/// authority and origin-form path; `None` for any other form.
fn absolute_form(target: &str) -> Result<Option<(&str, String)>, Refusal> {
    // A path may hold "://" too (`/login?next=https://a.test/`): only a
    // target that starts with a scheme (RFC 3986 §3.1) is absolute.
    let Some(scheme_end) = target.find("://") else {
        return Ok(None);
    };
    let scheme = &target[..scheme_end];
    let is_scheme = scheme.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    if !is_scheme {
        return Ok(None);
    }
    if !target[..scheme_end].eq_ignore_ascii_case("http") {
        return Err(Refusal::BadRequest("request target is not an http:// URL"));
    }
    let rest = &target[scheme_end + 3..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() || authority.contains('@') {
        return Err(Refusal::BadRequest("request target has no host, or user information"));
    }
    let path = match path.as_bytes().first() {
        None => "/".to_owned(),
        Some(b'/') => path.to_owned(),
        Some(_) => format!("/{path}"),
    };
    Ok(Some((authority, path)))
}

/// Whether two Host values name the same host: compared without case and
/// without the port, since the target's and the header's may differ only in
/// spelling the default port.
fn same_host(a: &str, b: &str) -> bool {
    fn without_port(value: &str) -> &str {
        match value.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(':') && port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => value,
        }
    }
    let (a, b) = (without_port(a.trim()), without_port(b.trim()));
    a.trim_end_matches('.').eq_ignore_ascii_case(b.trim_end_matches('.'))
}

/// The head forwarded for an ACME challenge: the request line in origin
/// form, the Host (the target's authority if it had one), the client's
/// other headers except hop-by-hop ones, and `Connection: close`: one
/// request per connection, nothing after it.
pub fn forwarded_head(buf: &[u8], request: &Request, host: &str) -> Vec<u8> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    // The same bytes parsed to `request` before; they parse the same again.
    let _ = parsed.parse(&buf[..request.head_len]);
    let mut head = Vec::with_capacity(request.head_len + 32);
    head.extend_from_slice(
        format!("{} {} HTTP/1.{}\r\nHost: {host}\r\n", request.method, request.path, request.minor_version).as_bytes(),
    );
    const DROPPED: [&str; 7] =
        ["host", "connection", "keep-alive", "proxy-connection", "te", "content-length", "transfer-encoding"];
    for header in parsed.headers.iter().filter(|h| !DROPPED.iter().any(|d| h.name.eq_ignore_ascii_case(d))) {
        head.extend_from_slice(header.name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(header.value);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"Connection: close\r\n\r\n");
    head
}

/// The host name of a Host header value, without its port.
fn host_name(value: &str) -> Result<Requested, Refusal> {
    let value = value.trim();
    let name = match value.rsplit_once(':') {
        // "[::1]:80" and bare IPv6 literals are not names.
        _ if value.starts_with('[') => return Ok(Requested::NoName),
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !port.is_empty() => name,
        Some(_) => return Err(Refusal::BadRequest("bad port in Host")),
        None => value,
    };
    HostName::parse(name.as_bytes()).map_err(|_| Refusal::BadRequest("Host is not a valid host name"))
}

/// An ACME http-01 token is base64url (RFC 8555 §8.3). Anything else under
/// the challenge prefix, dot segments and percent-encoding included, is
/// refused rather than normalised: the cluster never sees a path that could
/// climb out of the challenge directory.
fn is_acme_token_path(path: &str) -> bool {
    path.strip_prefix(ACME_PREFIX).is_some_and(|token| {
        !token.is_empty()
            && token.len() <= 255
            && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

pub async fn serve(
    stream: &mut TcpStream,
    cx: &Connection<'_>,
    handshake_done: impl FnOnce(),
) -> Result<Served, Refusal> {
    let config = cx.config;
    let started = Instant::now();
    let deadline = started + config.timeouts.http_request;
    let mut buf = Received::new(config.limits.max_buffered_bytes);
    let addresses = Box::pin(addresses(stream, cx.peer, cx.listener, &mut buf, deadline, started)).await?;
    let request = match read_until(stream, &mut buf, config.http.max_request_bytes, deadline, started, parse_head).await
    {
        Ok(request) => request,
        Err(Refusal::TooLarge(n)) => return answer(stream, 431, Refusal::TooLarge(n)).await,
        Err(e @ Refusal::BadRequest(_)) => return answer(stream, 400, e).await,
        Err(e) => return Err(e),
    };
    handshake_done();
    let Some(host) = request.host.as_deref() else {
        return answer(stream, 400, Refusal::BadRequest("no Host header")).await;
    };
    let name = match host_name(host) {
        Ok(Requested::Host(name)) => name,
        Ok(Requested::NoName) => return answer(stream, 421, Refusal::NoName).await,
        Err(e) => return answer(stream, 400, e).await,
    };
    tracing::Span::current().record("sni", display(&name));
    let Some(route) = config.route_for(&name) else {
        return answer(stream, 421, Refusal::UnknownName(name.to_string())).await;
    };
    cx.routed(route);
    if !request.path.starts_with('/') {
        return answer(stream, 400, Refusal::BadRequest("request target is not a path")).await;
    }
    if request.path.starts_with(ACME_PREFIX) {
        if let Some(backend) = &route.acme_backend {
            // A challenge fetch and nothing else: whatever a client could
            // smuggle to the cluster's HTTP entrypoint is refused here.
            let refusal = if !is_acme_token_path(&request.path) {
                Some("not an ACME token path")
            } else if !matches!(request.method.as_str(), "GET" | "HEAD") {
                Some("an ACME challenge is fetched with GET or HEAD")
            } else if request.has_body {
                Some("an ACME challenge fetch has no body")
            } else if request.upgrade {
                Some("an ACME challenge fetch does not upgrade")
            } else if request.header_count >= MAX_HEADERS - 1 {
                // The forwarded head adds Connection (found by fuzzing: it
                // must stay within what a head may hold).
                Some("too many headers for an ACME challenge fetch")
            } else {
                None
            };
            if let Some(why) = refusal {
                return answer(stream, 400, Refusal::BadRequest(why)).await;
            }
            let head = forwarded_head(&buf.bytes, &request, host);
            // Bytes after the head (a pipelined request) are dropped here;
            // later ones by the relay, which passes only the answer on.
            drop(buf);
            return forward(cx, addresses, backend, head, true).await;
        }
    }
    let location = format!("https://{name}{}", request.path);
    let status = config.http.redirect_status;
    respond(stream, status, Some(&location)).await;
    Ok(Served::Answered(status))
}

/// Answers with an error status, then reports the refusal.
async fn answer(stream: &mut TcpStream, status: u16, refusal: Refusal) -> Result<Served, Refusal> {
    respond(stream, status, None).await;
    Err(refusal)
}

async fn respond(stream: &mut TcpStream, status: u16, location: Option<&str>) {
    let reason = match status {
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        421 => "Misdirected Request",
        431 => "Request Header Fields Too Large",
        _ => "",
    };
    let location = location.map(|l| format!("Location: {l}\r\n")).unwrap_or_default();
    let response = format!("HTTP/1.1 {status} {reason}\r\n{location}Content-Length: 0\r\nConnection: close\r\n\r\n");
    // Best effort: the client may be gone already.
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_path_and_host() {
        let head = b"GET /a/b?q=1&r=%20 HTTP/1.1\r\nHost: App.Example.test:80\r\nAccept: */*\r\n\r\n";
        let request = parse_head(head).unwrap().unwrap();
        assert_eq!(
            request,
            Request {
                method: "GET".into(),
                path: "/a/b?q=1&r=%20".into(),
                host: Some("App.Example.test:80".into()),
                minor_version: 1,
                has_body: false,
                upgrade: false,
                header_count: 2,
                head_len: head.len(),
            }
        );
        assert!(matches!(host_name("App.Example.test:80"), Ok(Requested::Host(h)) if h.as_str() == "app.example.test"));
        assert!(parse_head(&head[..head.len() - 1]).unwrap().is_none());
    }

    #[test]
    fn absolute_form_targets_stand_for_host() {
        let read = |head: &str| parse_head(head.as_bytes()).map(|r| r.map(|r| (r.path, r.host)));
        let ok = |path: &str, host: &str| Some((path.to_owned(), Some(host.to_owned())));
        assert_eq!(read("GET http://a.test/x?y HTTP/1.1\r\n\r\n").unwrap(), ok("/x?y", "a.test"));
        assert_eq!(read("GET HTTP://a.test:80 HTTP/1.1\r\nHost: A.test\r\n\r\n").unwrap(), ok("/", "a.test:80"));
        assert_eq!(read("GET http://a.test?q HTTP/1.1\r\n\r\n").unwrap(), ok("/?q", "a.test"));
        // Found by fuzzing: "://" in a path does not make it absolute.
        let next = "GET /login?next=https://b.test/x HTTP/1.1\r\nHost: a.test\r\n\r\n";
        assert_eq!(read(next).unwrap(), ok("/login?next=https://b.test/x", "a.test"));
        for bad in [
            "GET http://a.test/ HTTP/1.1\r\nHost: b.test\r\n\r\n",
            "GET https://a.test/ HTTP/1.1\r\n\r\n",
            "GET http://u@a.test/ HTTP/1.1\r\n\r\n",
            "GET http:///x HTTP/1.1\r\n\r\n",
        ] {
            assert!(matches!(read(bad), Err(Refusal::BadRequest(_))), "{bad:?}");
        }
    }

    #[test]
    fn bodies_and_upgrades_are_seen() {
        let read = |head: &str| parse_head(head.as_bytes()).unwrap().unwrap();
        assert!(!read("GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").has_body);
        assert!(read("GET / HTTP/1.1\r\nContent-Length: 1\r\n\r\n").has_body);
        assert!(read("GET / HTTP/1.1\r\nContent-Length: 0\r\ncontent-length: 5\r\n\r\n").has_body);
        assert!(read("GET / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n").has_body);
        assert!(read("GET / HTTP/1.1\r\nupgrade: websocket\r\n\r\n").upgrade);
    }

    #[test]
    fn the_forwarded_head_asks_for_one_request() {
        let head = b"GET http://A.test/.well-known/acme-challenge/t HTTP/1.1\r\nConnection: keep-alive\r\nKeep-Alive: 5\r\nUser-Agent: x\r\nContent-Length: 0\r\n\r\nGET /admin HTTP/1.1\r\n";
        let request = parse_head(head).unwrap().unwrap();
        assert_eq!(
            String::from_utf8(forwarded_head(head, &request, request.host.as_deref().unwrap())).unwrap(),
            "GET /.well-known/acme-challenge/t HTTP/1.1\r\nHost: A.test\r\nUser-Agent: x\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn refuses_doubtful_heads() {
        assert!(parse_head(b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n").is_err());
        assert!(parse_head(b"\x16\x03\x01\x00\x10").is_err());
        assert!(matches!(host_name("a.test:x"), Err(Refusal::BadRequest(_))));
        assert!(matches!(host_name("a.test:"), Err(Refusal::BadRequest(_))));
        assert!(matches!(host_name("a_b.test"), Err(Refusal::BadRequest(_))));
        assert!(matches!(host_name("[2001:db8::1]:80"), Ok(Requested::NoName)));
        assert!(matches!(host_name("192.0.2.1"), Ok(Requested::NoName)));
    }

    #[test]
    fn acme_paths_are_tokens_only() {
        assert!(is_acme_token_path("/.well-known/acme-challenge/LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"));
        for bad in [
            "/.well-known/acme-challenge/",
            "/.well-known/acme-challenge/../../etc/passwd",
            "/.well-known/acme-challenge/%2e%2e/admin",
            "/.well-known/acme-challenge/%2E%2E%2Fadmin",
            "/.well-known/acme-challenge/a/../b",
            "/.well-known/acme-challenge/./x",
            "/.well-known/acme-challenge/tok?x=1",
        ] {
            assert!(!is_acme_token_path(bad), "{bad}");
        }
    }
}
