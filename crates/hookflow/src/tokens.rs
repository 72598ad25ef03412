//! Unguessable tokens this installation issues and later checks: async-step completion tokens
//! and expiring approval `respond_url` tokens. Both are HMAC-SHA256 under an installation-wide
//! key kept in the database, so every node can check what any node issued.

use hmac::{Hmac, KeyInit, Mac};
use hookflow_store::Millis;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Signs and checks tokens.
pub struct Tokens {
    key: Vec<u8>,
}

impl Tokens {
    /// Tokens under `key` (the installation's server key).
    pub fn new(key: &str) -> Self {
        Self {
            key: key.as_bytes().to_vec(),
        }
    }

    fn mac(&self, message: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        mac.update(message.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    fn matches(expected: &str, given: &str) -> bool {
        expected.as_bytes().ct_eq(given.as_bytes()).into()
    }

    /// The completion token of one attempt of an async step: `<attempt>.<hmac>`.
    pub fn step_token(&self, run_id: &str, step_id: &str, attempt: i64) -> String {
        let mac = self.mac(&format!("step\n{run_id}\n{step_id}\n{attempt}"));
        format!("{attempt}.{mac}")
    }

    /// The attempt a completion token belongs to, if it is genuine.
    pub fn check_step_token(&self, run_id: &str, step_id: &str, token: &str) -> Option<i64> {
        let (attempt, _) = token.split_once('.')?;
        let attempt: i64 = attempt.parse().ok().filter(|a| *a >= 1)?;
        Self::matches(&self.step_token(run_id, step_id, attempt), token).then_some(attempt)
    }

    /// A token answering approval `id` without an API key until `expires_at`.
    pub fn respond_token(&self, approval_id: &str, expires_at: Millis) -> String {
        let mac = self.mac(&format!("respond\n{approval_id}\n{expires_at}"));
        format!("{expires_at}.{mac}")
    }

    /// Whether a respond token is genuine for `approval_id` and not expired at `now`.
    pub fn check_respond_token(&self, approval_id: &str, token: &str, now: Millis) -> bool {
        let Some(expires_at) = token
            .split_once('.')
            .and_then(|(at, _)| at.parse::<Millis>().ok())
        else {
            return false;
        };
        expires_at > now && Self::matches(&self.respond_token(approval_id, expires_at), token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_tokens_bind_run_step_and_attempt() {
        let tokens = Tokens::new("k");
        let token = tokens.step_token("req_1", "a", 2);
        assert_eq!(tokens.check_step_token("req_1", "a", &token), Some(2));
        assert_eq!(tokens.check_step_token("req_2", "a", &token), None);
        assert_eq!(tokens.check_step_token("req_1", "b", &token), None);
        let forged = token.replacen("2.", "3.", 1);
        assert_eq!(tokens.check_step_token("req_1", "a", &forged), None);
        assert_eq!(
            Tokens::new("other").check_step_token("req_1", "a", &token),
            None
        );
        assert_eq!(tokens.check_step_token("req_1", "a", "garbage"), None);
    }

    #[test]
    fn respond_tokens_expire_and_bind_the_approval() {
        let tokens = Tokens::new("k");
        let token = tokens.respond_token("apr_1", 1_000);
        assert!(tokens.check_respond_token("apr_1", &token, 999));
        assert!(!tokens.check_respond_token("apr_1", &token, 1_000));
        assert!(!tokens.check_respond_token("apr_2", &token, 0));
        let extended = token.replacen("1000.", "9000.", 1);
        assert!(!tokens.check_respond_token("apr_1", &extended, 0));
    }
}
