//! Sign and verify hookflow callbacks.
//!
//! hookflow signs every callback twice:
//!
//! - the simple scheme, header [`SIGNATURE_HEADER`]: `sha256=` + lowercase hex
//!   HMAC-SHA256 of the raw body, keyed with the full secret string;
//! - [Standard Webhooks](https://www.standardwebhooks.com/): headers
//!   [`WEBHOOK_ID`], [`WEBHOOK_TIMESTAMP`] and [`WEBHOOK_SIGNATURE`], the latter
//!   `v1,` + base64 HMAC-SHA256 of `{id}.{timestamp}.{body}`, keyed with the
//!   base64-decoded part of the secret after `whsec_`.
//!
//! During a secret rotation's grace period both the old and the new secret
//! sign; the verifiers here accept any of several secrets.
//!
//! ```
//! let secret = hookflow_webhooks::generate_secret();
//! let body = br#"{"event_type":"workflow.completed"}"#;
//! let sig = hookflow_webhooks::sign_standard(&secret, "evt_1", 1_700_000_000, body).unwrap();
//! hookflow_webhooks::verify_standard(&[&secret], "evt_1", "1700000000", &sig, body, 1_700_000_010, 300)
//!     .unwrap();
//! ```

#![forbid(unsafe_code)]

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Header carrying the simple scheme's signature (`sha256=<hex>`).
pub const SIGNATURE_HEADER: &str = "X-Hookflow-Signature";
/// Standard Webhooks header carrying the event id (stable across retries).
pub const WEBHOOK_ID: &str = "webhook-id";
/// Standard Webhooks header carrying the attempt's unix timestamp in seconds.
pub const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
/// Standard Webhooks header carrying space-separated `v1,<base64>` signatures.
pub const WEBHOOK_SIGNATURE: &str = "webhook-signature";

/// Prefix of every secret.
const SECRET_PREFIX: &str = "whsec_";
/// Prefix of the simple scheme's header value.
const SIMPLE_PREFIX: &str = "sha256=";
/// Version tag of Standard Webhooks symmetric signatures.
const STANDARD_VERSION: &str = "v1";
/// Accepted decoded key lengths, in bytes.
const KEY_LEN: std::ops::RangeInclusive<usize> = 24..=64;

/// Why signing or verification failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The secret is not `whsec_` followed by base64 of 24 to 64 bytes.
    #[error("invalid secret: expected `whsec_` followed by standard base64 of 24 to 64 bytes")]
    InvalidSecret,
    /// No secret was given to sign or verify with.
    #[error("no secret given")]
    NoSecrets,
    /// The signature header cannot be parsed.
    #[error("malformed signature header")]
    MalformedSignature,
    /// No signature in the header matches any of the secrets.
    #[error("signature does not match")]
    InvalidSignature,
    /// The timestamp header is not an integer number of unix seconds.
    #[error("invalid timestamp: expected unix seconds")]
    InvalidTimestamp,
    /// The timestamp is too far from the current time (possible replay).
    #[error("timestamp is outside the allowed tolerance")]
    TimestampOutOfTolerance,
}

/// Generates a new secret: `whsec_` + standard base64 of 32 random bytes.
pub fn generate_secret() -> String {
    let mut key = [0u8; 32];
    rand::fill(&mut key[..]);
    format!("{SECRET_PREFIX}{}", BASE64.encode(key))
}

/// Validates a secret's shape (`whsec_` + base64 decoding to 24..=64 bytes) and returns the decoded key bytes.
pub fn parse_secret(secret: &str) -> Result<Vec<u8>, Error> {
    let encoded = secret
        .strip_prefix(SECRET_PREFIX)
        .ok_or(Error::InvalidSecret)?;
    let key = BASE64.decode(encoded).map_err(|_| Error::InvalidSecret)?;
    if KEY_LEN.contains(&key.len()) {
        Ok(key)
    } else {
        Err(Error::InvalidSecret)
    }
}

