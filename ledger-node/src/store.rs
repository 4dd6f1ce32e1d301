//! The redb file of a node: the journal, the id records and the node's identity. Every
//! commit is `Durability::Immediate`; a node that cannot commit stops rather than reply.

use crate::journal::{hex, Chain, ChainError, Entry};
use crate::ledger::{Effects, Ledger, Recorded};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::path::{Path, PathBuf};

const JOURNAL: TableDefinition<u64, &[u8]> = TableDefinition::new("journal");
const IDS: TableDefinition<&str, &[u8]> = TableDefinition::new("ids");
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
/// A region's copies of its edges' journals, by (edge id, seq).
const REPLICA: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("replica");

/// The file name of a node's database inside its data directory.
pub const DB_FILE: &str = "ledger.redb";
const FORMAT: &str = "edgeledger-1";

#[derive(Debug)]
pub enum StoreError {
    Open { path: PathBuf, reason: String },
    WrongNode { path: PathBuf, found: String, expected: String },
    Chain { path: PathBuf, error: ChainError },
    Io { path: PathBuf, reason: String },
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Open { path, reason } => write!(f, "cannot open database {}: {reason}", path.display()),
            StoreError::WrongNode { path, found, expected } => write!(
                f,
                "database {} belongs to node {found}, but this node is {expected}; point node.data_dir elsewhere",
                path.display()
            ),
            StoreError::Chain { path, error } => write!(f, "database {}: {error}", path.display()),
            StoreError::Io { path, reason } => write!(f, "database {}: {reason}", path.display()),
        }
    }
}

