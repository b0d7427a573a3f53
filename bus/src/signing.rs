//! Signed commands. The coordinator signs the exact bytes of every command it publishes with
//! Ed25519 and sends the signature in the `Flotilla-Signature` header as `<key id>:<signature>`
//! (both base64url, unpadded; the key ID is the first 8 bytes of the BLAKE3 hash of the public
//! key). Agents verify the bytes before they decode anything, against the public keys they
//! trust. Signing the bytes rather than a re-serialisation means another implementation needs
//! no canonical JSON: it signs what it sends.
//!
//! Agents sign what they publish (results, progress) the same way, with a key of their own, and
//! the coordinator verifies it against the key pinned for the agent a result names: one header
//! format for both directions.
//!
//! Keys on disk are base64 text: the 32-byte seed for a signing key (mode 0600), the 32-byte
//! public key for a trusted key. Trusting two keys at once is how a key is rotated.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::{Signature, Signer, Verifier};

/// The NATS header that carries a command's signature.
pub const SIGNATURE_HEADER: &str = "Flotilla-Signature";

/// Why a key could not be used or a signature was refused.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("cannot read key file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write key file {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} is not a base64-encoded 32-byte Ed25519 key")]
    BadKey { what: String },
    #[error("key file {path} is readable by others (mode {mode:o}); make it 0600")]
    LooseMode { path: String, mode: u32 },
    #[error("no randomness available to generate a key")]
    Random,
    #[error("the command is not signed (no {SIGNATURE_HEADER} header)")]
    Unsigned,
    #[error("the {SIGNATURE_HEADER} header is malformed")]
    Malformed,
    #[error("the command is signed by key {0}, which this agent does not trust")]
    UnknownKey(String),
    #[error("the signature by key {0} does not match the command: forged or altered")]
    Forged(String),
}

/// Where the public half of the key at `path` is written: `<path>.pub`.
pub fn public_key_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".pub");
    name.into()
}

/// The coordinator's private key.
pub struct SigningKey {
    key: ed25519_dalek::SigningKey,
    id: String,
}

/// A public key an agent trusts.
#[derive(Clone)]
pub struct TrustedKey {
    key: ed25519_dalek::VerifyingKey,
    id: String,
}

fn key_id(public: &ed25519_dalek::VerifyingKey) -> String {
    URL_SAFE_NO_PAD.encode(&blake3::hash(public.as_bytes()).as_bytes()[..8])
}

fn decode_32(text: &str, what: &str) -> Result<[u8; 32], SigningError> {
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|_| SigningError::BadKey {
            what: what.to_owned(),
        })?;
    bytes.try_into().map_err(|_| SigningError::BadKey {
        what: what.to_owned(),
    })
}

impl SigningKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self, SigningError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|_| SigningError::Random)?;
        Ok(Self::from_seed(&seed))
    }

    fn from_seed(seed: &[u8; 32]) -> Self {
        let key = ed25519_dalek::SigningKey::from_bytes(seed);
        let id = key_id(&key.verifying_key());
        Self { key, id }
    }

    /// Reads a key file (base64 seed); refuses one that others can read.
    pub fn load(path: &Path) -> Result<Self, SigningError> {
        use std::os::unix::fs::PermissionsExt;
        let shown = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|source| SigningError::Read {
            path: shown.clone(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(SigningError::LooseMode { path: shown, mode });
        }
        let text = std::fs::read_to_string(path).map_err(|source| SigningError::Read {
            path: shown.clone(),
            source,
        })?;
        Ok(Self::from_seed(&decode_32(&text, &shown)?))
    }

    /// Writes the key (mode 0600) and its public half ([`public_key_path`]).
    pub fn save(&self, path: &Path) -> Result<(), SigningError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let shown = path.display().to_string();
        let write = |source| SigningError::Write {
            path: shown.clone(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(write)?;
        writeln!(file, "{}", STANDARD.encode(self.key.to_bytes())).map_err(write)?;
        // Durable before anyone is told the public half: a key lost in a crash would orphan
        // every pin made of it.
        file.sync_all().map_err(write)?;
        let public = public_key_path(path);
        std::fs::write(&public, format!("{}\n", self.public_key_text())).map_err(|source| {
            SigningError::Write {
                path: public.display().to_string(),
                source,
            }
        })?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(write)?;
        }
        Ok(())
    }

    /// Reads the key at `path`, or makes one there (with its public half) when there is none.
    pub fn load_or_create(path: &Path) -> Result<Self, SigningError> {
        if path.exists() {
            return Self::load(path);
        }
        let key = Self::generate()?;
        key.save(path)?;
        Ok(key)
    }

    /// The public key as base64 text, for agents' `trusted_keys`.
    pub fn public_key_text(&self) -> String {
        STANDARD.encode(self.key.verifying_key().as_bytes())
    }

    /// The key's short ID.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The signature header value for `payload`.
    pub fn sign(&self, payload: &[u8]) -> String {
        let signature = self.key.sign(payload);
        format!(
            "{}:{}",
            self.id,
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        )
    }
}

