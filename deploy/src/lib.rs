//! Deployment of edgeledger: the local launcher's topology (two regions, two edges each, on
//! loopback) as config files and child processes. The systemd units, Dockerfile, compose
//! file and Kubernetes manifests beside this crate describe the same topology for real
//! machines.
//!
//! Owns the layout of a local topology only; it must not hold ledger logic. Every node it
//! starts is a plain `ledger-node --config FILE` process, as in production.

use bridge::pki::{Identity, IdentityFiles};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The topology: regions `eu` (which `us` connects to) and `us`, two edges each.
pub const REGIONS: [&str; 2] = ["eu", "us"];
pub const EDGES: [&str; 4] = ["eu/berlin-1", "eu/paris-1", "us/nyc-1", "us/sf-1"];
/// Ports a topology takes from its base: 2 zenoh, 4 MQTT, 6 metrics.
pub const PORTS_USED: u16 = 12;
/// How long a node may take to open its ports.
pub const START_DEADLINE: Duration = Duration::from_secs(30);

/// One node of the local topology.
#[derive(Debug, Clone)]
pub struct NodePlan {
    pub id: String,
    pub region: bool,
    /// A region's zenoh listener; an edge's MQTT listener. Open means started.
    pub port: u16,
    pub metrics_port: u16,
    pub config: PathBuf,
    pub log: PathBuf,
}

impl NodePlan {
    /// A file-system name for the node id (`eu/berlin-1` → `eu-berlin-1`).
    pub fn file_name(id: &str) -> String {
        id.replace('/', "-")
    }
}

/// The ports of the topology. Without a base: the well-known ones (region eu's zenoh on
/// 7447, the edges' MQTT on 1883 to 1886, metrics on 9464 to 9469); with a base B, the
/// twelve ports from B on, in the same order.
pub fn ports(base: Option<u16>) -> ([u16; 2], [u16; 4], [u16; 6]) {
    match base {
        None => ([7447, 7448], [1883, 1884, 1885, 1886], [9464, 9465, 9466, 9467, 9468, 9469]),
        Some(b) => ([b, b + 1], [b + 2, b + 3, b + 4, b + 5], [b + 6, b + 7, b + 8, b + 9, b + 10, b + 11]),
    }
}

/// The operator whose certificate the local topology issues (`operator:admin`).
pub const OPERATOR: &str = "admin";

/// Where the local topology keeps its CA and certificates.
pub fn pki_dir(dir: &Path) -> PathBuf {
    dir.join("pki")
}

/// The `[zenoh]` lines of `node`'s identity under the topology's PKI.
fn tls_lines(dir: &Path, node: &str) -> String {
    let files = Identity::Node(node.to_string()).files(&pki_dir(dir));
    format!(
        "tls_root_ca = \"{}\"\ntls_certificate = \"{}\"\ntls_private_key = \"{}\"\noperators = [\"{OPERATOR}\"]\n",
        files.ca.display(),
        files.cert.display(),
        files.key.display()
    )
}

/// Makes the topology's CA and a certificate for every node and for the operator, unless
/// they exist (a second run keeps them).
pub fn ensure_pki(dir: &Path) -> Result<IdentityFiles, String> {
    let mut identities: Vec<Identity> = REGIONS.iter().chain(EDGES.iter()).map(|id| Identity::Node(id.to_string())).collect();
    identities.push(Identity::Operator(OPERATOR.to_string()));
    bridge::pki::ensure(&pki_dir(dir), &identities, &[]).map_err(|e| format!("pki: {e}"))?;
    Ok(Identity::Operator(OPERATOR.to_string()).files(&pki_dir(dir)))
}

