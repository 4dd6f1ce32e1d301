//! Opening zenoh sessions: a node's from its config, an operator tool's from its endpoints
//! and identity files. Multicast and gossip scouting are off everywhere: a node talks to
//! the endpoints it is given and no others.

use crate::access::zenoh_access_control;
use crate::pki::IdentityFiles;
use config::{NodeConfig, Role};
use std::path::Path;
use std::time::Duration;

/// Opens the zenoh session a node config describes: mutual TLS with access control, or
/// (with `insecure_plaintext`) plain TCP on loopback.
pub async fn open(node: &NodeConfig) -> Result<zenoh::Session, String> {
    let section = node.zenoh.as_ref().ok_or("zenoh: no [zenoh] section in the config")?;
    let mode = section.mode.clone().unwrap_or_else(|| match node.node.role {
        Role::Edge => "peer".to_string(),
        Role::Region => "router".to_string(),
    });
    let mut config = zenoh::Config::default();
    set(&mut config, "mode", json(&mode))?;
    // An explicit list, even empty: zenoh's default would listen on every interface.
    set(&mut config, "listen/endpoints", serde_json::to_string(&section.listen).expect("strings"))?;
    set(&mut config, "connect/endpoints", serde_json::to_string(&section.connect).expect("strings"))?;
    // Keep trying the region after a partition instead of giving up, and soon: the time
    // to reconnect after the link heals is most of a catch-up's (`ledger-bench geo`: up to
    // 2 s when tries were 2 s apart, 0.17-0.69 s when 500 ms apart, against about 1.5 s to
    // replicate 300,000 entries). A try every 250 ms costs a TCP (or TLS) handshake
    // attempt four times a second while the region is unreachable.
    set(&mut config, "connect/exit_on_failure", "false".to_string())?;
    set(&mut config, "connect/timeout_ms", "-1".to_string())?;
    set(&mut config, "connect/retry", "{period_init_ms: 100, period_max_ms: 250, period_increase_factor: 2}".to_string())?;
    no_scouting(&mut config)?;
    if !section.insecure_plaintext {
        let files = IdentityFiles {
            ca: section.tls_root_ca.clone().ok_or("zenoh.tls_root_ca: missing")?,
            cert: section.tls_certificate.clone().ok_or("zenoh.tls_certificate: missing")?,
            key: section.tls_private_key.clone().ok_or("zenoh.tls_private_key: missing")?,
        };
        check_identity(&files, &node.node.id, ["zenoh.tls_root_ca", "zenoh.tls_certificate", "zenoh.tls_private_key"])?;
        mutual_tls(&mut config, &files, true)?;
        set(&mut config, "access_control", zenoh_access_control(node).to_string())?;
    }
    zenoh::open(config).await.map_err(|e| format!("zenoh: cannot open a session: {e}"))
}

/// Opens a client session for operator tools, with the operator's identity for `tls/`
/// endpoints. Fails when no endpoint can be reached within `timeout`.
pub async fn open_client(endpoints: &[String], timeout: Duration, identity: Option<&IdentityFiles>) -> Result<zenoh::Session, String> {
    let mut config = zenoh::Config::default();
    set(&mut config, "mode", json("client"))?;
    set(&mut config, "connect/endpoints", serde_json::to_string(endpoints).expect("strings"))?;
    set(&mut config, "connect/timeout_ms", timeout.as_millis().to_string())?;
    set(&mut config, "connect/exit_on_failure", "true".to_string())?;
    no_scouting(&mut config)?;
    let wants_tls = endpoints.iter().any(|e| e.starts_with("tls/"));
    match identity {
        Some(files) => {
            for (flag, path) in [("--ca", &files.ca), ("--cert", &files.cert), ("--key", &files.key)] {
                readable(path).map_err(|e| format!("{flag}: {e}"))?;
            }
            mutual_tls(&mut config, files, false)?;
        }
        None if wants_tls => {
            return Err("tls/ endpoints need an identity: --ca, --cert and --key (or LEDGERCTL_CA, LEDGERCTL_CERT, LEDGERCTL_KEY)".into())
        }
        None => {}
    }
    zenoh::open(config).await.map_err(|e| format!("cannot connect to {}: {e}", endpoints.join(", ")))
}

fn set(config: &mut zenoh::Config, key: &str, value: String) -> Result<(), String> {
    config.insert_json5(key, &value).map_err(|e| format!("zenoh {key}: {e}"))
}

fn no_scouting(config: &mut zenoh::Config) -> Result<(), String> {
    set(config, "scouting/multicast/enabled", "false".to_string())?;
    set(config, "scouting/gossip/enabled", "false".to_string())
}

/// TLS links that present `files`' certificate and accept only peers whose certificate the
/// CA signed; a listener (`serves`) requires a client certificate (mutual TLS).
fn mutual_tls(config: &mut zenoh::Config, files: &IdentityFiles, serves: bool) -> Result<(), String> {
    let path = |p: &Path| json(&p.display().to_string());
    set(config, "transport/link/tls/root_ca_certificate", path(&files.ca))?;
    set(config, "transport/link/tls/connect_certificate", path(&files.cert))?;
    set(config, "transport/link/tls/connect_private_key", path(&files.key))?;
    if serves {
        set(config, "transport/link/tls/listen_certificate", path(&files.cert))?;
        set(config, "transport/link/tls/listen_private_key", path(&files.key))?;
    }
    set(config, "transport/link/tls/enable_mtls", "true".to_string())?;
    // A certificate that expires closes its links instead of lingering.
    set(config, "transport/link/tls/close_link_on_expiration", "true".to_string())
}

/// The identity files are readable and the certificate names this node: a node started
/// with another's certificate would act under the wrong rules.
fn check_identity(files: &IdentityFiles, node_id: &str, keys: [&str; 3]) -> Result<(), String> {
    for (key, path) in keys.iter().zip([&files.ca, &files.cert, &files.key]) {
        readable(path).map_err(|e| format!("{key}: {e}"))?;
    }
    let pem = std::fs::read(&files.cert).map_err(|e| format!("{}: {}: {e}", keys[1], files.cert.display()))?;
    let name = common_name(&pem).map_err(|e| format!("{}: {}: {e}", keys[1], files.cert.display()))?;
    if name != node_id {
        return Err(format!("{}: {} is the certificate of {name:?}, not of this node {node_id:?}", keys[1], files.cert.display()));
    }
    Ok(())
}

fn readable(path: &Path) -> Result<(), String> {
    std::fs::File::open(path).map(drop).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// The common name of the first certificate in a PEM file.
pub fn common_name(pem_bytes: &[u8]) -> Result<String, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem_bytes).map_err(|e| format!("not a PEM certificate: {e}"))?;
    let cert = pem.parse_x509().map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let name = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).ok_or("the certificate has no common name")?;
    Ok(name.to_string())
}

fn json(text: &str) -> String {
    serde_json::to_string(text).expect("a string serializes")
}
