//! Signed ledger messages: a node signs what it vouches for with the key of its X.509
//! identity, and a receiver checks the signature against the signer's certificate, the
//! certificate against the deployment's CA, and its common name against the node the
//! message must come from. Defence in depth behind access control, which checks one hop
//! only: a relaying node cannot forge what another node signed.
//!
//! Owns signing and checking bytes only; which messages are signed, and what the bytes
//! are, is the caller's (see `decision_message`). Keys are ECDSA P-256 (`ledger-node pki`).

use crate::pki::IdentityFiles;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Mutex;

/// Largest certificate a proof may carry (DER bytes).
pub const MAX_CERT_BYTES: usize = 4096;
/// Largest signature (an ASN.1 ECDSA P-256 signature is at most 72 bytes).
pub const MAX_SIGNATURE_BYTES: usize = 128;

/// A signature and the certificate of the key that made it, both hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    pub cert: String,
    pub signature: String,
}

/// Signs with a node's key; holds its certificate to send along.
pub struct Signer {
    key: EcdsaKeyPair,
    /// The certificate as every proof carries it (hex of the DER), made once: a node signs
    /// every frame it ships and every batch it decides.
    cert_hex: String,
    rng: SystemRandom,
}

impl Signer {
    pub fn load(files: &IdentityFiles) -> Result<Signer, String> {
        let cert_der = pem_block(&files.cert, "CERTIFICATE")?;
        let key_der = pem_block(&files.key, "PRIVATE KEY")?;
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &key_der, &rng)
            .map_err(|e| format!("{}: not an ECDSA P-256 PKCS#8 key ({e}); `ledger-node pki` makes one", files.key.display()))?;
        Ok(Signer { key, cert_hex: hex(&cert_der), rng })
    }

    pub fn sign(&self, message: &[u8]) -> Proof {
        let signature = self.key.sign(&self.rng, message).expect("ECDSA signing with a valid key");
        Proof { cert: self.cert_hex.clone(), signature: hex(signature.as_ref()) }
    }
}

/// Checks proofs against the deployment's CA.
pub struct Verifier {
    ca_der: Vec<u8>,
    /// Certificates already checked against the CA: a node signs every frame and batch with
    /// the same one, and checking it is as costly as checking the signature.
    checked: Mutex<Vec<Checked>>,
}

/// Most certificates a verifier remembers as checked (about one per node it hears from);
/// when full it forgets them all and checks again.
pub const MAX_CHECKED_CERTS: usize = 64;

/// A certificate the CA issued: its DER, common name, validity (Unix seconds) and key.
struct Checked {
    der: Vec<u8>,
    name: String,
    not_before: i64,
    not_after: i64,
    key: Vec<u8>,
}

impl Verifier {
    pub fn load(ca: &Path) -> Result<Verifier, String> {
        let ca_der = pem_block(ca, "CERTIFICATE")?;
        x509_parser::parse_x509_certificate(&ca_der).map_err(|e| format!("{}: not an X.509 certificate: {e}", ca.display()))?;
        Ok(Verifier { ca_der, checked: Mutex::new(Vec::new()) })
    }

