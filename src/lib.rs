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
//! [`forward`] does 5 to 7 for both listeners; [`tls`] and [`http`] are the
//! two listeners' paths (the HTTP one redirects, or forwards ACME
//! challenges). [`config`] reads the file once into checked types;
//! [`outcome`] is how every connection ends, for logs and [`metrics`];
//! [`health`] takes failing servers out of rotation; [`systemd`] speaks the
//! notify and socket-activation protocols.

pub mod backend;
pub mod config;
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
pub mod server;
pub mod systemd;
pub mod tls;
