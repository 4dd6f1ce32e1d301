//! The anchor of a pruned journal in meta: the seq and hash of the last entry pruned,
//! with its time and the scales of the assets opened before it. Where a replay, a range
//! read and `ledgerctl verify` start once entries are gone (see `prune`).

use super::error::Fault;
use crate::core::journal::{hex, Chain, Hash};
use redb::{ReadableTable, Table};
use std::collections::BTreeMap;

/// The end of what was pruned. Zero (the genesis) while nothing was.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Anchor {
    pub chain: Chain,
    pub ts_ms: u64,
    /// Assets and their scales as opened by the pruned entries: an audit from the anchor
    /// reads amounts with them.
    pub assets: BTreeMap<String, u32>,
}

const ANCHOR: &str = "anchor";
const ANCHOR_TS: &str = "anchor_ts_ms";
const ANCHOR_ASSETS: &str = "anchor_assets";

/// Records `anchor` in meta (in the pruning pass's transaction).
pub(super) fn write_anchor(meta: &mut Table<&'static str, &'static str>, anchor: &Anchor) -> Result<(), Fault> {
    meta.insert(ANCHOR, format!("{}:{}", anchor.chain.seq, hex(&anchor.chain.hash)).as_str())?;
    meta.insert(ANCHOR_TS, anchor.ts_ms.to_string().as_str())?;
    meta.insert(ANCHOR_ASSETS, serde_json::to_string(&anchor.assets).expect("assets serialize").as_str())?;
    Ok(())
}

pub(super) fn anchor_in(meta: &impl ReadableTable<&'static str, &'static str>) -> Result<Anchor, Fault> {
    let Some(text) = meta.get(ANCHOR)?.map(|v| v.value().to_string()) else { return Ok(Anchor::default()) };
    let bad = |what: &str| Fault::Corrupt(format!("the journal's anchor {text:?}: {what}"));
    let (seq, hash) = text.split_once(':').ok_or_else(|| bad("not seq:hash"))?;
    let seq: u64 = seq.parse().map_err(|_| bad("seq"))?;
    let hash: Hash = crate::core::journal::parse_hex(hash).ok_or_else(|| bad("hash"))?;
    let ts_ms = meta.get(ANCHOR_TS)?.and_then(|v| v.value().parse().ok()).ok_or_else(|| bad("no time"))?;
    let assets = meta.get(ANCHOR_ASSETS)?.map(|v| serde_json::from_str(v.value())).transpose().map_err(|_| bad("assets"))?;
    Ok(Anchor { chain: Chain { seq, hash }, ts_ms, assets: assets.unwrap_or_default() })
}
