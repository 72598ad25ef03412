//! The client commands: each is one (or, with `--all`, a few) calls of a running hookflow's
//! HTTP API, whose JSON answer is printed pretty on stdout. An error answer goes to stderr with
//! its status, `error_code` and message, and the command exits non-zero.

pub mod args;

use std::path::Path;

use anyhow::Context as _;
use reqwest::{Method, RequestBuilder};
use serde_json::{Map, Value, json};
use url::Url;

use args::{
    AnswerArgs, ApprovalsCommand, Connection, DeploymentsCommand, InvokeArgs, PageArgs, Remote,
    RunsCommand, VariantArgs, WorkflowsCommand,
};

/// How long to wait for a connection to the server.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How much of a body that is not the API's error envelope is shown in an error.
const MAX_SHOWN: usize = 512;

/// An API answer outside 2xx.
#[derive(Debug, thiserror::Error)]
#[error("{status} {code}: {message}")]
struct ApiFailure {
    /// The HTTP status code.
    status: u16,
    /// The API's `error_code` (`http_<status>` when the body is not the error envelope).
    code: String,
    /// The API's `error` message (or the start of the body).
    message: String,
}

/// An HTTP client of one hookflow server with one API key.
pub struct Client {
    http: reqwest::Client,
    base: Url,
    key: String,
}

impl Client {
    /// Checks the URL and the key and builds the client.
    pub fn new(connection: &Connection) -> anyhow::Result<Self> {
        let base = Url::parse(&connection.url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "--url {:?} is not an http(s) URL such as http://127.0.0.1:8080",
                    connection.url
                )
            })?;
        let key = connection
            .api_key
            .clone()
            .filter(|k| !k.trim().is_empty())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "no API key: pass --api-key hf_… or set HOOKFLOW_API_KEY \
                 (`hookflow keys create` makes one; the server prints one on its first start)"
                )
            })?;
        crate::net::install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(connection.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("hookflow-cli/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            base,
            key: key.trim().to_string(),
        })
    }

    /// A request to the API path made of `segments` (each percent-encoded) with a query.
    fn request(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> RequestBuilder {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("an http(s) URL has a path")
            .pop_if_empty()
            .extend(segments);
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (k, v)));
        }
        self.http.request(method, url).bearer_auth(&self.key)
    }

    /// Sends a request; a 2xx answer's JSON, or an [`ApiFailure`].
    async fn send(&self, request: RequestBuilder) -> anyhow::Result<Value> {
        let response = request.send().await.map_err(|e| {
            let what = if e.is_timeout() {
                "no answer in time (see --timeout)"
            } else {
                "cannot reach it"
            };
            anyhow::Error::new(e).context(format!("hookflow at {}: {what}", self.base))
        })?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .with_context(|| format!("reading the answer of {}", self.base))?;
        let value: Option<Value> = serde_json::from_slice(&body).ok();
        if status.is_success() {
            return value.ok_or_else(|| anyhow::anyhow!("{status}: the answer is not JSON"));
        }
        let field = |name: &str| value.as_ref()?.get(name)?.as_str().map(str::to_string);
        Err(ApiFailure {
            status: status.as_u16(),
            code: field("error_code").unwrap_or_else(|| format!("http_{}", status.as_u16())),
            message: field("error").unwrap_or_else(|| {
                let text = String::from_utf8_lossy(&body);
                let text: String = text.trim().chars().take(MAX_SHOWN).collect();
                if text.is_empty() {
                    status
                        .canonical_reason()
                        .unwrap_or("no message")
                        .to_string()
                } else {
                    text
                }
            }),
        }
        .into())
    }

    /// `GET` with a query.
    async fn get(&self, segments: &[&str], query: &[(&str, String)]) -> anyhow::Result<Value> {
        self.send(self.request(Method::GET, segments, query)).await
    }

    /// A JSON body with any method.
    async fn json(&self, method: Method, segments: &[&str], body: &Value) -> anyhow::Result<Value> {
        self.send(self.request(method, segments, &[]).json(body))
            .await
    }

    /// A list endpoint: one page, or with `--all` every page in one `{"data", "next_cursor"}`.
    async fn list(
        &self,
        segments: &[&str],
        mut query: Vec<(&str, String)>,
        page: &PageArgs,
    ) -> anyhow::Result<Value> {
        query.extend(page.limit.map(|l| ("limit", l.to_string())));
        query.extend(page.cursor.clone().map(|c| ("cursor", c)));
        let mut answer = self.get(segments, &query).await?;
        if !page.all {
            return Ok(answer);
        }
        let mut data = Vec::new();
        loop {
            data.extend(answer["data"].as_array().cloned().unwrap_or_default());
            let Some(cursor) = answer["next_cursor"].as_str().map(str::to_string) else {
                break;
            };
            let mut next = query.clone();
            next.push(("cursor", cursor));
            answer = self.get(segments, &next).await?;
        }
        Ok(json!({ "data": data, "next_cursor": null }))
    }
}

