//! Interoperability with the reference `standardwebhooks` crate.

use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue};
use standardwebhooks::Webhook;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

fn headers(id: &str, ts: i64, sig: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        hookflow_webhooks::WEBHOOK_ID,
        HeaderValue::from_str(id).unwrap(),
    );
    h.insert(
        hookflow_webhooks::WEBHOOK_TIMESTAMP,
        HeaderValue::from_str(&ts.to_string()).unwrap(),
    );
    h.insert(
        hookflow_webhooks::WEBHOOK_SIGNATURE,
        HeaderValue::from_str(sig).unwrap(),
    );
    h
}

const BODY: &[u8] =
    br#"{"event_type":"workflow.completed","request_id":"req_1","data":{"output":{}}}"#;

#[test]
fn reference_verifies_our_signatures() {
    for secret in [
        hookflow_webhooks::generate_secret(),
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_string(),
    ] {
        let ts = now();
        let sig = hookflow_webhooks::sign_standard(&secret, "evt_abc", ts, BODY).unwrap();
        let wh = Webhook::new(&secret).unwrap();
        wh.verify(BODY, &headers("evt_abc", ts, &sig)).unwrap();
        assert!(wh.verify(b"{}", &headers("evt_abc", ts, &sig)).is_err());
        assert!(wh.verify(BODY, &headers("evt_abd", ts, &sig)).is_err());
    }
}

#[test]
fn reference_verifies_our_grace_period_header() {
    let old = hookflow_webhooks::generate_secret();
    let new = hookflow_webhooks::generate_secret();
    let ts = now();
    let sig = hookflow_webhooks::sign_standard_all(&[&new, &old], "evt_abc", ts, BODY).unwrap();
    for secret in [&old, &new] {
        Webhook::new(secret)
            .unwrap()
            .verify(BODY, &headers("evt_abc", ts, &sig))
            .unwrap();
    }
}

#[test]
fn we_verify_reference_signatures() {
    let secret = hookflow_webhooks::generate_secret();
    let ts = now();
    let sig = Webhook::new(&secret)
        .unwrap()
        .sign("msg_xyz", ts, BODY)
        .unwrap();
    assert_eq!(
        sig,
        hookflow_webhooks::sign_standard(&secret, "msg_xyz", ts, BODY).unwrap()
    );
    hookflow_webhooks::verify_standard(
        &[&secret],
        "msg_xyz",
        &ts.to_string(),
        &sig,
        BODY,
        now(),
        300,
    )
    .unwrap();
    assert_eq!(
        hookflow_webhooks::verify_standard(
            &[&secret],
            "msg_xyz",
            &ts.to_string(),
            &sig,
            b"{}",
            now(),
            300
        ),
        Err(hookflow_webhooks::Error::InvalidSignature)
    );
}

#[test]
fn spec_test_vector_matches_reference() {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let ours = hookflow_webhooks::sign_standard(
        secret,
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        br#"{"test": 2432232314}"#,
    )
    .unwrap();
    let theirs = Webhook::new(secret)
        .unwrap()
        .sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        )
        .unwrap();
    assert_eq!(ours, theirs);
    assert_eq!(ours, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
}
