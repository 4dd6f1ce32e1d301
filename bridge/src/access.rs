//! Zenoh access control derived from the node config: who may send this node what, named
//! by the common name of the certificate the peer proved over mutual TLS.
//!
//! Rules are checked where a message enters a node (ingress), one hop at a time:
//! - an edge takes queries on what it serves (its journal ranges, status, books, operator
//!   commands, deliveries and settlements) and its journal acknowledgements only from its
//!   region, and reads and commands from configured operators;
//! - a region takes from each of its edges that edge's journal pushes and the declarations
//!   of that edge's own queryables (so no node can serve another's keys), relays only from
//!   the regions it lists, and reads and commands from operators;
//! - anything else, and anyone else, is denied (zenoh drops it and counts nothing for us).
//!
//! What a node sends out (egress) is allowed to every identity it knows: the ingress rules
//! of the receiver are the boundary. Owns the rule set only; it must not open sessions.

use crate::keys;
use crate::pki::Identity;
use config::{NodeConfig, Role};
use serde_json::{json, Value};

/// One grant: `messages` on `key_exprs`, arriving from `subject` (a certificate common name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub subject: String,
    pub messages: &'static [&'static str],
    pub key_exprs: Vec<String>,
}

const QUERY: &[&str] = &["query"];
const PUT: &[&str] = &["put"];
const SUBSCRIBE: &[&str] = &["declare_subscriber"];
/// Serving a key: declaring the queryable and answering on it (zenoh checks a reply
/// against the key of the query it answers).
const SERVE: &[&str] = &["declare_queryable", "reply"];
const ALL: &[&str] = &[
    "put",
    "delete",
    "declare_subscriber",
    "query",
    "declare_queryable",
    "reply",
    "liveliness_token",
    "declare_liveliness_subscriber",
    "liveliness_query",
];

/// The keys an edge serves to its region: journal ranges, status, books, commands,
/// deliveries and settlements.
pub fn served_by_edge(edge: &str) -> Vec<String> {
    vec![
        keys::journal_range(edge),
        keys::status(edge),
        format!("ledger/v1/query/{edge}/*"),
        keys::command(edge),
        keys::transfer_deliver(edge),
        keys::transfer_settle(edge),
        keys::transfer_deliveries(edge),
        keys::transfer_settlements(edge),
    ]
}

/// What an operator may ask an edge directly: everything it serves except the transfer
/// protocol (deliveries and settlements come from its region only).
fn operator_reads_of_edge(edge: &str) -> Vec<String> {
    vec![keys::journal_range(edge), "ledger/v1/status/**".to_string(), format!("ledger/v1/query/{edge}/*"), keys::command(edge)]
}

/// What operators may ask through a region: every node's status, books, journal ranges and
/// commands; never deliveries, settlements or relays.
fn operator_reads_via_region() -> Vec<String> {
    ["ledger/v1/status/**", "ledger/v1/query/**", "ledger/v1/command/**", "ledger/v1/journal/**"].map(String::from).to_vec()
}

fn operator_common_name(name: &str) -> String {
    Identity::Operator(name.to_string()).common_name()
}

/// Every grant of `node` (a TLS node; plaintext nodes have no identities to check).
pub fn grants(node: &NodeConfig) -> Vec<Grant> {
    let me = node.node.id.as_str();
    let zenoh = node.zenoh.as_ref();
    let operators = zenoh.map(|z| z.operators.clone()).unwrap_or_default();
    let mut grants = Vec::new();
    let grant = |subject: String, messages, key_exprs| Grant { subject, messages, key_exprs };
    match node.node.role {
        Role::Edge => {
            let region = me.split('/').next().expect("an edge id has a region").to_string();
            // `status/**` too: an operator's "every node's status" reaches the edge as that
            // wildcard, which only the edge's own status queryable answers.
            let mut asked = served_by_edge(me);
            asked.push("ledger/v1/status/**".to_string());
            grants.push(grant(region.clone(), QUERY, asked));
            grants.push(grant(region.clone(), PUT, vec![keys::journal_ack(me)]));
            grants.push(grant(region, SUBSCRIBE, vec![keys::journal_entries(me)]));
            for name in &operators {
                grants.push(grant(operator_common_name(name), QUERY, operator_reads_of_edge(me)));
            }
        }
        Role::Region => {
            for edge in &node.replication.edges {
                grants.push(grant(edge.clone(), PUT, vec![keys::journal_entries(edge)]));
                grants.push(grant(edge.clone(), SUBSCRIBE, vec![keys::journal_ack(edge)]));
                grants.push(grant(edge.clone(), &["declare_queryable"], served_by_edge(edge)));
                // zenoh checks a reply against the query's key: an operator's "every
                // node's status" is the wildcard, which reaches the edge through its own
                // status queryable only.
                let mut replies = served_by_edge(edge);
                replies.push("ledger/v1/status/**".to_string());
                grants.push(grant(edge.clone(), &["reply"], replies));
            }
            for peer in zenoh.map(|z| z.peer_regions.clone()).unwrap_or_default() {
                grants.push(grant(peer.clone(), QUERY, vec![keys::transfer_relay(me), keys::transfer_relays(me)]));
                grants.push(grant(peer.clone(), SERVE, vec![keys::transfer_relay(&peer), keys::transfer_relays(&peer)]));
            }
            for name in &operators {
                grants.push(grant(operator_common_name(name), QUERY, operator_reads_via_region()));
            }
        }
    }
    grants
}

