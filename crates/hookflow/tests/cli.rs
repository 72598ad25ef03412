//! The command line: the first-start key, `hookflow keys create`, `hookflow verify`,
//! `hookflow listen`.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn the_first_start_prints_a_working_key_and_a_restart_prints_none() {
    let mut server = Server::start_default().await;
    let printed = server.printed_key.clone().unwrap_or_else(|| {
        panic!(
            "no `API key for workspace default: …` line in {:?}",
            server.stdout.lock().unwrap()
        )
    });
    assert!(printed.starts_with("hf_"), "{printed}");
    let (status, body) = server
        .api()
        .with_key(Some(&printed))
        .get("/v1/workflows")
        .await;
    assert_eq!(status, 200, "{body}");

    server.restart().await;
    assert_eq!(
        server.printed_key, None,
        "a database that has a workspace gets no new key"
    );
    let (status, body) = server
        .api()
        .with_key(Some(&printed))
        .get("/v1/workflows")
        .await;
    assert_eq!(status, 200, "the key survives a restart: {body}");
}

#[tokio::test]
async fn keys_create_prints_a_key_alone_for_scripts() {
    let db = std::sync::Arc::new(TestDb::fresh().await);
    let db_url = db.url.clone();
    let first = create_key(&db_url, None).await;
    let second = create_key(&db_url, None).await;
    assert_ne!(first, second);

    let server = Server::start_on(db, ServerOpts::default()).await;
    for key in [&first, &second] {
        let (status, body) = server.api().with_key(Some(key)).get("/v1/workflows").await;
        assert_eq!(status, 200, "{body}");
    }
    // While the server runs, too.
    let third = create_key(&db_url, None).await;
    let (status, body) = server
        .api()
        .with_key(Some(&third))
        .get("/v1/workflows")
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn verify_checks_a_real_callback() {
    let server = Server::start_default().await;
    let api = server.api();
    let dep = api.deploy(&echo_workflow("echo")).await;
    let receiver = Receiver::start().await;
    api.invoke_async("echo", json!({ "v": 1 }), &receiver.callback_url())
        .await;
    let callback = receiver.callbacks(1).await.remove(0);

    let body_file = server.dir().join("body.json");
    std::fs::write(&body_file, &callback.body).unwrap();
    let tampered_file = server.dir().join("tampered.json");
    let mut tampered = callback.body.clone();
    tampered.insert(1, b' ');
    std::fs::write(&tampered_file, &tampered).unwrap();

    let header = |name: &str| format!("{name}: {}", callback.header(name).unwrap());
    let simple = [header("x-hookflow-signature")];
    let standard = [
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    ];
    let all: Vec<String> = simple.iter().chain(&standard).cloned().collect();

    let verify = |secret: String, file: &std::path::Path, headers: &[String]| {
        let mut args = vec![
            "verify".to_string(),
            "--secret".into(),
            secret,
            "--body-file".into(),
        ];
        args.push(file.display().to_string());
        for h in headers {
            args.push("--header".into());
            args.push(h.clone());
        }
        async move { cli(&args.iter().map(String::as_str).collect::<Vec<_>>()).await }
    };
    for headers in [&all[..], &simple[..], &standard[..]] {
        let out = verify(dep.secret.clone(), &body_file, headers).await;
        assert_eq!(
            out.code,
            Some(0),
            "{headers:?}: {}{}",
            out.stdout,
            out.stderr
        );
    }
    let other = api.deploy(&echo_workflow("other")).await;
    for (secret, file) in [
        (other.secret.clone(), &body_file),
        (dep.secret.clone(), &tampered_file),
    ] {
        let out = verify(secret, file, &all).await;
        assert!(
            matches!(out.code, Some(c) if c != 0),
            "must fail: {}{}",
            out.stdout,
            out.stderr
        );
    }
}

/// Reads `hookflow listen` output lines until one contains `needle`.
async fn read_until(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    needle: &str,
) -> Vec<String> {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let hit = line.contains(needle);
            seen.push(line);
            if hit {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        matches!(found, Ok(true)),
        "no line with {needle:?} in {seen:#?}"
    );
    seen
}

#[tokio::test]
async fn listen_verifies_and_prints_the_events_it_receives() {
    use tokio::io::AsyncBufReadExt;

    let server = Server::start_default().await;
    let api = server.api();
    let dep = api.deploy(&echo_workflow("echo")).await;
    let other = api.deploy(&echo_workflow("other")).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let mut listener = command()
        .args(["listen", "--listen", &address, "--secret", &dep.secret])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("hookflow listen starts");
    let mut lines = tokio::io::BufReader::new(listener.stdout.take().unwrap()).lines();
    let callback = format!("http://{address}/callback");
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(&address).await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let good = api.invoke_async("echo", json!({ "v": 1 }), &callback).await;
    let seen = read_until(&mut lines, &good).await;
    let header = seen.iter().find(|l| l.starts_with("--- ")).unwrap();
    assert!(header.ends_with("signatures valid"), "{seen:#?}");
    assert!(
        seen.last().unwrap().contains("\"workflow.completed\""),
        "{seen:#?}"
    );

    // An event signed with another deployment's secret is reported invalid.
    let bad = api
        .invoke_async("other", json!({ "v": 2 }), &callback)
        .await;
    let seen = read_until(&mut lines, &bad).await;
    assert!(
        seen.iter()
            .any(|l| l.starts_with("--- ") && l.contains("INVALID")),
        "{seen:#?}"
    );
    assert_ne!(other.secret, dep.secret);
    listener.kill().await.unwrap();
}

/// Whether database `name` exists on the suite's PostgreSQL server.
async fn postgres_database_exists(name: &str) -> bool {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(&postgres_admin_url())
        .await
        .expect("PostgreSQL admin connection");
    sqlx::query("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(name)
        .fetch_optional(&mut conn)
        .await
        .expect("query pg_database")
        .is_some()
}

#[tokio::test]
async fn servers_run_on_the_backend_the_suite_is_asked_for() {
    let server = Server::start_default().await;
    let (status, body) = server.api().get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    match backend() {
        Backend::Sqlite => assert!(server.db_url.starts_with("sqlite://"), "{}", server.db_url),
        Backend::Postgres => {
            let url = url::Url::parse(&server.db_url).expect("database URL");
            assert_eq!(url.scheme(), "postgres", "{url}");
            let name = url.path().trim_start_matches('/').to_string();
            assert!(name.starts_with("hf_"), "a fresh database: {url}");
            assert!(postgres_database_exists(&name).await, "{name} exists");
            drop(server);
            assert!(
                !postgres_database_exists(&name).await,
                "{name} is dropped with its server"
            );
        }
    }
}

#[tokio::test]
async fn serve_reads_settings_from_its_config_file_and_flags_win() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hookflow.toml");
    std::fs::write(
        &config,
        "body_limit = 2048\nsync_wait_limit = \"30s\"\nretry_schedule = \"1h\"\n",
    )
    .unwrap();
    // The flag (1s) wins over the file's 30s; the file's body limit applies.
    let opts = ServerOpts::default()
        .set("--sync-wait-limit", "1s")
        .arg("--config", &config.display().to_string());
    let server = Server::start(opts).await;
    let api = server.api();
    api.deploy(&delay_workflow("slow", "3s")).await;

    let big = json!({ "deployment": "slow", "inputs": { "pad": "x".repeat(4096) } });
    let resp = api.invoke(&big).await;
    assert_error(&resp, 413, "payload_too_large", None);

    let (status, body) = api
        .invoke(&json!({ "deployment": "slow", "inputs": {} }))
        .await;
    assert_eq!(status, 202, "the 1s flag, not the file's 30s: {body}");
    assert_eq!(body["run_status"], "waiting", "{body}");
}

#[tokio::test]
async fn serve_refuses_a_config_file_with_an_unknown_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hookflow.toml");
    std::fs::write(&config, "sync_wait_limt = \"1s\"\n").unwrap();
    let out = cli(&[
        "serve",
        "--database",
        &format!("sqlite://{}", dir.path().join("h.db").display()),
        "--listen",
        "127.0.0.1:0",
        "--config",
        &config.display().to_string(),
    ])
    .await;
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("sync_wait_limt"), "{}", out.stderr);
}
