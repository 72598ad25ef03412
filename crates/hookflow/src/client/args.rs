//! Flags of the client commands (`workflows`, `deployments`, `invoke`, `runs`, `approvals`),
//! which talk to a running hookflow over its HTTP API.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::Value;

/// Which server to talk to, with which key; accepted before or after the subcommand.
#[derive(Debug, Args)]
pub struct Connection {
    /// Base URL of the hookflow server.
    #[arg(
        long,
        env = "HOOKFLOW_URL",
        default_value = "http://127.0.0.1:8080",
        global = true,
        help_heading = "Connection"
    )]
    pub url: String,
    /// API key (`hf_…`), sent as `Authorization: Bearer`.
    #[arg(
        long,
        env = "HOOKFLOW_API_KEY",
        hide_env_values = true,
        global = true,
        help_heading = "Connection"
    )]
    pub api_key: Option<String>,
    /// Give up on a request after this long (a sync invoke waits for its run).
    #[arg(
        long,
        default_value = "90s",
        value_parser = humantime::parse_duration,
        global = true,
        help_heading = "Connection"
    )]
    pub timeout: Duration,
}

/// A group of client commands, with the connection flags.
#[derive(Debug, Args)]
pub struct Remote<C: Subcommand> {
    #[command(flatten)]
    pub connection: Connection,
    #[command(subcommand)]
    pub command: C,
}

/// Paging of list commands (answers are `{"data": [...], "next_cursor": ...}`, newest first).
#[derive(Debug, Args)]
pub struct PageArgs {
    /// Items per page, 1 to 1000 [server default: 50].
    #[arg(long)]
    pub limit: Option<u32>,
    /// Continue from a previous answer's `next_cursor`.
    #[arg(long, conflicts_with = "all")]
    pub cursor: Option<String>,
    /// Follow `next_cursor` to the end and print every item in one answer.
    #[arg(long)]
    pub all: bool,
}

/// `hookflow workflows …`
#[derive(Debug, Subcommand)]
pub enum WorkflowsCommand {
    /// List workflows with their latest version.
    List(PageArgs),
    /// Print every version of a workflow.
    Get {
        /// Workflow name.
        name: String,
    },
    /// Save a definition; a definition with an existing name becomes its next version.
    Create {
        /// Definition file, JSON or YAML (`-` reads standard input). A file whose first
        /// non-blank character is `{` is sent as JSON, anything else as YAML.
        #[arg(long, short)]
        file: PathBuf,
    },
}

/// A variant given on the command line (`deployments create` and `update`).
#[derive(Debug, Args)]
pub struct VariantArgs {
    /// All variants as the API takes them, e.g. '{"default": {"version": 2, "settings":
    /// {"model": "small"}}, "beta": {"settings": {"model": "large"}}}' (a null variant is removed
    /// by `update`).
    #[arg(long, value_parser = json_object, conflicts_with_all = ["variant", "version", "settings"])]
    pub variants: Option<Value>,
    /// The variant that --version and --settings describe [default: default].
    #[arg(long)]
    pub variant: Option<String>,
    /// Workflow version the variant pins [default: the latest at this moment].
    #[arg(long)]
    pub version: Option<u64>,
    /// Settings of the variant, a JSON object that steps read as `settings` [default: {}].
    #[arg(long, value_parser = json_object)]
    pub settings: Option<Value>,
}

/// `hookflow deployments create …`
#[derive(Debug, Args)]
pub struct CreateDeployment {
    /// Deployment name: letters, digits, `_`, `-`, `.`.
    #[arg(long)]
    pub name: String,
    /// The workflow it runs.
    #[arg(long)]
    pub workflow: String,
    #[command(flatten)]
    pub variants: VariantArgs,
    /// Most runs of this deployment running at once; others wait as `queued`.
    #[arg(long)]
    pub concurrency_limit: Option<u64>,
}

/// `hookflow deployments update …`
#[derive(Debug, Args)]
pub struct UpdateDeployment {
    /// Deployment id or name.
    pub id: String,
    /// Variants given here replace the deployment's variants of the same name; others stay.
    #[command(flatten)]
    pub variants: VariantArgs,
    /// New concurrency limit.
    #[arg(long, conflicts_with = "no_concurrency_limit")]
    pub concurrency_limit: Option<u64>,
    /// Remove the concurrency limit.
    #[arg(long)]
    pub no_concurrency_limit: bool,
}

/// `hookflow deployments …`
#[derive(Debug, Subcommand)]
pub enum DeploymentsCommand {
    /// List deployments.
    List(PageArgs),
    /// Print a deployment.
    Get {
        /// Deployment id or name.
        id: String,
    },
    /// Create a deployment of a workflow; the answer holds its secret.
    Create(CreateDeployment),
    /// Change a deployment's variants or concurrency limit.
    Update(UpdateDeployment),
    /// Give a deployment a new secret; the old one keeps working for the grace period.
    RotateSecret {
        /// Deployment id or name.
        id: String,
        /// How long the old secret still works and signs [default: 24h].
        #[arg(long)]
        grace_period: Option<String>,
    },
}

