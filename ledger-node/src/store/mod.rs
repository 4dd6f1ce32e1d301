//! The redb file of a node: the journal, the id records of rejected commands, a region's
//! replicas of its edges' journals, and the node's identity. Every write is one
//! `Durability::Immediate` transaction; a node that cannot commit stops rather than reply.
//!
//! Owns the file only: it verifies the hash chain as it reads and hands entries to the
//! core to replay, but decides nothing about the books itself.

mod anchor;
mod archive;
mod error;
mod history;
mod id_tail;
mod ids;
mod journal;
mod live;
mod live_codec;
mod prune;
mod replica;
mod rows;
mod sizes;
mod transfers;

pub use anchor::Anchor;
pub use archive::StoreArchive;
pub use error::StoreError;
pub use history::history;
pub use id_tail::{FOLD_ENTRIES, FOLD_IDS};
pub use ids::{IdFault, StoreIds};
pub use live::{Opened, FOLD_EVERY_GROUPS};
pub use prune::{AnchorBooks, Prune};
pub use replica::ReplicaFrame;
pub use rows::Rows;
pub use sizes::{file_sizes, Sizes, TableBytes};

use error::Fault;
use id_tail::{IdTail, IDS_ARCHIVED};
use parking_lot::{RwLock, RwLockReadGuard};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

const JOURNAL: TableDefinition<u64, &[u8]> = TableDefinition::new("journal");
const IDS: TableDefinition<&str, &[u8]> = TableDefinition::new("ids");
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
/// A region's copies of its edges' journals, by (edge id, seq).
const REPLICA: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("replica");
/// A region's last signed head of each edge (JSON of `bridge::sign::SignedHead`).
const REPLICA_SIGNED: TableDefinition<&str, &[u8]> = TableDefinition::new("replica_signed_head");
/// Filler that `Store::probe_writes` writes and removes again; empty between probes.
const PROBE: TableDefinition<&str, &[u8]> = TableDefinition::new("probe");

/// redb's page cache. Its default (1 GiB) would be most of an edge's memory once the file
/// is large; the pages a node reads back are the tables' upper levels and recent entries.
pub const DB_CACHE_BYTES: usize = 128 * 1024 * 1024;

/// The file name of a node's database inside its data directory.
pub const DB_FILE: &str = "ledger.redb";
/// `edgeledger-7`: the id records of the last accepted commands may be only in their
/// journal entries (meta `ids_archived`, see `id_tail`); a release before it would take
/// those ids for new, so it must not open such a file. A file of format 6 or 5 is taken and
/// marked 7 with `ids_archived` at its last entry (its table holds every record).
/// `edgeledger-6`: an edge's accounts changed by each group in one delta row, folded into
/// `live_accounts` every so many groups (`live`); a release before it would read
/// `live_accounts` alone, which may be behind, so it must not open such a file. A file of
/// format 5 is taken and marked 6 as it is (it has no deltas yet). `edgeledger-5`: journal
/// rows without the previous entry's hash (meta `rows`, see `rows`). Format 4 brought
/// journal bodies and id records in their binary encodings (`core::entry_codec`, `ids`). Files of format 4, 3 (live tables, JSON bodies) and 2 (no
/// live tables yet) are taken and marked 6, with `rows = linked`: their rows keep their
/// layout and their entries stay as they are (the hash chain covers them as written); an
/// edge writes the live tables of a format 2 file from a replay at its first start. Format 1
/// (ids not yet keyed per sender) is refused (see `StoreError::Format`).
const FORMAT: &str = "edgeledger-7";
/// Marked `FORMAT` when opened, their row layout kept.
const FORMATS_SAME_ROWS: [&str; 2] = ["edgeledger-6", "edgeledger-5"];
const FORMATS_TAKEN: [&str; 3] = ["edgeledger-4", "edgeledger-3", "edgeledger-2"];
/// Meta key of the file's row layout.
const ROWS: &str = "rows";

/// How a node opens its file. After a crash (SIGKILL, power loss) redb may check the whole
/// file before it opens; that takes time in proportion to the file, so it is logged.
fn builder() -> redb::Builder {
    let mut builder = Database::builder();
    builder.set_cache_size(DB_CACHE_BYTES);
    builder.set_repair_callback(|session| {
        if session.progress() == 0.0 {
            tracing::warn!("the database was not closed cleanly: redb is checking the file before it opens");
        }
    });
    builder
}

