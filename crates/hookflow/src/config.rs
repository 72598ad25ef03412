//! Command-line flags, their environment twins, the TOML config file, and the resolved settings.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use hookflow_core::retry::{DeliverySchedule, RetryRules};
use ipnet::IpNet;
use serde::Deserialize;

use crate::client::args::{
    ApprovalsCommand, DeploymentsCommand, InvokeArgs, Remote, RunsCommand, WorkflowsCommand,
};

/// hookflow: run workflows asynchronously and deliver their results by signed webhooks.
#[derive(Debug, Parser)]
#[command(name = "hookflow", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// hookflow's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (API, engine and callback delivery).
    Serve(ServeArgs),
    /// Run database migrations and exit.
    Migrate(DatabaseArg),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Check a callback's signatures (exit status 0 when every signature present verifies).
    Verify(VerifyArgs),
    /// Run a local callback receiver that verifies and prints every event (development).
    Listen(ListenArgs),
    /// Workflows of a running server: list, read, save (client; see --url, --api-key).
    Workflows(Remote<WorkflowsCommand>),
    /// Deployments of a running server: list, read, create, update, rotate the secret (client).
    Deployments(Remote<DeploymentsCommand>),
    /// Run a deployment on a running server: sync, or async with --callback-url (client).
    Invoke(InvokeArgs),
    /// Runs of a running server: list, read, cancel, delivery attempts, replay (client).
    Runs(Remote<RunsCommand>),
    /// Approvals of a running server: list, read, approve, reject (client).
    Approvals(Remote<ApprovalsCommand>),
}

/// `hookflow listen …`
#[derive(Debug, Args)]
pub struct ListenArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub listen: String,
    /// The deployment secret (`whsec_…`) to verify with; repeatable. Without one, events are
    /// printed unverified.
    #[arg(long)]
    pub secret: Vec<String>,
    /// Status code to answer with (e.g. 500 to watch hookflow retry).
    #[arg(long, default_value_t = 200)]
    pub status: u16,
}

/// The database to use.
#[derive(Debug, Args)]
pub struct DatabaseArg {
    /// Database URL: sqlite://PATH (default sqlite://hookflow.db) or postgres://….
    #[arg(long, env = "HOOKFLOW_DATABASE_URL")]
    pub database: Option<String>,
}

/// `hookflow keys …`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create an API key and print it alone on stdout (creating the workspace if needed).
    Create {
        /// Workspace name.
        #[arg(long, default_value = "default")]
        workspace: String,
        #[command(flatten)]
        database: DatabaseArg,
    },
}

/// `hookflow verify …`
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The deployment secret (`whsec_…`); repeat for a rotation's old and new secret.
    #[arg(long, required = true)]
    pub secret: Vec<String>,
    /// File holding the raw request body (`-` for standard input).
    #[arg(long)]
    pub body_file: PathBuf,
    /// A request header as `Name: value`; repeatable.
    #[arg(long = "header", short = 'H')]
    pub headers: Vec<String>,
    /// Largest accepted age of `webhook-timestamp`.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub tolerance: Duration,
}