/// Reads a file, or standard input for `-`.
pub fn read_source(path: &Path) -> anyhow::Result<Vec<u8>> {
    if path.as_os_str() == "-" {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)?;
        Ok(bytes)
    } else {
        std::fs::read(path).with_context(|| format!("reading {}", path.display()))
    }
}

/// Prints an answer for scripts (pipe it to `jq`).
fn print(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Adds `name: value` to a JSON object when the value is given.
fn put(body: &mut Map<String, Value>, name: &str, value: Option<impl Into<Value>>) {
    if let Some(value) = value {
        body.insert(name.to_string(), value.into());
    }
}

/// `hookflow workflows …`
pub async fn workflows(remote: Remote<WorkflowsCommand>) -> anyhow::Result<()> {
    let client = Client::new(&remote.connection)?;
    let answer = match remote.command {
        WorkflowsCommand::List(page) => client.list(&["v1", "workflows"], vec![], &page).await?,
        WorkflowsCommand::Get { name } => client.get(&["v1", "workflows", &name], &[]).await?,
        WorkflowsCommand::Create { file } => {
            let body = read_source(&file)?;
            let json = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
            let content_type = if json {
                "application/json"
            } else {
                "application/yaml"
            };
            let request = client
                .request(Method::POST, &["v1", "workflows"], &[])
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(body);
            client.send(request).await?
        }
    };
    print(&answer)
}

/// The `variants` member described by `--variants`, or `--variant`/`--version`/`--settings`.
fn variants(args: VariantArgs) -> Option<Value> {
    if args.variants.is_some() {
        return args.variants;
    }
    if args.variant.is_none() && args.version.is_none() && args.settings.is_none() {
        return None;
    }
    let mut variant = Map::new();
    put(&mut variant, "version", args.version);
    put(&mut variant, "settings", args.settings);
    let name = args.variant.unwrap_or_else(|| "default".to_string());
    Some(json!({ name: variant }))
}

/// `hookflow deployments …`
pub async fn deployments(remote: Remote<DeploymentsCommand>) -> anyhow::Result<()> {
    let client = Client::new(&remote.connection)?;
    let answer = match remote.command {
        DeploymentsCommand::List(page) => {
            client.list(&["v1", "deployments"], vec![], &page).await?
        }
        DeploymentsCommand::Get { id } => client.get(&["v1", "deployments", &id], &[]).await?,
        DeploymentsCommand::Create(args) => {
            let mut body = Map::new();
            put(&mut body, "name", Some(args.name));
            put(&mut body, "workflow", Some(args.workflow));
            put(&mut body, "variants", variants(args.variants));
            put(&mut body, "concurrency_limit", args.concurrency_limit);
            client
                .json(Method::POST, &["v1", "deployments"], &body.into())
                .await?
        }
        DeploymentsCommand::Update(args) => {
            let mut body = Map::new();
            put(&mut body, "variants", variants(args.variants));
            put(&mut body, "concurrency_limit", args.concurrency_limit);
            if args.no_concurrency_limit {
                body.insert("concurrency_limit".to_string(), Value::Null);
            }
            if body.is_empty() {
                anyhow::bail!(
                    "nothing to change: give --variants, --variant/--version/--settings, \
                     --concurrency-limit or --no-concurrency-limit"
                );
            }
            client
                .json(
                    Method::PATCH,
                    &["v1", "deployments", &args.id],
                    &body.into(),
                )
                .await?
        }
        DeploymentsCommand::RotateSecret { id, grace_period } => {
            let mut body = Map::new();
            put(&mut body, "grace_period", grace_period);
            let path = ["v1", "deployments", &id, "secret", "rotate"];
            client.json(Method::POST, &path, &body.into()).await?
        }
    };
    print(&answer)
}

/// `hookflow invoke …`: prints the API's answer (sync: the result; async: the 202).
pub async fn invoke(args: InvokeArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.connection)?;
    let inputs = match &args.inputs_file {
        Some(path) => {
            let value: Value = serde_json::from_slice(&read_source(path)?)
                .with_context(|| format!("{} is not valid JSON", path.display()))?;
            anyhow::ensure!(
                value.is_object(),
                "{} must hold a JSON object",
                path.display()
            );
            Some(value)
        }
        None => args.inputs,
    };
    let mut body = Map::new();
    put(&mut body, "deployment", Some(args.deployment));
    put(&mut body, "variant", args.variant);
    put(&mut body, "inputs", inputs);
    put(&mut body, "user", args.user);
    put(&mut body, "metadata", args.metadata);
    put(
        &mut body,
        "async",
        args.callback_url
            .map(|url| json!({ "enabled": true, "callback_url": url })),
    );
    let mut request = client
        .request(Method::POST, &["v1", "workflow", "invoke"], &[])
        .json(&body);
    if let Some(key) = &args.idempotency_key {
        request = request.header("Idempotency-Key", key);
    }
    print(&client.send(request).await?)
}

