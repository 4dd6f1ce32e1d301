//! What can go wrong with a node's redb file, told apart so that the shell can act on it:
//! a full disk is not a corrupt journal, and neither is a journal whose entries do not
//! replay. Every error names the file.

use crate::core::journal::ChainError;
use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub enum StoreError {
    /// The file cannot be opened or created (missing directory, permissions, locked).
    Open { path: PathBuf, reason: String },
    /// The file belongs to another node.
    WrongNode { path: PathBuf, found: String, expected: String },
    /// The file is not an edgeledger database of the format this node reads.
    Format { path: PathBuf, found: Option<String>, expected: &'static str },
    /// The disk (or a quota, or a file size limit) is full: nothing was written.
    DiskFull { path: PathBuf, detail: String },
    /// The journal's hash chain is broken: tampered, truncated or foreign entries.
    Chain { path: PathBuf, error: ChainError },
    /// Stored data cannot be read back (redb reports corruption, an unreadable record, a
    /// journal that ends before its recorded head).
    Corrupt { path: PathBuf, detail: String },
    /// A stored entry does not apply to the books rebuilt so far.
    Replay { path: PathBuf, detail: String },
    /// The rebuilt books break a SPEC §8 invariant.
    Invariant { path: PathBuf, detail: String },
    /// The operating system failed a read or a write (or the file is closed after one, until
    /// it is opened again).
    Io { path: PathBuf, detail: String },
    /// Any other failure of the storage engine (a limit, a misuse): no retry mends it.
    Engine { path: PathBuf, detail: String },
}

impl StoreError {
    /// A write the disk refused (full, a quota, a size limit, an I/O error): the node can
    /// go on answering from what is durable and try again later. Not corruption.
    pub fn is_write_failure(&self) -> bool {
        matches!(self, StoreError::DiskFull { .. } | StoreError::Io { .. })
    }

    pub fn path(&self) -> &Path {
        match self {
            StoreError::Open { path, .. }
            | StoreError::WrongNode { path, .. }
            | StoreError::Format { path, .. }
            | StoreError::DiskFull { path, .. }
            | StoreError::Chain { path, .. }
            | StoreError::Corrupt { path, .. }
            | StoreError::Replay { path, .. }
            | StoreError::Invariant { path, .. }
            | StoreError::Io { path, .. }
            | StoreError::Engine { path, .. } => path,
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path().display();
        match self {
            StoreError::Open { reason, .. } => write!(f, "cannot open database {path}: {reason}"),
            StoreError::WrongNode { found, expected, .. } => {
                write!(f, "database {path} belongs to node {found}, but this node is {expected}; point node.data_dir elsewhere")
            }
            StoreError::Format { found: Some(found), expected, .. } if found == "edgeledger-1" => write!(
                f,
                "database {path} has format {found}, this release reads {expected}, edgeledger-3 and edgeledger-2 only (ids are now scoped per device); \
                 let the region catch up and in-flight transfers finish with the release that wrote it, keep the file \
                 for audit, and start this node with an empty node.data_dir"
            ),
            StoreError::Format { found, expected, .. } => {
                write!(f, "database {path}: not an edgeledger database of format {expected} (found {found:?})")
            }
            StoreError::DiskFull { detail, .. } => write!(f, "database {path}: the disk is full: {detail}"),
            StoreError::Chain { error, .. } => write!(f, "database {path}: {error}"),
            StoreError::Corrupt { detail, .. } => write!(f, "database {path}: {detail}"),
            StoreError::Replay { detail, .. } => write!(f, "database {path}: {detail}"),
            StoreError::Invariant { detail, .. } => write!(f, "database {path}: the rebuilt books do not balance: {detail}"),
            StoreError::Io { detail, .. } | StoreError::Engine { detail, .. } => write!(f, "database {path}: {detail}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// A failure inside the store, before the file's path is attached. Every redb error
/// converts into it with `?`; `Store::fail` turns it into a `StoreError`.
#[derive(Debug)]
pub enum Fault {
    Db(redb::Error),
    Chain(ChainError),
    Corrupt(String),
    Replay(String),
    Invariant(String),
    Format {
        found: Option<String>,
        expected: &'static str,
    },
    WrongNode {
        found: String,
        expected: String,
    },
    /// The file is being (or could not be) opened again after a failed write.
    Closed,
}

macro_rules! redb_faults {
    ($($error:ty),*) => {
        $(impl From<$error> for Fault {
            fn from(e: $error) -> Fault {
                Fault::Db(e.into())
            }
        })*
    };
}

redb_faults!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::CursorError,
    redb::SetDurabilityError
);

impl From<ChainError> for Fault {
    fn from(e: ChainError) -> Fault {
        Fault::Chain(e)
    }
}

impl Fault {
    /// Attaches the file's path and tells a full disk and corruption from other failures.
    pub fn at(self, path: &Path) -> StoreError {
        let path = path.to_path_buf();
        match self {
            Fault::Db(redb::Error::Io(io)) if is_disk_full(&io) => StoreError::DiskFull { path, detail: io.to_string() },
            Fault::Db(redb::Error::Corrupted(detail)) => StoreError::Corrupt { path, detail: format!("corrupted: {detail}") },
            Fault::Db(e @ (redb::Error::Io(_) | redb::Error::PreviousIo)) => StoreError::Io { path, detail: e.to_string() },
            Fault::Db(e) => StoreError::Engine { path, detail: e.to_string() },
            Fault::Chain(error) => StoreError::Chain { path, error },
            Fault::Corrupt(detail) => StoreError::Corrupt { path, detail },
            Fault::Replay(detail) => StoreError::Replay { path, detail },
            Fault::Invariant(detail) => StoreError::Invariant { path, detail },
            Fault::Format { found, expected } => StoreError::Format { path, found, expected },
            Fault::WrongNode { found, expected } => StoreError::WrongNode { path, found, expected },
            Fault::Closed => StoreError::Io { path, detail: "closed after a failed write; it opens again once writing works".to_string() },
        }
    }
}

/// No space left, over quota, or over the process's file size limit.
fn is_disk_full(e: &std::io::Error) -> bool {
    const ENOSPC: i32 = 28;
    const EFBIG: i32 = 27;
    const EDQUOT: i32 = 122;
    e.kind() == std::io::ErrorKind::StorageFull
        || e.kind() == std::io::ErrorKind::FileTooLarge
        || e.kind() == std::io::ErrorKind::QuotaExceeded
        || matches!(e.raw_os_error(), Some(ENOSPC | EFBIG | EDQUOT))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(raw: i32) -> Fault {
        Fault::Db(redb::Error::Io(std::io::Error::from_raw_os_error(raw)))
    }

    #[test]
    fn a_full_disk_is_told_from_corruption_and_replay() {
        let path = Path::new("/data/ledger.redb");
        for raw in [28, 27, 122] {
            let e = io(raw).at(path);
            assert!(matches!(e, StoreError::DiskFull { .. }), "os error {raw}: {e:?}");
            assert!(e.to_string().contains("/data/ledger.redb") && e.to_string().contains("disk is full"), "{e}");
        }
        assert!(matches!(io(5).at(path), StoreError::Io { .. }), "EIO is not a full disk");
        assert!(io(5).at(path).is_write_failure() && io(28).at(path).is_write_failure());
        let engine = Fault::Db(redb::Error::ValueTooLarge(1 << 40)).at(path);
        assert!(matches!(engine, StoreError::Engine { .. }) && !engine.is_write_failure(), "{engine:?}");
        assert!(matches!(Fault::Db(redb::Error::Corrupted("bad page".into())).at(path), StoreError::Corrupt { .. }));
        assert!(matches!(Fault::Replay("entry 3: hold h1 does not exist".into()).at(path), StoreError::Replay { .. }));
        let invariant = Fault::Invariant("posted balances of EUR sum to 1, not zero".into()).at(path);
        assert!(invariant.to_string().contains("do not balance"), "{invariant}");
        let chain = Fault::Chain(ChainError::BadHash { seq: 3 }).at(path);
        assert!(chain.to_string().contains("entry 3") && chain.to_string().contains("tampered"), "{chain}");
    }
}
