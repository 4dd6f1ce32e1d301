//! Names of things across nodes: a node id (`eu`, `eu/berlin-1`), an account address
//! (`name` or `name@node`), and the key of a cross-node transfer (`source|id`). Each has
//! one parser here; nothing else splits these strings by hand.

use std::fmt;

/// Longest account name, in bytes (without the `@node` part).
pub const MAX_NAME_BYTES: usize = 96;
/// Longest segment of a node id.
pub const MAX_NODE_SEGMENT_BYTES: usize = 32;
/// Longest account address (`name@node`), in bytes.
pub const MAX_ADDRESS_BYTES: usize = MAX_NAME_BYTES + 1 + 2 * MAX_NODE_SEGMENT_BYTES + 1;

/// A node id: a region (`eu`) or an edge (`eu/berlin-1`). Lowercase `[a-z0-9-]` segments.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(String);

impl NodeId {
    pub fn parse(text: &str) -> Option<NodeId> {
        let mut segments = 0;
        for segment in text.split('/') {
            segments += 1;
            let ok = !segment.is_empty()
                && segment.len() <= MAX_NODE_SEGMENT_BYTES
                && segment.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok || segments > 2 {
                return None;
            }
        }
        Some(NodeId(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The region of this node: itself for a region, the first segment for an edge.
    pub fn region(&self) -> &str {
        self.0.split('/').next().unwrap_or_default()
    }

    /// Edges hold accounts; regions hold replicas only.
    pub fn is_edge(&self) -> bool {
        self.0.contains('/')
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An account address: a name, and the node it lives on when that is said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address<'a> {
    pub name: &'a str,
    pub node: Option<&'a str>,
}

impl<'a> Address<'a> {
    /// `name` or `name@node`; names are `[a-z0-9_.:-]{1,96}`, system names start with `~`.
    pub fn parse(text: &'a str) -> Option<Address<'a>> {
        if text.len() > MAX_ADDRESS_BYTES {
            return None;
        }
        let (name, node) = match text.split_once('@') {
            Some((name, node)) => (name, Some(node)),
            None => (text, None),
        };
        let body = name.strip_prefix('~').unwrap_or(name);
        let name_ok = (1..=MAX_NAME_BYTES).contains(&name.len())
            && !body.is_empty()
            && body.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.:-".contains(&b));
        if !name_ok || node.is_some_and(|n| NodeId::parse(n).is_none()) {
            return None;
        }
        Some(Address { name, node })
    }

    /// Splits an address without checking its syntax (for strings already checked, such as
    /// the journal's): the name, and the node when one is named.
    pub fn split(text: &'a str) -> Address<'a> {
        match text.split_once('@') {
            Some((name, node)) => Address { name, node: Some(node) },
            None => Address { name: text, node: None },
        }
    }

    /// The node this address names when it is not `here`.
    pub fn remote_node(&self, here: &str) -> Option<&'a str> {
        self.node.filter(|node| *node != here)
    }
}

/// System accounts (`~…`: clearing, operator) move only by the node's own entries.
pub fn is_system(name: &str) -> bool {
    name.starts_with('~')
}

/// `name@node`.
pub fn qualified(name: &str, node: &str) -> String {
    format!("{name}@{node}")
}

pub fn valid_address(text: &str) -> bool {
    Address::parse(text).is_some()
}

pub fn valid_node(text: &str) -> bool {
    NodeId::parse(text).is_some()
}

/// Names one cross-node transfer everywhere: its source node and the source's command id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TransferKey {
    pub source: String,
    pub id: String,
}

impl TransferKey {
    pub fn new(source: &str, id: &str) -> TransferKey {
        TransferKey { source: source.to_string(), id: id.to_string() }
    }

    /// Reads `source|id` back (node ids never hold `|`); a bare `source` is `source|`.
    pub fn parse(text: &str) -> TransferKey {
        let (source, id) = text.split_once('|').unwrap_or((text, ""));
        TransferKey::new(source, id)
    }
}

impl fmt::Display for TransferKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}|{}", self.source, self.id)
    }
}

/// The account that holds this node's position with `peer` in `asset`: credited when money
/// leaves for `peer`, debited when money arrives from it.
pub fn clearing_account(asset: &str, peer: &str) -> String {
    format!("~clearing:{}:{}", asset.to_ascii_lowercase(), peer.replace('/', "."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        for ok in ["wallet:alice", "merchant:cafe@us", "a@eu/berlin-1", "~clearing:eu", "x.y_z-1"] {
            assert!(valid_address(ok), "{ok}");
        }
        for bad in ["", "Wallet", "a b", "a@EU", "a@eu/b/c", "~", "a@", &"a".repeat(97)] {
            assert!(!valid_address(bad), "{bad}");
        }
        let a = Address::parse("wallet:alice@eu/berlin-1").unwrap();
        assert_eq!((a.name, a.node), ("wallet:alice", Some("eu/berlin-1")));
        assert_eq!(a.remote_node("eu/berlin-1"), None);
        assert_eq!(a.remote_node("us/nyc-1"), Some("eu/berlin-1"));
    }

    #[test]
    fn node_ids_and_transfer_keys() {
        let edge = NodeId::parse("eu/berlin-1").unwrap();
        assert_eq!((edge.region(), edge.is_edge()), ("eu", true));
        assert!(!NodeId::parse("eu").unwrap().is_edge());
        for bad in ["", "EU", "eu/", "a/b/c", "eu|x"] {
            assert!(NodeId::parse(bad).is_none(), "{bad}");
        }
        let key = TransferKey::new("eu/berlin-1", "t-1");
        assert_eq!(TransferKey::parse(&key.to_string()), key);
        assert_eq!(clearing_account("EUR", "us/nyc-1"), "~clearing:eur:us.nyc-1");
    }
}
