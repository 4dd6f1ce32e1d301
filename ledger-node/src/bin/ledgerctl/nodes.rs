//! Talking to nodes over zenoh: one answer, every node's status, paged lists, journal ranges.

use crate::Fail;
use bridge::zenoh::Session;
use bridge::{AskError, Refusal};
use indicatif::ProgressBar;
use ledger::core::address::NodeId;
use ledger::core::journal::Entry;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// Rows asked for per page; the nodes cap it at their own limit.
pub const PAGE: usize = 1_000;
/// Pages read from one list before giving up (a node that keeps answering "more").
pub const MAX_PAGES: usize = 100_000;

/// One client session per endpoint given: a node cut off from its region can still be
/// asked through an endpoint of its own. Questions go through all of them at once and the
/// first answer wins.
pub struct Nodes {
    sessions: Vec<Session>,
    timeout: Duration,
    pub endpoints: Vec<String>,
}

impl Nodes {
    pub async fn connect(endpoints: &[String], timeout: Duration, identity: Option<&bridge::pki::IdentityFiles>) -> Result<Nodes, Fail> {
        let mut sessions = Vec::new();
        let mut failures = Vec::new();
        for endpoint in endpoints {
            match bridge::open_client(std::slice::from_ref(endpoint), timeout, identity).await {
                Ok(session) => sessions.push(session),
                Err(e) => failures.push(e),
            }
        }
        if sessions.is_empty() {
            return Err(Fail::unreachable(failures.join("; ")));
        }
        for failure in failures {
            eprintln!("ledgerctl: {failure} (going on with the other endpoints)");
        }
        Ok(Nodes { sessions, timeout, endpoints: endpoints.to_vec() })
    }

    /// The first answer to `selector` through any session: a value, or the node's refusal.
    /// `Err` when no node answered. A question that found no route at once (no router knew
    /// the node at that moment, as while a node's link re-forms) is asked once more.
    async fn first_answer(&self, selector: &str, payload: Option<String>) -> Result<Result<Value, Refusal>, String> {
        let started = std::time::Instant::now();
        match self.first_answer_once(selector, payload.clone()).await {
            Err(_) if started.elapsed() < self.timeout / 2 => {
                tokio::time::sleep(Duration::from_millis(250)).await;
                self.first_answer_once(selector, payload).await
            }
            answer => answer,
        }
    }

    async fn first_answer_once(&self, selector: &str, payload: Option<String>) -> Result<Result<Value, Refusal>, String> {
        let mut asks = tokio::task::JoinSet::new();
        for session in &self.sessions {
            let (session, selector, payload, timeout) = (session.clone(), selector.to_string(), payload.clone(), self.timeout);
            asks.spawn(async move { bridge::ask_json(&session, &selector, payload, timeout).await });
        }
        let mut first_error = None;
        while let Some(done) = asks.join_next().await {
            match done {
                Ok(Ok(answer)) => return Ok(Ok(answer)),
                Ok(Err(AskError::Refused { refusal, .. })) => return Ok(Err(refusal)),
                Ok(Err(e)) => {
                    first_error.get_or_insert(e.to_string());
                }
                Err(e) => {
                    first_error.get_or_insert(e.to_string());
                }
            }
        }
        Err(first_error.unwrap_or_else(|| format!("{selector}: no answer")))
    }

    /// One JSON answer. No answer is `unreachable`; a refusal is a failure with the node's
    /// own words.
    pub async fn ask(&self, selector: &str) -> Result<Value, Fail> {
        let answer = self.first_answer(selector, None).await.map_err(|e| {
            Fail::unreachable(format!(
                "{e} (within {} s, via {}): is the node running and connected?",
                self.timeout.as_secs(),
                self.endpoints.join(", ")
            ))
        })?;
        answer.map_err(|refusal| Fail::refused(format!("{selector}: {refusal}")))
    }

    /// An operator command to an edge, answered with the ledger's reply.
    pub async fn command(&self, node: &str, command: &Value) -> Result<Value, Fail> {
        let selector = bridge::keys::command(node);
        // Commands are idempotent by id: asking through every session at once applies it once.
        let answer = self
            .first_answer(&selector, Some(command.to_string()))
            .await
            .map_err(|e| Fail::unreachable(format!("{e}: is {node} running and connected?")))?;
        answer.map_err(|refusal| Fail::refused(format!("{node}: {refusal}")))
    }

