//! Replies and notices to devices, and the closed list of reply codes.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Committed,
    Pending,
    Rejected,
}

/// Every code a reply can carry. docs/PROTOCOL.md lists them with their meaning; adding one
/// is a protocol change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    Ok,
    InvalidJson,
    PayloadTooLarge,
    UnknownOp,
    MissingField,
    InvalidField,
    InvalidAmount,
    UnknownAsset,
    AssetMismatch,
    UnknownAccount,
    AccountExists,
    AccountClosed,
    AccountNotEmpty,
    SameAccount,
    InsufficientFunds,
    Forbidden,
    RemoteAccount,
    UnknownPending,
    PendingPosted,
    PendingVoided,
    PendingExpired,
    AmountExceedsPending,
    IdConflict,
    Overflow,
    /// The node could not write (disk full, a file size limit, a failing disk). Not
    /// recorded: the same id resent once the node writes again takes effect then.
    DiskFull,
}

impl Code {
    /// Every code once. Journal entries store a code as its index here (`entry_codec`):
    /// a new code goes at the end, and none is ever removed or moved.
    pub const ALL: [Code; 25] = [
        Code::Ok,
        Code::InvalidJson,
        Code::PayloadTooLarge,
        Code::UnknownOp,
        Code::MissingField,
        Code::InvalidField,
        Code::InvalidAmount,
        Code::UnknownAsset,
        Code::AssetMismatch,
        Code::UnknownAccount,
        Code::AccountExists,
        Code::AccountClosed,
        Code::AccountNotEmpty,
        Code::SameAccount,
        Code::InsufficientFunds,
        Code::Forbidden,
        Code::RemoteAccount,
        Code::UnknownPending,
        Code::PendingPosted,
        Code::PendingVoided,
        Code::PendingExpired,
        Code::AmountExceedsPending,
        Code::IdConflict,
        Code::Overflow,
        Code::DiskFull,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Code::Ok => "ok",
            Code::InvalidJson => "invalid_json",
            Code::PayloadTooLarge => "payload_too_large",
            Code::UnknownOp => "unknown_op",
            Code::MissingField => "missing_field",
            Code::InvalidField => "invalid_field",
            Code::InvalidAmount => "invalid_amount",
            Code::UnknownAsset => "unknown_asset",
            Code::AssetMismatch => "asset_mismatch",
            Code::UnknownAccount => "unknown_account",
            Code::AccountExists => "account_exists",
            Code::AccountClosed => "account_closed",
            Code::AccountNotEmpty => "account_not_empty",
            Code::SameAccount => "same_account",
            Code::InsufficientFunds => "insufficient_funds",
            Code::Forbidden => "forbidden",
            Code::RemoteAccount => "remote_account",
            Code::UnknownPending => "unknown_pending",
            Code::PendingPosted => "pending_posted",
            Code::PendingVoided => "pending_voided",
            Code::PendingExpired => "pending_expired",
            Code::AmountExceedsPending => "amount_exceeds_pending",
            Code::IdConflict => "id_conflict",
            Code::Overflow => "overflow",
            Code::DiskFull => "disk_full",
        }
    }
}

/// Longest rejection message. A rejection is recorded under its id (in memory and on
/// disk) and sent back: what a stranger's input can make the node keep is bounded here.
pub const MAX_MESSAGE_BYTES: usize = 512;
/// Most bytes of a device's input quoted back in a message.
pub const MAX_QUOTED_BYTES: usize = 64;

/// A refused command: the code and a message naming the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: Code,
    pub message: String,
}

impl Rejection {
    /// The message is cut to `MAX_MESSAGE_BYTES`; it starts with the field, which stays.
    pub fn new(code: Code, message: impl Into<String>) -> Rejection {
        let mut message = message.into();
        truncate(&mut message, MAX_MESSAGE_BYTES);
        Rejection { code, message }
    }
}

