//! The `sluice` command: `run` the gateway, `check` a config, `explain` a request, print
//! the config `schema`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use sluice::config;

// The request path allocates a few small buffers per request (header maps, bodies, ids) from
// several threads: mimalloc's thread-local free lists serve that faster than glibc's arenas.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A rate-limiting reverse proxy: a YAML policy in, exact limits, standard headers and
/// Prometheus metrics out.
#[derive(Parser)]
#[command(name = "sluice", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (on the embedded default config when no file is given).
    Run {
        /// Config file.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Exit 0 if the admin `/healthz` at ADDR answers 200 (for container health checks).
    Health {
        /// Admin listener address.
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin: std::net::SocketAddr,
    },
    /// Validate a config and print the compiled policy; exit 1 with file:line:column errors.
    Check {
        /// Config file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Show which identity, plan, route and limits a request would meet, and where each
    /// limit's value comes from. The key is never printed, only a digest of it.
    Explain {
        /// Config file.
        #[arg(short, long)]
        config: PathBuf,
        /// The API key the request carries (none: an anonymous caller).
        #[arg(long)]
        key: Option<String>,
        /// A JWT the request carries (verified as a live request's would be).
        #[arg(long)]
        jwt: Option<String>,
        /// The client address (default 127.0.0.1).
        #[arg(long)]
        ip: Option<std::net::IpAddr>,
        /// HTTP method, e.g. GET.
        method: String,
        /// Request path (with query), or a full http://HOST/PATH URL to match host patterns.
        path: String,
    },
    /// Print the JSON Schema of the config file, for editors.
    Schema,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check { config } => check(&config),
        Command::Health { admin } => health(admin),
        Command::Explain {
            config,
            key,
            jwt,
            ip,
            method,
            path,
        } => explain(
            &config,
            sluice::inspect::Caller { key, jwt, ip },
            &method,
            &path,
        ),
        Command::Schema => {
            let schema = config::schema::schema();
            println!(
                "{}",
                serde_json::to_string_pretty(&schema).expect("a schema serializes")
            );
            ExitCode::SUCCESS
        }
        Command::Run { config } => match run(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("sluice: {error:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn load(path: Option<&PathBuf>) -> Result<config::Config, config::ConfigErrors> {
    match path {
        Some(path) => config::load(path),
        None => config::load_str(
            config::EMBEDDED_DEFAULT,
            "<embedded config/sluice.yaml>",
            None,
        ),
    }
}

fn check(path: &PathBuf) -> ExitCode {
    match load(Some(path)) {
        Ok(config) => {
            for warning in &config.warnings {
                eprintln!("warning: {warning}");
            }
            print!("{}", sluice::policy::summary(&config));
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::FAILURE
        }
    }
}

fn explain(
    path: &PathBuf,
    caller: sluice::inspect::Caller,
    method: &str,
    request: &str,
) -> ExitCode {
    let config = match load(Some(path)) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::FAILURE;
        }
    };
    match sluice::inspect::explain::explain(&config, &caller, method, request) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("sluice explain: {error}");
            ExitCode::FAILURE
        }
    }
}

/// A dependency-free HTTP/1.0 probe, because the container image has no curl.
fn health(admin: std::net::SocketAddr) -> ExitCode {
    use std::io::{Read, Write};
    let timeout = std::time::Duration::from_secs(2);
    let probe = || -> std::io::Result<bool> {
        let mut stream = std::net::TcpStream::connect_timeout(&admin, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.write_all(b"GET /healthz HTTP/1.0\r\nHost: sluice\r\n\r\n")?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head)?;
        Ok(head.starts_with(b"HTTP/1.") && &head[9..12] == b"200")
    };
    match probe() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("sluice: {admin}/healthz did not answer 200");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("sluice: {admin}/healthz: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(path: Option<PathBuf>) -> anyhow::Result<()> {
    let metrics = sluice::telemetry::install_metrics();
    let config = load(path.as_ref()).map_err(|e| anyhow::anyhow!("invalid config:\n{e}"))?;
    sluice::telemetry::init_logs(config.log.json, &config.log.level);
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let runtime = runtime().context("cannot start the async runtime")?;
    runtime.block_on(sluice::run(config, metrics, shutdown_signal()))?;
    Ok(())
}

/// One thread when the process may use one CPU (a sidecar's usual limit, by affinity or
/// cgroup quota): a work-stealing scheduler would only add cross-thread wake-ups there.
/// Otherwise one worker per CPU.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut builder = if cpus == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder.enable_all().build()
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
