//! The ledger core as a node config describes it: assets, limits and device rights. The
//! one place where config meets the core, shared by edges and regions (for replicas).

use crate::core::money::Assets;
use crate::core::{DeviceRights, Ledger, Limits, Permissions};
use config::NodeConfig;
use std::collections::HashMap;

/// The ledger core as `config` describes it, with no state yet.
pub fn ledger_for(config: &NodeConfig) -> Ledger {
    let custom: Vec<(String, u32)> = config.assets.iter().map(|a| (a.code.clone(), a.scale)).collect();
    let assets = Assets::new(&custom, |code| config.max_amount_for(code));
    let limits = Limits { max_batch_ops: config.ledger.max_batch_ops, max_hold_timeout_s: config.ledger.max_hold_timeout_s };
    let permissions = if config.devices.is_empty() {
        Permissions::open()
    } else {
        let rights = config.devices.iter().map(|d| (d.id.clone(), DeviceRights { may_debit: d.may_debit.clone(), may_issue: d.may_issue }));
        Permissions::restricted(rights.collect::<HashMap<_, _>>())
    };
    Ledger::new(&config.node.id, assets, limits, permissions)
}
