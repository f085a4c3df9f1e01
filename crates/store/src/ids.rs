//! Identifier and API-key generation.
//!
//! All identifiers are random hex from the OS-seeded thread RNG; the formats
//! follow the reference (`usr_<8 hex>`, 16-hex sandbox IDs, `pub_<16 hex>`,
//! `bht_<64 hex>` keys from 32 random bytes).

use rand::RngCore;
use sha2::{Digest, Sha256};

/// `n` random bytes as lower-case hex (`2n` characters).
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

/// A user ID: `usr_<8 hex>`.
pub fn user_id() -> String {
    format!("usr_{}", random_hex(4))
}

/// A sandbox ID: 16 hex characters.
pub fn sandbox_id() -> String {
    random_hex(8)
}

/// A publish-rule ID: `pub_<16 hex>`.
pub fn publish_rule_id() -> String {
    format!("pub_{}", random_hex(8))
}

/// A generic row ID (templates, volumes, snapshots, images): 16 hex.
pub fn row_id() -> String {
    random_hex(8)
}

/// A new plaintext API key: `bht_<64 hex>` from 32 random bytes.
pub fn api_key() -> String {
    format!("bht_{}", random_hex(32))
}

/// The stored form of an API key (or any bearer token): lower-case SHA-256
/// hex of the whole string, prefix included.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        let u = user_id();
        assert!(u.starts_with("usr_") && u.len() == 12);
        assert_eq!(sandbox_id().len(), 16);
        let p = publish_rule_id();
        assert!(p.starts_with("pub_") && p.len() == 20);
        let k = api_key();
        assert!(k.starts_with("bht_") && k.len() == 68);
        assert!(k[4..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(api_key(), k);
        // echo -n abc | sha256sum
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
