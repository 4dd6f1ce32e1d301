//! Commands: the typed form of a device's JSON, and the strict parser that names the field
//! at fault. Amounts stay decimal strings here; the ledger converts them with the asset.
//!
//! Device ops (`Op`) and the ops only the node writes (`NodeOp`: expiry, receiving and
//! settling cross-node transfers) are separate types, so no device input can build a node
//! op. A journal entry holds either (`Journaled`).

use super::address::valid_address;
use super::json_fields::{self, Field, JsonFields, Name};
use super::reply::{excerpt, quoted, Code, Rejection, Status};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::borrow::Cow;

/// Longest command id, in bytes.
pub const MAX_ID_BYTES: usize = 128;
/// Longest serialized `metadata` object, in bytes.
pub const MAX_METADATA_BYTES: usize = 2048;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    pub id: String,
    #[serde(flatten)]
    pub op: Op,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    OpenAccount {
        account: String,
        asset: String,
        flags: Vec<Flag>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        overdraft_limit: Option<String>,
    },
    CloseAccount {
        account: String,
    },
    Transfer(Movement),
    Hold {
        #[serde(flatten)]
        movement: Movement,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_s: Option<u64>,
    },
    Post {
        pending_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        amount: Option<String>,
    },
    Void {
        pending_id: String,
    },
    Batch {
        ops: Vec<Command>,
    },
    Balance {
        account: String,
    },
}

/// A command the node writes itself; never parsed from a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeCommand {
    pub id: String,
    #[serde(flatten)]
    pub op: NodeOp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum NodeOp {
    /// A hold's timeout passed.
    Expire { pending_id: String },
    /// A cross-node transfer arriving at its destination (the command id is the source's
    /// id), delivered by the source's region.
    Receive {
        source: String,
        #[serde(flatten)]
        movement: Movement,
    },
    /// The destination's decision on a cross-node transfer, applied at its source: the hold
    /// is posted (`status` committed) or voided (rejected).
    Settle { pending_id: String, status: Status, code: Code, message: String },
}

impl NodeOp {
    pub fn name(&self) -> &'static str {
        match self {
            NodeOp::Expire { .. } => "expire",
            NodeOp::Receive { .. } => "receive",
            NodeOp::Settle { .. } => "settle",
        }
    }
}

/// The command a journal entry records: a device's (or an operator's), or the node's own.
/// Serialized as the command itself, so the two read alike in the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Journaled {
    Device(Command),
    Node(NodeCommand),
}

impl Journaled {
    pub fn id(&self) -> &str {
        match self {
            Journaled::Device(c) => &c.id,
            Journaled::Node(c) => &c.id,
        }
    }

