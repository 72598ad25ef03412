//! Workspaces, API keys, secrets and server keys.

use std::collections::HashSet;

use hookflow_store::Page;
use serde_json::json;
use tokio::task::JoinSet;

use crate::common::{T0, TestDb};

fn page(limit: i64, cursor: Option<&str>) -> Page {
    Page {
        limit,
        cursor: cursor.map(str::to_string),
    }
}

pub async fn workspaces_are_ensured_once(db: &TestDb) {
    let s = &db.store;
    assert_eq!(s.workspace_count().await.unwrap(), 0);
    let ws = s.ensure_workspace("acme").await.unwrap();
    assert_eq!(ws.name, "acme");
    assert_eq!(s.ensure_workspace("acme").await.unwrap().id, ws.id);

    // Several nodes ensuring one new workspace at once agree on it.
    let mut tasks = JoinSet::new();
    for _ in 0..6 {
        let node = db.node().await;
        tasks.spawn(async move { node.ensure_workspace("shared").await.unwrap().id });
    }
    let ids: HashSet<String> = tasks.join_all().await.into_iter().collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(s.workspace_count().await.unwrap(), 2);
}

pub async fn api_keys(db: &TestDb) {
    let s = &db.store;
    let ws = s.ensure_workspace("acme").await.unwrap();
    let other = s.ensure_workspace("other").await.unwrap();
    let k1 = s
        .create_api_key(&ws.id, Some("ci"), "hash1", "hf_abc", T0)
        .await
        .unwrap();
    let k2 = s
        .create_api_key(&ws.id, None, "hash2", "hf_def", T0 + 1)
        .await
        .unwrap();
    assert_eq!(
        (k1.name.as_deref(), k1.prefix.as_str()),
        (Some("ci"), "hf_abc")
    );
    assert_eq!(
        s.workspace_for_key("hash1").await.unwrap(),
        Some(ws.id.clone())
    );
    assert_eq!(s.workspace_for_key("nope").await.unwrap(), None);

    let ids =
        |keys: Vec<hookflow_store::ApiKey>| keys.into_iter().map(|k| k.id).collect::<Vec<_>>();
    let all = s.list_api_keys(&ws.id, &page(10, None)).await.unwrap();
    assert_eq!(ids(all), [k2.id.clone(), k1.id.clone()]);
    let first = s.list_api_keys(&ws.id, &page(1, None)).await.unwrap();
    assert_eq!(ids(first), std::slice::from_ref(&k2.id));
    let next = s
        .list_api_keys(&ws.id, &page(1, Some(&k2.id)))
        .await
        .unwrap();
    assert_eq!(ids(next), std::slice::from_ref(&k1.id));

    assert!(!s.revoke_api_key(&other.id, &k1.id, T0).await.unwrap());
    assert!(s.revoke_api_key(&ws.id, &k1.id, T0 + 2).await.unwrap());
    assert!(!s.revoke_api_key(&ws.id, &k1.id, T0 + 3).await.unwrap());
    assert_eq!(s.workspace_for_key("hash1").await.unwrap(), None);
    let live = s.list_api_keys(&ws.id, &page(10, None)).await.unwrap();
    assert_eq!(ids(live), [k2.id]);
}

pub async fn secrets(db: &TestDb) {
    let s = &db.store;
    let ws = s.ensure_workspace("acme").await.unwrap();
    s.put_secret(&ws.id, "B", "1", T0).await.unwrap();
    s.put_secret(&ws.id, "a", "2", T0 + 1).await.unwrap();
    s.put_secret(&ws.id, "B", "3", T0 + 5).await.unwrap();

    // Names sort bytewise: "a" (0x61) after "B" (0x42), whatever the database's collation.
    let listed = s
        .list_secrets(&ws.id, &page(10, None))
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.name, m.created_at, m.updated_at))
        .collect::<Vec<_>>();
    assert_eq!(
        listed,
        [
            ("a".to_string(), T0 + 1, T0 + 1),
            ("B".to_string(), T0, T0 + 5)
        ]
    );
    let after_a = s.list_secrets(&ws.id, &page(10, Some("a"))).await.unwrap();
    assert_eq!(after_a.len(), 1);
    assert_eq!(after_a[0].name, "B");
    assert_eq!(
        s.secret_values(&ws.id).await.unwrap(),
        json!({"B": "3", "a": "2"})
    );
    assert!(s.delete_secret(&ws.id, "a").await.unwrap());
    assert!(!s.delete_secret(&ws.id, "a").await.unwrap());
    assert_eq!(s.secret_values(&ws.id).await.unwrap(), json!({"B": "3"}));
}

pub async fn server_keys(db: &TestDb) {
    let s = &db.store;
    let key = s.server_key("tokens").await.unwrap();
    assert_eq!(key.len(), 64);
    assert!(key.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(s.server_key("tokens").await.unwrap(), key);
    assert_ne!(s.server_key("other").await.unwrap(), key);

    // Nodes asking for a new key at once all get the one that was stored.
    let mut tasks = JoinSet::new();
    for _ in 0..6 {
        let node = db.node().await;
        tasks.spawn(async move { node.server_key("race").await.unwrap() });
    }
    let keys: HashSet<String> = tasks.join_all().await.into_iter().collect();
    assert_eq!(keys.len(), 1);
}