    /// Every node's status, by node id.
    pub async fn statuses(&self) -> Result<BTreeMap<String, Value>, Fail> {
        let mut answers = Vec::new();
        for session in &self.sessions {
            answers.extend(bridge::ask_all(session, "ledger/v1/status/**", self.timeout).await.map_err(Fail::unreachable)?);
        }
        let mut out = BTreeMap::new();
        for (key, answer) in answers {
            if let Ok(status) = answer {
                // A node answers for itself only: its status on its own key.
                if let Some(node) = status["node"].as_str().filter(|node| key == bridge::keys::status(node)) {
                    out.insert(node.to_string(), status);
                }
            }
        }
        if out.is_empty() {
            return Err(Fail::unreachable(format!("no node answered its status via {}", self.endpoints.join(", "))));
        }
        Ok(out)
    }

    /// Every row of a paged list (`accounts`, `transfers`): follows `next_after` to the end.
    /// Returns the rows and the sequence number the node stood at for the first and last page.
    pub async fn all_pages<T: DeserializeOwned>(
        &self,
        key: &str,
        params: &str,
        field: &str,
        bar: &ProgressBar,
    ) -> Result<(Vec<T>, u64, u64), Fail> {
        let mut rows = Vec::new();
        let mut after: Option<String> = None;
        let mut first_seq = None;
        for _ in 0..MAX_PAGES {
            let mut selector = format!("{key}?limit={PAGE}");
            if !params.is_empty() {
                selector.push(';');
                selector.push_str(params);
            }
            if let Some(after) = &after {
                selector.push_str(&format!(";after={after}"));
            }
            let answer = self.ask(&selector).await?;
            let seq = answer["seq"].as_u64().unwrap_or(0);
            first_seq.get_or_insert(seq);
            let page: Vec<T> =
                serde_json::from_value(answer[field].clone()).map_err(|e| Fail::refused(format!("{selector}: unexpected answer: {e}")))?;
            bar.inc(page.len() as u64);
            rows.extend(page);
            match answer["next_after"].as_str() {
                Some(next) => after = Some(next.to_string()),
                None => return Ok((rows, first_seq.unwrap_or(seq), seq)),
            }
        }
        Err(Fail::refused(format!("{key}: more than {MAX_PAGES} pages")))
    }

    /// Journal entries of `edge` from `from`, as its range queryable serves them.
    pub async fn journal(&self, edge: &str, from: u64) -> Result<Vec<Entry>, Fail> {
        let selector = format!("{}?from={from};limit={}", bridge::keys::journal_range(edge), bridge::MAX_FRAME_ENTRIES);
        // Through every session at once: only the edge's own region routes to it.
        let mut asks = tokio::task::JoinSet::new();
        for session in &self.sessions {
            let (session, selector, timeout) = (session.clone(), selector.clone(), self.timeout);
            asks.spawn(async move {
                let replies = session
                    .get(&selector)
                    .congestion_control(bridge::zenoh::qos::CongestionControl::Block)
                    .timeout(timeout)
                    .await
                    .map_err(|e| e.to_string())?;
                let reply = replies.recv_async().await.map_err(|_| "no answer".to_string())?;
                Ok::<_, String>(
                    reply.result().map(|s| s.payload().to_bytes().into_owned()).map_err(|e| bridge::refusal_of(&e.payload().to_bytes())),
                )
            });
        }
        let mut answer = None;
        while let Some(done) = asks.join_next().await {
            if let Ok(Ok(found)) = done {
                answer = Some(found);
                break;
            }
        }
        let Some(answer) = answer else {
            return Err(Fail::unreachable(format!("{selector}: no answer: is {edge} running and connected?")));
        };
        let payload = answer.map_err(|refusal| Fail::refused(format!("{selector}: {refusal}")))?;
        let frame = bridge::Frame::decode(payload).map_err(|e| Fail::differs(format!("{edge}: {e}")))?;
        frame
            .entries()
            .map(|(seq, bytes)| Entry::decode(seq, bytes).map_err(|e| Fail::differs(format!("{edge}: entry {seq}: {e}"))))
            .collect()
    }
}

/// `name@node`, parsed by the core's one address parser, with the node's region.
pub struct Address {
    pub name: String,
    pub node: String,
}

impl Address {
    pub fn parse(text: &str) -> Result<Address, Fail> {
        match ledger::core::address::Address::parse(text) {
            Some(ledger::core::address::Address { name, node: Some(node) }) => {
                Ok(Address { name: name.to_string(), node: node.to_string() })
            }
            _ => Err(Fail::usage(format!("{text:?} is not an account address: write name@node, like wallet:alice@eu/berlin-1"))),
        }
    }

    fn node_id(&self) -> NodeId {
        NodeId::parse(&self.node).expect("checked by parse")
    }

    pub fn is_edge(&self) -> bool {
        self.node_id().is_edge()
    }

    pub fn region(&self) -> String {
        self.node_id().region().to_string()
    }
}