/// The `access_control` section of a zenoh config for `node`: deny by default, the grants
/// as ingress rules, and everything under `ledger/v1/` out to each identity it knows.
pub fn zenoh_access_control(node: &NodeConfig) -> Value {
    let grants = grants(node);
    let mut subjects: Vec<String> = grants.iter().map(|g| g.subject.clone()).collect();
    subjects.sort();
    subjects.dedup();
    let subject_id = |cn: &str| format!("subject-{}", subjects.iter().position(|s| s == cn).expect("listed"));
    let mut rules = vec![json!({
        "id": "egress",
        "messages": ALL,
        "flows": ["egress"],
        "permission": "allow",
        "key_exprs": ["ledger/v1/**"],
    })];
    let mut policies = Vec::new();
    for (i, g) in grants.iter().enumerate() {
        let id = format!("grant-{i}");
        rules.push(json!({
            "id": id,
            "messages": g.messages,
            "flows": ["ingress"],
            "permission": "allow",
            "key_exprs": g.key_exprs,
        }));
        policies.push(json!({ "rules": [id], "subjects": [subject_id(&g.subject)] }));
    }
    let all: Vec<String> = subjects.iter().map(|s| subject_id(s)).collect();
    if !all.is_empty() {
        policies.push(json!({ "rules": ["egress"], "subjects": all }));
    }
    let subjects: Vec<Value> =
        subjects.iter().map(|cn| json!({ "id": subject_id(cn), "cert_common_names": [cn], "link_protocols": ["tls"] })).collect();
    json!({
        "enabled": true,
        "default_permission": "deny",
        "rules": rules,
        "subjects": subjects,
        "policies": policies,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> NodeConfig {
        NodeConfig::from_toml(text).unwrap()
    }

    const TLS: &str = "tls_root_ca = \"ca.pem\"\ntls_certificate = \"n.pem\"\ntls_private_key = \"n.key\"\n";

    #[test]
    fn an_edge_takes_transfers_from_its_region_only() {
        let edge =
            config(&format!("[node]\nid = \"eu/berlin-1\"\n[zenoh]\nconnect = [\"tls/127.0.0.1:7447\"]\noperators = [\"admin\"]\n{TLS}"));
        let grants = grants(&edge);
        let deliver = keys::transfer_deliver("eu/berlin-1");
        let who: Vec<&str> = grants.iter().filter(|g| g.key_exprs.contains(&deliver)).map(|g| g.subject.as_str()).collect();
        assert_eq!(who, ["eu"]);
        let bulk = keys::transfer_deliveries("eu/berlin-1");
        let who: Vec<&str> = grants.iter().filter(|g| g.key_exprs.contains(&bulk)).map(|g| g.subject.as_str()).collect();
        assert_eq!(who, ["eu"]);
        let admin = grants.iter().find(|g| g.subject == "operator:admin").unwrap();
        assert!(admin.key_exprs.contains(&keys::command("eu/berlin-1")));
        assert!(!admin.key_exprs.iter().any(|k| k.contains("transfer")));
    }

    #[test]
    fn a_region_lets_each_edge_push_and_serve_only_its_own_keys() {
        let region = config(&format!(
            "[node]\nid = \"eu\"\nrole = \"region\"\n[zenoh]\nlisten = [\"tls/127.0.0.1:7447\"]\npeer_regions = [\"us\"]\n{TLS}\n[replication]\nedges = [\"eu/a\", \"eu/b\"]\n"
        ));
        let grants = grants(&region);
        for g in grants.iter().filter(|g| g.subject == "eu/a" && g.messages != ["reply"]) {
            assert!(g.key_exprs.iter().all(|k| k.contains("/eu/a/") || k.ends_with("/eu/a")), "{g:?}");
        }
        let relay: Vec<&Grant> = grants.iter().filter(|g| g.subject == "us").collect();
        let asked = [keys::transfer_relay("eu"), keys::transfer_relays("eu")];
        assert!(relay.iter().any(|g| g.messages == QUERY && g.key_exprs == asked));
        let relay_key = |k: &String| k.starts_with("ledger/v1/transfer/") && (k.ends_with("/relay") || k.ends_with("/relays"));
        assert!(relay.iter().all(|g| g.key_exprs.iter().all(relay_key)));
        let acl = zenoh_access_control(&region);
        assert_eq!(acl["default_permission"], "deny");
        // zenoh parses what we generate.
        let mut zconfig = zenoh::Config::default();
        zconfig.insert_json5("access_control", &acl.to_string()).unwrap();
    }
}
