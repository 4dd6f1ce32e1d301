//! Identities of a deployment: its certificate authority, and the certificates it issues to
//! nodes (common name = the node id, `eu` or `eu/berlin-1`), to operators (common name
//! `operator:NAME`) and to devices that log in to MQTT with a certificate (`device:ID`). Zenoh's mutual TLS checks every link against the CA; the access rules
//! (`access`) then name what each common name may do.
//!
//! Owns making and reading these files only, so that nobody needs openssl to start. It
//! must not decide what an identity may do.

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// How long the CA is valid.
pub const CA_VALIDITY: Duration = Duration::days(3650);
/// How long a node's or operator's certificate is valid: rotate before then (docs/SECURITY.md).
pub const LEAF_VALIDITY: Duration = Duration::days(825);
/// Operators' common names start with this; node ids cannot contain ':'.
pub const OPERATOR_PREFIX: &str = "operator:";
/// Devices' common names (MQTT client certificates) start with this.
pub const DEVICE_PREFIX: &str = "device:";
/// Host names every node certificate carries, so that loopback links verify.
pub const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Who a certificate names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A node id: `eu` or `eu/berlin-1`.
    Node(String),
    /// An operator's name: `admin`.
    Operator(String),
    /// A device's id (`till-1`), for MQTT client certificates.
    Device(String),
}

impl Identity {
    /// Parses `operator:NAME` or a node id (not validated here: the config does that).
    pub fn parse(text: &str) -> Result<Identity, PkiError> {
        if let Some(id) = text.strip_prefix(DEVICE_PREFIX) {
            let ok = (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            return match ok {
                true => Ok(Identity::Device(id.to_string())),
                false => Err(PkiError::BadName(format!("device id {id:?} must be 1 to 64 characters a-z, A-Z, 0-9, '-', '_', '.'"))),
            };
        }
        match text.strip_prefix(OPERATOR_PREFIX) {
            Some(name) if valid_operator_name(name) => Ok(Identity::Operator(name.to_string())),
            Some(name) => Err(PkiError::BadName(format!("operator name {name:?} must be 1 to 64 characters a-z, 0-9, '-', '_', '.'"))),
            None if valid_node_id(text) => Ok(Identity::Node(text.to_string())),
            None => Err(PkiError::BadName(format!("{text:?} is neither a node id (eu, eu/berlin-1) nor operator:NAME"))),
        }
    }

    /// The certificate's common name, which zenoh's access control matches.
    pub fn common_name(&self) -> String {
        match self {
            Identity::Node(id) => id.clone(),
            Identity::Operator(name) => format!("{OPERATOR_PREFIX}{name}"),
            Identity::Device(id) => format!("{DEVICE_PREFIX}{id}"),
        }
    }

    /// Where its certificate and key live under a PKI directory.
    pub fn files(&self, dir: &Path) -> IdentityFiles {
        let stem = match self {
            Identity::Node(id) => dir.join(id.replace('/', "-")),
            Identity::Operator(name) => dir.join("operators").join(name),
            Identity::Device(id) => dir.join("devices").join(id),
        };
        IdentityFiles { ca: dir.join("ca.pem"), cert: stem.with_extension("pem"), key: stem.with_extension("key") }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.common_name())
    }
}

pub fn valid_operator_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

fn valid_node_id(id: &str) -> bool {
    let segment = |s: &str| !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let parts: Vec<&str> = id.split('/').collect();
    parts.len() <= 2 && parts.iter().all(|s| segment(s))
}

/// The three PEM files one identity needs: the CA to check peers with, its own certificate
/// and its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug)]
pub enum PkiError {
    BadName(String),
    Io { path: PathBuf, error: std::io::Error },
    Cert(String),
}

impl fmt::Display for PkiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PkiError::BadName(m) => f.write_str(m),
            PkiError::Io { path, error } => write!(f, "{}: {error}", path.display()),
            PkiError::Cert(m) => write!(f, "certificate: {m}"),
        }
    }
}

impl std::error::Error for PkiError {}

fn cert_err(e: rcgen::Error) -> PkiError {
    PkiError::Cert(e.to_string())
}

/// What `issue` did for one identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Issued {
    New(IdentityFiles),
    /// Its files were there already and were left alone.
    Kept(IdentityFiles),
}

