//! The one-shot commands: `migrate`, `keys create`, `verify`, and the development receiver
//! `listen`.

use std::collections::HashMap;

use crate::config::{DEFAULT_DATABASE, DatabaseArg, ListenArgs, VerifyArgs};
use crate::server::{connect, new_key};

fn database(arg: DatabaseArg) -> String {
    arg.database.unwrap_or_else(|| DEFAULT_DATABASE.to_string())
}

/// `hookflow migrate`: opening the store runs the migrations.
pub async fn migrate(arg: DatabaseArg) -> anyhow::Result<()> {
    connect(&database(arg)).await?;
    eprintln!("migrations applied");
    Ok(())
}

/// `hookflow keys create`: prints a new key alone on stdout.
pub async fn create_key(workspace: &str, arg: DatabaseArg) -> anyhow::Result<()> {
    let store = connect(&database(arg)).await?;
    println!("{}", new_key(store.as_ref(), workspace).await?);
    Ok(())
}

/// `hookflow verify`: checks every signature header present; fails if none is.
pub fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let body = crate::client::read_source(&args.body_file)?;
    let headers: HashMap<String, String> = args
        .headers
        .iter()
        .map(|h| {
            h.split_once(':')
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .ok_or_else(|| anyhow::anyhow!("header {h:?} is not `Name: value`"))
        })
        .collect::<anyhow::Result<_>>()?;
    let secrets: Vec<&str> = args.secret.iter().map(String::as_str).collect();
    let mut checked = 0;
    if let Some(sig) = headers.get("x-hookflow-signature") {
        hookflow_webhooks::verify_simple(&secrets, sig, &body)
            .map_err(|e| anyhow::anyhow!("X-Hookflow-Signature: {e}"))?;
        println!("X-Hookflow-Signature: valid");
        checked += 1;
    }
    if let Some(sig) = headers.get("webhook-signature") {
        let get = |name: &str| {
            headers
                .get(name)
                .map(String::as_str)
                .ok_or_else(|| anyhow::anyhow!("webhook-signature needs the {name} header"))
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs() as i64;
        hookflow_webhooks::verify_standard(
            &secrets,
            get("webhook-id")?,
            get("webhook-timestamp")?,
            sig,
            &body,
            now,
            args.tolerance.as_secs() as i64,
        )
        .map_err(|e| anyhow::anyhow!("webhook-signature: {e}"))?;
        println!("webhook-signature: valid");
        checked += 1;
    }
    if checked == 0 {
        anyhow::bail!("no signature header given (X-Hookflow-Signature or webhook-signature)");
    }
    Ok(())
}

/// Checks the Standard Webhooks signature (and the simple one) of a received event.
fn check(secrets: &[&str], headers: &axum::http::HeaderMap, body: &[u8]) -> String {
    if secrets.is_empty() {
        return "not verified (no --secret)".to_string();
    }
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    let standard = hookflow_webhooks::verify_standard(
        secrets,
        get("webhook-id"),
        get("webhook-timestamp"),
        get("webhook-signature"),
        body,
        now,
        300,
    );
    let simple = hookflow_webhooks::verify_simple(secrets, get("x-hookflow-signature"), body);
    match (standard, simple) {
        (Ok(()), Ok(())) => "signatures valid".to_string(),
        (Err(e), _) => format!("INVALID webhook-signature: {e}"),
        (_, Err(e)) => format!("INVALID X-Hookflow-Signature: {e}"),
    }
}

/// `hookflow listen`: prints each event with its verification result, answers `--status`.
pub async fn listen(args: ListenArgs) -> anyhow::Result<()> {
    let status = axum::http::StatusCode::from_u16(args.status)?;
    let secrets = std::sync::Arc::new(args.secret);
    let app = axum::Router::new().fallback(
        move |uri: axum::http::Uri, headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let secrets = secrets.clone();
            async move {
                let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
                let id = headers
                    .get("webhook-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                println!(
                    "--- {uri} webhook-id={id}: {}",
                    check(&secrets, &headers, &body)
                );
                println!("{}", String::from_utf8_lossy(&body));
                status
            }
        },
    );
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    eprintln!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