impl std::error::Error for StoreError {}

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
        let db = Database::create(&path).map_err(|e| StoreError::Open { path: path.clone(), reason: e.to_string() })?;
        let store = Store { db, path };
        store.claim(node_id)?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Io { path: self.path.clone(), reason: e.to_string() }
    }

    /// Records the node id on first use; refuses a file of another node.
    fn claim(&self, node_id: &str) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write().map_err(|e| self.io(e))?;
        tx.set_durability(Durability::Immediate).map_err(|e| self.io(e))?;
        {
            let mut meta = tx.open_table(META).map_err(|e| self.io(e))?;
            let found = meta.get("node_id").map_err(|e| self.io(e))?.map(|v| v.value().to_string());
            match found {
                Some(found) if found != node_id => {
                    return Err(StoreError::WrongNode { path: self.path.clone(), found, expected: node_id.to_string() })
                }
                Some(_) => {
                    let format = meta.get("format").map_err(|e| self.io(e))?.map(|v| v.value().to_string());
                    if format.as_deref() != Some(FORMAT) {
                        return Err(self.io(format!("unknown file format {format:?}; this node reads {FORMAT}")));
                    }
                }
                None => {
                    meta.insert("node_id", node_id).map_err(|e| self.io(e))?;
                    meta.insert("format", FORMAT).map_err(|e| self.io(e))?;
                }
            }
            tx.open_table(JOURNAL).map_err(|e| self.io(e))?;
            tx.open_table(IDS).map_err(|e| self.io(e))?;
            tx.open_table(REPLICA).map_err(|e| self.io(e))?;
        }
        tx.commit().map_err(|e| self.io(e))
    }

    /// Rebuilds `ledger` from the file: the id records of rejected commands, then every
    /// journal entry in order (which restores the ids of accepted ones), verifying the hash
    /// chain as it goes. Returns the chain's end, where the next entry links.
    pub fn load(&self, ledger: &mut Ledger) -> Result<Chain, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.io(e))?;
        let ids = tx.open_table(IDS).map_err(|e| self.io(e))?;
        for row in ids.iter().map_err(|e| self.io(e))? {
            let (id, value) = row.map_err(|e| self.io(e))?;
            let recorded: Recorded = serde_json::from_slice(value.value())
                .map_err(|e| self.io(format!("id record {:?} cannot be read: {e}", id.value())))?;
            ledger.restore_recorded(id.value().to_string(), recorded);
        }
        let journal = tx.open_table(JOURNAL).map_err(|e| self.io(e))?;
        let mut chain = Chain::default();
        let broken = |error| StoreError::Chain { path: self.path.clone(), error };
        for row in journal.iter().map_err(|e| self.io(e))? {
            let (seq, value) = row.map_err(|e| self.io(e))?;
            let entry = Entry::decode(seq.value(), value.value()).map_err(broken)?;
            let body = chain.verify_next(&entry).map_err(broken)?;
            ledger.replay(&body).map_err(|e| self.io(e))?;
        }
        // The head written with the last commit: a journal cut short at its end still
        // verifies link by link, but no longer reaches it.
        let meta = tx.open_table(META).map_err(|e| self.io(e))?;
        let head = meta.get("head").map_err(|e| self.io(e))?.map(|v| v.value().to_string());
        let found = format!("{}:{}", chain.seq, hex(&chain.hash));
        if head.as_deref().is_some_and(|h| h != found) || (head.is_none() && chain.seq > 0) {
            return Err(self.io(format!(
                "the journal ends at {found}, but the last commit recorded {}: entries are missing",
                head.as_deref().unwrap_or("no head")
            )));
        }
        ledger
            .check_invariants()
            .map_err(|e| self.io(format!("the rebuilt books do not balance: {e}")))?;
        Ok(chain)
    }

    /// Seals the entries of a group of commands onto `chain` and writes them, with the id
    /// records, in one durable commit. On error the chain may have advanced past what is
    /// stored: the caller must stop.
    /// Returns the sealed entries, for shipping to the region.
    pub fn commit<'a>(&self, chain: &mut Chain, effects: impl IntoIterator<Item = &'a Effects>) -> Result<Vec<Entry>, StoreError> {
        let mut sealed = Vec::new();
        let mut tx = self.db.begin_write().map_err(|e| self.io(e))?;
        tx.set_durability(Durability::Immediate).map_err(|e| self.io(e))?;
        {
            let mut journal = tx.open_table(JOURNAL).map_err(|e| self.io(e))?;
            let mut ids = tx.open_table(IDS).map_err(|e| self.io(e))?;
            let mut bytes = Vec::new();
            for effect in effects {
                if let Some(body) = &effect.entry {
                    let entry = chain.seal(body);
                    journal.insert(entry.seq, entry.encode().as_slice()).map_err(|e| self.io(e))?;
                    sealed.push(entry);
                }
                for (id, recorded) in &effect.recorded {
                    bytes.clear();
                    serde_json::to_writer(&mut bytes, recorded).expect("record serializes");
                    ids.insert(id.as_str(), bytes.as_slice()).map_err(|e| self.io(e))?;
                }
            }
            let mut meta = tx.open_table(META).map_err(|e| self.io(e))?;
            meta.insert("head", format!("{}:{}", chain.seq, hex(&chain.hash)).as_str()).map_err(|e| self.io(e))?;
        }
        tx.commit().map_err(|e| self.io(e))?;
        Ok(sealed)
    }

    /// Rebuilds a region's replica of `edge` into `ledger`, verifying the chain; returns its end.
    pub fn load_replica(&self, edge: &str, ledger: &mut Ledger) -> Result<Chain, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.io(e))?;
        let replica = tx.open_table(REPLICA).map_err(|e| self.io(e))?;
        let mut chain = Chain::default();
        let broken = |error| StoreError::Chain { path: self.path.clone(), error };
        for row in replica.range((edge, 0)..=(edge, u64::MAX)).map_err(|e| self.io(e))? {
            let (key, value) = row.map_err(|e| self.io(e))?;
            let entry = Entry::decode(key.value().1, value.value()).map_err(broken)?;
            let body = chain.verify_next(&entry).map_err(broken)?;
            ledger.replay(&body).map_err(|e| self.io(format!("replica of {edge}: {e}")))?;
        }
        Ok(chain)
    }

    /// Appends verified entries to the replica of `edge` in one durable commit.
    pub fn append_replica(&self, edge: &str, entries: &[Entry]) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write().map_err(|e| self.io(e))?;
        tx.set_durability(Durability::Immediate).map_err(|e| self.io(e))?;
        {
            let mut replica = tx.open_table(REPLICA).map_err(|e| self.io(e))?;
            for entry in entries {
                replica.insert((edge, entry.seq), entry.encode().as_slice()).map_err(|e| self.io(e))?;
            }
        }
        tx.commit().map_err(|e| self.io(e))
    }

    /// Reads up to `limit` entries before `before`, newest first: from this node's journal,
    /// or with `replica_of`, from the replica of that edge.
    pub fn entries_before(&self, replica_of: Option<&str>, before: u64, limit: usize) -> Result<Vec<Entry>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.io(e))?;
        let decode = |seq: u64, bytes: &[u8]| Entry::decode(seq, bytes).map_err(|error| StoreError::Chain { path: self.path.clone(), error });
        let mut out = Vec::new();
        if before <= 1 || limit == 0 {
            return Ok(out);
        }
        let end = before - 1;
        match replica_of {
            None => {
                let journal = tx.open_table(JOURNAL).map_err(|e| self.io(e))?;
                for row in journal.range(1..=end).map_err(|e| self.io(e))?.rev().take(limit) {
                    let (seq, value) = row.map_err(|e| self.io(e))?;
                    out.push(decode(seq.value(), value.value())?);
                }
            }
            Some(edge) => {
                let replica = tx.open_table(REPLICA).map_err(|e| self.io(e))?;
                for row in replica.range((edge, 1)..=(edge, end)).map_err(|e| self.io(e))?.rev().take(limit) {
                    let (key, value) = row.map_err(|e| self.io(e))?;
                    out.push(decode(key.value().1, value.value())?);
                }
            }
        }
        Ok(out)
    }

    /// Opens an existing file read-only, for verification, whatever node it belongs to;
    /// returns it with that node's id. Fails while a node has the file open.
    pub fn open_existing(path: &Path) -> Result<(Store, String), StoreError> {
        let fail = |reason: String| StoreError::Open { path: path.to_path_buf(), reason };
        if !path.is_file() {
            return Err(fail("no such file".to_string()));
        }
        let db = Database::open(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => fail("it is open in another process (a running node?); stop it, or verify the node over zenoh".to_string()),
            e => fail(e.to_string()),
        })?;
        let store = Store { db, path: path.to_path_buf() };
        let tx = store.db.begin_read().map_err(|e| store.io(e))?;
        let meta = tx.open_table(META).map_err(|e| store.io(format!("not an edgeledger database: {e}")))?;
        let node = meta.get("node_id").map_err(|e| store.io(e))?.map(|v| v.value().to_string());
        let format = meta.get("format").map_err(|e| store.io(e))?.map(|v| v.value().to_string());
        drop(meta);
        drop(tx);
        match (node, format.as_deref()) {
            (Some(node), Some(FORMAT)) => Ok((store, node)),
            (_, format) => Err(store.io(format!("not an edgeledger database of format {FORMAT} (found {format:?})"))),
        }
    }

    /// The head the last commit recorded (`seq:hash`), if any.
    pub fn recorded_head(&self) -> Result<Option<String>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.io(e))?;
        let meta = tx.open_table(META).map_err(|e| self.io(e))?;
        let head = meta.get("head").map_err(|e| self.io(e))?.map(|v| v.value().to_string());
        Ok(head)
    }

    /// Entries in the journal, or in a region's replica of `edge`.
    pub fn count(&self, replica_of: Option<&str>) -> Result<u64, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.io(e))?;
        match replica_of {
            None => tx.open_table(JOURNAL).map_err(|e| self.io(e))?.len().map_err(|e| self.io(e)),
            Some(edge) => {
                let replica = tx.open_table(REPLICA).map_err(|e| self.io(e))?;
                let last = replica.range((edge, 0)..=(edge, u64::MAX)).map_err(|e| self.io(e))?.next_back();
                Ok(match last {
                    Some(row) => row.map_err(|e| self.io(e))?.0.value().1,
                    None => 0,
                })
            }
        }
    }

    /// The edges a region's file holds replicas of.
    pub fn replica_edges(&self) -> Result<Vec<String>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.io(e))?;
        let replica = tx.open_table(REPLICA).map_err(|e| self.io(e))?;
        let mut edges: Vec<String> = Vec::new();
        loop {
            let next = match edges.last() {
                None => replica.iter().map_err(|e| self.io(e))?.next(),
                Some(last) => replica
                    .range::<(&str, u64)>((std::ops::Bound::Excluded((last.as_str(), u64::MAX)), std::ops::Bound::Unbounded))
                    .map_err(|e| self.io(e))?
                    .next(),
            };
            match next {
                Some(row) => edges.push(row.map_err(|e| self.io(e))?.0.value().0.to_string()),
                None => return Ok(edges),
            }
        }
    }

    /// Reads entries `from..` of the replica of `edge`, at most `limit` of them.
    pub fn replica_range(&self, edge: &str, from: u64, limit: usize) -> Result<Vec<Entry>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.io(e))?;
        let replica = tx.open_table(REPLICA).map_err(|e| self.io(e))?;
        let mut out = Vec::new();
        for row in replica.range((edge, from)..=(edge, u64::MAX)).map_err(|e| self.io(e))?.take(limit) {
            let (key, value) = row.map_err(|e| self.io(e))?;
            out.push(Entry::decode(key.value().1, value.value()).map_err(|error| StoreError::Chain { path: self.path.clone(), error })?);
        }
        Ok(out)
    }

    /// Reads journal entries `from..=to` (inclusive), at most `limit` of them.
    pub fn journal_range(&self, from: u64, to: u64, limit: usize) -> Result<Vec<Entry>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.io(e))?;
        let journal = tx.open_table(JOURNAL).map_err(|e| self.io(e))?;
        let mut out = Vec::new();
        for row in journal.range(from..=to).map_err(|e| self.io(e))?.take(limit) {
            let (seq, value) = row.map_err(|e| self.io(e))?;
            out.push(Entry::decode(seq.value(), value.value()).map_err(|error| StoreError::Chain { path: self.path.clone(), error })?);
        }
        Ok(out)
    }
}
