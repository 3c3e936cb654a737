use clap::Parser;
use concierge::{config::Config, platform::clock::SystemClock, Server};
use std::sync::Arc;

// Server rendering allocates many small strings per request; mimalloc keeps the tail short.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn,tower_sessions=warn".into()),
        )
        .init();
    // `concierge audit verify …`: a command of its own, which needs no server flags.
    if std::env::args().nth(1).as_deref() == Some("audit") {
        let cmd =
            concierge::platform::audit::command::AuditCommand::parse_from(std::env::args().skip(1));
        let code = concierge::platform::audit::command::run(cmd).await?;
        std::process::exit(code);
    }
    let config = Config::parse();
    let server = Server::build(config, Arc::new(SystemClock)).await?;
    tracing::info!("Concierge listening on http://{}", server.addr);
    server.run_until(stop_signal()).await
}

/// SIGTERM (a service manager, a rolling restart) or Ctrl-C.
async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