/// Computes HMAC-SHA256 of `parts` concatenated, keyed with `key`.
fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Simple-scheme tag: HMAC-SHA256 keyed with the secret string's bytes over the body.
fn simple_tag(secret: &str, body: &[u8]) -> [u8; 32] {
    mac(secret.as_bytes(), &[body])
}

/// Standard Webhooks tag over `{id}.{timestamp}.{body}`, keyed with the decoded secret.
fn standard_tag(key: &[u8], msg_id: &str, timestamp: i64, body: &[u8]) -> [u8; 32] {
    let timestamp = timestamp.to_string();
    mac(
        key,
        &[msg_id.as_bytes(), b".", timestamp.as_bytes(), b".", body],
    )
}

/// Signs with the simple scheme: `sha256=` + lowercase hex HMAC-SHA256, keyed with the full
/// secret string's bytes (e.g. `whsec_abc...`), over the raw body.
pub fn sign_simple(secret: &str, body: &[u8]) -> String {
    format!("{SIMPLE_PREFIX}{}", hex::encode(simple_tag(secret, body)))
}

/// Signs with Standard Webhooks: `v1,` + base64(HMAC-SHA256(key = base64-decoded part after
/// `whsec_`, msg = `{id}.{timestamp}.{body}`)).
pub fn sign_standard(
    secret: &str,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<String, Error> {
    let key = parse_secret(secret)?;
    let tag = standard_tag(&key, msg_id, timestamp, body);
    Ok(format!("{STANDARD_VERSION},{}", BASE64.encode(tag)))
}

/// Value of `webhook-signature` when several secrets sign (during a rotation grace period): the
/// `v1` signatures, space-separated, in the order of `secrets`.
pub fn sign_standard_all(
    secrets: &[&str],
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<String, Error> {
    if secrets.is_empty() {
        return Err(Error::NoSecrets);
    }
    let signatures = secrets
        .iter()
        .map(|secret| sign_standard(secret, msg_id, timestamp, body))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(signatures.join(" "))
}

/// Constant-time check of an `X-Hookflow-Signature` header value (`sha256=<hex>`) against any of
/// the secrets.
pub fn verify_simple(secrets: &[&str], header: &str, body: &[u8]) -> Result<(), Error> {
    if secrets.is_empty() {
        return Err(Error::NoSecrets);
    }
    let hex_tag = header
        .trim()
        .strip_prefix(SIMPLE_PREFIX)
        .ok_or(Error::MalformedSignature)?;
    let given = hex::decode(hex_tag).map_err(|_| Error::MalformedSignature)?;
    if given.len() != 32 {
        return Err(Error::MalformedSignature);
    }
    let mut matched = subtle::Choice::from(0);
    for secret in secrets {
        matched |= simple_tag(secret, body).ct_eq(&given[..]);
    }
    if bool::from(matched) {
        Ok(())
    } else {
        Err(Error::InvalidSignature)
    }
}

/// Checks the `webhook-id`, `webhook-timestamp` and `webhook-signature` header values against any
/// of the secrets.
///
/// Rejects timestamps further than `tolerance_secs` from `now` (unix seconds) before looking at
/// the signature. Accepts a header with several space-separated signatures if any `v1` one
/// matches; entries with other versions are ignored.
pub fn verify_standard(
    secrets: &[&str],
    msg_id: &str,
    timestamp: &str,
    signature_header: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), Error> {
    if secrets.is_empty() {
        return Err(Error::NoSecrets);
    }
    let keys = secrets
        .iter()
        .map(|secret| parse_secret(secret))
        .collect::<Result<Vec<_>, _>>()?;

    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| Error::InvalidTimestamp)?;
    if now.abs_diff(ts) > tolerance_secs.max(0).unsigned_abs() {
        return Err(Error::TimestampOutOfTolerance);
    }

    let expected: Vec<[u8; 32]> = keys
        .iter()
        .map(|key| standard_tag(key, msg_id, ts, body))
        .collect();

    let mut seen_any = false;
    let mut matched = subtle::Choice::from(0);
    for entry in signature_header.split_ascii_whitespace() {
        seen_any = true;
        let Some((version, encoded)) = entry.split_once(',') else {
            continue;
        };
        if version != STANDARD_VERSION {
            continue;
        }
        let Ok(given) = BASE64.decode(encoded) else {
            continue;
        };
        for tag in &expected {
            matched |= tag.ct_eq(&given[..]);
        }
    }
    if !seen_any {
        return Err(Error::MalformedSignature);
    }
    if bool::from(matched) {
        Ok(())
    } else {
        Err(Error::InvalidSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TS: i64 = 1614265330;
    const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SPEC_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    const TOL: i64 = 300;

    fn verify_spec(
        secrets: &[&str],
        id: &str,
        ts: &str,
        sig: &str,
        body: &[u8],
    ) -> Result<(), Error> {
        verify_standard(secrets, id, ts, sig, body, SPEC_TS, TOL)
    }

    #[test]
    fn standard_webhooks_test_vector() {
        assert_eq!(
            sign_standard(SPEC_SECRET, SPEC_ID, SPEC_TS, SPEC_BODY).unwrap(),
            SPEC_SIG
        );
        verify_spec(&[SPEC_SECRET], SPEC_ID, "1614265330", SPEC_SIG, SPEC_BODY).unwrap();
    }

    #[test]
    fn generated_secret_shape() {
        let a = generate_secret();
        let b = generate_secret();
        assert!(a.starts_with("whsec_"));
        assert_ne!(a, b);
        assert_eq!(parse_secret(&a).unwrap().len(), 32);
    }

    #[test]
    fn parse_secret_rejects_bad_shapes() {
        assert_eq!(parse_secret(SPEC_SECRET).unwrap().len(), 24);
        let too_short = format!("whsec_{}", BASE64.encode([7u8; 23]));
        let too_long = format!("whsec_{}", BASE64.encode([7u8; 65]));
        let max = format!("whsec_{}", BASE64.encode([7u8; 64]));
        let no_prefix = BASE64.encode([7u8; 32]);
        assert_eq!(parse_secret(&max).unwrap().len(), 64);
        for bad in [
            "",
            "whsec_",
            "whsec_!!!notbase64!!!",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS", // bad length/padding
            "WHSEC_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            &too_short,
            &too_long,
            &no_prefix,
        ] {
            assert_eq!(parse_secret(bad), Err(Error::InvalidSecret), "{bad:?}");
            assert_eq!(sign_standard(bad, "id", 1, b"x"), Err(Error::InvalidSecret));
            assert_eq!(
                verify_standard(&[bad], "id", "1", "v1,AAAA", b"x", 1, 300),
                Err(Error::InvalidSecret)
            );
        }
        assert_eq!(
            sign_standard_all(&[SPEC_SECRET, "nope"], "id", 1, b"x"),
            Err(Error::InvalidSecret)
        );
    }

    #[test]
    fn no_secrets() {
        assert_eq!(sign_standard_all(&[], "id", 1, b"x"), Err(Error::NoSecrets));
        assert_eq!(verify_simple(&[], "sha256=00", b"x"), Err(Error::NoSecrets));
        assert_eq!(
            verify_standard(&[], "id", "1", SPEC_SIG, b"x", 1, 300),
            Err(Error::NoSecrets)
        );
    }

    #[test]
    fn simple_known_value_and_round_trip() {
        // HMAC-SHA256(key = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", msg = body), as computed by
        // `printf '%s' '{"test": 2432232314}' | openssl dgst -sha256 -hmac "$secret"`.
        let sig = sign_simple(SPEC_SECRET, SPEC_BODY);
        assert_eq!(
            sig,
            "sha256=80ec8a89ce3cd22133a1066caecb4d04fea7467657c8514d717ec42c38a5c94c"
        );
        // Keyed with the whole string, not the decoded key.
        let decoded_key = parse_secret(SPEC_SECRET).unwrap();
        assert_ne!(sig[7..], hex::encode(mac(&decoded_key, &[SPEC_BODY])));
        assert_eq!(
            sig[7..],
            hex::encode(mac(SPEC_SECRET.as_bytes(), &[SPEC_BODY]))
        );

        verify_simple(&[SPEC_SECRET], &sig, SPEC_BODY).unwrap();
        verify_simple(
            &[SPEC_SECRET],
            &sig.to_uppercase().replace("SHA256=", "sha256="),
            SPEC_BODY,
        )
        .unwrap();
        assert_eq!(
            verify_simple(&[SPEC_SECRET], &sig, br#"{"test": 2432232315}"#),
            Err(Error::InvalidSignature)
        );
        let other = generate_secret();
        assert_eq!(
            verify_simple(&[&other], &sig, SPEC_BODY),
            Err(Error::InvalidSignature)
        );
        // Grace period: either secret verifies.
        verify_simple(&[&other, SPEC_SECRET], &sig, SPEC_BODY).unwrap();
        verify_simple(
            &[SPEC_SECRET, &other],
            &sign_simple(&other, SPEC_BODY),
            SPEC_BODY,
        )
        .unwrap();
    }

    #[test]
    fn simple_malformed_headers() {
        for bad in [
            "",
            "sha256=",
            "sha1=abcd",
            "sha256=zz",
            "sha256=abcd",
            &"a".repeat(64),
        ] {
            assert_eq!(
                verify_simple(&[SPEC_SECRET], bad, SPEC_BODY),
                Err(Error::MalformedSignature),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn standard_round_trip_with_generated_secret() {
        let secret = generate_secret();
        let body = br#"{"event_type":"workflow.completed","data":{}}"#;
        let sig = sign_standard(&secret, "evt_123", 1_700_000_000, body).unwrap();
        assert!(sig.starts_with("v1,"));
        verify_standard(
            &[&secret],
            "evt_123",
            "1700000000",
            &sig,
            body,
            1_700_000_000,
            TOL,
        )
        .unwrap();
        // Non-UTF-8 bodies are signed as raw bytes.
        let raw = [0xff, 0x00, 0xfe];
        let sig = sign_standard(&secret, "evt_123", 5, &raw).unwrap();
        verify_standard(&[&secret], "evt_123", "5", &sig, &raw, 5, TOL).unwrap();
    }

    #[test]
    fn standard_tampering_rejected() {
        let ts = "1614265330";
        assert_eq!(
            verify_spec(
                &[SPEC_SECRET],
                SPEC_ID,
                ts,
                SPEC_SIG,
                br#"{"test": 2432232315}"#
            ),
            Err(Error::InvalidSignature)
        );
        assert_eq!(
            verify_spec(&[SPEC_SECRET], "msg_other", ts, SPEC_SIG, SPEC_BODY),
            Err(Error::InvalidSignature)
        );
        assert_eq!(
            verify_spec(&[SPEC_SECRET], SPEC_ID, "1614265331", SPEC_SIG, SPEC_BODY),
            Err(Error::InvalidSignature)
        );
        assert_eq!(
            verify_spec(&[&generate_secret()], SPEC_ID, ts, SPEC_SIG, SPEC_BODY),
            Err(Error::InvalidSignature)
        );
        // Wrong version tag, truncated signature, garbage.
        for bad in [
            "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            "v1a,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1O==",
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJE",
            "v1,",
            "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            "v1,not base64!",
        ] {
            assert_eq!(
                verify_spec(&[SPEC_SECRET], SPEC_ID, ts, bad, SPEC_BODY),
                Err(Error::InvalidSignature),
                "{bad:?}"
            );
        }
        for empty in ["", "   "] {
            assert_eq!(
                verify_spec(&[SPEC_SECRET], SPEC_ID, ts, empty, SPEC_BODY),
                Err(Error::MalformedSignature)
            );
        }
    }

    #[test]
    fn standard_timestamps() {
        let sig = |ts: i64| sign_standard(SPEC_SECRET, SPEC_ID, ts, SPEC_BODY).unwrap();
        let check = |ts: i64, now: i64| {
            verify_standard(
                &[SPEC_SECRET],
                SPEC_ID,
                &ts.to_string(),
                &sig(ts),
                SPEC_BODY,
                now,
                TOL,
            )
        };
        check(1000, 1000).unwrap();
        check(1000, 1300).unwrap();
        check(1300, 1000).unwrap();
        assert_eq!(check(1000, 1301), Err(Error::TimestampOutOfTolerance));
        assert_eq!(check(1301, 1000), Err(Error::TimestampOutOfTolerance));
        assert_eq!(
            check(i64::MIN, i64::MAX),
            Err(Error::TimestampOutOfTolerance)
        );
        assert_eq!(check(-5, 0), Ok(()));
        for bad in ["", "abc", "1.5", "1e9", "99999999999999999999"] {
            assert_eq!(
                verify_spec(&[SPEC_SECRET], SPEC_ID, bad, SPEC_SIG, SPEC_BODY),
                Err(Error::InvalidTimestamp),
                "{bad:?}"
            );
        }
        // Negative tolerance behaves like zero.
        assert_eq!(
            verify_standard(
                &[SPEC_SECRET],
                SPEC_ID,
                "1614265330",
                SPEC_SIG,
                SPEC_BODY,
                SPEC_TS,
                -1
            ),
            Ok(())
        );
    }

    #[test]
    fn standard_multiple_signatures_in_header() {
        let ts = "1614265330";
        let other = sign_standard(&generate_secret(), SPEC_ID, SPEC_TS, SPEC_BODY).unwrap();
        for header in [
            format!("{other} {SPEC_SIG}"),
            format!("{SPEC_SIG} {other}"),
            format!("v1a,abcdef {SPEC_SIG}"),
            format!("garbage  v2,xyz\t{SPEC_SIG} "),
        ] {
            verify_spec(&[SPEC_SECRET], SPEC_ID, ts, &header, SPEC_BODY).unwrap();
        }
        assert_eq!(
            verify_spec(
                &[SPEC_SECRET],
                SPEC_ID,
                ts,
                &format!("{other} {other}"),
                SPEC_BODY
            ),
            Err(Error::InvalidSignature)
        );
    }

    #[test]
    fn standard_grace_period_two_secrets() {
        let old = generate_secret();
        let new = generate_secret();
        let body = b"{}";
        let header = sign_standard_all(&[&new, &old], "evt_9", 42, body).unwrap();
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], sign_standard(&new, "evt_9", 42, body).unwrap());
        assert_eq!(parts[1], sign_standard(&old, "evt_9", 42, body).unwrap());

        // A receiver knowing only one of the two secrets accepts the combined header.
        verify_standard(&[&old], "evt_9", "42", &header, body, 42, TOL).unwrap();
        verify_standard(&[&new], "evt_9", "42", &header, body, 42, TOL).unwrap();
        // A receiver in its own grace period accepts a single signature from either secret.
        verify_standard(&[&new, &old], "evt_9", "42", parts[1], body, 42, TOL).unwrap();
        verify_standard(&[&old, &new], "evt_9", "42", parts[0], body, 42, TOL).unwrap();
        // A receiver knowing neither rejects it.
        assert_eq!(
            verify_standard(&[&generate_secret()], "evt_9", "42", &header, body, 42, TOL),
            Err(Error::InvalidSignature)
        );
        assert_eq!(
            sign_standard_all(&[&old], "evt_9", 42, body).unwrap(),
            sign_standard(&old, "evt_9", 42, body).unwrap()
        );
    }
}

/// Compiles and runs the README's example.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
