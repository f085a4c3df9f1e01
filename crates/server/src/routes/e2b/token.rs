//! envd access tokens. E2B's SDKs send no API key to envd: they send the
//! `envdAccessToken` that create, connect and resume returned, as
//! `X-Access-Token`. bhatti's is an HMAC-SHA256 of the sandbox ID under a
//! key of this daemon's own (`<data_dir>/envd.key`, 0600, made on first
//! use), so a token is checked without a store lookup, belongs to exactly
//! one sandbox, and is nothing an ID alone lets anyone compute.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const KEY_LEN: usize = 32;
/// Domain separation: the key signs nothing else, but if it ever does,
/// an envd token cannot be mistaken for that.
const CONTEXT: &[u8] = b"bhatti envd access token v1\0";

/// The daemon's token key, loaded (or made) on first use.
pub struct EnvdKey {
    path: PathBuf,
    key: Mutex<Option<[u8; KEY_LEN]>>,
}

impl EnvdKey {
    pub fn new(path: PathBuf) -> EnvdKey {
        EnvdKey {
            path,
            key: Mutex::new(None),
        }
    }

    fn key(&self) -> std::io::Result<[u8; KEY_LEN]> {
        let mut k = bhatti_sync::lock(&self.key);
        if let Some(k) = *k {
            return Ok(k);
        }
        let loaded = load_or_create(&self.path)?;
        *k = Some(loaded);
        Ok(loaded)
    }

    fn mac(&self, sandbox_id: &str) -> std::io::Result<HmacSha256> {
        let key = self.key()?;
        let mut m =
            HmacSha256::new_from_slice(&key).map_err(|e| std::io::Error::other(e.to_string()))?;
        m.update(CONTEXT);
        m.update(sandbox_id.as_bytes());
        Ok(m)
    }

    /// The token for one sandbox.
    pub fn token(&self, sandbox_id: &str) -> std::io::Result<String> {
        Ok(hex::encode(self.mac(sandbox_id)?.finalize().into_bytes()))
    }

    /// Whether `token` is the sandbox's (compared in constant time).
    pub fn verify(&self, sandbox_id: &str, token: &str) -> std::io::Result<bool> {
        let Ok(raw) = hex::decode(token.trim()) else {
            return Ok(false);
        };
        Ok(self.mac(sandbox_id)?.verify_slice(&raw).is_ok())
    }
}

fn load_or_create(path: &Path) -> std::io::Result<[u8; KEY_LEN]> {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let raw = hex::decode(s.trim()).map_err(|e| {
                std::io::Error::other(format!("{}: not a hex key: {e}", path.display()))
            })?;
            raw.try_into().map_err(|_| {
                std::io::Error::other(format!("{}: key is not {KEY_LEN} bytes", path.display()))
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; KEY_LEN];
            rand::Rng::fill(&mut rand::thread_rng(), &mut key[..]);
            // A torn key would invalidate every token handed out.
            crate::secrets::write_key_file(path, &format!("{}\n", hex::encode(key)))?;
            Ok(key)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_per_sandbox_and_survive_a_reload() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("envd.key");
        let k = EnvdKey::new(p.clone());
        let a = k.token("sb-a").expect("token");
        assert_eq!(a.len(), 64);
        assert!(k.verify("sb-a", &a).expect("verify"));
        assert!(!k.verify("sb-b", &a).expect("verify"));
        assert!(!k.verify("sb-a", "zz").expect("verify"));
        assert!(!k.verify("sb-a", "").expect("verify"));
        // Another daemon process on the same data dir reads the same key.
        let again = EnvdKey::new(p);
        assert_eq!(again.token("sb-a").expect("token"), a);
    }
}
