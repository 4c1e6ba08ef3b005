//! The journal's signing key: an Ed25519 key pair. The private key lives
//! outside the state directory (a file, or a systemd credential) and signs
//! each run's head and each prune; the public key is what an auditor
//! verifies with. Whoever holds only the state directory, root included,
//! can rewrite the hash chain but cannot sign it.
//!
//! What is signed is plain text, so a third party can check it with any
//! Ed25519 implementation: see [`head_message`] and [`prune_message`].

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest, Sha256};

/// The systemd journal MESSAGE_ID of "journal head signed" log entries, so
/// they can be selected (`journalctl MESSAGE_ID=…`) and shipped off the box.
pub const HEAD_MESSAGE_ID: &str = "5f0c8a3ad1f94b0e9a7c2d6e4b1f3a87";

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("not an Ed25519 private key in PKCS#8 PEM (make one with `absync journal keygen`)")]
    PrivateKey,
    #[error("not an Ed25519 public key in PEM (`absync journal keygen` writes one)")]
    PublicKey,
    #[error("no randomness from the operating system: {0}")]
    Random(String),
}

/// The private key. Never printed: `Debug` shows only the key id.
pub struct Signer {
    key: SigningKey,
    id: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer(key {})", self.id)
    }
}

impl Clone for Signer {
    fn clone(&self) -> Self {
        Signer {
            key: self.key.clone(),
            id: self.id.clone(),
        }
    }
}

impl Signer {
    /// A new key pair from the operating system's randomness.
    pub fn generate() -> Result<Signer, SealError> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| SealError::Random(e.to_string()))?;
        let key = SigningKey::from_bytes(&seed);
        seed.fill(0);
        Ok(Signer::from_key(key))
    }

    pub fn from_pem(text: &str) -> Result<Signer, SealError> {
        let key = SigningKey::from_pkcs8_pem(text.trim()).map_err(|_| SealError::PrivateKey)?;
        Ok(Signer::from_key(key))
    }

    fn from_key(key: SigningKey) -> Signer {
        let id = key_id(&key.verifying_key());
        Signer { key, id }
    }

    /// The private key as PKCS#8 PEM, for the key file.
    pub fn to_pem(&self) -> Result<String, SealError> {
        self.key
            .to_pkcs8_pem(Default::default())
            .map(|p| p.to_string())
            .map_err(|_| SealError::PrivateKey)
    }

    pub fn public(&self) -> PublicKey {
        PublicKey {
            key: self.key.verifying_key(),
            id: self.id.clone(),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The signature of `message`, in hex.
    pub fn sign(&self, message: &str) -> String {
        hex(&self.key.sign(message.as_bytes()).to_bytes())
    }
}

/// A public key, to verify with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: VerifyingKey,
    id: String,
}

impl PublicKey {
    pub fn from_pem(text: &str) -> Result<PublicKey, SealError> {
        let key =
            VerifyingKey::from_public_key_pem(text.trim()).map_err(|_| SealError::PublicKey)?;
        Ok(PublicKey {
            id: key_id(&key),
            key,
        })
    }

    /// The public key as SubjectPublicKeyInfo PEM (`openssl pkey -pubin`
    /// reads it).
    pub fn to_pem(&self) -> Result<String, SealError> {
        self.key
            .to_public_key_pem(Default::default())
            .map_err(|_| SealError::PublicKey)
    }

    /// The first 16 hex digits of the SHA-256 of the raw public key: how
    /// records name the key that signed them.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether `signature` (hex) is this key's signature of `message`.
    pub fn verifies(&self, message: &str, signature: &str) -> bool {
        let Some(bytes) = unhex(signature) else {
            return false;
        };
        let Ok(bytes) = <[u8; 64]>::try_from(bytes.as_slice()) else {
            return false;
        };
        self.key
            .verify(message.as_bytes(), &Signature::from_bytes(&bytes))
            .is_ok()
    }
}

fn key_id(key: &VerifyingKey) -> String {
    hex(&Sha256::digest(key.as_bytes())[..8])
}

/// What a run's seal signs: the run, the id and hash of the record at the
/// head of the journal (ids count every record ever written, from 1), and
/// when.
pub fn head_message(run_id: i64, head_id: i64, head_hash: &str, at: &str) -> String {
    format!("absync journal head v1\nrun {run_id}\nrecords {head_id}\nhead {head_hash}\nat {at}\n")
}

/// What a prune signs: the run that pruned, the last record removed (id and
/// hash) and the retention cut-off.
pub fn prune_message(run_id: i64, through_id: i64, last_hash: &str, older_than: &str) -> String {
    format!(
        "absync journal prune v1\nrun {run_id}\nthrough {through_id}\nlast {last_hash}\nolder than {older_than}\n"
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_pair_round_trips_through_pem_and_signs_what_it_verifies() {
        let signer = Signer::generate().unwrap();
        let again = Signer::from_pem(&signer.to_pem().unwrap()).unwrap();
        assert_eq!(again.id(), signer.id());
        let public = PublicKey::from_pem(&signer.public().to_pem().unwrap()).unwrap();
        assert_eq!(public.id(), signer.id());
        let message = head_message(
            7,
            120,
            "ab".repeat(32).as_str(),
            "2026-11-30T12:00:00.000000Z",
        );
        let signature = signer.sign(&message);
        assert!(public.verifies(&message, &signature));
        assert!(!public.verifies(&message.replace("run 7", "run 8"), &signature));
        assert!(!public.verifies(&message, &signature[2..]));
        assert!(!public.verifies(&message, "zz"));
        let other = Signer::generate().unwrap().public();
        assert!(!other.verifies(&message, &signature));
        assert!(!format!("{signer:?}").contains(&signer.to_pem().unwrap()));
    }

    #[test]
    fn a_public_key_is_not_a_private_key_and_garbage_is_neither() {
        let signer = Signer::generate().unwrap();
        let public = signer.public().to_pem().unwrap();
        assert!(Signer::from_pem(&public).is_err());
        assert!(PublicKey::from_pem(&signer.to_pem().unwrap()).is_err());
        assert!(PublicKey::from_pem("not a key").is_err());
    }
}