/// Input quoted in a message: as a JSON-style string, cut to `MAX_QUOTED_BYTES` with its
/// full length said when it is longer.
pub fn quoted(text: &str) -> String {
    cut_for_message(text, |shown| format!("{shown:?}"))
}

/// Input shown as it is (a JSON number or value), cut like `quoted`.
pub fn excerpt(text: &str) -> String {
    cut_for_message(text, str::to_string)
}

fn cut_for_message(text: &str, show: impl Fn(&str) -> String) -> String {
    if text.len() <= MAX_QUOTED_BYTES {
        return show(text);
    }
    let mut head = text.to_string();
    truncate(&mut head, MAX_QUOTED_BYTES);
    format!("{} ({} bytes)", show(&head), text.len())
}

/// Cuts `text` to at most `max` bytes, on a character boundary, marking the cut with `…`.
pub fn truncate(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mark = "…";
    let mut end = max.saturating_sub(mark.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(mark);
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceView {
    pub account: String,
    pub asset: String,
    pub posted: String,
    pub pending_debits: String,
    pub pending_credits: String,
    pub available: String,
}

/// The outcome of one op inside a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpResult {
    pub id: String,
    pub status: Status,
    pub code: Code,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub id: Option<String>,
    pub status: Status,
    pub code: Code,
    /// Borrowed for the fixed texts ("transfer committed"): a reply is copied into its
    /// entry and the id cache, and an allocation per copy was a visible share of both the
    /// ledger thread and the committer (which frees them).
    pub message: Cow<'static, str>,
    pub seq: Option<u64>,
    pub duplicate: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance: Option<BalanceView>,
    /// For `post`: the amount posted and the amount released back to the debit account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub posted: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released: Option<String>,
    /// For `hold` with a timeout: when it expires (node clock, Unix milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<OpResult>,
    /// On a resent hold or cross-node transfer that has since been resolved: how it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<Resolution>,
}

impl Reply {
    fn new(id: Option<&str>, status: Status, code: Code, message: Cow<'static, str>, seq: Option<u64>) -> Reply {
        Reply {
            id: id.map(str::to_string),
            status,
            code,
            message,
            seq,
            duplicate: false,
            balance: None,
            posted: None,
            released: None,
            expires_at_ms: None,
            results: Vec::new(),
            resolution: None,
        }
    }

    pub fn ok(id: &str, status: Status, seq: u64, message: impl Into<Cow<'static, str>>) -> Reply {
        Reply::new(Some(id), status, Code::Ok, message.into(), Some(seq))
    }

    pub fn rejected(id: Option<&str>, rejection: Rejection) -> Reply {
        Reply::new(id, Status::Rejected, rejection.code, Cow::Owned(rejection.message), None)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("reply serializes")
    }
}

/// How a pending transfer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    Posted,
    Voided,
    Expired,
}

/// A later change to a pending transfer, published to the reply topic of the device that
/// placed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub device: String,
    pub event: &'static str,
    pub pending_id: String,
    pub resolution: Resolution,
    pub amount: String,
    pub seq: u64,
    /// For a cross-node transfer: the destination's code and message (why it was voided).
    pub decision: Option<(Code, String)>,
}

impl Notice {
    pub fn to_json(&self) -> Vec<u8> {
        let mut notice = serde_json::json!({
            "event": self.event,
            "pending_id": self.pending_id,
            "resolution": self.resolution,
            "amount": self.amount,
            "seq": self.seq,
        });
        if let Some((code, message)) = &self.decision {
            notice["code"] = serde_json::json!(code);
            notice["message"] = serde_json::json!(message);
        }
        serde_json::to_vec(&notice).expect("notice serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_documented() {
        for code in Code::ALL {
            assert_eq!(serde_json::to_value(code).unwrap(), serde_json::Value::String(code.as_str().to_string()));
        }
        let doc = include_str!("../../../docs/PROTOCOL.md");
        for code in Code::ALL {
            assert!(doc.contains(&format!("`{}`", code.as_str())), "docs/PROTOCOL.md does not document {}", code.as_str());
        }
    }
}
