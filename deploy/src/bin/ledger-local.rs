//! `ledger-local`: starts the two-region, four-edge topology on loopback and keeps it
//! running until Ctrl-C (or SIGTERM), or until a node exits.

use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const HELP: &str = "\
ledger-local: run regions eu and us and edges eu/berlin-1, eu/paris-1, us/nyc-1, us/sf-1
on 127.0.0.1, each a ledger-node process with its own config, redb file and log.

USAGE:
    ledger-local [--dir DIR] [--base-port PORT]

    --dir DIR          configs, data and logs (default ./local-topology); a second run
                       on the same DIR continues the same books
    --base-port PORT   take the 12 ports from PORT on instead of the usual ones
                       (zenoh 7447-7448, MQTT 1883-1886, metrics 9464-9469)

The ledger-node binary must sit next to this one (cargo build --release builds both).
Ctrl-C stops every node.
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut dir = PathBuf::from("local-topology");
    let mut base = None;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match (arg.as_str(), rest.clone().next()) {
            ("--dir", Some(value)) => {
                dir = PathBuf::from(value);
                rest.next();
            }
            ("--base-port", Some(value)) => match value.parse::<u16>() {
                Ok(p) if p.checked_add(deploy::PORTS_USED).is_some() && p > 0 => {
                    base = Some(p);
                    rest.next();
                }
                _ => return fail(&format!("--base-port: {value:?} is not a port that leaves room for {} more", deploy::PORTS_USED)),
            },
            ("--help" | "-h", _) => {
                print!("{HELP}");
                return ExitCode::SUCCESS;
            }
            _ => return fail(&format!("unknown argument {arg:?}\n\n{HELP}")),
        }
    }
    let exe = std::env::current_exe().expect("current exe");
    let ledger_node = exe.with_file_name("ledger-node");
    if !ledger_node.is_file() {
        return fail(&format!("{} not found: build it with `cargo build --release` (it builds both)", ledger_node.display()));
    }
    let plan = match deploy::plan(&dir, base) {
        Ok(plan) => plan,
        Err(e) => return fail(&e),
    };
    let mut topology = match deploy::Topology::start(plan, &ledger_node) {
        Ok(t) => t,
        Err(e) => return fail(&e),
    };
    let mut banner = String::new();
    let _ = writeln!(banner, "ledger-local: 2 regions and 4 edges on 127.0.0.1; configs, data and logs in {}", dir.display());
    let _ = writeln!(banner, "{:<13} {:<7} {:<28} METRICS", "NODE", "ROLE", "LISTENS");
    for (node, _) in &topology.nodes {
        let (role, listens) = if node.region {
            ("region", format!("zenoh tls/127.0.0.1:{}", node.port))
        } else {
            ("edge", format!("mqtt 127.0.0.1:{}", node.port))
        };
        let _ = writeln!(banner, "{:<13} {role:<7} {listens:<28} http://127.0.0.1:{}/metrics", node.id, node.metrics_port);
    }
    let _ = writeln!(banner, "zenoh links: mutual TLS with access control; CA and certificates in {}", deploy::pki_dir(&dir).display());
    match deploy::ledgerctl_env(&dir, base) {
        Ok(env) => {
            let _ = write!(
                banner,
                "operators: point ledgerctl at both regions as operator:{} with\n  . {}\nwhich sets\n{env}",
                deploy::OPERATOR,
                dir.join("ledgerctl.env").display()
            );
        }
        Err(e) => return fail(&e),
    }
    let _ = writeln!(banner, "then: ledgerctl status   (Ctrl-C stops every node)");
    // Whoever started us may have stopped reading (`| head`): that must not stop the nodes,
    // as a panicking print! would.
    let mut stdout = std::io::stdout();
    let _ = stdout.write_all(banner.as_bytes()).and_then(|()| stdout.flush());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let stopped_by = runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return None,
                _ = term.recv() => return None,
                _ = tick.tick() => {
                    if let Some(why) = topology.exited() {
                        return Some(why);
                    }
                }
            }
        }
    });
    topology.stop();
    match stopped_by {
        None => {
            // stdout may be gone (a closed pipe) by now: that is no reason to fail.
            let _ = writeln!(std::io::stdout(), "ledger-local: stopped every node");
            ExitCode::SUCCESS
        }
        Some(why) => fail(&format!("{why}; stopped the others")),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("ledger-local: {message}");
    ExitCode::FAILURE
}
