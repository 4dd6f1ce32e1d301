//! A disk that refuses a write (full, a quota, a file size limit, an I/O error) does not
//! stop an edge. The committer answers the group it could not write, and every group
//! after it, `disk_full` (devices) or `unavailable` (other nodes): nothing of them is
//! acknowledged, nothing is recorded, the same ids take effect when resent later. The
//! intake then rebuilds its books from the file (what is durable, nothing more) and
//! answers only what needs no write (balances, resends of recorded ids, reads) until a
//! probe write succeeds; then it takes new commands again by itself.
//!
//! Owns the hand-over between the two threads and the wording of the refusal; must not
//! touch the books or the file itself.

use crate::core::journal::Chain;
use crate::core::reply::{Code, Rejection, Reply};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often a refusing node tries a write.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// What a probe writes (and removes): more than the largest group usually needs, so that
/// the first groups after it find the space already in the file.
pub const PROBE_BYTES: usize = 4 * 1024 * 1024;

/// Failed commits since start: raised by the committer, followed by the intake.
#[derive(Debug, Default)]
pub struct WriteFailures(AtomicU64);

impl WriteFailures {
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// Records one more failed commit; returns the new count.
    pub fn raise(&self) -> u64 {
        self.0.fetch_add(1, Ordering::AcqRel) + 1
    }
}

/// Sent with the first group the intake applies to books rebuilt after failure `after`:
/// from it on, the committer writes again, linking entries to `chain` (the file's end).
#[derive(Debug, Clone, Copy)]
pub struct Restart {
    pub after: u64,
    pub chain: Chain,
}

/// Whether the intake takes commands that write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskMode {
    Writing,
    /// Answering only what needs no write; probing at `next_probe`.
    Refusing {
        since: Instant,
        next_probe: Instant,
    },
}

impl DiskMode {
    pub fn refusing(now: Instant) -> DiskMode {
        DiskMode::Refusing { since: now, next_probe: now + PROBE_EVERY }
    }

    pub fn writes(&self) -> bool {
        *self == DiskMode::Writing
    }
}

/// The answer to a device command the node cannot write now.
pub fn refusal(id: Option<&str>) -> Reply {
    Reply::rejected(id, Rejection::new(Code::DiskFull, "the node cannot write to its disk; nothing was done; resend the same id later"))
}

/// The refusal of another node's request that would write.
pub fn peer_refusal() -> bridge::Refusal {
    bridge::Refusal::unavailable("the node cannot write to its disk; ask again later")
}