/// `hookflow serve` flags. Unset flags fall back to the config file, then to defaults.
#[derive(Debug, Args, Default)]
pub struct ServeArgs {
    /// Database URL: sqlite://PATH or postgres://USER@HOST/DB [default: sqlite://hookflow.db].
    #[arg(long, env = "HOOKFLOW_DATABASE_URL")]
    pub database: Option<String>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "HOOKFLOW_LISTEN")]
    pub listen: Option<String>,
    /// Public base URL of this service (base of async-step webhook URLs) [default: from --listen].
    #[arg(long, env = "HOOKFLOW_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Non-public network (CIDR) that callbacks and steps may reach, e.g. 127.0.0.0/8; repeatable.
    #[arg(
        long = "allow-network",
        env = "HOOKFLOW_ALLOW_NETWORKS",
        value_delimiter = ','
    )]
    pub allow_networks: Vec<IpNet>,
    /// Callback retry delays [default: 5s,5m,30m,2h,5h,10h,10h].
    #[arg(long, env = "HOOKFLOW_RETRY_SCHEDULE")]
    pub retry_schedule: Option<DeliverySchedule>,
    /// Minimum wait before retrying a callback answered 429 or timed out [default: 60s].
    #[arg(long, env = "HOOKFLOW_RETRY_THROTTLE_FLOOR", value_parser = humantime::parse_duration)]
    pub retry_throttle_floor: Option<Duration>,
    /// Timeout of one callback attempt [default: 15s].
    #[arg(long, env = "HOOKFLOW_CALLBACK_TIMEOUT", value_parser = humantime::parse_duration)]
    pub callback_timeout: Option<Duration>,
    /// How long a sync invoke waits before answering 202 [default: 60s].
    #[arg(long, env = "HOOKFLOW_SYNC_WAIT_LIMIT", value_parser = humantime::parse_duration)]
    pub sync_wait_limit: Option<Duration>,
    /// TOML file with any of the settings above (snake_case keys) and `body_limit` (bytes).
    #[arg(long, env = "HOOKFLOW_CONFIG")]
    pub config: Option<PathBuf>,
}

/// The TOML config file: every key optional; flags win over it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    database: Option<String>,
    listen: Option<String>,
    public_url: Option<String>,
    allow_networks: Option<Vec<IpNet>>,
    retry_schedule: Option<String>,
    retry_throttle_floor: Option<String>,
    callback_timeout: Option<String>,
    sync_wait_limit: Option<String>,
    body_limit: Option<usize>,
}

/// Resolved server settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub database: String,
    pub listen: String,
    /// Public base URL, without a trailing slash; `None` until known from the bound address.
    pub public_url: Option<String>,
    pub allow_networks: Vec<IpNet>,
    pub retry: RetryRules,
    pub callback_timeout: Duration,
    pub sync_wait_limit: Duration,
    pub body_limit: usize,
}

/// Default database URL.
pub const DEFAULT_DATABASE: &str = "sqlite://hookflow.db";

fn duration(name: &str, value: Option<String>) -> anyhow::Result<Option<Duration>> {
    value
        .map(|v| {
            humantime::parse_duration(&v)
                .map_err(|e| anyhow::anyhow!("config {name}: invalid duration {v:?}: {e}"))
        })
        .transpose()
}

impl Settings {
    /// Merges flags (and their environment twins) over the config file over defaults.
    pub fn resolve(args: ServeArgs) -> anyhow::Result<Self> {
        let file: FileConfig = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
                toml::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let schedule = match (args.retry_schedule, file.retry_schedule) {
            (Some(s), _) => s,
            (None, Some(text)) => text
                .parse()
                .map_err(|e| anyhow::anyhow!("config retry_schedule: {e}"))?,
            (None, None) => DeliverySchedule::default(),
        };
        let defaults = RetryRules::default();
        let allow_networks = if args.allow_networks.is_empty() {
            file.allow_networks.unwrap_or_default()
        } else {
            args.allow_networks
        };
        Ok(Self {
            database: args
                .database
                .or(file.database)
                .unwrap_or_else(|| DEFAULT_DATABASE.to_string()),
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| "127.0.0.1:8080".to_string()),
            public_url: args
                .public_url
                .or(file.public_url)
                .map(|u| u.trim_end_matches('/').to_string()),
            allow_networks,
            retry: RetryRules {
                schedule,
                throttle_floor: args
                    .retry_throttle_floor
                    .or(duration("retry_throttle_floor", file.retry_throttle_floor)?)
                    .unwrap_or(defaults.throttle_floor),
                max_retry_after: defaults.max_retry_after,
            },
            callback_timeout: args
                .callback_timeout
                .or(duration("callback_timeout", file.callback_timeout)?)
                .unwrap_or(Duration::from_secs(15)),
            sync_wait_limit: args
                .sync_wait_limit
                .or(duration("sync_wait_limit", file.sync_wait_limit)?)
                .unwrap_or(Duration::from_secs(60)),
            body_limit: file.body_limit.unwrap_or(1024 * 1024),
        })
    }
}
