//! Test and benchmark harness: starts real `ledger-node` processes on free loopback ports
//! with their own data directories, and drives them with real MQTT clients (rumqttc).
//!
//! Owns process and client plumbing only. It must not reach into a running node's state:
//! everything it learns comes over MQTT or zenoh, or from the node's redb file after the node stopped.

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// How long a node may take to start listening.
pub const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long a test waits for one reply before it resends or fails.
pub const REPLY_DEADLINE: Duration = Duration::from_secs(20);

/// A free TCP port on 127.0.0.1 (bound and released; the OS does not hand it out again soon).
/// `GET path` from a node's metrics listener on `port`: the whole HTTP response.
pub fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("metrics port");
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// A free loopback port below the kernel's ephemeral range, never the same twice in one
/// test process. A port from the ephemeral range (what binding port 0 gives) can be taken
/// by an outgoing connection (a zenoh link, an MQTT client) between this call and the
/// node's bind, which made tests fail now and then.
pub fn free_port() -> u16 {
    free_ports(1)
}

/// The first of `count` consecutive free ports, chosen as `free_port` chooses one.
pub fn free_ports(count: u16) -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let (low, count) = (10_000u32, u32::from(count));
    assert!(ephemeral_low > low + 1_000 + count, "no room below the ephemeral ports ({ephemeral_low})");
    let span = ephemeral_low - low - count;
    // Test processes started one after another (or side by side) start far apart.
    let offset = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(count, std::sync::atomic::Ordering::Relaxed);
        let first = low + (offset + n) % span;
        let ports = (first..first + count).map(|p| u16::try_from(p).expect("below 65536"));
        if ports.clone().all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return u16::try_from(first).expect("below 65536");
        }
    }
    panic!("no {count} free ports between {low} and {ephemeral_low}");
}

/// Sends SIGTERM to `child` and waits for it to exit, up to `within`; None (and the child
/// SIGKILLed and reaped) if it did not. Never panics: guards call it while unwinding.
pub fn terminate_within(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    // SAFETY: kill(2) with our own child's pid, which is not reaped (try_wait said so).
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The `ledger-node` binary next to this test binary. `cargo test --workspace` (README's
/// test command) builds it with the tests. When it is missing (`cargo test -p
/// edgeledger-tests` alone), the first call builds it; it is not rebuilt otherwise,
/// because building the one package resolves dependency features differently from the
/// workspace and would rebuild half the tree on every run.
pub fn node_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("current exe");
            let mut dir = exe.parent().expect("exe dir").to_path_buf();
            if dir.ends_with("deps") {
                dir.pop();
            }
            let bin = dir.join("ledger-node");
            if !bin.exists() {
                let mut cmd = Command::new(env!("CARGO"));
                cmd.args(["build", "--quiet", "-p", "ledger-node", "--bin", "ledger-node"]);
                if dir.ends_with("release") {
                    cmd.arg("--release");
                }
                let status = cmd.status().expect("cargo runs");
                assert!(status.success(), "building ledger-node failed");
            }
            bin
        })
        .clone()
}

/// What to put in a node's config besides ports and data dir.
#[derive(Clone, Debug, Default)]
pub struct NodeOptions {
    /// Extra TOML appended to the generated config (devices, assets, limits).
    pub extra_toml: String,
    /// `[ledger]` section lines.
    pub ledger_toml: String,
    /// `[commit]` section lines.
    pub commit_toml: String,
    pub with_v5: bool,
    pub with_ws: bool,
    /// The node id; default `test/edge-1`.
    pub node_id: Option<String>,
    /// A region node: no MQTT; readiness is its zenoh port accepting connections.
    pub region_zenoh_port: Option<u16>,
    /// An MQTT 3.1.1-over-TLS listener with this certificate and key (PEM files).
    pub mqtt_tls: Option<bridge::pki::IdentityFiles>,
    /// With `mqtt_tls`: devices may log in with client certificates from its CA.
    pub mqtt_client_certs: bool,
}

/// A `ledger-node` child process with its own data directory. Killed on drop.
pub struct NodeProcess {
    pub dir: PathBuf,
    pub port: u16,
    pub port_v5: Option<u16>,
    pub port_ws: Option<u16>,
    pub port_tls: Option<u16>,
    /// The port whose accepting means the node is up (MQTT for an edge, zenoh for a region).
    ready_port: u16,
    pub config_path: PathBuf,
    child: Option<Child>,
    _tempdir: Option<tempfile::TempDir>,
}

