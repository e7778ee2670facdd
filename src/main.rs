//! The `augur` binary: parse the CLI, load and validate the config (exit non-zero before
//! binding anything if it is wrong), set up logging, bind, serve until SIGTERM / ctrl-c.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use augur::clock::Clock;
use augur::config::{Config, LogFormat};
use augur::server::{self, Instance, Listeners};

/// `augur demo`'s sample origin: part of the binary, not of the library's request path.
mod demo;

/// mimalloc: the request path allocates small, short-lived buffers (header maps, response
/// heads); glibc's malloc spent ~1.7k instructions per cache hit on them (callgrind).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "augur",
    version,
    about = "A caching reverse proxy for HTTP APIs"
)]
struct Cli {
    /// Configuration file.
    #[arg(
        long,
        short,
        global = true,
        default_value = "proxy.toml",
        env = "AUGUR_CONFIG"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a configuration file and exit (0 = valid).
    Check {
        /// The file to check (default: --config).
        path: Option<PathBuf>,
    },
    /// Run a built-in sample JSON API on the first route's upstream address, behind the proxy.
    Demo,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check { path }) => {
            let path = path.unwrap_or(cli.config);
            match Config::load(&path) {
                Ok(c) => {
                    println!(
                        "{}: OK ({} route{})",
                        path.display(),
                        c.routes.len(),
                        if c.routes.len() == 1 { "" } else { "s" }
                    );
                    // Valid, but unsafe on a shared network: say so, without failing the check.
                    for w in c.warnings() {
                        eprintln!("warning: {w}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Command::Demo) => exit(serve(&cli.config, true)),
        None => exit(serve(&cli.config, false)),
    }
}

fn exit(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("augur: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(path: &Path, demo: bool) -> anyhow::Result<()> {
    // Nothing is bound before the config is valid.
    let config = Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    init_tracing(&config);
    let runtime = match config.server.worker_threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        0 => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    }
    .context("starting the runtime")?;
    runtime.block_on(async move {
        if demo {
            start_demo(&config).await?;
        }
        let instance = Instance::new(&config, Clock::System).map_err(|e| anyhow::anyhow!(e))?;
        let listeners = Listeners::bind(&config).await?;
        if demo {
            let addr = listeners.proxy.local_addr()?;
            println!("Augur is caching the demo API on http://{addr}. Try:");
            println!("  curl -si http://{addr}/users | grep -i x-cache      # MISS, then HIT");
            println!("  curl -si http://{addr}/users/7 | grep -i -e x-cache -e age");
            println!("  curl -si http://{addr}/users/7/orders");
            println!(
                "  curl -s  http://{}/metrics | grep augur_requests_total",
                listeners.admin.local_addr()?
            );
            println!("Press ctrl-c to stop.");
        }
        server::run(config, instance, listeners, shutdown_signal()).await?;
        Ok(())
    })
}

async fn start_demo(config: &Config) -> anyhow::Result<()> {
    let route = config.routes.first().context("the config has no route")?;
    let authority = route
        .upstream
        .authority()
        .context("the first route's upstream has no host")?;
    let addr = tokio::net::lookup_host(authority.as_str())
        .await
        .with_context(|| format!("resolving {authority}"))?
        .find(|a| a.ip().is_loopback())
        .with_context(|| format!("augur demo serves its sample API on the first route's upstream, which must be a loopback address (it is {authority})"))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the demo API on {addr}"))?;
    println!(
        "Demo API listening on http://{addr} (route {:?}'s upstream).",
        route.name
    );
    tokio::spawn(demo::serve(listener));
    Ok(())
}

fn init_tracing(config: &Config) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.server.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.server.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// SIGTERM (orchestrators) or ctrl-c (a terminal).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received");
}
