//! Test helpers: a real upstream, the real `sluice` binary on ephemeral loopback ports,
//! and a keep-alive HTTP/1.1 client. Everything binds 127.0.0.1 only.

#![allow(dead_code)]

pub mod pki;
pub mod raw_upstream;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// A real HTTP upstream answering `200 upstream ok` to everything.
pub async fn upstream() -> SocketAddr {
    counting_upstream().await.0
}

/// [`upstream`], with the number of requests it has received.
pub async fn counting_upstream() -> (SocketAddr, Arc<std::sync::atomic::AtomicU64>) {
    let seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = seen.clone();
    let addr = serve(move |_req| {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async { hyper::Response::new(Full::new(Bytes::from_static(b"upstream ok"))) }
    })
    .await;
    (addr, seen)
}

/// A real HTTP/1.1 server on a loopback port answering every request with `handler`.
pub async fn serve<F, Fut, B>(handler: F) -> SocketAddr
where
    F: Fn(Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = hyper::Response<B>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let answer = handler(req);
                    async move { Ok::<_, std::convert::Infallible>(answer.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A running `sluice run -c DIR/sluice.yaml`, killed on drop.
pub struct Sluice {
    child: Child,
    /// The proxy address it listens on.
    pub listen: SocketAddr,
    /// The admin address.
    pub admin: SocketAddr,
    /// Every log line so far (ANSI stripped).
    pub logs: Arc<Mutex<Vec<String>>>,
}

impl Sluice {
    /// Starts the binary on `config` (a path), with extra environment variables.
    pub fn start(config: &Path, env: &[(&str, &str)]) -> Sluice {
        Self::launch(Command::new(env!("CARGO_BIN_EXE_sluice")), config, env)
    }

    /// Starts `sluice run -c CONFIG` allowed to run on one CPU only (`taskset -c 0`).
    pub fn start_on_one_cpu(config: &Path) -> Sluice {
        let mut command = Command::new("taskset");
        command.args(["-c", "0", env!("CARGO_BIN_EXE_sluice")]);
        Self::launch(command, config, &[])
    }

    fn launch(mut command: Command, config: &Path, env: &[(&str, &str)]) -> Sluice {
        command
            .arg("run")
            .arg("-c")
            .arg(config)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("the sluice binary starts");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let line = strip_ansi(&line);
                // Kept before the start is announced, so the log a test reads has the line.
                sink.lock().unwrap().push(line.clone());
                if line.contains("sluice is running") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(line);
                    }
                }
            }
        });
        let Ok(running) = rx.recv_timeout(Duration::from_secs(30)) else {
            let _ = child.kill();
            panic!(
                "sluice did not start; its log:\n{}",
                logs.lock().unwrap().join("\n")
            );
        };
        Sluice {
            child,
            listen: field(&running, "listen"),
            admin: field(&running, "admin"),
            logs,
        }
    }

    /// The process id (for signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGHUP.
    pub fn hangup(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }

    /// The log so far, one string.
    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// A new keep-alive connection to the proxy.
    pub async fn connect(&self) -> Conn {
        Conn::open(self.listen).await
    }

    /// One request to the admin listener.
    pub async fn admin(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
    ) -> (StatusCode, String) {
        let mut conn = Conn::open(self.admin).await;
        let mut headers = vec![];
        let bearer;
        if let Some(token) = token {
            bearer = format!("Bearer {token}");
            headers.push(("authorization", bearer.as_str()));
        }
        let response = conn
            .send(method, path, &headers)
            .await
            .expect("the admin listener answers");
        (response.status, response.body)
    }

    /// The admin JSON at `path`.
    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.admin("GET", path, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// The value of one Prometheus sample, e.g. `sluice_config_reloads_total{result="ok"}`.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        let (_, text) = self.admin("GET", "/metrics", None).await;
        text.lines().find_map(|line| {
            line.strip_prefix(sample)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn field(line: &str, name: &str) -> SocketAddr {
    let start = line
        .find(&format!("{name}="))
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
        + name.len()
        + 1;
    let rest = &line[start..];
    let end = rest.find(' ').unwrap_or(rest.len());
    rest[..end].parse().unwrap()
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A response, read whole.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    /// Asserts the `X-RateLimit-*` headers are present (sluice sends them on every response).
    pub fn assert_limit_headers(&self) {
        for header in [
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
        ] {
            assert!(self.header(header).is_some(), "{header} on {}", self.status);
        }
    }

    /// A header as a string.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One HTTP/1.1 keep-alive connection: every request goes over the same socket, so a
/// dropped or reset connection shows up as an error.
pub struct Conn {
    sender: SendRequest<Empty<Bytes>>,
    addr: SocketAddr,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        Conn { sender, addr }
    }

    /// Sends one request and reads the whole response.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Reply, String> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let response = self
            .sender
            .send_request(request.body(Empty::new()).unwrap())
            .await
            .map_err(|e| e.to_string())?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// `GET path` with an API key.
    pub async fn get(&mut self, path: &str, key: &str) -> Result<Reply, String> {
        self.send("GET", path, &[("x-api-key", key)]).await
    }
}

/// A fresh directory for one test's files.
/// A config on `upstream` sharing `redis`, whose store line ends with `store` (for example
/// `on_error: deny, mode: sync`), with `routes` as the routes list.
pub fn redis_config(upstream: SocketAddr, redis: &Redis, store: &str, routes: &str) -> String {
    format!(
        "\
listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0 }}
upstream: {{ url: \"http://{upstream}\" }}
unknown_key: {{ plan: default }}
store: {{ backend: redis, url: \"{url}\", {store} }}
routes:
{routes}",
        url = redis.url()
    )
}

/// A temporary folder holding `text` as `sluice.yaml`, and that file's path; the folder
/// must outlive whatever reads the file.
pub fn config_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = dir();
    let path = dir.path().join("sluice.yaml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// `n` sluice processes on one config `text`; the folder holds it and must outlive them.
pub fn start_replicas(n: usize, text: &str) -> (tempfile::TempDir, Vec<Sluice>) {
    let (dir, path) = config_file(text);
    let replicas = (0..n).map(|_| Sluice::start(&path, &[])).collect();
    (dir, replicas)
}

pub fn dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Writes `text` to `path` the way editors do: a new file renamed over the old one.
pub fn replace(path: &Path, text: &str) {
    let tmp: PathBuf = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Polls `check` every 20 ms, for at most 10 s.
pub async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..500 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A real `redis-server` on a free loopback port (no persistence), killed on drop.
pub struct Redis {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
}

impl Redis {
    /// Starts one on a free port.
    pub fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = Redis { child: None, port };
        redis.restart();
        redis
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `redis-cli -p PORT ARGS…`'s output.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli is installed with redis-server");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Kills it (SIGKILL: no goodbye to clients).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes it (SIGSTOP): connections stay open and nothing answers, as with a Redis
    /// stuck on a slow command.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("redis-server runs");
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Starts it again on the same port, empty, and waits until it accepts connections.
    pub fn restart(&mut self) {
        self.kill();
        let mut child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test installs it)");
        for _ in 0..250 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                self.child = Some(child);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("redis-server did not listen on port {}", self.port);
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free loopback port (bound once and released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real Redis Cluster of three primaries (no replicas) on free loopback ports, in a
/// temporary directory; killed on drop.
pub struct RedisCluster {
    nodes: Vec<Child>,
    /// The primaries' ports.
    pub ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts three nodes, joins them with `redis-cli --cluster create` and waits until
    /// every node reports `cluster_state:ok`.
    pub fn start() -> RedisCluster {
        let dir = dir();
        let mut cluster = RedisCluster {
            nodes: Vec::new(),
            ports: Vec::new(),
            _dir: dir,
        };
        for _ in 0..3 {
            let (port, bus) = (free_port(), free_port());
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus.to_string(),
                ])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                .args(["--save", "", "--appendonly", "no"])
                .current_dir(cluster._dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server is installed (scripts/test installs it)");
            cluster.nodes.push(child);
            cluster.ports.push(port);
        }
        for &port in &cluster.ports {
            let listening = (0..250).any(|_| {
                let up = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
                if !up {
                    std::thread::sleep(Duration::from_millis(20));
                }
                up
            });
            assert!(
                listening,
                "redis cluster node did not listen on port {port}"
            );
        }
        let addrs: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli is installed with redis-server");
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        for &port in &cluster.ports {
            let ok = (0..500).any(|_| {
                let ok = cluster
                    .cli(port, &["cluster", "info"])
                    .contains("cluster_state:ok");
                if !ok {
                    std::thread::sleep(Duration::from_millis(20));
                }
                ok
            });
            assert!(
                ok,
                "redis cluster node {port} never reported cluster_state:ok"
            );
        }
        cluster
    }

    /// `redis-cli -p PORT ARGS…`'s output.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for child in &mut self.nodes {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