impl NodeProcess {
    pub fn start(options: NodeOptions) -> NodeProcess {
        let tempdir = tempfile::tempdir().expect("tempdir");
        let dir = tempdir.path().to_path_buf();
        let mut node = NodeProcess::configure(&dir, options);
        node._tempdir = Some(tempdir);
        node.spawn();
        node
    }

    fn configure(dir: &Path, options: NodeOptions) -> NodeProcess {
        let port = free_port();
        let port_v5 = options.with_v5.then(free_port);
        let port_ws = options.with_ws.then(free_port);
        let id = options.node_id.clone().unwrap_or_else(|| "test/edge-1".to_string());
        let role = if options.region_zenoh_port.is_some() { "region" } else { "edge" };
        let mut toml = format!(
            "[node]\nid = \"{id}\"\nrole = \"{role}\"\ndata_dir = \"{}\"\n\n[mqtt]\nlisten_v4 = \"127.0.0.1:{port}\"\n",
            dir.join("data").display()
        );
        if let Some(p) = port_v5 {
            toml += &format!("listen_v5 = \"127.0.0.1:{p}\"\n");
        }
        if let Some(p) = port_ws {
            toml += &format!("listen_ws = \"127.0.0.1:{p}\"\n");
        }
        let port_tls = options.mqtt_tls.as_ref().map(|_| free_port());
        if let (Some(p), Some(files)) = (port_tls, &options.mqtt_tls) {
            toml += &format!(
                "listen_tls = \"127.0.0.1:{p}\"\ntls_certificate = \"{}\"\ntls_private_key = \"{}\"\n",
                files.cert.display(),
                files.key.display()
            );
            if options.mqtt_client_certs {
                toml += &format!("tls_client_ca = \"{}\"\n", files.ca.display());
            }
        }
        toml += &format!("\n[ledger]\n{}\n\n[commit]\n{}\n\n{}\n", options.ledger_toml, options.commit_toml, options.extra_toml);
        let config_path = dir.join("node.toml");
        std::fs::write(&config_path, toml).expect("write config");
        let ready_port = options.region_zenoh_port.unwrap_or(port);
        NodeProcess { dir: dir.to_path_buf(), port, port_v5, port_ws, port_tls, ready_port, config_path, child: None, _tempdir: None }
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.join("data").join("ledger.redb")
    }

    /// Starts the process and waits until its MQTT port accepts connections.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "node already running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("node.log")).expect("log file");
        let child = Command::new(node_binary())
            .arg("--config")
            .arg(&self.config_path)
            // EDGELEDGER_TEST_NODE_LOG: the nodes' RUST_LOG when debugging a test.
            .env("RUST_LOG", std::env::var("EDGELEDGER_TEST_NODE_LOG").unwrap_or_else(|_| "warn".to_string()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn ledger-node");
        self.child = Some(child);
        // Every listener runs in its own broker thread: wait for all of them.
        let deadline = Instant::now() + START_DEADLINE;
        for port in [Some(self.ready_port), self.port_v5, self.port_ws, self.port_tls].into_iter().flatten() {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
                if let Some(status) = self.child.as_mut().unwrap().try_wait().expect("try_wait") {
                    panic!("ledger-node exited with {status} before listening; log:\n{}", self.log());
                }
                assert!(Instant::now() < deadline, "ledger-node did not listen within {START_DEADLINE:?}; log:\n{}", self.log());
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// SIGTERM, as systemd or Kubernetes stop a node; waits (bounded) for it to exit and
    /// returns how it did.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("node running");
        terminate_within(&mut child, START_DEADLINE)
            .unwrap_or_else(|| panic!("ledger-node did not exit within {START_DEADLINE:?} of SIGTERM; log:\n{}", self.log()))
    }

    /// The node's resident memory now, from /proc (Linux), in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let pid = self.child.as_ref().expect("node running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS in /proc/PID/status");
        kib * 1024
    }

    /// The running process's id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("node running").id()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("node.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill9();
        // EDGELEDGER_TEST_KEEP_LOGS=DIR: keep every node's log when debugging a test, named
        // after its temporary directory without the leading dot (a shell glob skips dot-files).
        if let Ok(keep) = std::env::var("EDGELEDGER_TEST_KEEP_LOGS") {
            let dir = self.config_path.parent().and_then(|d| d.file_name()).map(|n| n.to_string_lossy().into_owned());
            let name = dir.unwrap_or_default().trim_start_matches('.').to_string();
            let _ = std::fs::copy(self.log_path(), Path::new(&keep).join(format!("{name}.log")));
        }
    }
}

