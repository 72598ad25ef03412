//! Identifiers and API keys.

use rand::RngExt;
use sha2::{Digest, Sha256};

/// A prefixed, time-ordered id: `prefix_` + 32 lowercase hex digits of a UUIDv7.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// A run's `request_id`.
pub fn request_id() -> String {
    new_id("req")
}

/// Whether `id` has the shape of a `request_id` (so malformed ids never reach the database).
pub fn is_request_id(id: &str) -> bool {
    id.strip_prefix("req_").is_some_and(|hex| {
        hex.len() == 32
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// A new API key: `hf_` + 64 hex digits (256 random bits).
pub fn new_api_key() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    format!("hf_{}", hex::encode(bytes))
}

/// The stored form of an API key.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The part of a key shown in listings.
pub fn key_prefix(key: &str) -> String {
    key.chars().take(10).collect()
}

/// SHA-256 of a request body, for idempotency checks.
pub fn body_hash(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_prefixed_ordered_hex() {
        let a = request_id();
        let b = request_id();
        assert!(is_request_id(&a), "{a}");
        assert!(a < b);
        assert!(!is_request_id("req_XYZ"));
        assert!(!is_request_id("run_0123456789abcdef0123456789abcdef"));
    }

    #[test]
    fn keys_hash_stably_and_differ() {
        let key = new_api_key();
        assert!(key.starts_with("hf_") && key.len() == 67);
        assert_eq!(hash_key(&key), hash_key(&key));
        assert_ne!(hash_key(&key), hash_key(&new_api_key()));
        assert_eq!(key_prefix(&key).len(), 10);
    }
}
