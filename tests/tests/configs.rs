//! `ledger-node check-config` on every config this repository ships (config/, deploy/,
//! and the configs inside the Kubernetes ConfigMap), and on broken ones: each broken file
//! is refused with the offending key named.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn toml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            toml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "toml") && path.file_name().is_some_and(|n| n != "Cargo.toml") {
            out.push(path);
        }
    }
}

/// The `NAME.toml: |` blocks of a ConfigMap, as files.
fn configmap_files(yaml: &Path, into: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string(yaml).unwrap();
    let mut files = Vec::new();
    let mut current: Option<(String, Vec<String>)> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if trimmed.ends_with(".toml: |") && indent == 2 {
            if let Some((name, body)) = current.take() {
                files.push((name, body));
            }
            current = Some((trimmed.trim_end_matches(": |").to_string(), Vec::new()));
        } else if let Some((_, body)) = current.as_mut() {
            if indent >= 4 || trimmed.is_empty() {
                body.push(line.get(4..).unwrap_or("").to_string());
            } else {
                files.push(current.take().unwrap());
            }
        }
    }
    files.extend(current);
    files
        .into_iter()
        .map(|(name, body)| {
            let path = into.join(name);
            std::fs::write(&path, body.join("\n")).unwrap();
            path
        })
        .collect()
}

/// Runs check-config; `with_secrets` sets every variable the file's password_hash_env names.
fn check(path: &Path, with_secrets: bool) -> (bool, String) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut command = Command::new(harness::node_binary());
    command.arg("check-config").arg(path);
    // Secrets named by password_hash_env come from the environment.
    for line in text.lines().filter(|_| with_secrets) {
        if let Some(var) = line.trim().strip_prefix("password_hash_env = ") {
            command.env(var.trim_matches('"'), broker::hash_password("example"));
        }
    }
    let out = command.output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn every_shipped_config_passes_check_config() {
    let mut files = Vec::new();
    toml_files(&root().join("config"), &mut files);
    toml_files(&root().join("deploy"), &mut files);
    let scratch = tempfile::tempdir().unwrap();
    let from_k8s = configmap_files(&root().join("deploy/k8s/configmap.yaml"), scratch.path());
    assert_eq!(from_k8s.len(), 6, "six node configs in the ConfigMap");
    files.extend(from_k8s);
    assert!(files.len() >= 16, "{files:?}");
    for file in &files {
        let (ok, output) = check(file, true);
        assert!(ok, "{}: {output}", file.display());
        assert!(output.contains(": ok (node "), "{output}");
    }
}

#[test]
fn broken_configs_name_the_offending_key() {
    let dir = tempfile::tempdir().unwrap();
    let base = "[node]\nid = \"eu/berlin-1\"\n";
    let cases = [
        (format!("{base}[mqtt]\nlisten_v4 = \"127.0.0.1:1883\"\nbogus = 1\n"), "bogus"),
        (format!("{base}[metrics]\nlisten = \"not an address\"\n"), "listen"),
        (format!("{base}[metrics]\nlisten = \"127.0.0.1:9464\"\nport = 9\n"), "port"),
        ("[node]\nid = \"Berlin\"\n".to_string(), "node.id"),
        (format!("{base}[[devices]]\nid = \"t1\"\npassword_hash_env = \"EDGELEDGER_TEST_UNSET_VAR\"\n"), "devices[0]"),
        (format!("{base}[zenoh]\nmode = \"mesh\"\n"), "zenoh.mode"),
        (format!("{base}[ledger]\nid_cache_entries = 0\n"), "ledger.id_cache_entries"),
        (format!("{base}[ledger]\nresolved_hold_cache_entries = 0\n"), "ledger.resolved_hold_cache_entries"),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad-{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let (ok, output) = check(&path, false);
        assert!(!ok, "{text} was accepted");
        assert!(output.contains(key), "{text}: the error does not name {key}: {output}");
    }
}