/// The lines that point `ledgerctl` at the topology as its operator: both regions' zenoh
/// endpoints and the operator's identity, with absolute paths.
pub fn ledgerctl_env(dir: &Path, base: Option<u16>) -> Result<String, String> {
    let files = Identity::Operator(OPERATOR.to_string()).files(&pki_dir(dir));
    let absolute = |p: &Path| std::fs::canonicalize(p).map_err(|e| format!("{}: {e}", p.display()));
    let (zenoh, _, _) = ports(base);
    Ok(format!(
        "export LEDGERCTL_CONNECT=tls/127.0.0.1:{},tls/127.0.0.1:{}\nexport LEDGERCTL_CA={}\nexport LEDGERCTL_CERT={}\nexport LEDGERCTL_KEY={}\n",
        zenoh[0],
        zenoh[1],
        absolute(&files.ca)?.display(),
        absolute(&files.cert)?.display(),
        absolute(&files.key)?.display()
    ))
}

/// Writes the PKI and the config of every node under `dir` (data in `dir/NODE/`) and
/// returns the plan, regions first (edges connect to them). Every zenoh link is mutual
/// TLS with access control; `dir/ledgerctl.env` points `ledgerctl` at the topology.
pub fn plan(dir: &Path, base: Option<u16>) -> Result<Vec<NodePlan>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    ensure_pki(dir)?;
    let env = dir.join("ledgerctl.env");
    std::fs::write(&env, ledgerctl_env(dir, base)?).map_err(|e| format!("cannot write {}: {e}", env.display()))?;
    let (zenoh, mqtt, metrics) = ports(base);
    let mut nodes = Vec::new();
    for (i, region) in REGIONS.iter().enumerate() {
        let edges: Vec<String> = EDGES.iter().filter(|e| e.starts_with(&format!("{region}/"))).map(|e| format!("\"{e}\"")).collect();
        let connect = if i == 0 { String::new() } else { format!("\"tls/127.0.0.1:{}\"", zenoh[0]) };
        let peer = REGIONS[1 - i];
        let toml = format!(
            "# Region {region} of the local topology (written by ledger-local).\n\
             [node]\nid = \"{region}\"\nrole = \"region\"\ndata_dir = \"{data}\"\n\n\
             [zenoh]\nlisten = [\"tls/127.0.0.1:{port}\"]\nconnect = [{connect}]\npeer_regions = [\"{peer}\"]\n{tls}\n\
             [replication]\nedges = [{edges}]\n\n\
             [metrics]\nlisten = \"127.0.0.1:{metrics}\"\n",
            data = dir.join(NodePlan::file_name(region)).display(),
            port = zenoh[i],
            tls = tls_lines(dir, region),
            edges = edges.join(", "),
            metrics = metrics[i],
        );
        nodes.push(write_node(dir, region, true, zenoh[i], metrics[i], &toml)?);
    }
    for (i, edge) in EDGES.iter().enumerate() {
        let region = REGIONS.iter().position(|r| edge.starts_with(&format!("{r}/"))).expect("every edge has a region");
        let toml = format!(
            "# Edge {edge} of the local topology (written by ledger-local). Any device may\n\
             # connect: a loopback demo. See config/edge.toml for devices and every other key.\n\
             [node]\nid = \"{edge}\"\nrole = \"edge\"\ndata_dir = \"{data}\"\n\n\
             [mqtt]\nlisten_v4 = \"127.0.0.1:{port}\"\n\n\
             [zenoh]\nconnect = [\"tls/127.0.0.1:{region_port}\"]\n{tls}\n\
             [metrics]\nlisten = \"127.0.0.1:{metrics}\"\n",
            data = dir.join(NodePlan::file_name(edge)).display(),
            port = mqtt[i],
            region_port = zenoh[region],
            tls = tls_lines(dir, edge),
            metrics = metrics[2 + i],
        );
        nodes.push(write_node(dir, edge, false, mqtt[i], metrics[2 + i], &toml)?);
    }
    Ok(nodes)
}

fn write_node(dir: &Path, id: &str, region: bool, port: u16, metrics_port: u16, toml: &str) -> Result<NodePlan, String> {
    let name = NodePlan::file_name(id);
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(&config, toml).map_err(|e| format!("cannot write {}: {e}", config.display()))?;
    Ok(NodePlan { id: id.to_string(), region, port, metrics_port, config, log: dir.join(format!("{name}.log")) })
}

