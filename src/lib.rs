//! sni-edge: an edge gateway that routes TLS by its server name without
//! decrypting it.
//!
//! The data path of a TLS connection, in order:
//!
//! 1. [`server`] accepts it and checks the [`limits`];
//! 2. [`inbound`] reads a PROXY header if the peer is a trusted load balancer;
//! 3. [`hello`] reads the ClientHello without consuming it;
//! 4. [`names`] turns the server name into a route (or a refusal);
//! 5. [`backend`] connects to a server of the route's backend;
//! 6. [`proxy_header`] writes the client's address for the backend;
//! 7. [`relay`] moves the bytes both ways until both sides are done.
//!
//! TLS listeners run these steps on the connection engine (`engine.rs`): an
//! epoll loop per CPU that holds each connection as a small state machine,
//! not a task, since a new connection is what a gateway does most often.
//! Everything else runs on tokio: HTTP listeners, reload, health checks,
//! metrics, and a TLS connection whose backend is reached through the tunnel
//! or by a DNS name, which the engine hands over once it is routed. On
//! tokio, [`forward`] does 5 to 7 for both listeners; [`tls`] and [`http`]
//! are the two listeners' paths (the HTTP one redirects, or forwards ACME
//! challenges). [`config`] reads the file once into checked types;
//! [`outcome`] is how every connection ends, for logs and [`metrics`];
//! [`health`] takes failing servers out of rotation; [`systemd`] speaks the
//! notify and socket-activation protocols.
//!
//! Tunnel mode (home opens no port): a backend whose servers are agents has
//! step 5 done by [`tunnel::gateway`], which opens a stream on an agent's
//! session instead of a TCP connection; steps 6 and 7 are the same, with
//! [`tunnel::relay`] moving the bytes. At home, [`agent`] dials the gateways,
//! and for each stream connects to its local target and relays.

pub mod agent;
pub mod backend;
pub mod config;
mod engine;
pub mod forward;
pub mod health;
pub mod hello;
pub mod http;
pub mod inbound;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod names;
pub mod outcome;
pub mod proxy_header;
pub mod relay;
mod scheduling;
pub mod server;
pub mod systemd;
pub mod tls;
pub mod tunnel;
