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
    /// Warnings (valid, but surely not meant) are printed too, and the exit is 0.
    Check {
        /// Config file.
        #[arg(short, long)]
        config: PathBuf,
        /// Print the compiled policy (or the errors) as JSON, as `/admin/config` does.
        #[arg(long)]
        json: bool,
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
    let said = match Cli::parse().command {
        Command::Check { config, json } => check(&config, json),
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
            let mut out = serde_json::to_string_pretty(&schema).expect("a schema serializes");
            out.push('\n');
            Said::out(out)
        }
        Command::Run { config } => match run(config) {
            Ok(()) => Said::default(),
            Err(error) => Said::failure(format!("sluice: {error:#}\n")),
        },
    };
    said.write()
}

/// What a subcommand prints and how it ends.
#[derive(Default)]
struct Said {
    stdout: String,
    stderr: String,
    failed: bool,
}

impl Said {
    fn out(stdout: String) -> Self {
        Said {
            stdout,
            ..Said::default()
        }
    }

    fn failure(stderr: String) -> Self {
        Said {
            stderr,
            failed: true,
            ..Said::default()
        }
    }

    /// Writes it out and gives the exit status. A reader that stopped reading
    /// (`sluice schema | head`) wanted no more than it read: that is not a failure, and
    /// the status is the command's own.
    fn write(self) -> ExitCode {
        use std::io::{ErrorKind, Write};
        let written = |result: std::io::Result<()>| match result {
            Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(()),
            other => other,
        };
        let mut stdout = std::io::stdout().lock();
        let out = written(
            stdout
                .write_all(self.stdout.as_bytes())
                .and_then(|()| stdout.flush()),
        );
        // Nowhere left to report a failing stderr.
        let _ = std::io::stderr().lock().write_all(self.stderr.as_bytes());
        if let Err(error) = out {
            let _ = writeln!(
                std::io::stderr(),
                "sluice: cannot write the output: {error}"
            );
            return ExitCode::FAILURE;
        }
        if self.failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        }
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

fn check(path: &PathBuf, json: bool) -> Said {
    use sluice::inspect::summary::{self, Summary};
    fn json_text(value: &impl serde::Serialize) -> String {
        let mut text = serde_json::to_string_pretty(value).expect("plain data serializes");
        text.push('\n');
        text
    }
    match (load(Some(path)), json) {
        (Ok(config), false) => {
            let mut out = Summary::of(&config).text();
            let mut err = String::new();
            for warning in &config.warnings {
                err.push_str(&format!("warning: {warning}\n"));
            }
            let warnings = match config.warnings.len() {
                0 => String::new(),
                1 => ", 1 warning".into(),
                n => format!(", {n} warnings"),
            };
            out.push_str(&format!("{}: ok{warnings}\n", path.display()));
            Said {
                stdout: out,
                stderr: err,
                failed: false,
            }
        }
        (Ok(config), true) => Said::out(json_text(&summary::Document::of(&config))),
        (Err(errors), false) => Said::failure(format!("{errors}\n")),
        (Err(errors), true) => Said {
            stdout: json_text(&serde_json::json!({ "errors": summary::problems(&errors.0) })),
            failed: true,
            ..Said::default()
        },
    }
}

fn explain(path: &PathBuf, caller: sluice::inspect::Caller, method: &str, request: &str) -> Said {
    let config = match load(Some(path)) {
        Ok(config) => config,
        Err(errors) => return Said::failure(format!("{errors}\n")),
    };
    match sluice::inspect::explain::explain(&config, &caller, method, request) {
        Ok(text) => Said::out(text),
        Err(error) => Said::failure(format!("sluice explain: {error}\n")),
    }
}

/// A dependency-free HTTP/1.0 probe, because the container image has no curl.
fn health(admin: std::net::SocketAddr) -> Said {
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
        Ok(true) => Said::default(),
        Ok(false) => Said::failure(format!("sluice: {admin}/healthz did not answer 200\n")),
        Err(error) => Said::failure(format!("sluice: {admin}/healthz: {error}\n")),
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
