//! Secret values at rest: age (X25519) encryption with one identity per
//! daemon in `<data_dir>/age.key` (0600), created on first use — no key
//! material exists until a secret does (docs/decisions.md, "Control plane
//! (server, daemon)", Secrets).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;

use age::secrecy::ExposeSecret;
use age::x25519::Identity;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("age key {path}: {why}")]
    Key { path: PathBuf, why: String },
    #[error("encrypt: {0}")]
    Encrypt(String),
    #[error("decrypt: {0}")]
    Decrypt(String),
}

/// Writes a key file whole or not at all, 0600 (bhatti_durable's atomic,
/// durable write). The daemon's keys (secrets, envd tokens) are all written
/// this way.
pub(crate) fn write_key_file(path: &Path, text: &str) -> std::io::Result<()> {
    bhatti_durable::write(path, text.as_bytes(), 0o600)
}

pub struct SecretBox {
    path: PathBuf,
    identity: Mutex<Option<Identity>>,
}

impl SecretBox {
    pub fn new(path: PathBuf) -> SecretBox {
        SecretBox {
            path,
            identity: Mutex::new(None),
        }
    }

    fn identity(&self, create: bool) -> Result<Identity, SecretError> {
        let mut slot = bhatti_sync::lock(&self.identity);
        if let Some(id) = slot.as_ref() {
            return Ok(id.clone());
        }
        let key_err = |why: String| SecretError::Key {
            path: self.path.clone(),
            why,
        };
        let id = match std::fs::read_to_string(&self.path) {
            Ok(text) => {
                let line = text
                    .lines()
                    .find(|l| l.starts_with("AGE-SECRET-KEY-"))
                    .ok_or_else(|| key_err("no AGE-SECRET-KEY line".into()))?;
                Identity::from_str(line.trim()).map_err(|e| key_err(e.to_string()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let id = Identity::generate();
                // A half-written key would make every stored secret
                // unreadable.
                let text = format!(
                    "# bhatti secrets key; losing it loses every secret\n{}\n",
                    id.to_string().expose_secret()
                );
                write_key_file(&self.path, &text).map_err(|e| key_err(e.to_string()))?;
                id
            }
            Err(e) => return Err(key_err(e.to_string())),
        };
        *slot = Some(id.clone());
        Ok(id)
    }

    pub fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>, SecretError> {
        let id = self.identity(true)?;
        age::encrypt(&id.to_public(), plaintext).map_err(|e| SecretError::Encrypt(e.to_string()))
    }

    pub fn decrypt(&self, ciphertext: &[u8]) -> Result<Vec<u8>, SecretError> {
        let id = self.identity(false)?;
        age::decrypt(&id, ciphertext).map_err(|e| SecretError::Decrypt(e.to_string()))
    }

    pub fn key_exists(&self) -> bool {
        self.path.exists()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn round_trip_key_on_first_use_and_reload() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("age.key");
        let b = SecretBox::new(p.clone());
        assert!(!b.key_exists());
        let c = b.encrypt(b"hunter2").unwrap();
        assert!(b.key_exists());
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!c.windows(7).any(|w| w == b"hunter2"));
        assert!(c.starts_with(b"age-encryption.org/v1"));
        let b2 = SecretBox::new(p);
        assert_eq!(b2.decrypt(&c).unwrap(), b"hunter2");
        assert!(b2.decrypt(b"garbage").is_err());
    }
}