/// `hookflow runs …`
pub async fn runs(remote: Remote<RunsCommand>) -> anyhow::Result<()> {
    let client = Client::new(&remote.connection)?;
    let answer = match remote.command {
        RunsCommand::List(args) => {
            let mut query: Vec<(&str, String)> = [
                ("status", args.status),
                ("deployment", args.deployment),
                ("source", args.source),
                ("delivery", args.delivery),
                ("user", args.user),
                ("since", args.since),
                ("until", args.until),
            ]
            .into_iter()
            .filter_map(|(name, value)| Some((name, value?)))
            .collect();
            let metadata: Vec<(String, String)> = args
                .metadata
                .into_iter()
                .map(|(key, value)| (format!("metadata.{key}"), value))
                .collect();
            query.extend(metadata.iter().map(|(k, v)| (k.as_str(), v.clone())));
            client
                .list(&["v1", "workflow", "runs"], query, &args.page)
                .await?
        }
        RunsCommand::Get { id } => client.get(&["v1", "workflow", "runs", &id], &[]).await?,
        RunsCommand::Cancel { id, reason } => {
            let mut body = Map::new();
            put(&mut body, "reason", reason);
            let path = ["v1", "workflow", "runs", &id, "cancel"];
            client.json(Method::POST, &path, &body.into()).await?
        }
        RunsCommand::Deliveries { id, page } => {
            let path = ["v1", "workflow", "runs", &id, "deliveries"];
            client.list(&path, vec![], &page).await?
        }
        RunsCommand::Retry { id, callback_url } => {
            let mut body = Map::new();
            put(&mut body, "callback_url", callback_url);
            let path = ["v1", "workflow", "runs", &id, "deliveries", "retry"];
            client.json(Method::POST, &path, &body.into()).await?
        }
    };
    print(&answer)
}

/// `hookflow approvals …`
pub async fn approvals(remote: Remote<ApprovalsCommand>) -> anyhow::Result<()> {
    let client = Client::new(&remote.connection)?;
    let answer = match remote.command {
        ApprovalsCommand::List { status, page } => {
            let query = status.map(|s| ("status", s)).into_iter().collect();
            client
                .list(&["v1", "workflow", "approvals"], query, &page)
                .await?
        }
        ApprovalsCommand::Get { id } => {
            client
                .get(&["v1", "workflow", "approvals", &id], &[])
                .await?
        }
        ApprovalsCommand::Approve(args) => answer(&client, "approve", args).await?,
        ApprovalsCommand::Reject(args) => answer(&client, "reject", args).await?,
    };
    print(&answer)
}

/// Answers an approval with `decision`.
async fn answer(client: &Client, decision: &str, args: AnswerArgs) -> anyhow::Result<Value> {
    let mut body = Map::new();
    put(&mut body, "decision", Some(decision));
    put(&mut body, "comment", args.comment);
    put(&mut body, "responder", args.responder);
    put(&mut body, "data", args.data);
    let path = ["v1", "workflow", "approvals", &args.id];
    client.json(Method::POST, &path, &body.into()).await
}
