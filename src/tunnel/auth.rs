//! Mutual authentication by pinned keys: TLS 1.3 with raw public keys
//! (RFC 7250) on both sides. There are no certificates, no names and no
//! authority: each side sends its Ed25519 key, the other accepts it only if
//! it is exactly one it was configured with, and rustls still checks the
//! CertificateVerify signature against that key, so only the holder of the
//! private key gets through. No session tickets and no early data, so no
//! handshake can be resumed or replayed.

use super::keys::{PrivateKey, PublicKey};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};
use std::collections::HashSet;
use std::sync::Arc;

/// Spoken inside the TLS session; a peer offering anything else is refused.
pub const ALPN: &[u8] = b"sni-edge-tunnel/1";
/// The name the agent puts in its hello (no SNI is sent; rustls needs one).
const SERVER_NAME: &str = "tunnel.sni-edge.invalid";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The gateway's side: its own key, and the agents it accepts.
pub fn gateway_config(key: &PrivateKey, agents: HashSet<PublicKey>) -> Arc<rustls::ServerConfig> {
    let verifier = Arc::new(Pinned { keys: agents, algorithms: provider().signature_verification_algorithms });
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(rustls::server::AlwaysResolvesServerRawPublicKeys::new(key.certified())));
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Arc::new(config)
}

/// The agent's side: its own key, and the one gateway key it accepts.
pub fn agent_config(key: &PrivateKey, gateway: PublicKey) -> Arc<rustls::ClientConfig> {
    let verifier =
        Arc::new(Pinned { keys: HashSet::from([gateway]), algorithms: provider().signature_verification_algorithms });
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(rustls::client::AlwaysResolvesClientRawPublicKeys::new(key.certified())));
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.enable_sni = false;
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

pub fn server_name() -> ServerName<'static> {
    ServerName::try_from(SERVER_NAME).expect("a valid DNS name")
}

/// The peer's key once the handshake is done (it was checked by [`Pinned`]).
pub fn peer_key(certificates: Option<&[CertificateDer<'_>]>) -> Option<PublicKey> {
    PublicKey::from_spki(certificates?.first()?)
}

/// The signature methods, the same for both verifier traits: TLS 1.3
/// Ed25519 signatures by a listed raw public key, nothing else.
macro_rules! pinned_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            Err(Error::General("the tunnel speaks TLS 1.3 only".into()))
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            self.signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            vec![SignatureScheme::ED25519]
        }

        fn requires_raw_public_keys(&self) -> bool {
            true
        }
    };
}

/// Accepts exactly the listed keys, as raw public keys.
#[derive(Debug)]
struct Pinned {
    keys: HashSet<PublicKey>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl Pinned {
    fn check(&self, presented: &CertificateDer<'_>) -> Result<(), Error> {
        match PublicKey::from_spki(presented) {
            Some(key) if self.keys.contains(&key) => Ok(()),
            Some(_) => Err(Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)),
            None => Err(Error::InvalidCertificate(CertificateError::BadEncoding)),
        }
    }

    fn signature(
        &self,
        message: &[u8],
        presented: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        // Checked again here: the signature must be by a listed key.
        self.check(presented)?;
        let spki = SubjectPublicKeyInfoDer::from(presented.as_ref());
        rustls::crypto::verify_tls13_signature_with_raw_key(message, &spki, dss, &self.algorithms)
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if !intermediates.is_empty() {
            return Err(Error::InvalidCertificate(CertificateError::BadEncoding));
        }
        self.check(end_entity).map(|()| ServerCertVerified::assertion())
    }

    pinned_signatures!();
}

impl ClientCertVerifier for Pinned {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        if !intermediates.is_empty() {
            return Err(Error::InvalidCertificate(CertificateError::BadEncoding));
        }
        self.check(end_entity).map(|()| ClientCertVerified::assertion())
    }

    pinned_signatures!();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a handshake over an in-memory pipe; Ok(the key the gateway saw).
    async fn handshake(
        gateway: Arc<rustls::ServerConfig>,
        agent: Arc<rustls::ClientConfig>,
    ) -> Result<Option<PublicKey>, String> {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let server = async {
            let tls = tokio_rustls::TlsAcceptor::from(gateway).accept(b).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(peer_key(tls.get_ref().1.peer_certificates()))
        };
        let client = tokio_rustls::TlsConnector::from(agent).connect(server_name(), a);
        let (server, client) = tokio::join!(server, client);
        let seen = server?;
        client.map_err(|e| e.to_string())?;
        Ok(seen)
    }

    /// An agent config whose client certificate is `presented` but whose
    /// signatures are made with `signer`.
    fn agent_presenting(signer: &PrivateKey, presented: PublicKey, gateway: PublicKey) -> Arc<rustls::ClientConfig> {
        let mut certified = (*signer.certified()).clone();
        certified.cert = vec![CertificateDer::from(presented.spki())];
        let verifier = Arc::new(Pinned {
            keys: HashSet::from([gateway]),
            algorithms: provider().signature_verification_algorithms,
        });
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(rustls::client::AlwaysResolvesClientRawPublicKeys::new(Arc::new(
                certified,
            ))));
        config.alpn_protocols = vec![ALPN.to_vec()];
        Arc::new(config)
    }

    #[tokio::test]
    async fn only_the_holder_of_a_listed_key_gets_in() {
        let (gateway, agent, stranger) = (PrivateKey::generate(), PrivateKey::generate(), PrivateKey::generate());
        let server = gateway_config(&gateway, HashSet::from([agent.public()]));
        let seen = handshake(server.clone(), agent_config(&agent, gateway.public())).await.unwrap();
        assert_eq!(seen, Some(agent.public()));
        // Not listed.
        assert!(handshake(server.clone(), agent_config(&stranger, gateway.public())).await.is_err());
        // A listed key presented by someone who cannot sign with it.
        let forged = agent_presenting(&stranger, agent.public(), gateway.public());
        assert!(handshake(server.clone(), forged).await.is_err());
        // The agent refuses a gateway whose key it does not expect.
        assert!(handshake(server, agent_config(&agent, stranger.public())).await.is_err());
    }
}