impl TrustedKey {
    /// Parses a base64 public key.
    pub fn parse(text: &str) -> Result<Self, SigningError> {
        let bytes = decode_32(text, "trusted key")?;
        let key =
            ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| SigningError::BadKey {
                what: "trusted key".into(),
            })?;
        Ok(Self {
            id: key_id(&key),
            key,
        })
    }

    /// The key's short ID.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// The digest of a command as sent or received: BLAKE3 (hex) of its signature header value
/// (empty when unsigned), a newline, and its exact bytes. An agent puts it in every result; the
/// coordinator files a result only when it matches what it signed and sent, so a replayed copy
/// (unsigned, or altered) is never answered on the genuine command's behalf.
pub fn command_digest(signature: Option<&str>, payload: &[u8]) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(signature.unwrap_or_default().as_bytes());
    hasher.update(b"\n");
    hasher.update(payload);
    hasher.finalize().to_hex().to_string()
}

/// Checks `header` (the `Flotilla-Signature` value) against `payload` and the trusted keys;
/// returns the ID of the key that signed it.
pub fn verify<'a>(
    trusted: &'a [TrustedKey],
    payload: &[u8],
    header: Option<&str>,
) -> Result<&'a str, SigningError> {
    let header = header.ok_or(SigningError::Unsigned)?;
    let (id, signature) = header.split_once(':').ok_or(SigningError::Malformed)?;
    let bytes = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| SigningError::Malformed)?;
    let signature = Signature::from_slice(&bytes).map_err(|_| SigningError::Malformed)?;
    let key = trusted
        .iter()
        .find(|k| k.id == id)
        .ok_or_else(|| SigningError::UnknownKey(id.to_owned()))?;
    key.key
        .verify(payload, &signature)
        .map_err(|_| SigningError::Forged(id.to_owned()))?;
    Ok(&key.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_payload_verifies_and_any_change_is_refused() {
        let key = SigningKey::generate().unwrap();
        let trusted = [TrustedKey::parse(&key.public_key_text()).unwrap()];
        let payload = br#"{"schema":"flotilla.command.v1"}"#;
        let header = key.sign(payload);
        assert_eq!(verify(&trusted, payload, Some(&header)).unwrap(), key.id());
        let altered = br#"{"schema":"flotilla.command.v2"}"#;
        assert!(matches!(
            verify(&trusted, altered, Some(&header)),
            Err(SigningError::Forged(_))
        ));
        assert!(matches!(
            verify(&trusted, payload, None),
            Err(SigningError::Unsigned)
        ));
        assert!(matches!(
            verify(&trusted, payload, Some("garbage")),
            Err(SigningError::Malformed)
        ));
        let stranger = SigningKey::generate().unwrap();
        assert!(matches!(
            verify(&trusted, payload, Some(&stranger.sign(payload))),
            Err(SigningError::UnknownKey(_))
        ));
        // A signature copied under a trusted key's ID is still refused.
        let (_, forged_sig) = stranger
            .sign(payload)
            .split_once(':')
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .unwrap();
        let forged = format!("{}:{forged_sig}", key.id());
        assert!(matches!(
            verify(&trusted, payload, Some(&forged)),
            Err(SigningError::Forged(_))
        ));
    }

    #[test]
    fn two_trusted_keys_allow_rotation() {
        let (old, new) = (
            SigningKey::generate().unwrap(),
            SigningKey::generate().unwrap(),
        );
        let trusted = [
            TrustedKey::parse(&old.public_key_text()).unwrap(),
            TrustedKey::parse(&new.public_key_text()).unwrap(),
        ];
        for key in [&old, &new] {
            assert_eq!(
                verify(&trusted, b"x", Some(&key.sign(b"x"))).unwrap(),
                key.id()
            );
        }
    }

    #[test]
    fn keys_round_trip_through_files_and_loose_modes_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("coordinator.key");
        let key = SigningKey::generate().unwrap();
        key.save(&path).unwrap();
        let loaded = SigningKey::load(&path).unwrap();
        assert_eq!(loaded.id(), key.id());
        let public = std::fs::read_to_string(public_key_path(&path)).unwrap();
        assert_eq!(TrustedKey::parse(&public).unwrap().id(), key.id());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            SigningKey::load(&path),
            Err(SigningError::LooseMode { .. })
        ));
        assert!(TrustedKey::parse("not base64!").is_err());
    }
}
