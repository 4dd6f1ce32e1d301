//! `core --tigerbeetle SCRIPT`: runs TigerBeetle's reference bench (`tb_bench.py` in
//! `shared/reference/tigerbeetle/`, whose README says what it needs) and reads back its
//! committed transfers/s per batch size, so that the core's figures of the same sitting can
//! be set beside them. It starts, times and checks nothing itself: the script does.

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Transfers per batch size, as the reference's README runs it.
const TRANSFERS: u64 = 400_000;
/// Longest phase per batch size, in seconds (batch 1 stops here).
const PHASE_SECONDS: u64 = 6;
/// The script formats a data file, starts the server and creates accounts before its
/// phases; past this it is stopped and the sitting fails.
const SCRIPT_DEADLINE: Duration = Duration::from_secs(600);
/// How often the script is looked at while it runs.
const POLL: Duration = Duration::from_millis(200);

/// TigerBeetle's committed transfers/s (wall clock, one client, one request in flight) for
/// each of `batches`.
pub fn run(script: &Path, batches: &[usize]) -> Result<BTreeMap<usize, f64>, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let json = dir.path().join("tigerbeetle.json");
    let mut sizes = batches.to_vec();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    let sizes: Vec<String> = sizes.iter().map(usize::to_string).collect();
    println!("tigerbeetle: {} --batch-sizes {}", script.display(), sizes.join(","));
    let mut child = Command::new("python3")
        .arg(script)
        .args(["--transfers", &TRANSFERS.to_string(), "--phase-seconds", &PHASE_SECONDS.to_string()])
        .args(["--batch-sizes", &sizes.join(",")])
        .arg("--json")
        .arg(&json)
        .spawn()
        .map_err(|e| format!("cannot run python3 {}: {e}", script.display()))?;
    let deadline = Instant::now() + SCRIPT_DEADLINE;
    let status = loop {
        match child.try_wait().map_err(|e| format!("waiting for {}: {e}", script.display()))? {
            Some(status) => break status,
            None if Instant::now() > deadline => {
                // Killing python leaves its server to the script's own cleanup, which
                // does not run on SIGKILL: say so.
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} ran past {} s and was killed; a TigerBeetle server it started may still run",
                    script.display(),
                    SCRIPT_DEADLINE.as_secs()
                ));
            }
            None => std::thread::sleep(POLL),
        }
    };
    if !status.success() {
        return Err(format!("{} failed ({status}); its README says what it needs", script.display()));
    }
    let text = std::fs::read_to_string(&json).map_err(|e| format!("{}: {e}", json.display()))?;
    let report: Value = serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", json.display()))?;
    rates(&report, batches)
}

/// The `raw` phases' `tps_wall` by batch size; every batch asked for must be there, once,
/// with a rate above zero.
fn rates(report: &Value, batches: &[usize]) -> Result<BTreeMap<usize, f64>, String> {
    let phases = report.get("phases").and_then(Value::as_array).ok_or("tigerbeetle report: no \"phases\" array")?;
    let mut out = BTreeMap::new();
    for phase in phases {
        if phase.get("mode").and_then(Value::as_str) != Some("raw") {
            continue;
        }
        let batch = phase
            .get("batch")
            .and_then(Value::as_u64)
            .and_then(|b| usize::try_from(b).ok())
            .ok_or_else(|| format!("tigerbeetle report: a raw phase's \"batch\" is not a whole number: {phase}"))?;
        let tps = phase
            .get("tps_wall")
            .and_then(Value::as_f64)
            .filter(|tps| tps.is_finite() && *tps > 0.0)
            .ok_or_else(|| format!("tigerbeetle report: batch {batch}: \"tps_wall\" is not a rate above zero: {phase}"))?;
        if out.insert(batch, tps).is_some() {
            return Err(format!("tigerbeetle report: two raw phases for batch {batch}"));
        }
    }
    match batches.iter().find(|b| !out.contains_key(b)) {
        Some(missing) => Err(format!("tigerbeetle report: no raw phase for batch {missing}")),
        None => Ok(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_the_raw_phases_and_wants_every_batch() {
        let report = json!({"phases": [
            {"mode": "raw", "batch": 8189, "tps_wall": 685875},
            {"mode": "api", "batch": 8189, "tps_wall": 1},
            {"mode": "raw", "batch": 1, "tps_wall": 1456},
        ]});
        let read = rates(&report, &[1, 8189]).unwrap();
        assert_eq!(read[&8189], 685_875.0);
        assert_eq!(read[&1], 1_456.0);
        assert!(rates(&report, &[1, 100]).unwrap_err().contains("batch 100"));
        assert!(rates(&json!({}), &[1]).is_err());
        let null = json!({"phases": [{"mode": "raw", "batch": 1, "tps_wall": null}]});
        assert!(rates(&null, &[1]).unwrap_err().contains("above zero"));
        let zero = json!({"phases": [{"mode": "raw", "batch": 1, "tps_wall": 0}]});
        assert!(rates(&zero, &[1]).unwrap_err().contains("above zero"));
        let twice = json!({"phases": [{"mode": "raw", "batch": 1, "tps_wall": 5}, {"mode": "raw", "batch": 1, "tps_wall": 6}]});
        assert!(rates(&twice, &[1]).unwrap_err().contains("two raw phases"));
    }
}
