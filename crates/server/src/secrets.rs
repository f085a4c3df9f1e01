//! Secret values at rest: age (X25519) encryption with one identity per
//! daemon in `<data_dir>/age.key` (0600), created on first use — no key
//! material exists until a secret does (DECISIONS §7.19).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
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
        let mut slot = self.identity.lock().unwrap_or_else(|p| p.into_inner());
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
                // Written atomically: a half-written key would make every
                // stored secret unreadable.
                let tmp = self.path.with_extension("key.tmp");
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(|e| key_err(e.to_string()))?;
                writeln!(f, "# bhatti secrets key; losing it loses every secret")
                    .and_then(|_| writeln!(f, "{}", id.to_string().expose_secret()))
                    .and_then(|_| f.sync_all())
                    .map_err(|e| key_err(e.to_string()))?;
                std::fs::rename(&tmp, &self.path).map_err(|e| key_err(e.to_string()))?;
                if let Some(dir) = self.path.parent() {
                    if let Ok(d) = std::fs::File::open(dir) {
                        let _ = d.sync_all();
                    }
                }
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