/// How long the nodes have to exit after SIGTERM before they are killed: a node closes its
/// file within 3 s of the signal, or exits without closing it.
pub const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// The running topology. Stopping or dropping it stops every node with SIGTERM, so that each
/// closes its file and the next start opens it without a check; one still running after
/// `STOP_DEADLINE` is killed (the nodes are crash-safe, only slower to open after that).
pub struct Topology {
    pub nodes: Vec<(NodePlan, Child)>,
}

impl Topology {
    /// Starts every node of `plan` with the `ledger_node` binary, each when the one before
    /// has opened its port; a node that exits or does not listen in time stops them all.
    pub fn start(plan: Vec<NodePlan>, ledger_node: &Path) -> Result<Topology, String> {
        let mut topology = Topology { nodes: Vec::new() };
        for node in plan {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&node.log)
                .map_err(|e| format!("cannot open {}: {e}", node.log.display()))?;
            let child = Command::new(ledger_node)
                .arg("--config")
                .arg(&node.config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().map_err(|e| e.to_string())?)
                .stderr(log)
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", ledger_node.display()))?;
            topology.nodes.push((node, child));
            let (node, child) = topology.nodes.last_mut().expect("just pushed");
            wait_listening(node, child)?;
        }
        Ok(topology)
    }

    /// The first node that exited, with its status.
    pub fn exited(&mut self) -> Option<String> {
        for (node, child) in &mut self.nodes {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(format!("{} exited ({status}); see {}", node.id, node.log.display()));
            }
        }
        None
    }

    /// SIGTERM to every node at once (their closes run side by side), then waits for each
    /// until `STOP_DEADLINE`, and kills those still running. A node that Ctrl-C already
    /// reached (it shares the terminal's process group) is closing: it is waited for too.
    pub fn stop(&mut self) {
        for (_, child) in &mut self.nodes {
            // One that exited was reaped by `try_wait` (`exited`, `wait_listening`): its
            // pid may be another process's by now, so it gets no signal.
            if let Ok(None) = child.try_wait() {
                terminate(child);
            }
        }
        let deadline = Instant::now() + STOP_DEADLINE;
        for (node, child) in &mut self.nodes {
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Ok(None) = child.try_wait() {
                eprintln!("ledger-local: {} did not stop within {STOP_DEADLINE:?}; killing it (see {})", node.id, node.log.display());
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        self.nodes.clear();
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Asks `child`, which has not been reaped, to stop (SIGTERM). Until it is reaped its pid
/// stays its own, even once it has exited.
fn terminate(child: &Child) {
    let Ok(pid) = libc::pid_t::try_from(child.id()) else { return };
    // SAFETY: kill(2) takes any pid and signal number; this one is our unreaped child's.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
}

fn wait_listening(node: &NodePlan, child: &mut Child) -> Result<(), String> {
    let deadline = Instant::now() + START_DEADLINE;
    let addr = SocketAddr::from(([127, 0, 0, 1], node.port));
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(&node.log).unwrap_or_default();
            return Err(format!("{} exited ({status}) before listening on {addr}:\n{log}", node.id));
        }
        if Instant::now() > deadline {
            return Err(format!("{} did not listen on {addr} within {START_DEADLINE:?}; see {}", node.id, node.log.display()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_two_regions_of_two_edges_on_distinct_ports() {
        let dir = std::env::temp_dir().join(format!("edgeledger-plan-{}", std::process::id()));
        let plan = plan(&dir, Some(30_000)).unwrap();
        assert_eq!(plan.len(), 6);
        let mut ports: Vec<u16> = plan.iter().flat_map(|n| [n.port, n.metrics_port]).collect();
        ports.sort();
        ports.dedup();
        assert_eq!(ports.len(), 12);
        assert!(ports.iter().all(|p| (30_000..30_000 + PORTS_USED).contains(p)));
        let nyc = std::fs::read_to_string(dir.join("us-nyc-1.toml")).unwrap();
        assert!(nyc.contains("connect = [\"tls/127.0.0.1:30001\"]"), "{nyc}");
        assert!(dir.join("pki/us-nyc-1.key").exists() && dir.join("pki/operators/admin.pem").exists());
        let _ = std::fs::remove_dir_all(dir);
    }
}
