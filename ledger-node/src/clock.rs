//! The node's clock, read by the shell only: the core is given the time, never reads it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970");
    u64::try_from(since.as_millis()).expect("milliseconds fit in u64 until the year 584,556,019")
}
