//! The `augur` binary: parse the CLI, load and validate the config (exit non-zero before
//! binding anything if it is wrong), set up logging, bind, serve until SIGTERM / ctrl-c.
//!
//! Signals: the first SIGTERM or ctrl-c drains (up to `shutdown_grace`), a second one exits at
//! once with status 1; SIGHUP is logged and ignored (no reload yet), rather than killing the
//! process as its default action would.

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
        // Before anything is bound, so that no signal finds its default action (death).
        let shutdown = watch_signals().context("installing signal handlers")?;
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
        server::run(config, instance, listeners, async {
            let _ = shutdown.await;
        })
        .await?;
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

/// The exit status when a second signal cuts the drain short.
const FORCED_EXIT: i32 = 1;

/// Watch for signals until the process ends; the receiver resolves at the first SIGTERM
/// (orchestrators) or ctrl-c (a terminal), which starts the drain. The handlers stay
/// installed, so without this watcher a second signal would be swallowed and an operator
/// could only SIGKILL (security review L13): a second one exits at once, without draining or
/// saving the prefetch model. SIGHUP is logged and ignored.
#[cfg(unix)]
fn watch_signals() -> std::io::Result<tokio::sync::oneshot::Receiver<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut first = Some(tx);
        loop {
            let name = tokio::select! {
                Some(()) = term.recv() => "SIGTERM",
                Some(()) = int.recv() => "SIGINT",
                Some(()) = hup.recv() => {
                    tracing::warn!("SIGHUP received: configuration reload is not supported yet (restart to apply a new config); still running");
                    continue;
                }
                else => return,
            };
            shutdown_or_exit(&mut first, name);
        }
    });
    Ok(rx)
}

#[cfg(not(unix))]
fn watch_signals() -> std::io::Result<tokio::sync::oneshot::Receiver<()>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut first = Some(tx);
        while tokio::signal::ctrl_c().await.is_ok() {
            shutdown_or_exit(&mut first, "ctrl-c");
        }
    });
    Ok(rx)
}

/// The first shutdown signal starts the drain; the next one ends the process.
fn shutdown_or_exit(first: &mut Option<tokio::sync::oneshot::Sender<()>>, name: &str) {
    match first.take() {
        Some(tx) => {
            tracing::info!(
                signal = name,
                "shutdown signal received (send another to exit at once)"
            );
            let _ = tx.send(());
        }
        None => {
            tracing::warn!(
                signal = name,
                "second shutdown signal: exiting now, without draining"
            );
            std::process::exit(FORCED_EXIT);
        }
    }
}