    pub fn op_name(&self) -> &'static str {
        match self {
            Journaled::Device(c) => c.op.name(),
            Journaled::Node(c) => c.op.name(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Movement {
    pub debit: String,
    pub credit: String,
    pub amount: String,
    pub asset: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flag {
    NoOverdraft,
    Issuance,
}

impl Op {
    pub fn name(&self) -> &'static str {
        match self {
            Op::OpenAccount { .. } => "open_account",
            Op::CloseAccount { .. } => "close_account",
            Op::Transfer(_) => "transfer",
            Op::Hold { .. } => "hold",
            Op::Post { .. } => "post",
            Op::Void { .. } => "void",
            Op::Batch { .. } => "batch",
            Op::Balance { .. } => "balance",
        }
    }
}

/// Reads the command id from any JSON payload, so that even a rejected command's reply
/// can name it. Returns None when there is no usable id.
pub fn peek_id(payload: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: Option<Value>,
    }
    let parsed: IdOnly = serde_json::from_slice(payload).ok()?;
    match parsed.id? {
        Value::String(s) if valid_id(&s) => Some(s),
        _ => None,
    }
}

/// Parses one device command. `max_batch_ops` bounds a batch's length.
///
/// The payload is read once into its fields (`json_fields`), strings borrowed from it: no
/// `Value` tree is built for a command's own fields, only for values that are not strings
/// (`metadata`, a batch's `ops`).
pub fn parse(payload: &[u8], max_batch_ops: usize) -> Result<Command, Rejection> {
    match json_fields::read(payload) {
        Ok(Some(fields)) => parse_fields(fields, "", max_batch_ops, true),
        Ok(None) => Err(not_an_object("")),
        Err(e) => Err(Rejection::new(Code::InvalidJson, format!("payload is not valid JSON: {e}"))),
    }
}

fn not_an_object(at: &str) -> Rejection {
    Rejection::new(Code::InvalidJson, format!("{}command must be a JSON object", at))
}

fn parse_fields(mut obj: JsonFields, at: &str, max_batch_ops: usize, top: bool) -> Result<Command, Rejection> {
    let mut fields = Fields { obj: &mut obj, at };
    let id = fields.string(Name::Id)?;
    if !valid_id(&id) {
        return Err(fields.invalid(Name::Id, format!("must be 1 to {MAX_ID_BYTES} bytes of printable characters")));
    }
    let op_name = fields.str(Name::Op)?;
    let op = match op_name.as_ref() {
        "open_account" => {
            let account = fields.account(Name::Account)?;
            let asset = fields.asset(Name::Asset)?;
            let flags = fields.flags()?;
            let overdraft_limit = fields.optional_amount(Name::OverdraftLimit)?;
            Op::OpenAccount { account, asset, flags, overdraft_limit }
        }
        "close_account" => Op::CloseAccount { account: fields.account(Name::Account)? },
        "transfer" => Op::Transfer(fields.movement()?),
        "hold" => {
            let movement = fields.movement()?;
            let timeout_s = fields.optional_u64(Name::TimeoutS)?;
            Op::Hold { movement, timeout_s }
        }
        "post" => {
            let pending_id = fields.pending_id()?;
            let amount = fields.optional_amount(Name::Amount)?;
            Op::Post { pending_id, amount }
        }
        "void" => Op::Void { pending_id: fields.pending_id()? },
        "balance" => Op::Balance { account: fields.account(Name::Account)? },
        "batch" if !top => {
            return Err(fields.invalid(Name::Op, "a batch cannot contain another batch".to_string()));
        }
        "batch" => {
            let present = fields.obj.contains(Name::Ops);
            let Some(Field::Other(Value::Array(items))) = fields.obj.take(Name::Ops) else {
                return Err(fields.missing_or_invalid(Name::Ops, present, "must be an array of commands"));
            };
            if items.is_empty() || items.len() > max_batch_ops {
                return Err(fields.invalid(Name::Ops, format!("must hold 1 to {max_batch_ops} commands")));
            }
            let mut ops = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                let at = format!("ops[{i}].");
                let Value::Object(item) = item else { return Err(not_an_object(&at)) };
                let inner = parse_fields(JsonFields::from_map(item), &at, max_batch_ops, false)?;
                if matches!(inner.op, Op::Balance { .. }) {
                    return Err(Rejection::new(Code::InvalidField, format!("ops[{i}].op: balance is a read and cannot be batched")));
                }
                if inner.id == id || ops.iter().any(|o: &Command| o.id == inner.id) {
                    return Err(Rejection::new(Code::InvalidField, format!("ops[{i}].id: {:?} is used twice in this batch", inner.id)));
                }
                ops.push(inner);
            }
            Op::Batch { ops }
        }
        other => {
            return Err(Rejection::new(
                Code::UnknownOp,
                format!(
                    "{}op: {} is not one of open_account, close_account, transfer, hold, post, void, batch, balance",
                    at,
                    quoted(other)
                ),
            ))
        }
    };
    if let Some(extra) = obj.first_left() {
        return Err(Rejection::new(Code::InvalidField, format!("{}{extra}: unknown field for op {op_name}", at)));
    }
    Ok(Command { id, op })
}

pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_BYTES && id.chars().all(|c| !c.is_control())
}

/// A field reader that takes out what it reads, so leftovers are unknown fields.
struct Fields<'a, 'p> {
    obj: &'a mut JsonFields<'p>,
    at: &'a str,
}