    /// Ok when `proof` signs `message` with the key of a certificate the CA issued to `signer`
    /// (its common name), valid now.
    pub fn verify(&self, proof: &Proof, signer: &str, message: &[u8]) -> Result<(), String> {
        let cert_der = unhex(&proof.cert, MAX_CERT_BYTES).map_err(|e| format!("proof.cert: {e}"))?;
        let signature = unhex(&proof.signature, MAX_SIGNATURE_BYTES).map_err(|e| format!("proof.signature: {e}"))?;
        let (name, key) = self.issued(&cert_der)?;
        if name != signer {
            return Err(format!("proof.cert: signed by {name:?}, not by {signer:?}"));
        }
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &key)
            .verify(message, &signature)
            .map_err(|_| format!("proof.signature: does not sign this message with {signer}'s key"))
    }

    /// The common name and public key of `cert_der` when the CA issued it and it is valid
    /// now; the CA's signature on it is checked once and remembered.
    fn issued(&self, cert_der: &[u8]) -> Result<(String, Vec<u8>), String> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        let valid = |c: &Checked| -> Result<(String, Vec<u8>), String> {
            if now < c.not_before || now > c.not_after {
                return Err("proof.cert: expired or not yet valid".to_string());
            }
            Ok((c.name.clone(), c.key.clone()))
        };
        if let Some(known) = self.checked.lock().expect("checked certificates").iter().find(|c| c.der == cert_der) {
            return valid(known);
        }
        let (_, ca) = x509_parser::parse_x509_certificate(&self.ca_der).map_err(|e| format!("CA: {e}"))?;
        let (_, cert) = x509_parser::parse_x509_certificate(cert_der).map_err(|e| format!("proof.cert: not X.509: {e}"))?;
        cert.verify_signature(Some(ca.public_key())).map_err(|_| "proof.cert: not issued by this deployment's CA".to_string())?;
        let name = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).unwrap_or_default().to_string();
        let checked = Checked {
            der: cert_der.to_vec(),
            name,
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            key: cert.public_key().subject_public_key.data.to_vec(),
        };
        let answer = valid(&checked);
        let mut known = self.checked.lock().expect("checked certificates");
        if known.len() >= MAX_CHECKED_CERTS {
            known.clear();
        }
        known.push(checked);
        answer
    }
}

/// A node's own signer and the CA's verifier, from its `[zenoh]` identity files; `None` for
/// a node without identities (`insecure_plaintext`), which signs and checks nothing.
pub struct NodeKeys {
    pub signer: Signer,
    pub verifier: Verifier,
}

impl NodeKeys {
    pub fn of(node: &config::NodeConfig) -> Result<Option<NodeKeys>, String> {
        let Some(z) = node.zenoh.as_ref().filter(|z| !z.insecure_plaintext) else { return Ok(None) };
        let (Some(ca), Some(cert), Some(key)) = (&z.tls_root_ca, &z.tls_certificate, &z.tls_private_key) else {
            return Err("zenoh.tls_root_ca, tls_certificate, tls_private_key: all three are needed".to_string());
        };
        let files = IdentityFiles { ca: ca.clone(), cert: cert.clone(), key: key.clone() };
        Ok(Some(NodeKeys { signer: Signer::load(&files)?, verifier: Verifier::load(ca)? }))
    }
}

/// The bytes a source's region signs for a delivery: it read the hold in the source's
/// signed journal and vouches that the source holds this transfer.
pub fn delivery_message(source: &str, id: &str, debit: &str, credit: &str, asset: &str, amount: &str) -> Vec<u8> {
    format!("edgeledger/v1/delivery\n{source}\n{id}\n{debit}\n{credit}\n{asset}\n{amount}\n").into_bytes()
}

/// The bytes an edge signs for its journal head: the entry at `seq` has hash `hash` (and,
/// through the hash chain, every entry before it is what the edge wrote).
pub fn head_message(edge: &str, seq: u64, hash: &[u8]) -> Vec<u8> {
    format!("edgeledger/v1/head\n{edge}\n{seq}\n{}\n", hex(hash)).into_bytes()
}

/// A signed journal head, as it travels in a frame's trailer and as a region keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedHead {
    pub edge: String,
    pub seq: u64,
    /// The entry's hash, hex.
    pub hash: String,
    pub proof: Proof,
}

impl SignedHead {
    pub fn new(signer: &Signer, edge: &str, seq: u64, hash: &[u8]) -> SignedHead {
        SignedHead { edge: edge.to_string(), seq, hash: hex(hash), proof: signer.sign(&head_message(edge, seq, hash)) }
    }

    /// Ok when `verifier`'s CA vouches that `edge` signed this head, and it is the head of
    /// the entry `seq` with hash `hash`.
    pub fn check(&self, verifier: &Verifier, edge: &str, seq: u64, hash: &[u8]) -> Result<(), String> {
        if self.edge != edge || self.seq != seq || self.hash != hex(hash) {
            return Err(format!(
                "the signed head names {} entry {} {}, not {edge} entry {seq} {}",
                self.edge,
                self.seq,
                self.hash,
                hex(hash)
            ));
        }
        verifier.verify(&self.proof, edge, &head_message(edge, seq, hash))
    }

