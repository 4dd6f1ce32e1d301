//! The journal: one hash-chained entry per change, numbered without gaps. It is the audit
//! trail, the source the node rebuilds its state from, and the unit of replication.

use super::change::EntryBody;
use super::entry_codec;

pub type Hash = [u8; 32];

/// The hash before the first entry.
pub const GENESIS: Hash = [0; 32];

/// A sealed entry as stored: its chain links and the body bytes they cover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub prev: Hash,
    pub hash: Hash,
    pub body: Vec<u8>,
}

/// Why a stored entry cannot be trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainError {
    Truncated {
        seq: u64,
    },
    Gap {
        expected: u64,
        found: u64,
    },
    BrokenLink {
        seq: u64,
    },
    BadHash {
        seq: u64,
    },
    /// Entries `from..=to` do not hash to the hash stored with entry `to`: the store keeps
    /// a hash only every so many entries, so the change is somewhere in that span.
    BadSpan {
        from: u64,
        to: u64,
    },
    BadBody {
        seq: u64,
        reason: String,
    },
}

impl std::fmt::Display for ChainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChainError::Truncated { seq } => write!(f, "journal entry {seq} is truncated"),
            ChainError::Gap { expected, found } => write!(f, "journal gap: expected entry {expected}, found {found}"),
            ChainError::BrokenLink { seq } => write!(f, "journal entry {seq} does not link to the hash of entry {}", seq - 1),
            ChainError::BadHash { seq } => write!(f, "journal entry {seq} does not match its hash (tampered or corrupt)"),
            ChainError::BadSpan { from, to } => {
                write!(f, "journal entries {from} to {to} do not hash to the hash stored with entry {to} (one of them tampered or corrupt)")
            }
            ChainError::BadBody { seq, reason } => write!(f, "journal entry {seq} cannot be read: {reason}"),
        }
    }
}

pub fn hash_of(prev: &Hash, seq: u64, body: &[u8]) -> Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(prev);
    hasher.update(&seq.to_be_bytes());
    hasher.update(body);
    *hasher.finalize().as_bytes()
}

impl Entry {
    pub fn seal(prev: Hash, body: &EntryBody) -> Entry {
        let bytes = entry_codec::encode(body);
        Entry { seq: body.seq, prev, hash: hash_of(&prev, body.seq, &bytes), body: bytes }
    }

    /// Wire form (replication frames; rows of files before format 5): prev (32 bytes) ‖
    /// hash (32 bytes) ‖ body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.body.len());
        out.extend_from_slice(&self.prev);
        out.extend_from_slice(&self.hash);
        out.extend_from_slice(&self.body);
        out
    }

    pub fn decode(seq: u64, bytes: &[u8]) -> Result<Entry, ChainError> {
        if bytes.len() < 64 {
            return Err(ChainError::Truncated { seq });
        }
        let prev: Hash = bytes[..32].try_into().expect("32 bytes");
        let hash: Hash = bytes[32..64].try_into().expect("32 bytes");
        Ok(Entry { seq, prev, hash, body: bytes[64..].to_vec() })
    }

    /// Checks this entry against its own hash and the hash of the entry before it.
    pub fn verify(&self, expected_seq: u64, prev: &Hash) -> Result<(), ChainError> {
        if self.seq != expected_seq {
            return Err(ChainError::Gap { expected: expected_seq, found: self.seq });
        }
        if &self.prev != prev {
            return Err(ChainError::BrokenLink { seq: self.seq });
        }
        if hash_of(&self.prev, self.seq, &self.body) != self.hash {
            return Err(ChainError::BadHash { seq: self.seq });
        }
        Ok(())
    }

    pub fn parse_body(&self) -> Result<EntryBody, ChainError> {
        parse_body(self.seq, &self.body)
    }
}

/// What the body bytes of entry `seq` say.
pub fn parse_body(seq: u64, bytes: &[u8]) -> Result<EntryBody, ChainError> {
    let body = entry_codec::decode(bytes).map_err(|reason| ChainError::BadBody { seq, reason })?;
    if body.seq != seq {
        return Err(ChainError::BadBody { seq, reason: format!("body says seq {}", body.seq) });
    }
    Ok(body)
}

/// The end of a hash chain: the last sealed entry's number and hash. The committer seals
/// entries as it stores them; loading verifies every stored entry against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chain {
    pub seq: u64,
    pub hash: Hash,
}

impl Default for Chain {
    fn default() -> Chain {
        Chain { seq: 0, hash: GENESIS }
    }
}

impl Chain {
    /// Serializes, hashes and links the next entry.
    pub fn seal(&mut self, body: &EntryBody) -> Entry {
        assert_eq!(body.seq, self.seq + 1, "journal entries are sealed in order, without gaps");
        let entry = Entry::seal(self.hash, body);
        self.seq = entry.seq;
        self.hash = entry.hash;
        entry
    }

    /// Checks that `entry` is the next link and returns what it says.
    pub fn verify_next(&mut self, entry: &Entry) -> Result<EntryBody, ChainError> {
        entry.verify(self.seq + 1, &self.hash)?;
        let body = entry.parse_body()?;
        self.seq = entry.seq;
        self.hash = entry.hash;
        Ok(body)
    }
}

pub fn hex(hash: &Hash) -> String {
    // blake3's own lowercase hex (on the stack), not a `format!` per byte.
    blake3::Hash::from_bytes(*hash).to_hex().to_string()
}

/// Reads back `N` bytes written as `2 × N` lowercase hex digits (a hash, a fingerprint);
/// None for anything else.
pub fn parse_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let text = text.as_bytes();
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0; N];
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_two_lowercase_digits_per_byte() {
        let mut hash = [0u8; 32];
        hash[0] = 0x0f;
        hash[1] = 0xa0;
        hash[31] = 0xff;
        let expected: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex(&hash), expected);
        assert!(hex(&hash).starts_with("0fa000"));
        assert!(hex(&hash).ends_with("00ff"));
        assert_eq!(parse_hex::<32>(&hex(&hash)), Some(hash));
        for bad in ["", "0f", &"0".repeat(63), &"0".repeat(65), &"A".repeat(64), &"+f".repeat(32), &"é".repeat(32)] {
            assert_eq!(parse_hex::<32>(bad), None, "{bad:?}");
        }
    }
}