pub struct Store {
    /// None only while `reopen` is closing and opening the file (or could not open it), and
    /// after `close_for_exit`, whose lock is never released.
    db: RwLock<Option<Database>>,
    path: PathBuf,
    /// A write failed: redb refuses every later operation (`PreviousIo`) until the file is
    /// opened again.
    write_failed: AtomicBool,
    /// How the file stores journal entries, for good.
    rows: Rows,
    /// The id records at the journal's end not in the `ids` table yet (`id_tail`). Changed
    /// only by commits of the journal (one writer); read by id lookups.
    id_tail: Mutex<IdTail>,
    /// `commit.quick_repair_up_to_bytes`: commits record redb's allocator state while the
    /// file is at most this long (`begin_durable`).
    quick_repair_up_to: AtomicU64,
    /// Whether the last write began recorded it; logged when that changes.
    quick_repair: AtomicBool,
}

/// The open database, held for one operation: `reopen` waits for it.
struct Open<'a>(RwLockReadGuard<'a, Option<Database>>);

impl Deref for Open<'_> {
    type Target = Database;

    fn deref(&self) -> &Database {
        self.0.as_ref().expect("an Open is made only of an open database")
    }
}

impl Store {
    /// Opens (or creates) `data_dir/ledger.redb` for `node_id`; commits record redb's
    /// allocator state up to the default file length (`begin_durable`).
    pub fn open(data_dir: &Path, node_id: &str) -> Result<Store, StoreError> {
        Store::open_with(data_dir, node_id, config::DEFAULT_QUICK_REPAIR_UP_TO_BYTES)
    }

    /// `open`, with `commit.quick_repair_up_to_bytes` from the first commit on.
    pub fn open_with(data_dir: &Path, node_id: &str, quick_repair_up_to: u64) -> Result<Store, StoreError> {
        let path = data_dir.join(DB_FILE);
        std::fs::create_dir_all(data_dir)
            .map_err(|e| StoreError::Open { path: path.clone(), reason: format!("cannot create {}: {e}", data_dir.display()) })?;
        let started = std::time::Instant::now();
        let db = builder().create(&path).map_err(|e| StoreError::Open { path: path.clone(), reason: e.to_string() })?;
        tracing::info!(ms = started.elapsed().as_millis() as u64, "database opened");
        let mut store = Store::of(db, path);
        store.set_quick_repair_up_to(quick_repair_up_to);
        store.rows = store.claim(node_id).map_err(|f| store.fail(f))?;
        store.read_id_tail().map_err(|f| store.fail(f))?;
        Ok(store)
    }

