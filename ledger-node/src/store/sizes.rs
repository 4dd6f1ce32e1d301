//! How big the file and its tables are, and how much room the disk has left: what an
//! operator watches to see a full disk coming (read at scrape time, never on the hot path).

use super::error::{Fault, StoreError};
use super::live::{
    ACCOUNTS, ACCOUNT_DELTAS, HOLDS, RECEIVED, REPLICA_ACCOUNTS, REPLICA_HOLDS, REPLICA_RECEIVED, REPLICA_RESOLVED_HOLDS,
    REPLICA_SENT_RESOLVED, RESOLVED_HOLDS, SENT_RESOLVED,
};
use super::{Store, IDS, JOURNAL, REPLICA};
use redb::{ReadableDatabase, ReadableTableMetadata, TableHandle};

/// Rows per table, by the name the metrics give it.
pub type TableRows = Vec<(&'static str, u64)>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sizes {
    /// The file's length.
    pub file_bytes: u64,
    /// The blocks the file takes on disk: redb grows the file ahead of use (doubling up to
    /// a region of 4 GiB), and the part not yet written takes none.
    pub disk_bytes: u64,
    /// Bytes an unprivileged writer may still use on the file's filesystem.
    pub disk_free_bytes: u64,
    /// Empty while the file is closed after a failed write: the sizes above still tell.
    pub rows: TableRows,
    /// Whether the last commit recorded redb's allocator state (`commit.quick_repair_up_to_bytes`).
    pub quick_repair: bool,
}

impl Store {
    pub fn sizes(&self) -> Result<Sizes, StoreError> {
        let io = |e: std::io::Error| self.fail(Fault::Db(redb::Error::Io(e)));
        let (file_bytes, disk_bytes) = file_sizes(&self.path).map_err(io)?;
        let disk_free_bytes = free_bytes(&self.path).map_err(io)?;
        let rows = self.rows().unwrap_or_default();
        Ok(Sizes { file_bytes, disk_bytes, disk_free_bytes, rows, quick_repair: self.records_allocator_state() })
    }

    fn rows(&self) -> Result<TableRows, Fault> {
        let db = self.db()?;
        let tx = db.begin_read()?;
        let mut rows = vec![
            ("journal", tx.open_table(JOURNAL)?.len()?),
            ("ids", tx.open_table(IDS)?.len()?),
            ("replica", tx.open_table(REPLICA)?.len()?),
        ];
        // Made by this release's first commit on an older file.
        let deltas = match tx.open_table(ACCOUNT_DELTAS) {
            Ok(table) => table.len()?,
            Err(redb::TableError::TableDoesNotExist(_)) => 0,
            Err(e) => return Err(e.into()),
        };
        rows.push(("live_account_deltas", deltas));
        // Tables a file may not have: the replicas' live tables are made on a region's file.
        for (name, table) in [
            ("live_accounts", ACCOUNTS),
            ("live_holds", HOLDS),
            ("live_holds_resolved", RESOLVED_HOLDS),
            ("live_sent_resolved", SENT_RESOLVED),
            ("live_received", RECEIVED),
            ("replica_live_accounts", REPLICA_ACCOUNTS),
            ("replica_live_holds", REPLICA_HOLDS),
            ("replica_live_holds_resolved", REPLICA_RESOLVED_HOLDS),
            ("replica_live_sent_resolved", REPLICA_SENT_RESOLVED),
            ("replica_live_received", REPLICA_RECEIVED),
        ] {
            let n = match tx.open_table(table) {
                Ok(table) => table.len()?,
                Err(redb::TableError::TableDoesNotExist(_)) => 0,
                Err(e) => return Err(e.into()),
            };
            rows.push((name, n));
        }
        Ok(rows)
    }
}

/// Where one table's bytes go, as redb counts them (`TableStats`): what a benchmark prints
/// to say where the disk per transfer goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableBytes {
    pub name: String,
    pub rows: u64,
    /// Keys and values as stored in leaves, without redb's per-row offsets.
    pub stored: u64,
    /// Leaf and branch pages times the page size: what the table takes in the file.
    pub pages: u64,
    pub leaf_pages: u64,
    pub branch_pages: u64,
}

/// redb's page size: the default, which a node does not change.
const REDB_PAGE_BYTES: u64 = 4096;

impl Store {
    /// Every table of the file with its rows and bytes (a full walk of each tree: for
    /// benchmarks and tools, never on a node's path).
    pub fn table_bytes(&self) -> Result<Vec<TableBytes>, StoreError> {
        let read = || -> Result<Vec<TableBytes>, Fault> {
            let db = self.db()?;
            let tx = db.begin_read()?;
            let mut out = Vec::new();
            for handle in tx.list_tables()? {
                let table = tx.open_untyped_table(handle.clone())?;
                let stats = table.stats()?;
                out.push(TableBytes {
                    name: handle.name().to_string(),
                    rows: table.len()?,
                    stored: stats.stored_bytes(),
                    pages: (stats.leaf_pages() + stats.branch_pages()) * REDB_PAGE_BYTES,
                    leaf_pages: stats.leaf_pages(),
                    branch_pages: stats.branch_pages(),
                });
            }
            Ok(out)
        };
        read().map_err(|f| self.fail(f))
    }
}

/// A file's length, and the bytes of the blocks it takes on disk.
pub fn file_sizes(path: &std::path::Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    // st_blocks counts 512-byte units whatever the filesystem's block size.
    Ok((meta.len(), meta.blocks().saturating_mul(512)))
}

/// Free bytes for unprivileged writers on the filesystem holding `path`.
fn free_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let dir = path.parent().unwrap_or(path);
    let c_path =
        std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs fills the zeroed struct it is given from a NUL-terminated path that
    // outlives the call.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_file_has_a_size_room_and_empty_tables() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "test/edge-1").unwrap();
        let sizes = store.sizes().unwrap();
        assert!(sizes.file_bytes > 0 && sizes.disk_bytes > 0 && sizes.disk_free_bytes > 0, "{sizes:?}");
        assert!(sizes.rows.iter().all(|(_, n)| *n == 0), "{sizes:?}");
        assert_eq!(sizes.rows.len(), 14);
    }

    #[test]
    fn commits_record_the_allocator_state_while_the_file_is_within_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "test/edge-1").unwrap();
        let file_bytes = store.sizes().unwrap().file_bytes;
        assert!(file_bytes < config::DEFAULT_QUICK_REPAIR_UP_TO_BYTES, "a new file is small: {file_bytes}");
        assert!(store.sizes().unwrap().quick_repair, "the open's commit recorded it");
        // The file is past a limit below its length: the next commit leaves the record out.
        store.set_quick_repair_up_to(file_bytes - 1);
        store.probe_writes(4096).unwrap();
        assert!(!store.sizes().unwrap().quick_repair);
        // At its length exactly, and after, the record is back.
        let file_bytes = store.sizes().unwrap().file_bytes;
        store.set_quick_repair_up_to(file_bytes);
        store.probe_writes(4096).unwrap();
        assert!(store.sizes().unwrap().quick_repair);
    }
}
