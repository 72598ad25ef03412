//! The one-shot commands: `migrate`, `keys create`, `verify`.

use std::collections::HashMap;
use std::io::Read;

use crate::config::{DEFAULT_DATABASE, DatabaseArg, VerifyArgs};
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
    let mut body = Vec::new();
    if args.body_file.as_os_str() == "-" {
        std::io::stdin().read_to_end(&mut body)?;
    } else {
        body = std::fs::read(&args.body_file)?;
    }
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