/// Makes the CA under `dir` (`ca.pem`, and `ca.key` readable by the owner only) unless it
/// is there. Returns whether it made one.
pub fn ensure_ca(dir: &Path) -> Result<bool, PkiError> {
    let (cert, key) = (dir.join("ca.pem"), dir.join("ca.key"));
    match (cert.exists(), key.exists()) {
        (true, true) => return Ok(false),
        // A node's directory holds ca.pem without the CA's key: making a new CA there
        // would replace the one every peer trusts.
        (true, false) => {
            return Err(PkiError::BadName(format!(
                "{} is here without ca.key: issue certificates where the CA's key is kept (or remove ca.pem to start a new CA)",
                cert.display()
            )))
        }
        (false, true) => {
            return Err(PkiError::BadName(format!(
                "{} is here without ca.pem: restore it, or remove ca.key to start a new CA",
                key.display()
            )))
        }
        (false, false) => {}
    }
    // Without a serial number rcgen derives one from the key's hash: unique per key.
    let key_pair = KeyPair::generate().map_err(cert_err)?;
    let mut params = CertificateParams::new(Vec::new()).map_err(cert_err)?;
    params.distinguished_name.push(DnType::CommonName, "edgeledger deployment CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + CA_VALIDITY;
    let ca = params.self_signed(&key_pair).map_err(cert_err)?;
    write_private(&key, &key_pair.serialize_pem())?;
    write_public(&cert, &ca.pem())?;
    Ok(true)
}

/// Issues a certificate for `identity` from the CA under `dir` unless its files exist.
/// Nodes' certificates name `hosts` (plus loopback) so that a peer connecting by that name
/// or address verifies it; operators' certificates are for clients only.
pub fn issue(dir: &Path, identity: &Identity, hosts: &[String]) -> Result<Issued, PkiError> {
    let files = identity.files(dir);
    if files.cert.exists() && files.key.exists() {
        return Ok(Issued::Kept(files));
    }
    let ca_key_pem = read(&dir.join("ca.key"))?;
    let ca_pem = read(&files.ca)?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(cert_err)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(cert_err)?;

    let names: Vec<String> = match identity {
        Identity::Node(_) => LOOPBACK_HOSTS.iter().map(|h| h.to_string()).chain(hosts.iter().cloned()).collect(),
        Identity::Operator(_) | Identity::Device(_) => Vec::new(),
    };
    let mut params = CertificateParams::new(names).map_err(cert_err)?;
    params.distinguished_name.push(DnType::CommonName, identity.common_name());
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match identity {
        Identity::Node(_) => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        Identity::Operator(_) | Identity::Device(_) => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + LEAF_VALIDITY;
    let key_pair = KeyPair::generate().map_err(cert_err)?;
    let cert = params.signed_by(&key_pair, &issuer).map_err(cert_err)?;
    if let Some(parent) = files.cert.parent() {
        std::fs::create_dir_all(parent).map_err(|error| PkiError::Io { path: parent.to_path_buf(), error })?;
    }
    write_private(&files.key, &key_pair.serialize_pem())?;
    write_public(&files.cert, &cert.pem())?;
    Ok(Issued::New(files))
}

/// Makes the CA if needed and a certificate for each identity that has none.
pub fn ensure(dir: &Path, identities: &[Identity], hosts: &[String]) -> Result<Vec<Issued>, PkiError> {
    std::fs::create_dir_all(dir).map_err(|error| PkiError::Io { path: dir.to_path_buf(), error })?;
    ensure_ca(dir)?;
    identities.iter().map(|identity| issue(dir, identity, hosts)).collect()
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|error| PkiError::Io { path: path.to_path_buf(), error })
}

fn write_public(path: &Path, text: &str) -> Result<(), PkiError> {
    std::fs::write(path, text).map_err(|error| PkiError::Io { path: path.to_path_buf(), error })
}

/// Private keys are created readable and writable by their owner only.
fn write_private(path: &Path, text: &str) -> Result<(), PkiError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |error| PkiError::Io { path: path.to_path_buf(), error };
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_map_to_files() {
        assert_eq!(Identity::parse("eu/berlin-1").unwrap(), Identity::Node("eu/berlin-1".into()));
        assert_eq!(Identity::parse("operator:admin").unwrap().common_name(), "operator:admin");
        assert!(Identity::parse("operator:").is_err());
        assert!(Identity::parse("EU").is_err());
        assert!(Identity::parse("a/b/c").is_err());
        let files = Identity::Node("eu/berlin-1".into()).files(Path::new("/p"));
        assert_eq!(files.cert, Path::new("/p/eu-berlin-1.pem"));
        assert_eq!(Identity::Operator("admin".into()).files(Path::new("/p")).key, Path::new("/p/operators/admin.key"));
    }

    #[test]
    fn issues_once_and_keeps_keys_private() {
        let dir = std::env::temp_dir().join(format!("edgeledger-pki-{}", std::process::id()));
        let ids = [Identity::Node("eu".into()), Identity::Operator("admin".into())];
        let first = ensure(&dir, &ids, &["eu.example".to_string()]).unwrap();
        assert!(first.iter().all(|i| matches!(i, Issued::New(_))));
        let again = ensure(&dir, &ids, &[]).unwrap();
        assert!(again.iter().all(|i| matches!(i, Issued::Kept(_))));
        // A directory with the CA certificate but not its key never gets a new CA.
        let node_dir = dir.join("node");
        std::fs::create_dir_all(&node_dir).unwrap();
        std::fs::copy(dir.join("ca.pem"), node_dir.join("ca.pem")).unwrap();
        assert!(ensure(&node_dir, &[Identity::Node("eu/x".into())], &[]).is_err());
        assert_eq!(std::fs::read(node_dir.join("ca.pem")).unwrap(), std::fs::read(dir.join("ca.pem")).unwrap());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("eu.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "key readable by others: {mode:o}");
        let pem = std::fs::read_to_string(dir.join("eu.pem")).unwrap();
        let der = ::pem::parse(pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(der.contents()).unwrap();
        let cn = cert.subject().iter_common_name().next().unwrap().as_str().unwrap().to_string();
        assert_eq!(cn, "eu");
        let _ = std::fs::remove_dir_all(dir);
    }
}