    /// The signature alone, with the certificate it carries and no CA: for an offline
    /// check of a stored head. Returns the signer's common name.
    pub fn check_self_signed(&self) -> Result<String, String> {
        let cert_der = unhex(&self.proof.cert, MAX_CERT_BYTES)?;
        let signature = unhex(&self.proof.signature, MAX_SIGNATURE_BYTES)?;
        let hash = unhex(&self.hash, 32)?;
        let (_, cert) = x509_parser::parse_x509_certificate(&cert_der).map_err(|e| format!("not X.509: {e}"))?;
        let name = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).unwrap_or_default().to_string();
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, cert.public_key().subject_public_key.data.as_ref())
            .verify(&head_message(&self.edge, self.seq, &hash), &signature)
            .map_err(|_| "the signature does not match its certificate's key".to_string())?;
        Ok(name)
    }
}

/// The bytes a destination signs for its decision on a cross-node transfer: which transfer
/// (source and id), who decided, and what (status, code, the journal entry that holds it).
pub fn decision_message(source: &str, id: &str, destination: &str, status: &str, code: &str, seq: Option<u64>) -> Vec<u8> {
    let seq = seq.map_or(String::new(), |s| s.to_string());
    format!("edgeledger/v1/decision\n{source}\n{id}\n{destination}\n{status}\n{code}\n{seq}\n").into_bytes()
}

/// The bytes a source's region signs for a batch of deliveries (one signature for all):
/// each delivery's own message (`delivery_message`), in the batch's order.
pub fn deliveries_message<'a>(deliveries: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = b"edgeledger/v1/deliveries\n".to_vec();
    for message in deliveries {
        out.extend_from_slice(&(message.len() as u64).to_be_bytes());
        out.extend_from_slice(message);
    }
    out
}

/// The SHA-256 of one decision's message (`decision_message`), hex: what a destination
/// lists, and signs once, for a batch of decisions.
pub fn decision_digest(message: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, message).as_ref())
}

/// The bytes a destination signs for a batch of decisions: `destination` and the digest of
/// each decision in the batch's order (empty for an item it did not decide). A source checks
/// one signature per batch, then that its own decision's digest is the one listed.
pub fn decisions_message(destination: &str, digests: &[Option<String>]) -> Vec<u8> {
    let mut out = format!("edgeledger/v1/decisions\n{destination}\n").into_bytes();
    for digest in digests {
        out.extend_from_slice(digest.as_deref().unwrap_or_default().as_bytes());
        out.push(b'\n');
    }
    out
}

