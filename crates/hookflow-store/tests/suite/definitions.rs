//! Workflow versions and deployments.

use std::sync::Arc;

use hookflow_store::{Page, StoreError, Variant};
use serde_json::json;
use tokio::sync::Barrier;
use tokio::task::JoinSet;

use crate::common::{T0, TestDb, deployment};

pub async fn workflow_versions(db: &TestDb) {
    let s = &db.store;
    let ws = s.ensure_workspace("acme").await.unwrap();
    let create = |name: &'static str, v: i64| {
        let s = s.clone();
        let ws = ws.id.clone();
        async move {
            s.create_workflow_version(&ws, name, &json!({"v": v}), T0 + v)
                .await
                .unwrap()
        }
    };
    assert_eq!(create("flow", 1).await, 1);
    assert_eq!(create("flow", 2).await, 2);
    assert_eq!(create("another", 1).await, 1);

    let latest = s
        .workflow_version(&ws.id, "flow", None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((latest.version, latest.definition), (2, json!({"v": 2})));
    let first = s
        .workflow_version(&ws.id, "flow", Some(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((first.version, first.created_at), (1, T0 + 1));
    assert!(
        s.workflow_version(&ws.id, "flow", Some(3))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        s.workflow_version(&ws.id, "nope", None)
            .await
            .unwrap()
            .is_none()
    );
    let versions = s.workflow_versions(&ws.id, "flow").await.unwrap();
    assert_eq!(
        versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        [2, 1]
    );

    let page = |limit, cursor: Option<&str>| Page {
        limit,
        cursor: cursor.map(str::to_string),
    };
    let all = s.list_workflows(&ws.id, &page(10, None)).await.unwrap();
    let summary = all
        .iter()
        .map(|w| (w.name.as_str(), w.latest_version, w.updated_at))
        .collect::<Vec<_>>();
    assert_eq!(summary, [("flow", 2, T0 + 2), ("another", 1, T0 + 1)]);
    assert_eq!(all[0].definition, json!({"v": 2}));
    let next = s
        .list_workflows(&ws.id, &page(1, Some("flow")))
        .await
        .unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].name, "another");
}

/// Nodes saving the same workflow at once get consecutive versions, never the same one.
pub async fn concurrent_workflow_versions(db: &TestDb) {
    let ws = db.store.ensure_workspace("acme").await.unwrap();
    for (round, writers) in [2, 2, 2, 2, 6].into_iter().enumerate() {
        let name = format!("race-{round}");
        let barrier = Arc::new(Barrier::new(writers));
        let mut tasks = JoinSet::new();
        for _ in 0..writers {
            let (node, ws, name, barrier) = (
                db.node().await,
                ws.id.clone(),
                name.clone(),
                barrier.clone(),
            );
            tasks.spawn(async move {
                barrier.wait().await;
                node.create_workflow_version(&ws, &name, &json!({}), T0)
                    .await
                    .unwrap()
            });
        }
        let mut versions = tasks.join_all().await;
        versions.sort();
        assert_eq!(versions, (1..=writers as i64).collect::<Vec<_>>());
    }
}

pub async fn deployments(db: &TestDb) {
    let s = &db.store;
    let ws = s.ensure_workspace("acme").await.unwrap();
    let other = s.ensure_workspace("other").await.unwrap();
    let alpha = deployment(&ws, "alpha", None);
    s.create_deployment(&alpha).await.unwrap();
    let clash = deployment(&ws, "alpha", Some(2));
    assert!(matches!(
        s.create_deployment(&clash).await,
        Err(StoreError::Duplicate(_))
    ));
    // Names are per workspace.
    s.create_deployment(&deployment(&other, "alpha", None))
        .await
        .unwrap();

    let by_name = s.deployment(&ws.id, "alpha").await.unwrap().unwrap();
    assert_eq!(by_name.id, alpha.id);
    assert_eq!(by_name.variants, alpha.variants);
    assert_eq!(by_name.secret, "secret");
    let by_id = s.deployment(&ws.id, &alpha.id).await.unwrap().unwrap();
    assert_eq!(by_id.name, "alpha");
    assert!(s.deployment(&other.id, &alpha.id).await.unwrap().is_none());
    assert!(s.deployment_by_id(&alpha.id).await.unwrap().is_some());
    assert!(s.deployment_by_id("dep_nope").await.unwrap().is_none());

    let beta = deployment(&ws, "beta", None);
    s.create_deployment(&beta).await.unwrap();
    let page = |limit, cursor: Option<&str>| Page {
        limit,
        cursor: cursor.map(str::to_string),
    };
    let listed = s.list_deployments(&ws.id, &page(10, None)).await.unwrap();
    assert_eq!(
        listed.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
        ["beta", "alpha"]
    );
    let next = s
        .list_deployments(&ws.id, &page(10, Some(&beta.id)))
        .await
        .unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].id, alpha.id);

    let mut changed = alpha.clone();
    changed.concurrency_limit = Some(3);
    changed.variants.insert(
        "canary".into(),
        Variant {
            version: 2,
            settings: json!({"x": 1}),
        },
    );
    changed.previous_secret = Some(changed.secret.clone());
    changed.previous_secret_expires_at = Some(T0 + 1000);
    changed.secret = "rotated".into();
    changed.updated_at = T0 + 10;
    s.update_deployment(&changed).await.unwrap();
    let stored = s.deployment_by_id(&alpha.id).await.unwrap().unwrap();
    assert_eq!(stored.concurrency_limit, Some(3));
    assert_eq!(stored.variants, changed.variants);
    assert_eq!(stored.active_secrets(T0), ["rotated", "secret"]);
    assert_eq!(stored.updated_at, T0 + 10);
    assert_eq!(stored.created_at, T0);
}
