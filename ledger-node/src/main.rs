//! `ledger-node`: runs an edge node, or helps configure one.

use config::NodeConfig;
use std::path::PathBuf;
use std::process::ExitCode;

/// glibc's malloc and free were a third of the ledger core's time; see BENCHMARKS.md,
/// "Speed: the allocator adopted".
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const HELP: &str = "\
ledger-node: an edgeledger node (MQTT in, redb ledger inside)

USAGE:
    ledger-node                       run an edge node on the embedded default:
                                      MQTT 3.1.1 on 127.0.0.1:1883, data under ./data,
                                      any device allowed, node id local/edge-1
    ledger-node --config FILE         run the node FILE describes (see config/edge.toml)
    ledger-node check-config FILE     validate FILE; names the offending key
    ledger-node hash-password [PW]    print an argon2 hash for a device password
                                      (reads the password from stdin when PW is absent)
    ledger-node pki DIR NAME... [--host HOST]...
                                      make the deployment's CA in DIR (ca.pem, ca.key)
                                      unless it is there, and a certificate and key for
                                      each NAME that has none: a node id (eu,
                                      eu/berlin-1: DIR/eu-berlin-1.pem, .key),
                                      operator:NAME (DIR/operators/NAME.pem, .key)
                                      or device:ID, an MQTT client certificate
                                      (DIR/devices/ID.pem, .key).
                                      Node certificates name localhost, 127.0.0.1, ::1
                                      and every --host (a DNS name or an address)
    ledger-node --help                this text

Logging: RUST_LOG (default: info). The broker's own logs stay off unless RUST_LOG names
rumqttd (RUST_LOG=info,rumqttd=warn): they cost a formatted span per message.
";

/// The log filter of `RUST_LOG` (default `info`), with the broker's logs off unless it names
/// them: rumqttd opens an error-level span per message, which any level but `off` formats
/// (a quarter of the broker's router thread under `RUST_LOG=warn`).
fn log_filter(rust_log: Option<&str>) -> tracing_subscriber::EnvFilter {
    let directives = rust_log.map(str::trim).filter(|d| !d.is_empty()).unwrap_or("info");
    let directives = match directives.contains("rumqttd") {
        true => directives.to_string(),
        false => format!("{directives},rumqttd=off"),
    };
    tracing_subscriber::EnvFilter::try_new(&directives).unwrap_or_else(|e| {
        eprintln!("ledger-node: RUST_LOG {directives:?} is not a log filter ({e}); logging at info");
        tracing_subscriber::EnvFilter::new("info,rumqttd=off")
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        [] => run(NodeConfig::embedded_default()),
        ["--help"] | ["-h"] | ["help"] => {
            print!("{HELP}");
            ExitCode::SUCCESS
        }
        ["--config", file] => match NodeConfig::from_file(&PathBuf::from(file)) {
            Ok(config) => run(config),
            Err(e) => fail(&format!("config error: {e}")),
        },
        ["check-config", file] => match NodeConfig::from_file(&PathBuf::from(file)) {
            Ok(config) => {
                println!("{file}: ok (node {}, role {:?}, {} devices)", config.node.id, config.node.role, config.devices.len());
                ExitCode::SUCCESS
            }
            Err(e) => fail(&format!("config error: {e}")),
        },
        ["hash-password", password] => {
            println!("{}", broker::hash_password(password));
            ExitCode::SUCCESS
        }
        ["hash-password"] => {
            let mut line = String::new();
            if std::io::stdin().read_line(&mut line).is_err() || line.trim_end_matches(['\r', '\n']).is_empty() {
                return fail("hash-password: no password on stdin");
            }
            println!("{}", broker::hash_password(line.trim_end_matches(['\r', '\n'])));
            ExitCode::SUCCESS
        }
        ["pki", dir, rest @ ..] => pki(dir, rest),
        _ => fail(&format!("unknown arguments: {}\n\n{HELP}", args.join(" "))),
    }
}

fn pki(dir: &str, args: &[&str]) -> ExitCode {
    use bridge::pki::{ensure, Identity, Issued};
    let mut identities = Vec::new();
    let mut hosts = Vec::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match (*arg, rest.clone().next()) {
            ("--host", Some(host)) => {
                hosts.push(host.to_string());
                rest.next();
            }
            ("--host", None) => return fail("pki: --host needs a host name or address"),
            (name, _) => match Identity::parse(name) {
                Ok(identity) => identities.push(identity),
                Err(e) => return fail(&format!("pki: {e}")),
            },
        }
    }
    if identities.is_empty() {
        return fail("pki: name at least one node id or operator:NAME");
    }
    match ensure(std::path::Path::new(dir), &identities, &hosts) {
        Ok(issued) => {
            println!("CA: {}/ca.pem (its key ca.key stays with whoever issues certificates)", dir);
            for (identity, issued) in identities.iter().zip(issued) {
                match issued {
                    Issued::New(files) => println!("{identity}: issued {} and {}", files.cert.display(), files.key.display()),
                    Issued::Kept(files) => println!("{identity}: kept {} (already there)", files.cert.display()),
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format!("pki: {e}")),
    }
}

fn run(config: NodeConfig) -> ExitCode {
    let filter = log_filter(std::env::var("RUST_LOG").ok().as_deref());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    // Past a file size limit (RLIMIT_FSIZE) the kernel sends SIGXFSZ, which kills by
    // default; ignored, the write fails with EFBIG and the node refuses writes instead.
    // SAFETY: sets a signal's disposition to SIG_IGN before any thread is started.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    match ledger::node::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("ledger-node: {message}");
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::log_filter;

    #[test]
    fn the_broker_logs_only_when_rust_log_names_it() {
        for (rust_log, directives) in [
            (None, ["info", "rumqttd=off"]),
            (Some(""), ["info", "rumqttd=off"]),
            (Some("warn"), ["warn", "rumqttd=off"]),
            (Some("debug,ledger=trace"), ["ledger=trace", "rumqttd=off"]),
            (Some("info,rumqttd=warn"), ["info", "rumqttd=warn"]),
        ] {
            let filter = log_filter(rust_log).to_string();
            let shown: Vec<&str> = filter.split(',').collect();
            assert!(directives.iter().all(|d| shown.contains(d)), "{rust_log:?} gave {filter}");
        }
        assert!(!log_filter(Some("info,rumqttd=warn")).to_string().contains("rumqttd=off"));
        assert!(log_filter(Some("[[[")).to_string().contains("rumqttd=off"), "an invalid filter falls back to the default");
    }
}