/// A TCP proxy between two nodes' zenoh endpoints that a test can cut and heal: a
/// partition without touching the nodes. Loopback only; its threads end when it is dropped.
pub struct TcpProxy {
    pub port: u16,
    open: Arc<std::sync::atomic::AtomicBool>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    live: Arc<Mutex<Vec<TcpStream>>>,
}

impl TcpProxy {
    pub fn start(target_port: u16) -> TcpProxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy port");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let live: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let (open2, stop2, live2) = (open.clone(), stop.clone(), live.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                let (client, _) = match listener.accept() {
                    Ok(c) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                };
                if !open2.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is refused in effect
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)) else { continue };
                client.set_nonblocking(false).ok();
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                {
                    let mut live = live2.lock().unwrap();
                    live.push(client.try_clone().unwrap());
                    live.push(server.try_clone().unwrap());
                }
                for (mut from, mut to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        TcpProxy { port, open, stop, live }
    }

    /// Cuts every connection through the proxy and refuses new ones until `heal`.
    pub fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        for stream in self.live.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn heal(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Waits until `check` returns Some, polling every 50 ms, up to `deadline`.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < until, "timed out after {deadline:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An operator's zenoh sessions: one per endpoint, asked all at once (each region answers
/// for its own nodes only). Derefs to the first session.
pub struct Ops {
    sessions: Vec<bridge::zenoh::Session>,
}

impl std::ops::Deref for Ops {
    type Target = bridge::zenoh::Session;
    fn deref(&self) -> &bridge::zenoh::Session {
        &self.sessions[0]
    }
}

impl Ops {
    /// The first answer to `selector` through any session; the last failure when none answered.
    pub async fn ask_json(&self, selector: &str, payload: Option<String>, timeout: Duration) -> Result<Value, bridge::AskError> {
        let mut asks = tokio::task::JoinSet::new();
        for session in &self.sessions {
            let (session, selector, payload) = (session.clone(), selector.to_string(), payload.clone());
            asks.spawn(async move { bridge::ask_json(&session, &selector, payload, timeout).await });
        }
        let mut last = None;
        while let Some(Ok(answer)) = asks.join_next().await {
            match answer {
                Ok(value) => return Ok(value),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one session"))
    }
}

/// An operator's plain-TCP zenoh session, connected straight to a node's endpoint (a node
/// with `insecure_plaintext`).
pub async fn operator_session(zenoh_port: u16) -> Ops {
    let endpoint = format!("tcp/127.0.0.1:{zenoh_port}");
    let session = bridge::open_client(&[endpoint], Duration::from_secs(10), None).await.expect("operator session");
    Ops { sessions: vec![session] }
}

/// An operator's mutual-TLS sessions to each of `ports`, with `identity`.
pub async fn operator_tls(ports: &[u16], identity: &bridge::pki::IdentityFiles) -> Ops {
    let mut sessions = Vec::new();
    for port in ports {
        let endpoint = format!("tls/127.0.0.1:{port}");
        sessions.push(bridge::open_client(&[endpoint], Duration::from_secs(10), Some(identity)).await.expect("operator session"));
    }
    Ops { sessions }
}

/// One JSON answer from a queryable (None if nobody answered in time).
pub async fn ask(ops: &Ops, selector: &str) -> Option<Value> {
    ops.ask_json(selector, None, Duration::from_secs(2)).await.ok()
}

/// The CA and certificates of a test deployment, in a directory of its own: every node
/// named, and the operator `operator:ops`.
pub struct TestPki {
    dir: tempfile::TempDir,
}

/// The operator every test deployment knows.
pub const OPERATOR: &str = "ops";

impl TestPki {
    pub fn new(nodes: &[&str]) -> TestPki {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut identities: Vec<bridge::pki::Identity> = nodes.iter().map(|n| bridge::pki::Identity::Node(n.to_string())).collect();
        identities.push(bridge::pki::Identity::Operator(OPERATOR.to_string()));
        bridge::pki::ensure(dir.path(), &identities, &[]).expect("test PKI");
        TestPki { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn files(&self, identity: &str) -> bridge::pki::IdentityFiles {
        bridge::pki::Identity::parse(identity).expect("an identity").files(self.dir.path())
    }

    pub fn operator(&self) -> bridge::pki::IdentityFiles {
        self.files(&format!("operator:{OPERATOR}"))
    }

    /// A zenoh router under `region`'s identity and access rules, listening on `port` for
    /// `edges`: for a test that plays the region (one that misbehaves, or is compromised).
    pub async fn region_stand_in(&self, region: &str, port: u16, edges: &[&str]) -> bridge::zenoh::Session {
        let edges: Vec<String> = edges.iter().map(|e| format!("\"{e}\"")).collect();
        let toml = format!(
            "[node]\nid = \"{region}\"\nrole = \"region\"\n\n[zenoh]\nlisten = [\"tls/127.0.0.1:{port}\"]\n{}\n[replication]\nedges = [{}]\n",
            self.zenoh_tls(region),
            edges.join(", ")
        );
        bridge::open(&config::NodeConfig::from_toml(&toml).expect("a region config")).await.expect("the test's region session")
    }

    /// The `[zenoh]` lines that give `node` its identity and let the operator in.
    pub fn zenoh_tls(&self, node: &str) -> String {
        let f = self.files(node);
        format!(
            "tls_root_ca = \"{}\"\ntls_certificate = \"{}\"\ntls_private_key = \"{}\"\noperators = [\"{OPERATOR}\"]\n",
            f.ca.display(),
            f.cert.display(),
            f.key.display()
        )
    }
}

/// A TLS client configuration (ring) that trusts `files.ca` only and presents `files`'
/// certificate (an MQTT client certificate).
pub fn tls_client_with_cert(files: &bridge::pki::IdentityFiles) -> Result<rustls::ClientConfig, String> {
    let roots = root_store(&files.ca)?;
    let cert_pem = std::fs::read(&files.cert).map_err(|e| e.to_string())?;
    let certs = rustls_pemfile::certs(&mut &cert_pem[..]).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
    let key_pem = std::fs::read(&files.key).map_err(|e| e.to_string())?;
    let key = rustls_pemfile::private_key(&mut &key_pem[..]).map_err(|e| e.to_string())?.ok_or("no private key")?;
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| e.to_string())
}

fn root_store(ca: &Path) -> Result<rustls::RootCertStore, String> {
    let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &pem[..]) {
        roots.add(cert.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    }
    Ok(roots)
}

/// A TLS client configuration (ring) that trusts the certificates in `ca` only.
pub fn tls_client(ca: &Path) -> Result<rustls::ClientConfig, String> {
    let roots = root_store(ca)?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// Waiters for replies by command id; other messages (notices, id-less replies) queue up.
type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>>;

/// A device: one MQTT 3.1.1 connection publishing commands and reading its reply topic.
pub struct Device {
    pub id: String,
    client: AsyncClient,
    waiters: Waiters,
    /// Replies nobody waited for and notices, in arrival order.
    pub unsolicited: mpsc::UnboundedReceiver<Value>,
    task: tokio::task::JoinHandle<()>,
}

impl Device {
    pub async fn connect(port: u16, device_id: &str) -> Device {
        Device::connect_as(port, device_id, None).await.expect("device connects")
    }

    /// Connects with optional (username, password); client id is the device id.
    pub async fn connect_as(port: u16, device_id: &str, credentials: Option<(&str, &str)>) -> Result<Device, String> {
        Device::connect_over(port, device_id, credentials, None).await
    }

    /// Connects over TLS, trusting the CA certificates in the PEM file `ca` only.
    pub async fn connect_tls(port: u16, device_id: &str, credentials: Option<(&str, &str)>, ca: &Path) -> Result<Device, String> {
        Device::connect_over(port, device_id, credentials, Some(Arc::new(tls_client(ca)?))).await
    }

    /// Connects over TLS with a client certificate (and no password).
    pub async fn connect_with_cert(port: u16, device_id: &str, files: &bridge::pki::IdentityFiles) -> Result<Device, String> {
        Device::connect_over(port, device_id, None, Some(Arc::new(tls_client_with_cert(files)?))).await
    }

    async fn connect_over(
        port: u16,
        device_id: &str,
        credentials: Option<(&str, &str)>,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Device, String> {
        let mut options = MqttOptions::new(device_id, "127.0.0.1", port);
        if let Some(tls) = tls {
            options.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(tls)));
        }
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(4 * 1024 * 1024, 4 * 1024 * 1024);
        options.set_inflight(1000);
        options.set_request_channel_capacity(4096);
        if let Some((user, pass)) = credentials {
            options.set_credentials(user, pass);
        }
        let (client, mut eventloop) = AsyncClient::new(options, 4096);
        // Devices should send small MQTT packets without Nagle's delay.
        let mut network = rumqttc::NetworkOptions::new();
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        // Wait for CONNACK before handing the device out.
        let deadline = Instant::now() + REPLY_DEADLINE;
        loop {
            match tokio::time::timeout(REPLY_DEADLINE, eventloop.poll()).await {
                Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => break,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("connect failed: {e}")),
                Err(_) => return Err("no CONNACK".to_string()),
            }
            if Instant::now() > deadline {
                return Err("no CONNACK".to_string());
            }
        }
        client.subscribe(format!("ledger/v1/reply/{device_id}"), QoS::AtLeastOnce).await.map_err(|e| e.to_string())?;
        loop {
            match tokio::time::timeout(REPLY_DEADLINE, eventloop.poll()).await {
                Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => break,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("subscribe failed: {e}")),
                Err(_) => return Err("no SUBACK".to_string()),
            }
        }
        let waiters: Waiters = Arc::new(Mutex::new(HashMap::new()));
        let (tx, unsolicited) = mpsc::unbounded_channel();
        let task = tokio::spawn(drive(eventloop, client.clone(), device_id.to_string(), waiters.clone(), tx));
        Ok(Device { id: device_id.to_string(), client, waiters, unsolicited, task })
    }

    /// Publishes a raw payload on this device's command topic (QoS 1).
    pub async fn publish(&self, payload: impl Into<Vec<u8>>) {
        self.client.publish(format!("ledger/v1/cmd/{}", self.id), QoS::AtLeastOnce, false, payload.into()).await.expect("publish queued");
    }

    /// Sends a command and waits for the reply with its id.
    pub async fn request(&self, command: Value) -> Value {
        self.try_request(command.clone(), REPLY_DEADLINE).await.unwrap_or_else(|| panic!("no reply within {REPLY_DEADLINE:?} to {command}"))
    }

    /// Sends a command and waits up to `wait` for its reply.
    pub async fn try_request(&self, command: Value, wait: Duration) -> Option<Value> {
        let id = command["id"].as_str().expect("command has a string id").to_string();
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().unwrap().insert(id.clone(), tx);
        self.publish(serde_json::to_vec(&command).unwrap()).await;
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(reply)) => Some(reply),
            _ => {
                self.waiters.lock().unwrap().remove(&id);
                None
            }
        }
    }

    /// The next reply or notice no request waited for.
    pub async fn next_unsolicited(&mut self, wait: Duration) -> Option<Value> {
        tokio::time::timeout(wait, self.unsolicited.recv()).await.ok().flatten()
    }

    pub async fn disconnect(self) {
        let _ = self.client.disconnect().await;
        self.task.abort();
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn drive(
    mut eventloop: EventLoop,
    client: AsyncClient,
    device_id: String,
    waiters: Waiters,
    unsolicited: mpsc::UnboundedSender<Value>,
) {
    loop {
        match eventloop.poll().await {
            // A reconnect after the node restarted: its broker forgot our subscription.
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                let _ = client.try_subscribe(format!("ledger/v1/reply/{device_id}"), QoS::AtLeastOnce);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let Ok(value) = serde_json::from_slice::<Value>(&p.payload) else { continue };
                let waiter = value["id"].as_str().and_then(|id| waiters.lock().unwrap().remove(id));
                match waiter {
                    Some(w) => {
                        let _ = w.send(value);
                    }
                    None => {
                        let _ = unsolicited.send(value);
                    }
                }
            }
            Ok(_) => {}
            Err(_) => {
                // The node went away (a crash test) or the test ended: back off and let
                // rumqttc reconnect; the caller resends what got no reply.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Builds JSON commands tersely.
pub mod cmd {
    use serde_json::{json, Value};

    pub fn open(id: &str, account: &str, asset: &str, flags: &[&str]) -> Value {
        json!({"id": id, "op": "open_account", "account": account, "asset": asset, "flags": flags})
    }
    pub fn transfer(id: &str, debit: &str, credit: &str, amount: &str, asset: &str) -> Value {
        json!({"id": id, "op": "transfer", "debit": debit, "credit": credit, "amount": amount, "asset": asset})
    }
    pub fn hold(id: &str, debit: &str, credit: &str, amount: &str, asset: &str, timeout_s: Option<u64>) -> Value {
        let mut v = json!({"id": id, "op": "hold", "debit": debit, "credit": credit, "amount": amount, "asset": asset});
        if let Some(t) = timeout_s {
            v["timeout_s"] = json!(t);
        }
        v
    }
    pub fn post(id: &str, pending_id: &str, amount: Option<&str>) -> Value {
        let mut v = json!({"id": id, "op": "post", "pending_id": pending_id});
        if let Some(a) = amount {
            v["amount"] = json!(a);
        }
        v
    }
    pub fn void(id: &str, pending_id: &str) -> Value {
        json!({"id": id, "op": "void", "pending_id": pending_id})
    }
    pub fn balance(id: &str, account: &str) -> Value {
        json!({"id": id, "op": "balance", "account": account})
    }
}

/// Reads a stopped node's redb file back into a ledger, verifying the chain and invariants.
pub fn load_ledger(db_dir: &Path, node_id: &str) -> Result<ledger::core::Ledger, String> {
    let mut config = config::NodeConfig::embedded_default();
    config.node.id = node_id.to_string();
    let store = ledger::store::Store::open(db_dir, node_id).map_err(|e| e.to_string())?;
    let mut ledger = ledger::setup::ledger_for(&config);
    store.load(&mut ledger).map_err(|e| e.to_string())?;
    Ok(ledger)
}

/// Two regions (`eu`, `us`; `us` connects to `eu`) with two edges each
/// (`eu/berlin-1`, `eu/paris-1`, `us/nyc-1`, `us/sf-1`), every zenoh link mutual TLS with
/// access control. Every edge reaches its region through its own `TcpProxy`, so a test can
/// cut any edge off.
pub struct Topology {
    pub regions: BTreeMap<String, (NodeProcess, u16)>,
    pub edges: BTreeMap<String, (NodeProcess, TcpProxy)>,
    pub pki: TestPki,
}

pub const EDGES: [&str; 4] = ["eu/berlin-1", "eu/paris-1", "us/nyc-1", "us/sf-1"];
pub const REGIONS: [&str; 2] = ["eu", "us"];

impl Topology {
    /// Every zenoh link mutual TLS with access control.
    pub fn start() -> Topology {
        Topology::start_with(true)
    }

    /// Plain TCP on loopback between the nodes (`insecure_plaintext`), for comparison.
    pub fn start_plaintext() -> Topology {
        Topology::start_with(false)
    }

    fn start_with(tls: bool) -> Topology {
        let pki = TestPki::new(&[&REGIONS[..], &EDGES[..]].concat());
        // Every node keeps 2 decided transfers of each kind in RAM: the others are read back
        // from its file, so every cross-node test runs through that path too.
        let ledger_toml = "resolved_hold_cache_entries = 2\nreceived_cache_entries = 2".to_string();
        let scheme = if tls { "tls" } else { "tcp" };
        let security = |node: &str| if tls { pki.zenoh_tls(node) } else { "insecure_plaintext = true\n".to_string() };
        let mut regions = BTreeMap::new();
        let mut first_port = None;
        for region in REGIONS {
            let port = free_port();
            let connect = first_port.map(|p: u16| format!("connect = [\"{scheme}/127.0.0.1:{p}\"]\n")).unwrap_or_default();
            let edges: Vec<String> = EDGES.iter().filter(|e| e.starts_with(&format!("{region}/"))).map(|e| format!("\"{e}\"")).collect();
            let peer = REGIONS.iter().find(|r| **r != region).expect("two regions");
            let node = NodeProcess::start(NodeOptions {
                node_id: Some(region.into()),
                region_zenoh_port: Some(port),
                extra_toml: format!(
                    "[zenoh]\nlisten = [\"{scheme}/127.0.0.1:{port}\"]\n{connect}peer_regions = [\"{peer}\"]\n{}\n[replication]\nedges = [{}]\n",
                    security(region),
                    edges.join(", ")
                ),
                ledger_toml: ledger_toml.clone(),
                ..NodeOptions::default()
            });
            first_port.get_or_insert(port);
            regions.insert(region.to_string(), (node, port));
        }
        let mut edges = BTreeMap::new();
        for edge in EDGES {
            let region_port = regions[edge.split('/').next().unwrap()].1;
            let proxy = TcpProxy::start(region_port);
            let node = NodeProcess::start(NodeOptions {
                node_id: Some(edge.into()),
                extra_toml: format!("[zenoh]\nconnect = [\"{scheme}/127.0.0.1:{}\"]\n{}", proxy.port, security(edge)),
                ledger_toml: ledger_toml.clone(),
                ..NodeOptions::default()
            });
            edges.insert(edge.to_string(), (node, proxy));
        }
        Topology { regions, edges, pki }
    }

    /// The operator, connected to both regions.
    pub async fn operator(&self) -> Ops {
        let ports: Vec<u16> = REGIONS.iter().map(|r| self.region_port(r)).collect();
        operator_tls(&ports, &self.pki.operator()).await
    }

    /// A client session to `region`'s router under `identity`'s certificate (a node id or
    /// `operator:NAME` of this deployment's CA).
    pub async fn session_as(&self, region: &str, identity: &str) -> Result<bridge::zenoh::Session, String> {
        let endpoint = format!("tls/127.0.0.1:{}", self.region_port(region));
        bridge::open_client(&[endpoint], Duration::from_secs(5), Some(&self.pki.files(identity))).await
    }

    /// `ledgerctl` as the operator, through both regions.
    pub async fn ledgerctl(&self, args: &[&str]) -> (i32, String, String) {
        let connect: Vec<String> = REGIONS.iter().map(|r| format!("tls/127.0.0.1:{}", self.region_port(r))).collect();
        let files = self.pki.operator();
        let mut all = vec!["--connect".to_string(), connect.join(",")];
        for (flag, path) in [("--ca", &files.ca), ("--cert", &files.cert), ("--key", &files.key)] {
            all.push(flag.to_string());
            all.push(path.display().to_string());
        }
        all.extend(args.iter().map(|a| a.to_string()));
        run_ledgerctl(&all).await
    }

    /// `ledgerctl --json reconcile` through both regions: exit code and the report.
    pub async fn reconcile_report(&self) -> (i32, Value) {
        let (code, stdout, stderr) = self.ledgerctl(&["--json", "reconcile"]).await;
        let report = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("reconcile printed no JSON ({e}): {stdout}\n{stderr}"));
        (code, report)
    }

    pub fn edge(&mut self, id: &str) -> &mut NodeProcess {
        &mut self.edges.get_mut(id).expect("an edge of the topology").0
    }

    pub fn proxy(&self, id: &str) -> &TcpProxy {
        &self.edges[id].1
    }

    pub fn region(&mut self, id: &str) -> &mut NodeProcess {
        &mut self.regions.get_mut(id).expect("a region of the topology").0
    }

    pub fn region_port(&self, id: &str) -> u16 {
        self.regions[id].1
    }

    /// SPEC §8 invariant 6, asked over zenoh: each region's replica has its edges' head,
    /// no region has a transfer in flight, no edge a cross-node hold pending. Returns what
    /// is still off, or None when everything agrees.
    pub async fn differences(&self, ops: &Ops) -> Option<String> {
        for edge in EDGES {
            let region = edge.split('/').next().unwrap();
            let head = ask(ops, &format!("ledger/v1/status/{edge}")).await.map(|s| s["head"].clone());
            let status = ask(ops, &format!("ledger/v1/status/{region}")).await;
            let replica = status.as_ref().and_then(|s| s["edges"].as_array()?.iter().find(|e| e["edge"] == edge).cloned());
            let (Some(head), Some(replica)) = (head, replica) else { return Some(format!("{edge} or {region} did not answer")) };
            if head["seq"] != replica["seq"] || head["hash"] != replica["hash"] {
                return Some(format!(
                    "{region}'s replica of {edge} is at {} {}, the edge at {} {}",
                    replica["seq"], replica["hash"], head["seq"], head["hash"]
                ));
            }
            // A missing answer is a difference too, never agreement.
            let pending = ask(ops, &format!("ledger/v1/query/{edge}/pending")).await;
            let Some(holds) = pending.as_ref().and_then(|p| p["pending"].as_array()) else {
                return Some(format!("{edge} did not list its pending holds: {pending:?}"));
            };
            let across = holds.iter().filter(|h| h.get("to").is_some()).count();
            if across > 0 {
                return Some(format!("{edge} has {across} cross-node transfers pending"));
            }
        }
        for region in ["eu", "us"] {
            let Some(flights) = ask(ops, &format!("ledger/v1/query/{region}/in_flight")).await else {
                return Some(format!("{region} did not list its transfers in flight"));
            };
            if flights["active"] != 0 || flights["pending_in_replicas"] != 0 {
                return Some(format!("{region} has transfers in flight: {flights}"));
            }
        }
        None
    }
}

/// Checks, from the stopped nodes' redb files, that every cross-node transfer is resolved
/// the same way on both sides and that each pair of clearing accounts mirrors the other.
/// Returns the number of transfers checked.
pub fn check_cross_node_books(dirs: &BTreeMap<String, PathBuf>) -> usize {
    let ledgers: BTreeMap<&str, ledger::core::Ledger> =
        dirs.iter().map(|(id, dir)| (id.as_str(), load_ledger(dir, id).unwrap_or_else(|e| panic!("{id}: {e}")))).collect();
    let mut checked = 0;
    for (source, ledger) in &ledgers {
        ledger.check_invariants().unwrap_or_else(|e| panic!("{source}: {e}"));
        assert_eq!(ledger.outgoing_count(), 0, "{source} has cross-node transfers unresolved");
        for (id, hold) in ledger.cross_node_holds() {
            let remote = hold.remote.as_deref().unwrap();
            let destination = remote.split_once('@').unwrap().1;
            let decision = ledgers[destination]
                .received(source, id)
                .unwrap_or_else(|| panic!("{destination} has no decision on transfer {id} from {source}"));
            let posted = decision.reply.status == ledger::core::reply::Status::Committed;
            let expected = if posted { ledger::core::reply::Resolution::Posted } else { ledger::core::reply::Resolution::Voided };
            assert_eq!(hold.state, ledger::core::HoldState::Resolved(expected), "transfer {id} from {source}: {decision:?}");
            checked += 1;
        }
        for (peer, other) in &ledgers {
            if peer == source {
                continue;
            }
            let mine = ledger.account(&ledger::core::address::clearing_account("EUR", peer)).map_or(0, |a| a.posted);
            let theirs = other.account(&ledger::core::address::clearing_account("EUR", source)).map_or(0, |a| a.posted);
            assert_eq!(mine, -theirs, "clearing of {source} with {peer} does not mirror");
        }
    }
    checked
}

/// The `ledgerctl` binary, built with `ledger-node` (same package).
pub fn ledgerctl_binary() -> PathBuf {
    node_binary().with_file_name("ledgerctl")
}

/// Runs `ledgerctl --connect tcp/127.0.0.1:PORT ARGS…` (a plaintext node); returns its
/// exit code, stdout and stderr.
pub async fn ledgerctl(port: u16, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["--connect".to_string(), format!("tcp/127.0.0.1:{port}")];
    all.extend(args.iter().map(|a| a.to_string()));
    run_ledgerctl(&all).await
}

/// Runs `ledgerctl ARGS…`; killed if the test gives up on it.
pub async fn run_ledgerctl(args: &[String]) -> (i32, String, String) {
    let out = tokio::process::Command::new(ledgerctl_binary())
        .args(args)
        .env_remove("LEDGERCTL_CONNECT")
        .env_remove("LEDGERCTL_CA")
        .env_remove("LEDGERCTL_CERT")
        .env_remove("LEDGERCTL_KEY")
        .kill_on_drop(true)
        .output()
        .await
        .expect("ledgerctl runs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}