/// `hookflow invoke …`
#[derive(Debug, Args)]
pub struct InvokeArgs {
    #[command(flatten)]
    pub connection: Connection,
    /// Deployment name or id.
    pub deployment: String,
    /// Variant of the deployment [default: default].
    #[arg(long)]
    pub variant: Option<String>,
    /// Inputs, a JSON object [default: {}].
    #[arg(long, visible_alias = "input", value_parser = json_object, conflicts_with = "inputs_file")]
    pub inputs: Option<Value>,
    /// File holding the inputs as a JSON object (`-` reads standard input).
    #[arg(long, visible_alias = "input-file")]
    pub inputs_file: Option<PathBuf>,
    /// The user the run is for (`user`).
    #[arg(long)]
    pub user: Option<String>,
    /// Metadata, a flat JSON object echoed in callbacks and filterable in `runs list`.
    #[arg(long, value_parser = json_object)]
    pub metadata: Option<Value>,
    /// Run asynchronously and deliver the result to this URL. Without it the call waits for the
    /// result (up to the server's sync wait limit, then it answers 202 and the run goes on).
    #[arg(long)]
    pub callback_url: Option<String>,
    /// `Idempotency-Key`: the same key with the same call within 24 h starts nothing new.
    #[arg(long)]
    pub idempotency_key: Option<String>,
}

/// `hookflow runs list …`
#[derive(Debug, Args)]
pub struct ListRuns {
    /// Only runs with this status.
    #[arg(long, value_parser = ["queued", "running", "waiting", "completed", "failed", "cancelled"])]
    pub status: Option<String>,
    /// Only runs of this deployment (name or id).
    #[arg(long)]
    pub deployment: Option<String>,
    /// Only runs started this way.
    #[arg(long, value_parser = ["api", "webhook"])]
    pub source: Option<String>,
    /// Only runs whose result is delivered this way.
    #[arg(long, value_parser = ["direct", "callback"])]
    pub delivery: Option<String>,
    /// Only runs for this user.
    #[arg(long)]
    pub user: Option<String>,
    /// Only runs whose metadata KEY has this VALUE (e.g. vip=true); repeatable.
    #[arg(long, value_name = "KEY=VALUE", value_parser = key_value)]
    pub metadata: Vec<(String, String)>,
    /// Only runs created at or after this time (RFC 3339, e.g. 2026-01-31T12:00:00Z).
    #[arg(long)]
    pub since: Option<String>,
    /// Only runs created before this time (RFC 3339).
    #[arg(long)]
    pub until: Option<String>,
    #[command(flatten)]
    pub page: PageArgs,
}

/// `hookflow runs …`
#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// List runs, newest first.
    List(ListRuns),
    /// Print a run with every step execution.
    Get {
        /// The run's request id (`req_…`).
        id: String,
    },
    /// Cancel a run that has not ended.
    Cancel {
        /// The run's request id.
        id: String,
        /// Why (the run's error becomes `Workflow cancelled: REASON`).
        #[arg(long)]
        reason: Option<String>,
    },
    /// List the run's callback delivery attempts, newest first.
    Deliveries {
        /// The run's request id.
        id: String,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Send the run's terminal event again now (also after its retries ran out).
    #[command(visible_alias = "replay")]
    Retry {
        /// The run's request id.
        id: String,
        /// Send it to this URL instead of the run's callback URL (required for sync runs).
        #[arg(long)]
        callback_url: Option<String>,
    },
}

/// An answer to an approval.
#[derive(Debug, Args)]
pub struct AnswerArgs {
    /// The approval id (`apr_…`).
    pub id: String,
    /// A comment kept with the answer.
    #[arg(long)]
    pub comment: Option<String>,
    /// Who answers.
    #[arg(long)]
    pub responder: Option<String>,
    /// Data for the workflow, a JSON object (the step's output carries it).
    #[arg(long, value_parser = json_object)]
    pub data: Option<Value>,
}

/// `hookflow approvals …`
#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// List approvals, newest first.
    List {
        /// Only approvals with this status.
        #[arg(long, value_parser = ["pending", "approved", "rejected", "timed_out", "cancelled"])]
        status: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Print an approval.
    Get {
        /// The approval id (`apr_…`).
        id: String,
    },
    /// Approve: the run goes on with the answer as the step's output.
    Approve(AnswerArgs),
    /// Reject: the step fails, and so does the run.
    Reject(AnswerArgs),
}

/// Parses a JSON object argument.
fn json_object(text: &str) -> Result<Value, String> {
    match serde_json::from_str(text) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(_) => Err("must be a JSON object, e.g. '{\"key\": \"value\"}'".to_string()),
        Err(e) => Err(format!("not valid JSON: {e}")),
    }
}

/// Parses `KEY=VALUE`.
fn key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .filter(|(key, _)| !key.is_empty())
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .ok_or_else(|| "must be KEY=VALUE".to_string())
}
