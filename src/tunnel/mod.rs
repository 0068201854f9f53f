//! Tunnel mode: the home side (the agent) dials out to the gateway, so
//! nothing is opened at home. [`gateway`] is the gateway's end, the agent's
//! is [`crate::agent`].
//!
//! # Design, and why
//!
//! One TCP connection per agent and gateway carries a TLS 1.3 session
//! (rustls, ring), and inside it an HTTP/2 connection (the `h2` crate) whose
//! roles are reversed: the agent dials and then acts as the h2 *server*; the
//! gateway is the h2 client and opens one stream per client connection (a
//! POST naming the target), or one for the agent's status lines (a GET).
//!
//! - Authentication is mutual and by pinned keys only: TLS 1.3 with RFC 7250
//!   raw public keys ([`auth`]). Each side accepts exactly the Ed25519 keys
//!   in its config ([`keys`]; `sni-edge keygen`), and rustls checks the
//!   CertificateVerify signature against that key. No certificate, no name,
//!   no authority, no session resumption (so no replay). A peer is only a
//!   socket until its key is checked: no per-peer state before, a handshake
//!   timeout and a cap on handshakes at once.
//! - A new client connection costs no handshake to home: a stream is one
//!   HEADERS frame, sent together with the PROXY header and the client's
//!   first bytes, so the first round trip to home carries the client's hello.
//! - h2 gives what a multiplexer needs and is widely used and fuzzed:
//!   per-stream flow control (one stalled client stops only its stream),
//!   half-close (END_STREAM), abort (RST_STREAM), refusal with a status, and
//!   PING for keepalives ([`session`]), which find a peer killed or cut
//!   without a FIN within interval + timeout.
//! - Why not QUIC (quinn): UDP is often blocked or throttled on the home
//!   networks this mode is for, so a TCP path would be needed anyway, and
//!   TCP through the kernel is cheaper per byte than QUIC in user space.
//!   Why not Noise (snow) + yamux (rathole's way): it is a second crypto
//!   stack and framing to get right, where rustls and h2 are the parts
//!   the rest of the ecosystem already trusts.
//!
//! The agent tells the gateway which targets it cannot reach
//! ([`status`]); an agent that refuses a stream (503) is skipped and the
//! next one tried with the same first bytes, so a client is not failed
//! while another agent is healthy.

pub mod auth;
pub mod gateway;
pub mod keys;
pub mod relay;
pub mod session;
pub mod settings;
pub mod status;