    /// Opens an existing file read-only, for verification, whatever node it belongs to;
    /// returns it with that node's id. Fails while a node has the file open.
    pub fn open_existing(path: &Path) -> Result<(Store, String), StoreError> {
        let fail = |reason: String| StoreError::Open { path: path.to_path_buf(), reason };
        if !path.is_file() {
            return Err(fail("no such file".to_string()));
        }
        let db = Database::open(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                fail("it is open in another process (a running node?); stop it, or verify the node over zenoh".to_string())
            }
            e => fail(e.to_string()),
        })?;
        let mut store = Store::of(db, path.to_path_buf());
        let (node, rows) = store.identity().map_err(|f| store.fail(f))?;
        store.rows = rows;
        store.read_id_tail().map_err(|f| store.fail(f))?;
        Ok((store, node))
    }

    fn of(db: Database, path: PathBuf) -> Store {
        Store {
            db: RwLock::new(Some(db)),
            path,
            write_failed: AtomicBool::new(false),
            rows: Rows::Compact,
            id_tail: Mutex::new(IdTail::default()),
            quick_repair_up_to: AtomicU64::new(config::DEFAULT_QUICK_REPAIR_UP_TO_BYTES),
            quick_repair: AtomicBool::new(true),
        }
    }

    /// Sets `commit.quick_repair_up_to_bytes` for the commits from now on.
    pub fn set_quick_repair_up_to(&self, bytes: u64) {
        self.quick_repair_up_to.store(bytes, Ordering::Relaxed);
    }

    /// Whether the last write recorded redb's allocator state (see `begin_durable`).
    pub fn records_allocator_state(&self) -> bool {
        self.quick_repair.load(Ordering::Relaxed)
    }

    /// Every write of a node: `Durability::Immediate`, in two phases (the pages, then the
    /// header that names them, each synced). While the file is at most `quick_repair_up_to`
    /// long the commit also records redb's allocator state, so that after a crash the file
    /// opens at once instead of being walked page by page (1-2.5 s per GB here); redb trusts
    /// that record only if the last commit wrote it (a clean close writes it too). The
    /// record covers every page of the file and is written whole by each commit (100-140 KiB
    /// per GiB), so past the limit it is left out: otherwise a commit's cost would grow with
    /// the file for as long as the node runs. The file's length is read once per commit (a
    /// `stat`, against the commit's two `fdatasync`s).
    fn begin_durable(&self, db: &Database) -> Result<redb::WriteTransaction, Fault> {
        let mut tx = db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        tx.set_two_phase_commit(true);
        tx.set_quick_repair(self.quick_repair_now());
        Ok(tx)
    }

    /// Whether the next commit records redb's allocator state; logs when that changes. A file
    /// whose length cannot be read keeps the record (the quicker open after a crash).
    fn quick_repair_now(&self) -> bool {
        let limit = self.quick_repair_up_to.load(Ordering::Relaxed);
        let length = std::fs::metadata(&self.path).map(|m| m.len()).ok();
        let record = length.is_none_or(|length| length <= limit);
        if self.quick_repair.swap(record, Ordering::Relaxed) != record {
            let length = length.unwrap_or_default();
            if record {
                tracing::info!(file_bytes = length, limit, "commits record redb's allocator state again (commit.quick_repair_up_to_bytes)");
            } else {
                tracing::info!(
                    file_bytes = length,
                    limit,
                    "the file passed commit.quick_repair_up_to_bytes: commits no longer record redb's allocator state, \
                     and after a crash redb checks the whole file before it opens (1-2.5 s per GB)"
                );
            }
        }
        record
    }

    fn id_tail(&self) -> MutexGuard<'_, IdTail> {
        self.id_tail.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads the tail of the file's id records back from its journal (at an open, and after
    /// a failed write, whose commit may or may not stand). A file without the meta key
    /// (read only, of an older format) holds every record in its table.
    fn read_id_tail(&self) -> Result<(), Fault> {
        let tail = self.id_tail_in(&*self.db()?)?;
        *self.id_tail() = tail;
        Ok(())
    }

    fn id_tail_in(&self, db: &Database) -> Result<IdTail, Fault> {
        let tx = db.begin_read()?;
        let after = archived_in(&tx.open_table(META)?)?;
        match after {
            Some(after) => IdTail::read(self.rows, after, &tx.open_table(JOURNAL)?),
            None => Ok(IdTail { after: last_seq(&tx.open_table(JOURNAL)?)?, ..IdTail::default() }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn db(&self) -> Result<Open<'_>, Fault> {
        // Recursive: a thread that already reads the file may read it again (a pruning pass
        // reads archived holds while its transaction is open) even while a reopen or the
        // close waits for the lock; a plain read would wait behind that writer, which waits
        // for this thread.
        let db = self.db.read_recursive();
        match *db {
            Some(_) => Ok(Open(db)),
            None => Err(Fault::Closed),
        }
    }

    /// Runs a write; a failure leaves the file to be opened again before the next one.
    fn write<T>(&self, write: impl FnOnce() -> Result<T, Fault>) -> Result<T, StoreError> {
        write().map_err(|f| {
            self.write_failed.store(true, Ordering::Release);
            self.fail(f)
        })
    }

    /// Closes the file and opens it again: after a failed write redb answers nothing else
    /// until then. The open repairs what the failed commit left (the last durable commit
    /// stands). Operations in progress finish first; those that start meanwhile fail.
    pub fn reopen(&self) -> Result<(), StoreError> {
        let mut db = self.db.write();
        // A file is opened once per process: the old handle goes first.
        *db = None;
        let opened = builder().create(&self.path).map_err(|e| self.fail(e.into()))?;
        // Before anyone else writes: the tail as this file holds it.
        *self.id_tail() = self.id_tail_in(&opened).map_err(|f| self.fail(f))?;
        *db = Some(opened);
        self.write_failed.store(false, Ordering::Release);
        Ok(())
    }

    /// Closes the file cleanly, on the way out of the process (a stop signal): redb records
    /// its allocator state, so the next open needs no check whatever the file's length.
    /// Waits up to `within` for the operations in progress (a commit ends first). The lock
    /// then stays taken until the process exits, so nothing reads or writes after the
    /// close; nothing in this process may use the store again. Returns whether the file
    /// was closed: not when it stayed busy past `within`, nor after a failed write (redb
    /// refuses to close such a file; the next open repairs it, as after a crash).
    pub fn close_for_exit(&self, within: Duration) -> Result<bool, StoreError> {
        let Some(mut db) = self.db.try_write_for(within) else { return Ok(false) };
        let closed = match db.take() {
            Some(_) if self.write_failed.load(Ordering::Acquire) => Ok(false),
            Some(open) => open.close().map(|()| true).map_err(|e| self.fail(e.into())),
            None => Ok(false),
        };
        std::mem::forget(db);
        closed
    }

    /// Whether the file takes writes again: reopens it if a write failed, then commits
    /// `bytes` of filler and removes it in a second commit, so that the space the next
    /// groups need is there (inside the file) when this returns Ok.
    pub fn probe_writes(&self, bytes: usize) -> Result<(), StoreError> {
        if self.write_failed.load(Ordering::Acquire) {
            self.reopen()?;
        }
        let filler = vec![0u8; bytes];
        self.write(|| {
            for keep in [true, false] {
                let db = self.db()?;
                let tx = self.begin_durable(&db)?;
                {
                    let mut probe = tx.open_table(PROBE)?;
                    if keep {
                        probe.insert("filler", filler.as_slice())?;
                    } else {
                        probe.remove("filler")?;
                    }
                }
                tx.commit()?;
            }
            Ok(())
        })
    }

    fn fail(&self, fault: Fault) -> StoreError {
        fault.at(&self.path)
    }

    /// Records the node id on first use; refuses a file of another node. Returns the file's
    /// row layout.
    fn claim(&self, node_id: &str) -> Result<Rows, Fault> {
        let db = self.db()?;
        let tx = self.begin_durable(&db)?;
        let rows;
        {
            let mut meta = tx.open_table(META)?;
            let found = meta.get("node_id")?.map(|v| v.value().to_string());
            match found {
                Some(found) if found != node_id => return Err(Fault::WrongNode { found, expected: node_id.to_string() }),
                Some(_) => {
                    let format = meta.get("format")?.map(|v| v.value().to_string());
                    match format.as_deref() {
                        Some(FORMAT) => {}
                        // Marked at once: an older release must not open it again.
                        Some(same_rows) if FORMATS_SAME_ROWS.contains(&same_rows) => {
                            meta.insert("format", FORMAT)?;
                        }
                        // Marked at once: an older release must not write to it again.
                        Some(older) if FORMATS_TAKEN.contains(&older) => {
                            meta.insert("format", FORMAT)?;
                            meta.insert(ROWS, Rows::Linked.name())?;
                        }
                        _ => return Err(Fault::Format { found: format, expected: FORMAT }),
                    }
                }
                None => {
                    meta.insert("node_id", node_id)?;
                    meta.insert("format", FORMAT)?;
                    meta.insert(ROWS, Rows::Compact.name())?;
                    meta.insert(live::LIVE_KEY, live::COMPLETE)?;
                }
            }
            // A file of an older format holds every id record in its table.
            if archived_in(&meta)?.is_none() {
                let last = last_seq(&tx.open_table(JOURNAL)?)?;
                meta.insert(IDS_ARCHIVED, last.to_string().as_str())?;
            }
            rows = rows_in(&meta)?;
            tx.open_table(JOURNAL)?;
            tx.open_table(IDS)?;
            tx.open_table(REPLICA)?;
            tx.open_table(REPLICA_SIGNED)?;
            tx.open_table(live::ACCOUNTS)?;
            tx.open_table(live::ACCOUNT_DELTAS)?;
            tx.open_table(live::HOLDS)?;
            tx.open_table(live::RECEIVED)?;
        }
        tx.commit()?;
        Ok(rows)
    }

    /// The node id of an existing file and its row layout, after checking its format.
    fn identity(&self) -> Result<(String, Rows), Fault> {
        let db = self.db()?;
        let tx = db.begin_read()?;
        let meta = tx.open_table(META).map_err(|e| Fault::Corrupt(format!("not an edgeledger database: {e}")))?;
        let node = meta.get("node_id")?.map(|v| v.value().to_string());
        let format = meta.get("format")?.map(|v| v.value().to_string());
        match (node, format.as_deref()) {
            (Some(node), Some(format)) if format == FORMAT || FORMATS_SAME_ROWS.contains(&format) => Ok((node, rows_in(&meta)?)),
            // Read only: marked when a node of this release opens it.
            (Some(node), Some(format)) if FORMATS_TAKEN.contains(&format) => Ok((node, Rows::Linked)),
            (_, _) => Err(Fault::Format { found: format, expected: FORMAT }),
        }
    }
}

/// The seq of the journal's last row (0: none).
fn last_seq(journal: &impl ReadableTable<u64, &'static [u8]>) -> Result<u64, Fault> {
    Ok(journal.last()?.map_or(0, |(seq, _)| seq.value()))
}

/// Meta `ids_archived`: the table holds every id record of the entries up to it.
fn archived_in(meta: &impl ReadableTable<&'static str, &'static str>) -> Result<Option<u64>, Fault> {
    let Some(text) = meta.get(IDS_ARCHIVED)?.map(|v| v.value().to_string()) else { return Ok(None) };
    text.parse().map(Some).map_err(|_| Fault::Corrupt(format!("meta {IDS_ARCHIVED} is {text:?}, not an entry number")))
}

/// The row layout a file of this format names.
fn rows_in(meta: &impl ReadableTable<&'static str, &'static str>) -> Result<Rows, Fault> {
    let name = meta.get(ROWS)?.map(|v| v.value().to_string());
    name.as_deref().and_then(Rows::named).ok_or_else(|| Fault::Corrupt(format!("meta {ROWS} is {name:?}, not a row layout")))
}

impl Store {
    /// The head the last commit recorded (`seq:hash`), if any.
    pub fn recorded_head(&self) -> Result<Option<String>, StoreError> {
        let read = || -> Result<Option<String>, Fault> {
            let db = self.db()?;
            let tx = db.begin_read()?;
            let meta = tx.open_table(META)?;
            let head = meta.get("head")?.map(|v| v.value().to_string());
            Ok(head)
        };
        read().map_err(|f| self.fail(f))
    }

    /// Entries in the journal, or in a region's replica of `edge`.
    pub fn count(&self, replica_of: Option<&str>) -> Result<u64, StoreError> {
        let read = || -> Result<u64, Fault> {
            let db = self.db()?;
            let tx = db.begin_read()?;
            match replica_of {
                None => Ok(tx.open_table(JOURNAL)?.len()?),
                Some(edge) => {
                    let replica = tx.open_table(REPLICA)?;
                    let last = replica.range((edge, 0)..=(edge, u64::MAX))?.next_back();
                    Ok(match last {
                        Some(row) => row?.0.value().1,
                        None => 0,
                    })
                }
            }
        };
        read().map_err(|f| self.fail(f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    /// A pruning pass reads archived holds while its own read of the file is open. The close
    /// (or a reopen) waiting for the lock must not hold that second read back: it would
    /// wait for the closer, which waits for the pass.
    #[test]
    fn a_nested_read_does_not_wait_behind_the_close_that_waits_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), "test/edge-1").unwrap());
        let (read_open, outer_taken) = std::sync::mpsc::channel();
        let (nested_done, nested) = std::sync::mpsc::channel();
        let reader = {
            let store = store.clone();
            std::thread::spawn(move || {
                let outer = store.db().unwrap();
                read_open.send(()).unwrap();
                // Until the closer waits: it then holds the lock's writer bit.
                let deadline = Instant::now() + Duration::from_secs(10);
                while !store.db.is_locked_exclusive() {
                    assert!(Instant::now() < deadline, "the closer never waited for the lock");
                    std::thread::yield_now();
                }
                let inner = store.db().unwrap();
                inner.begin_read().unwrap();
                nested_done.send(()).unwrap();
                drop(inner);
                drop(outer);
            })
        };
        outer_taken.recv().unwrap();
        let closer = {
            let store = store.clone();
            std::thread::spawn(move || store.close_for_exit(Duration::from_secs(60)))
        };
        nested.recv_timeout(Duration::from_secs(20)).expect("the nested read went through while the close waited");
        reader.join().unwrap();
        assert!(closer.join().unwrap().unwrap(), "closed once the reads ended");
    }
}
