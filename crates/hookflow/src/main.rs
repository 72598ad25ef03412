use clap::Parser;
use hookflow::config::{Cli, Command, KeysCommand};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "hookflow=info,tower_http=warn".into()),
        )
        .init();
    match Cli::parse().command {
        Command::Serve(args) => hookflow::server::serve(args).await,
        Command::Migrate(db) => hookflow::cli::migrate(db).await,
        Command::Keys(KeysCommand::Create {
            workspace,
            database,
        }) => hookflow::cli::create_key(&workspace, database).await,
        Command::Verify(args) => hookflow::cli::verify(args),
        Command::Listen(args) => hookflow::cli::listen(args).await,
    }
}
