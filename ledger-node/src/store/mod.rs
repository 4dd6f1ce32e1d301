//! The redb file of a node: the journal, the id records of rejected commands, a region's
//! replicas of its edges' journals, and the node's identity. Every write is one
//! `Durability::Immediate` transaction; a node that cannot commit stops rather than reply.
//!
//! Owns the file only: it verifies the hash chain as it reads and hands entries to the
//! core to replay, but decides nothing about the books itself.

mod error;
mod history;
mod ids;
mod journal;
mod replica;

pub use error::StoreError;
pub use history::history;
pub use ids::{IdFault, StoreIds};

use error::Fault;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::path::{Path, PathBuf};

const JOURNAL: TableDefinition<u64, &[u8]> = TableDefinition::new("journal");
const IDS: TableDefinition<&str, &[u8]> = TableDefinition::new("ids");
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
/// A region's copies of its edges' journals, by (edge id, seq).
const REPLICA: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("replica");
/// A region's last signed head of each edge (JSON of `bridge::sign::SignedHead`).
const REPLICA_SIGNED: TableDefinition<&str, &[u8]> = TableDefinition::new("replica_signed_head");

/// redb's page cache. Its default (1 GiB) would be most of an edge's memory once the file
/// is large; the pages a node reads back are the tables' upper levels and recent entries.
pub const DB_CACHE_BYTES: usize = 128 * 1024 * 1024;

/// The file name of a node's database inside its data directory.
pub const DB_FILE: &str = "ledger.redb";
/// `edgeledger-2`: ids are keyed per sender (`principal:id`) in holds, id records and
/// cross-node transfer keys. Files of format 1 are refused (see `StoreError::Format`).
const FORMAT: &str = "edgeledger-2";

pub struct Store {
    db: Database,
    path: PathBuf,
}

impl Store {
    /// Opens (or creates) `data_dir/ledger.redb` for `node_id`.
    pub fn open(data_dir: &Path, node_id: &str) -> Result<Store, StoreError> {
        let path = data_dir.join(DB_FILE);
        std::fs::create_dir_all(data_dir)
            .map_err(|e| StoreError::Open { path: path.clone(), reason: format!("cannot create {}: {e}", data_dir.display()) })?;
        let db = Database::builder()
            .set_cache_size(DB_CACHE_BYTES)
            .create(&path)
            .map_err(|e| StoreError::Open { path: path.clone(), reason: e.to_string() })?;
        let store = Store { db, path };
        store.claim(node_id).map_err(|f| store.fail(f))?;
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
        let store = Store { db, path: path.to_path_buf() };
        let node = store.identity().map_err(|f| store.fail(f))?;
        Ok((store, node))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn fail(&self, fault: Fault) -> StoreError {
        fault.at(&self.path)
    }

    /// Records the node id on first use; refuses a file of another node.
    fn claim(&self, node_id: &str) -> Result<(), Fault> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        {
            let mut meta = tx.open_table(META)?;
            let found = meta.get("node_id")?.map(|v| v.value().to_string());
            match found {
                Some(found) if found != node_id => return Err(Fault::WrongNode { found, expected: node_id.to_string() }),
                Some(_) => {
                    let format = meta.get("format")?.map(|v| v.value().to_string());
                    if format.as_deref() != Some(FORMAT) {
                        return Err(Fault::Format { found: format, expected: FORMAT });
                    }
                }
                None => {
                    meta.insert("node_id", node_id)?;
                    meta.insert("format", FORMAT)?;
                }
            }
            tx.open_table(JOURNAL)?;
            tx.open_table(IDS)?;
            tx.open_table(REPLICA)?;
            tx.open_table(REPLICA_SIGNED)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The node id of an existing file, after checking its format.
    fn identity(&self) -> Result<String, Fault> {
        let tx = self.db.begin_read()?;
        let meta = tx.open_table(META).map_err(|e| Fault::Corrupt(format!("not an edgeledger database: {e}")))?;
        let node = meta.get("node_id")?.map(|v| v.value().to_string());
        let format = meta.get("format")?.map(|v| v.value().to_string());
        match (node, format.as_deref()) {
            (Some(node), Some(FORMAT)) => Ok(node),
            (_, _) => Err(Fault::Format { found: format, expected: FORMAT }),
        }
    }

    /// The head the last commit recorded (`seq:hash`), if any.
    pub fn recorded_head(&self) -> Result<Option<String>, StoreError> {
        let read = || -> Result<Option<String>, Fault> {
            let tx = self.db.begin_read()?;
            let meta = tx.open_table(META)?;
            let head = meta.get("head")?.map(|v| v.value().to_string());
            Ok(head)
        };
        read().map_err(|f| self.fail(f))
    }

    /// Entries in the journal, or in a region's replica of `edge`.
    pub fn count(&self, replica_of: Option<&str>) -> Result<u64, StoreError> {
        let read = || -> Result<u64, Fault> {
            let tx = self.db.begin_read()?;
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
