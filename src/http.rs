//! The plain HTTP listener: redirect allowed names to https, pass ACME
//! http-01 challenges to the route's cluster, refuse everything else.
//!
//! Only the request head is read. Responses close the connection, which
//! keeps this listener free of keep-alive state; browsers follow a redirect
//! on a new connection anyway.

use crate::forward::{forward, Connection};
use crate::inbound::{addresses, read_until};
use crate::names::{HostName, Requested};
use crate::outcome::{Refusal, Served};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::field::display;

const ACME_PREFIX: &str = "/.well-known/acme-challenge/";
const MAX_HEADERS: usize = 64;

/// The parts of a request head that decide what happens to it.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub path: String,
    pub host: Option<String>,
}

/// Parses a complete request head; `Ok(None)` until the blank line arrives.
pub fn parse_head(buf: &[u8]) -> Result<Option<Request>, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(_)) => {
            let path = request.path.unwrap_or_default().to_owned();
            let mut hosts = request.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("host"));
            let host = hosts.next().map(|h| String::from_utf8_lossy(h.value).into_owned());
            if hosts.next().is_some() {
                return Err(Refusal::BadRequest("more than one Host header"));
            }
            Ok(Some(Request { path, host }))
        }
        Err(httparse::Error::TooManyHeaders) => Err(Refusal::BadRequest("too many headers")),
        Err(_) => Err(Refusal::BadRequest("malformed request head")),
    }
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
    let mut buf = Vec::new();
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
    cx.routed(&route.name);
    if !request.path.starts_with('/') {
        return answer(stream, 400, Refusal::BadRequest("request target is not a path")).await;
    }
    if request.path.starts_with(ACME_PREFIX) {
        if let Some(backend) = &route.acme_backend {
            if !is_acme_token_path(&request.path) {
                return answer(stream, 400, Refusal::BadRequest("not an ACME token path")).await;
            }
            return forward(cx, addresses, backend, buf).await;
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
        assert_eq!(request, Request { path: "/a/b?q=1&r=%20".into(), host: Some("App.Example.test:80".into()) });
        assert!(matches!(host_name("App.Example.test:80"), Ok(Requested::Host(h)) if h.as_str() == "app.example.test"));
        assert!(parse_head(&head[..head.len() - 1]).unwrap().is_none());
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