impl<'p> Fields<'_, 'p> {
    fn invalid(&self, field: impl std::fmt::Display, why: String) -> Rejection {
        Rejection::new(Code::InvalidField, format!("{}{field}: {why}", self.at))
    }

    /// `present`: whether the field was there before it was taken out.
    fn missing_or_invalid(&self, field: Name, present: bool, why: &str) -> Rejection {
        if present {
            self.invalid(field, why.to_string())
        } else {
            Rejection::new(Code::MissingField, format!("{}{field}: missing ({why})", self.at))
        }
    }

    /// A string field as the payload holds it (borrowed when it has no escapes).
    fn str(&mut self, field: Name) -> Result<Cow<'p, str>, Rejection> {
        match self.obj.take(field) {
            Some(Field::Str(s)) => Ok(s),
            Some(Field::Other(_)) => Err(self.invalid(field, "must be a string".to_string())),
            None => Err(Rejection::new(Code::MissingField, format!("{}{field}: missing", self.at))),
        }
    }

    fn string(&mut self, field: Name) -> Result<String, Rejection> {
        self.str(field).map(Cow::into_owned)
    }

    fn account(&mut self, field: Name) -> Result<String, Rejection> {
        let address = self.string(field)?;
        if !valid_address(&address) {
            return Err(self.invalid(
                field,
                format!("{} is not an account address (name of [a-z0-9_.:-], 1 to 96 long, optionally @node)", quoted(&address)),
            ));
        }
        Ok(address)
    }

    fn asset(&mut self, field: Name) -> Result<String, Rejection> {
        let code = self.string(field)?;
        let ok = (3..=12).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        if !ok {
            return Err(self.invalid(field, format!("{} is not an asset code (3 to 12 of A-Z, 0-9)", quoted(&code))));
        }
        Ok(code)
    }

    fn amount(&mut self, field: Name) -> Result<String, Rejection> {
        match self.obj.take(field) {
            Some(Field::Str(s)) => Ok(s.into_owned()),
            Some(Field::Other(Value::Number(n))) => Err(Rejection::new(
                Code::InvalidAmount,
                format!("{}{field}: {} must be a decimal string like \"4.50\", not a JSON number", self.at, excerpt(&n.to_string())),
            )),
            Some(_) => Err(Rejection::new(Code::InvalidAmount, format!("{}{field}: must be a decimal string like \"4.50\"", self.at))),
            None => Err(Rejection::new(Code::MissingField, format!("{}{field}: missing", self.at))),
        }
    }

    fn optional_amount(&mut self, field: Name) -> Result<Option<String>, Rejection> {
        match self.obj.get(field) {
            None | Some(Field::Other(Value::Null)) => {
                self.obj.take(field);
                Ok(None)
            }
            Some(_) => self.amount(field).map(Some),
        }
    }

    fn optional_u64(&mut self, field: Name) -> Result<Option<u64>, Rejection> {
        match self.obj.take(field) {
            None | Some(Field::Other(Value::Null)) => Ok(None),
            Some(Field::Other(Value::Number(n))) if n.as_u64().is_some_and(|v| v > 0) => Ok(n.as_u64()),
            Some(_) => Err(self.invalid(field, "must be a whole number of seconds greater than zero".to_string())),
        }
    }

    fn pending_id(&mut self) -> Result<String, Rejection> {
        let id = self.string(Name::PendingId)?;
        if !valid_id(&id) {
            return Err(self.invalid(Name::PendingId, format!("must be 1 to {MAX_ID_BYTES} bytes of printable characters")));
        }
        Ok(id)
    }

    fn flags(&mut self) -> Result<Vec<Flag>, Rejection> {
        let Some(value) = self.obj.take(Name::Flags) else {
            return Ok(Vec::new());
        };
        let Field::Other(Value::Array(items)) = value else {
            return Err(self.invalid(Name::Flags, "must be an array of strings".to_string()));
        };
        let mut flags = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let flag = match item.as_str() {
                Some("no_overdraft") => Flag::NoOverdraft,
                Some("issuance") => Flag::Issuance,
                _ => {
                    return Err(self.invalid(
                        format!("flags[{i}]"),
                        format!("{} is not one of \"no_overdraft\", \"issuance\"", excerpt(&item.to_string())),
                    ))
                }
            };
            if !flags.contains(&flag) {
                flags.push(flag);
            }
        }
        Ok(flags)
    }

    fn movement(&mut self) -> Result<Movement, Rejection> {
        let debit = self.account(Name::Debit)?;
        let credit = self.account(Name::Credit)?;
        let amount = self.amount(Name::Amount)?;
        let asset = self.asset(Name::Asset)?;
        let metadata = match self.obj.take(Name::Metadata) {
            None | Some(Field::Other(Value::Null)) => None,
            Some(Field::Other(m @ Value::Object(_))) => {
                let size = serde_json::to_vec(&m).map(|v| v.len()).unwrap_or(usize::MAX);
                if size > MAX_METADATA_BYTES {
                    return Err(self.invalid(Name::Metadata, format!("is {size} bytes; the limit is {MAX_METADATA_BYTES}")));
                }
                if json_fields::holds_raw_value_key(&m) {
                    return Err(self.invalid(Name::Metadata, format!("the key {:?} is reserved", json_fields::RAW_VALUE_KEY)));
                }
                Some(m)
            }
            Some(_) => return Err(self.invalid(Name::Metadata, "must be a JSON object".to_string())),
        };
        Ok(Movement { debit, credit, amount, asset, metadata })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(json: &str) -> Code {
        parse(json.as_bytes(), 10).unwrap_err().code
    }

    #[test]
    fn parses_every_op() {
        let cmds = [
            r#"{"id":"1","op":"open_account","account":"wallet:alice","asset":"EUR","flags":["no_overdraft"]}"#,
            r#"{"id":"2","op":"transfer","debit":"wallet:alice","credit":"merchant:cafe@us","amount":"4.50","asset":"EUR","metadata":{"k":1}}"#,
            r#"{"id":"3","op":"hold","debit":"a","credit":"b","amount":"1","asset":"EUR","timeout_s":30}"#,
            r#"{"id":"4","op":"post","pending_id":"3","amount":"0.50"}"#,
            r#"{"id":"5","op":"void","pending_id":"3"}"#,
            r#"{"id":"6","op":"balance","account":"a"}"#,
            r#"{"id":"7","op":"batch","ops":[{"id":"7a","op":"transfer","debit":"a","credit":"b","amount":"1","asset":"EUR"}]}"#,
            r#"{"id":"8","op":"close_account","account":"a"}"#,
        ];
        for c in cmds {
            let parsed = parse(c.as_bytes(), 10).unwrap_or_else(|e| panic!("{c}: {e:?}"));
            let again: Command = serde_json::from_slice(&serde_json::to_vec(&parsed).unwrap()).unwrap();
            assert_eq!(parsed, again);
        }
    }

    #[test]
    fn names_the_field_at_fault() {
        assert_eq!(code_of("{"), Code::InvalidJson);
        assert_eq!(code_of("[1]"), Code::InvalidJson);
        assert_eq!(code_of(r#"{"op":"transfer"}"#), Code::MissingField);
        assert_eq!(code_of(r#"{"id":"1","op":"refund"}"#), Code::UnknownOp);
        assert_eq!(code_of(r#"{"id":"1","op":"expire","pending_id":"x"}"#), Code::UnknownOp);
        assert_eq!(code_of(r#"{"id":"1","op":"transfer","debit":"a","credit":"b","amount":4.5,"asset":"EUR"}"#), Code::InvalidAmount);
        assert_eq!(code_of(r#"{"id":"1","op":"transfer","debit":"A","credit":"b","amount":"1","asset":"EUR"}"#), Code::InvalidField);
        assert_eq!(code_of(r#"{"id":"1","op":"transfer","debit":"a","credit":"b","amount":"1","asset":"eur"}"#), Code::InvalidField);
        assert_eq!(code_of(r#"{"id":"1","op":"transfer","debit":"a","credit":"b","amount":"1","asset":"EUR","x":1}"#), Code::InvalidField);
        assert_eq!(code_of(r#"{"id":"1","op":"batch","ops":[{"id":"1","op":"batch","ops":[]}]}"#), Code::InvalidField);
        assert_eq!(code_of(r#"{"id":"1","op":"batch","ops":[]}"#), Code::InvalidField);
        let e = parse(br#"{"id":"1","op":"transfer","debit":"a","credit":"b","asset":"EUR"}"#, 10).unwrap_err();
        assert!(e.message.starts_with("amount"), "{}", e.message);
        let e = parse(br#"{"id":"1","op":"batch","ops":[{"id":"x","op":"void"}]}"#, 10).unwrap_err();
        assert!(e.message.starts_with("ops[0].pending_id"), "{}", e.message);
        // Present but not an array is not "missing".
        let e = parse(br#"{"id":"1","op":"batch","ops":"x"}"#, 10).unwrap_err();
        assert_eq!((e.code, e.message.as_str()), (Code::InvalidField, "ops: must be an array of commands"));
        let e = parse(br#"{"id":"1","op":"batch","ops":[5]}"#, 10).unwrap_err();
        assert_eq!((e.code, e.message.as_str()), (Code::InvalidJson, "ops[0].command must be a JSON object"));
        // The first field left over, in byte order, is the one named.
        let e = parse(br#"{"zz":1,"id":"1","op":"void","pending_id":"p","account":"a"}"#, 10).unwrap_err();
        assert_eq!(e.message, "account: unknown field for op void");
        // Escapes are decoded; a repeated field keeps its last value.
        let c = parse(br#"{"\u0069d":"1","id":"2","op":"void","pending_id":"p\"q"}"#, 10).unwrap();
        assert_eq!(c, Command { id: "2".to_string(), op: Op::Void { pending_id: "p\"q".to_string() } });
    }

    #[test]
    fn metadata_cannot_hold_serde_jsons_raw_value_key() {
        // With serde_json's `raw_value` on (a dependency turns it on), `Value` reads an object
        // whose first key is this one as the JSON in its string: such metadata, journaled,
        // would read back as something else or not at all (and stop replay).
        let transfer = |metadata: &str| {
            format!(r#"{{"id":"1","op":"transfer","debit":"a","credit":"b","amount":"1","asset":"EUR","metadata":{metadata}}}"#)
        };
        for metadata in [
            r#"{"$serde_json::private::RawValue":5}"#,
            r#"{"$serde_json::private::RawValue":"[1]"}"#,
            r#"{"a":1,"$serde_json::private::RawValue":"[1]"}"#,
            r#"{"a":{"$serde_json::private::RawValue":"[1]"}}"#,
            r#"{"a":[{"b":1,"$serde_json::private::RawValue":2}]}"#,
        ] {
            let e = parse(transfer(metadata).as_bytes(), 10).unwrap_err();
            assert_eq!(e.code, Code::InvalidField, "{metadata}: {e:?}");
            assert!(e.message.starts_with("metadata: the key"), "{}", e.message);
            let batch = format!(r#"{{"id":"b","op":"batch","ops":[{}]}}"#, transfer(metadata));
            let e = parse(batch.as_bytes(), 10).unwrap_err();
            assert!(e.message.starts_with("ops[0].metadata: the key"), "{}", e.message);
        }
        // A whole command wrapped in that key is not a command.
        let wrapped = r#"{"$serde_json::private::RawValue":"{\"id\":\"1\",\"op\":\"void\",\"pending_id\":\"p\"}"}"#;
        assert_eq!(code_of(wrapped), Code::MissingField);
        // Accepted metadata reads back as the value parsed (the journal keeps its JSON).
        let c = parse(transfer(r#"{"a":{"b":[1,"x",null,{"c":-2}]},"d":true}"#).as_bytes(), 10).unwrap();
        let Op::Transfer(movement) = &c.op else { panic!("a transfer") };
        let written = serde_json::to_vec(&movement.metadata).unwrap();
        assert_eq!(serde_json::from_slice::<Option<Value>>(&written).unwrap(), movement.metadata);
    }

    #[test]
    fn peeks_the_id_of_bad_commands() {
        assert_eq!(peek_id(br#"{"id":"abc","op":"nope"}"#), Some("abc".to_string()));
        assert_eq!(peek_id(br#"{"id":5}"#), None);
        assert_eq!(peek_id(b"not json"), None);
    }

    #[test]
    fn a_rejection_quotes_only_a_short_prefix_of_bad_input() {
        use crate::core::reply::{MAX_MESSAGE_BYTES, MAX_QUOTED_BYTES};
        let long = "9".repeat(60_000);
        let bad = [
            format!(r#"{{"id":"1","op":"{long}"}}"#),
            format!(r#"{{"id":"1","op":"transfer","debit":"{long}","credit":"b","amount":"1","asset":"EUR"}}"#),
            format!(r#"{{"id":"1","op":"transfer","debit":"a","credit":"b","amount":{long},"asset":"EUR"}}"#),
            format!(r#"{{"id":"1","op":"transfer","debit":"a","credit":"b","amount":"1","asset":"{long}"}}"#),
            format!(r#"{{"id":"1","op":"open_account","account":"a","asset":"EUR","flags":["{long}"]}}"#),
        ];
        for json in &bad {
            let e = parse(json.as_bytes(), 10).unwrap_err();
            assert!(
                e.message.len() <= MAX_MESSAGE_BYTES && e.message.len() < MAX_QUOTED_BYTES + 200,
                "{} bytes: {}",
                e.message.len(),
                e.message
            );
            let number = json.contains("\"amount\":9");
            assert!(number || e.message.contains("(60000 bytes)") || e.message.contains("(60002 bytes)"), "says how long: {}", e.message);
        }
        let e = Rejection::new(Code::InvalidField, format!("amount: {long}"));
        assert_eq!(e.message.len(), MAX_MESSAGE_BYTES);
        assert!(e.message.starts_with("amount: ") && e.message.ends_with('…'));
    }
}
