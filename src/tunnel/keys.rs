//! Tunnel keys: Ed25519, made by `sni-edge keygen`, written as one line of
//! text. A public key is `sni-edge-key:` and the unpadded base64url of its 32
//! bytes; a private key file holds `sni-edge-private-key:` and its 32-byte
//! seed. The TLS layer sees a public key as an RFC 8410 SubjectPublicKeyInfo
//! (what RFC 7250 raw public keys carry), made here byte for byte.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::SecureRandom;
use ring::signature::KeyPair;
use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

pub const PUBLIC_PREFIX: &str = "sni-edge-key:";
pub const PRIVATE_PREFIX: &str = "sni-edge-private-key:";

/// SubjectPublicKeyInfo for Ed25519 (RFC 8410 §4), before the 32 key bytes.
const SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
/// PKCS#8 v1 for an Ed25519 seed (RFC 8410 §7), before the 32 seed bytes.
const PKCS8_PREFIX: [u8; 16] =
    [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    pub fn parse(text: &str) -> Result<PublicKey, String> {
        let body =
            text.strip_prefix(PUBLIC_PREFIX).ok_or_else(|| format!("a public key starts with {PUBLIC_PREFIX}"))?;
        decode32(body).map(PublicKey)
    }

    /// The key as TLS carries it (a raw public key certificate).
    pub fn spki(&self) -> Vec<u8> {
        [&SPKI_PREFIX[..], &self.0].concat()
    }

    /// The key in a raw public key certificate, if that is exactly an
    /// Ed25519 SubjectPublicKeyInfo.
    pub fn from_spki(der: &[u8]) -> Option<PublicKey> {
        let key = der.strip_prefix(&SPKI_PREFIX[..])?;
        key.try_into().ok().map(PublicKey)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PUBLIC_PREFIX}{}", URL_SAFE_NO_PAD.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A private key. Never printed: `Debug` shows only its public key.
#[derive(Clone)]
pub struct PrivateKey {
    seed: [u8; 32],
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey(MASKED, public {})", self.public())
    }
}

impl PrivateKey {
    pub fn generate() -> PrivateKey {
        let mut seed = [0; 32];
        ring::rand::SystemRandom::new().fill(&mut seed).expect("the system's random generator failed");
        PrivateKey { seed }
    }

    pub fn parse(text: &str) -> Result<PrivateKey, String> {
        let body = text
            .trim()
            .strip_prefix(PRIVATE_PREFIX)
            .ok_or_else(|| format!("a private key file holds one line starting with {PRIVATE_PREFIX}"))?;
        decode32(body).map(|seed| PrivateKey { seed })
    }

    /// Reads a key file; the error says what is wrong, the caller says where.
    pub fn read(path: &Path) -> Result<PrivateKey, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        PrivateKey::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn to_text(&self) -> String {
        format!("{PRIVATE_PREFIX}{}\n", URL_SAFE_NO_PAD.encode(self.seed))
    }

    /// Writes a new key to `path`, readable by its owner only; never
    /// replaces an existing file.
    pub fn write_new(&self, path: &Path) -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
        file.write_all(self.to_text().as_bytes())?;
        file.sync_all()
    }

    pub fn public(&self) -> PublicKey {
        let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&self.seed).expect("32 bytes are a valid seed");
        PublicKey(pair.public_key().as_ref().try_into().expect("an Ed25519 public key is 32 bytes"))
    }

    /// The key and its raw public key certificate, for rustls.
    pub fn certified(&self) -> Arc<rustls::sign::CertifiedKey> {
        let pkcs8 = [&PKCS8_PREFIX[..], &self.seed].concat();
        let der = rustls::pki_types::PrivatePkcs8KeyDer::from(pkcs8);
        let signer = rustls::crypto::ring::sign::any_eddsa_type(&der).expect("a PKCS#8 Ed25519 key made here");
        let cert = rustls::pki_types::CertificateDer::from(self.public().spki());
        Arc::new(rustls::sign::CertifiedKey::new(vec![cert], signer))
    }
}

fn decode32(body: &str) -> Result<[u8; 32], String> {
    let bytes = URL_SAFE_NO_PAD.decode(body.trim()).map_err(|e| format!("not base64url: {e}"))?;
    bytes.try_into().map_err(|b: Vec<u8>| format!("{} bytes, expected 32", b.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_text() {
        let key = PrivateKey::generate();
        let again = PrivateKey::parse(&key.to_text()).unwrap();
        assert_eq!(again.public(), key.public());
        let public = key.public();
        assert_eq!(PublicKey::parse(&public.to_string()).unwrap(), public);
        assert_eq!(PublicKey::from_spki(&public.spki()), Some(public));
        assert!(!format!("{key:?}").contains(&URL_SAFE_NO_PAD.encode(key.seed)));
    }

    #[test]
    fn the_public_key_matches_what_rustls_signs_with() {
        let key = PrivateKey::generate();
        let certified = key.certified();
        assert_eq!(certified.key.public_key().unwrap().as_ref(), &key.public().spki()[..]);
    }

    #[test]
    fn bad_keys_say_why() {
        for (text, message) in [
            ("AAAA", "a public key starts with sni-edge-key:"),
            ("sni-edge-key:!!", "not base64url"),
            ("sni-edge-key:AAAA", "3 bytes, expected 32"),
        ] {
            assert!(PublicKey::parse(text).unwrap_err().contains(message), "{text}");
        }
        assert!(PrivateKey::parse("sni-edge-key:AAAA").unwrap_err().contains("sni-edge-private-key:"));
        assert!(PublicKey::from_spki(&[0x30; 44]).is_none());
    }
}