/// The DER contents of the first PEM block labelled `label` in `path`.
fn pem_block(path: &Path, label: &str) -> Result<Vec<u8>, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    for pem in x509_parser::pem::Pem::iter_from_buffer(&text) {
        let pem = pem.map_err(|e| format!("{}: not PEM: {e}", path.display()))?;
        if pem.label == label {
            return Ok(pem.contents);
        }
    }
    Err(format!("{}: no {label} block", path.display()))
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Lowercase hex, two digits per byte.
fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(HEX_DIGITS[usize::from(b >> 4)]));
        out.push(char::from(HEX_DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// The bytes of `text`, hex of at most `max_bytes` bytes (either case).
fn unhex(text: &str, max_bytes: usize) -> Result<Vec<u8>, String> {
    if !text.len().is_multiple_of(2) || text.len() > max_bytes * 2 {
        return Err(format!("must be hex of at most {max_bytes} bytes"));
    }
    let digit = |c: u8| char::from(c).to_digit(16).map(|d| d as u8).ok_or_else(|| "not hex".to_string());
    text.as_bytes().chunks_exact(2).map(|pair| Ok(digit(pair[0])? << 4 | digit(pair[1])?)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{ensure, Identity};

    #[test]
    fn a_proof_checks_only_for_its_signer_message_and_ca() {
        let dir = std::env::temp_dir().join(format!("edgeledger-sign-{}", std::process::id()));
        let other = dir.join("other");
        let ids = [Identity::Node("us/nyc-1".into()), Identity::Node("us/sf-1".into())];
        ensure(&dir, &ids, &[]).unwrap();
        ensure(&other, &ids, &[]).unwrap();
        let nyc = Signer::load(&ids[0].files(&dir)).unwrap();
        let verifier = Verifier::load(&dir.join("ca.pem")).unwrap();
        let message = decision_message("eu/berlin-1", "pay-1", "us/nyc-1", "committed", "ok", Some(7));
        let proof = nyc.sign(&message);
        verifier.verify(&proof, "us/nyc-1", &message).unwrap();
        // Another signer's name, another message, another CA's certificate: refused.
        assert!(verifier.verify(&proof, "us/sf-1", &message).unwrap_err().contains("not by"));
        let rejected = decision_message("eu/berlin-1", "pay-1", "us/nyc-1", "rejected", "unknown_account", Some(7));
        assert!(verifier.verify(&proof, "us/nyc-1", &rejected).is_err());
        let stranger = Signer::load(&ids[0].files(&other)).unwrap().sign(&message);
        assert!(verifier.verify(&stranger, "us/nyc-1", &message).unwrap_err().contains("CA"));
        // sf's valid certificate with nyc's signature: the key does not match the certificate.
        let sf = Signer::load(&ids[1].files(&dir)).unwrap().sign(&message);
        let mixed = Proof { cert: sf.cert.clone(), signature: proof.signature.clone() };
        assert!(verifier.verify(&mixed, "us/sf-1", &message).is_err());
        assert!(verifier.verify(&Proof { cert: "zz".into(), signature: proof.signature }, "us/nyc-1", &message).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn hex_goes_both_ways_and_refuses_what_is_not_hex() {
        let all: Vec<u8> = (0..=255).collect();
        let text = hex(&all);
        assert_eq!(&text[..8], "00010203");
        assert_eq!(&text[text.len() - 4..], "feff");
        assert_eq!(unhex(&text, 256).unwrap(), all);
        assert_eq!(unhex("ABcd", 2).unwrap(), vec![0xab, 0xcd]);
        for bad in ["abc", "zz", "+f", "0g", "é"] {
            assert!(unhex(bad, 8).is_err(), "{bad:?}");
        }
        assert!(unhex(&text, 255).unwrap_err().contains("at most 255 bytes"));
    }

    #[test]
    fn a_certificate_checked_once_is_remembered_and_still_bound_to_its_name_and_key() {
        let dir = std::env::temp_dir().join(format!("edgeledger-sign-cache-{}", std::process::id()));
        let other = dir.join("other");
        let ids = [Identity::Node("us/nyc-1".into())];
        ensure(&dir, &ids, &[]).unwrap();
        ensure(&other, &ids, &[]).unwrap();
        let verifier = Verifier::load(&dir.join("ca.pem")).unwrap();
        let nyc = Signer::load(&ids[0].files(&dir)).unwrap();
        let message = decision_message("eu/berlin-1", "pay-1", "us/nyc-1", "committed", "ok", Some(7));
        for _ in 0..3 {
            verifier.verify(&nyc.sign(&message), "us/nyc-1", &message).unwrap();
        }
        assert_eq!(verifier.checked.lock().unwrap().len(), 1, "checked against the CA once");
        // Remembered, the certificate still names its node and its key signs only what it signed.
        assert!(verifier.verify(&nyc.sign(&message), "us/sf-1", &message).unwrap_err().contains("not by"));
        let other_message = decision_message("eu/berlin-1", "pay-2", "us/nyc-1", "committed", "ok", Some(8));
        assert!(verifier.verify(&nyc.sign(&message), "us/nyc-1", &other_message).unwrap_err().contains("does not sign"));
        // A certificate another CA issued is refused every time and never remembered.
        let stranger = Signer::load(&ids[0].files(&other)).unwrap();
        for _ in 0..2 {
            assert!(verifier.verify(&stranger.sign(&message), "us/nyc-1", &message).unwrap_err().contains("CA"));
        }
        assert_eq!(verifier.checked.lock().unwrap().len(), 1);
        let _ = std::fs::remove_dir_all(dir);
    }
}
