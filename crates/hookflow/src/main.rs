use std::process::ExitCode;

use clap::Parser;
use hookflow::config::{Cli, Command, KeysCommand};

/// jemalloc rather than the system allocator: with it the node spends less CPU per request
/// (measured with `hookflow-bench`, see bench/README.md "Memory and the allocator").
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "hookflow=info,tower_http=warn".into()),
        )
        .init();
    let result = match Cli::parse().command {
        Command::Serve(args) => hookflow::server::serve(args).await,
        Command::Migrate(db) => hookflow::cli::migrate(db).await,
        Command::Keys(KeysCommand::Create {
            workspace,
            database,
        }) => hookflow::cli::create_key(&workspace, database).await,
        Command::Verify(args) => hookflow::cli::verify(args),
        Command::Listen(args) => hookflow::cli::listen(args).await,
        Command::Workflows(remote) => hookflow::client::workflows(remote).await,
        Command::Deployments(remote) => hookflow::client::deployments(remote).await,
        Command::Invoke(args) => hookflow::client::invoke(args).await,
        Command::Runs(remote) => hookflow::client::runs(remote).await,
        Command::Approvals(remote) => hookflow::client::approvals(remote).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line, like clap's own errors: the message and its causes.
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
