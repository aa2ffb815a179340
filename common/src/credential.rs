//! Credential files: the Ed25519 private key of one identity (an admin or a service such as a
//! storage node), with the identity name and the audience its tokens are for.
//!
//! Secret: the private key. Files are JSON, written once with mode 0600 and refused when others
//! can read them. The KMS keeps only the public key.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::jwt;
use crate::secret_file::{SecretFileError, read_secret_file, write_new_secret_file};

/// An identity's signing credential. No `Debug`/`Clone`/`Serialize`.
pub struct Credential {
    /// Identity name (the JWT subject).
    pub identity: String,
    /// Audience this credential's tokens are for ([`jwt::AUD_SERVICE`] or [`jwt::AUD_ADMIN`]).
    pub audience: String,
    key: SigningKey,
}

#[derive(Serialize, Deserialize)]
struct CredentialFile {
    identity: String,
    audience: String,
    /// Base64 of the 32-byte Ed25519 seed.
    private_key: String,
}

/// Why a credential could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error(transparent)]
    File(#[from] SecretFileError),
    #[error("credential file {0} is not a valid Coffer credential")]
    Invalid(String),
}

impl Credential {
    /// A new random credential.
    pub fn generate(identity: &str, audience: &str) -> Self {
        Self {
            identity: identity.to_string(),
            audience: audience.to_string(),
            key: SigningKey::generate(&mut rand::rngs::OsRng),
        }
    }

    /// The public half, as stored by the KMS.
    pub fn public_key(&self) -> ed25519_dalek::VerifyingKey {
        self.key.verifying_key()
    }

    /// Base64 of the public key.
    pub fn public_key_b64(&self) -> String {
        STANDARD.encode(self.key.verifying_key().to_bytes())
    }

    /// A signed token for one request.
    pub fn token(&self, method: &str, path: &str) -> String {
        let claims = jwt::Claims::new(&self.identity, &self.audience, method, path, 60);
        jwt::sign(&self.key, &claims)
    }

    /// The signing key (for signing custom claims, e.g. in tests).
    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// Write to a new 0600 file (refuses to overwrite).
    pub fn write_new(&self, path: &Path) -> Result<(), CredentialError> {
        let seed = Zeroizing::new(STANDARD.encode(self.key.to_bytes()));
        let file = CredentialFile {
            identity: self.identity.clone(),
            audience: self.audience.clone(),
            private_key: seed.to_string(),
        };
        let json = Zeroizing::new(serde_json::to_vec_pretty(&file).unwrap_or_default());
        let mut file = file;
        zeroize::Zeroize::zeroize(&mut file.private_key);
        write_new_secret_file(path, &json)?;
        Ok(())
    }

    /// Load from a file (refused if group/others can read it).
    pub fn load(path: &Path) -> Result<Self, CredentialError> {
        let raw = Zeroizing::new(read_secret_file(path)?);
        Self::parse(&raw).ok_or_else(|| CredentialError::Invalid(path.display().to_string()))
    }

    fn parse(raw: &[u8]) -> Option<Self> {
        let mut f: CredentialFile = serde_json::from_slice(raw).ok()?;
        let seed = Zeroizing::new(STANDARD.decode(&f.private_key).ok()?);
        zeroize::Zeroize::zeroize(&mut f.private_key);
        let seed: Zeroizing<[u8; 32]> = Zeroizing::new(seed.as_slice().try_into().ok()?);
        Some(Self {
            identity: f.identity,
            audience: f.audience,
            key: SigningKey::from_bytes(&seed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_load_signs_the_same() {
        let dir = std::env::temp_dir().join(format!("coffer-cred-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("c.json");
        let _ = std::fs::remove_file(&path);
        let c = Credential::generate("node", jwt::AUD_SERVICE);
        c.write_new(&path).unwrap();
        let c2 = Credential::load(&path).unwrap();
        assert_eq!(c2.identity, "node");
        assert_eq!(c2.public_key(), c.public_key());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
