//! The canonical JSON of a command: the bytes its fingerprint hashes. Byte for byte what
//! `serde_json::to_writer` writes for the same value (field order, `skip_serializing_if`,
//! escaping, numbers), written directly: through serde's flattened, internally tagged enums
//! it cost about a quarter of the ledger thread's instructions per transfer. The tests
//! below hold the two equal over generated commands, odd strings and metadata included.
//!
//! Must not: change one byte of the output for any command. Fingerprints are stored and
//! compared across versions: a changed byte turns every resend of an older id into an
//! `id_conflict`.

use super::command::{Command, Flag, Journaled, Movement, NodeCommand, NodeOp, Op};
use std::io::Write;

/// A key after the first (`id`) of an object, as written: `,"name":`. Our own ASCII names,
/// never escaped.
macro_rules! key {
    ($name:literal) => {
        concat!(",\"", $name, "\":")
    };
}

/// A value whose canonical JSON a fingerprint hashes.
pub trait CanonicalJson {
    fn write_json(&self, out: &mut Vec<u8>);
}

impl CanonicalJson for Command {
    fn write_json(&self, out: &mut Vec<u8>) {
        write_command(None, self, out);
    }
}

impl CanonicalJson for NodeCommand {
    fn write_json(&self, out: &mut Vec<u8>) {
        let NodeCommand { id, op } = self;
        let mut obj = Object::open(out, &[], id);
        obj.string(key!("op"), op.name());
        match op {
            NodeOp::Expire { pending_id } => obj.string(key!("pending_id"), pending_id),
            NodeOp::Receive { source, movement } => {
                obj.string(key!("source"), source);
                obj.movement(movement);
            }
            NodeOp::Settle { .. } => {
                // Rare (one per cross-node transfer, at its source) and its `Status` and
                // `Code` are serde's own names: serde writes it, after what was written.
                obj.out.truncate(obj.start);
                serde_json::to_writer(&mut *obj.out, self).expect("node command serializes");
                return;
            }
        }
        obj.close();
    }
}

impl CanonicalJson for Journaled {
    /// Untagged: the command it holds.
    fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Journaled::Device(command) => command.write_json(out),
            Journaled::Node(command) => command.write_json(out),
        }
    }
}

/// `command` as an op of the batch `batch_id`, under the id `{batch_id}/{id}`: what
/// serializing a copy renamed so would write.
pub fn write_batch_op(batch_id: &str, command: &Command, out: &mut Vec<u8>) {
    write_command(Some(batch_id), command, out);
}

fn write_command(batch_id: Option<&str>, command: &Command, out: &mut Vec<u8>) {
    let prefix: &[&str] = match batch_id {
        Some(batch) => &[batch, "/"],
        None => &[],
    };
    let Command { id, op } = command;
    let mut obj = Object::open(out, prefix, id);
    obj.string(key!("op"), op.name());
    match op {
        Op::OpenAccount { account, asset, flags, overdraft_limit } => {
            obj.string(key!("account"), account);
            obj.string(key!("asset"), asset);
            obj.key(key!("flags"));
            obj.out.push(b'[');
            for (i, flag) in flags.iter().enumerate() {
                if i > 0 {
                    obj.out.push(b',');
                }
                string(obj.out, &[flag_name(*flag)]);
            }
            obj.out.push(b']');
            if let Some(limit) = overdraft_limit {
                obj.string(key!("overdraft_limit"), limit);
            }
        }
        Op::CloseAccount { account } | Op::Balance { account } => obj.string(key!("account"), account),
        Op::Transfer(movement) => obj.movement(movement),
        Op::Hold { movement, timeout_s } => {
            obj.movement(movement);
            if let Some(timeout) = timeout_s {
                obj.key(key!("timeout_s"));
                write!(obj.out, "{timeout}").expect("a Vec takes every write");
            }
        }
        Op::Post { pending_id, amount } => {
            obj.string(key!("pending_id"), pending_id);
            if let Some(amount) = amount {
                obj.string(key!("amount"), amount);
            }
        }
        Op::Void { pending_id } => obj.string(key!("pending_id"), pending_id),
        Op::Batch { ops } => {
            obj.key(key!("ops"));
            obj.out.push(b'[');
            for (i, op) in ops.iter().enumerate() {
                if i > 0 {
                    obj.out.push(b',');
                }
                write_command(None, op, obj.out);
            }
            obj.out.push(b']');
        }
    }
    obj.close();
}

/// Serde's `snake_case` name of a flag.
fn flag_name(flag: Flag) -> &'static str {
    match flag {
        Flag::NoOverdraft => "no_overdraft",
        Flag::Issuance => "issuance",
    }
}

/// An object being written, its `id` first (as serde writes a struct whose other fields are
/// flattened).
struct Object<'a> {
    out: &'a mut Vec<u8>,
    /// Where the object starts in `out`.
    start: usize,
}

impl<'a> Object<'a> {
    /// Opens the object with its id: the concatenation of `prefix` and `id`.
    fn open(out: &'a mut Vec<u8>, prefix: &[&str], id: &str) -> Object<'a> {
        let start = out.len();
        out.extend_from_slice(b"{\"id\":");
        let mut parts = [""; 3];
        parts[..prefix.len()].copy_from_slice(prefix);
        parts[prefix.len()] = id;
        string(out, &parts[..=prefix.len()]);
        Object { out, start }
    }

    /// `key`: as `key!` writes it, the comma before it and the colon after it included.
    fn key(&mut self, key: &str) {
        self.out.extend_from_slice(key.as_bytes());
    }

    fn string(&mut self, key: &str, value: &str) {
        self.key(key);
        string(self.out, &[value]);
    }

    fn movement(&mut self, movement: &Movement) {
        // Every field named: a field added to the type does not compile until written here.
        let Movement { debit, credit, amount, asset, metadata } = movement;
        self.string(key!("debit"), debit);
        self.string(key!("credit"), credit);
        self.string(key!("amount"), amount);
        self.string(key!("asset"), asset);
        if let Some(metadata) = metadata {
            self.key(key!("metadata"));
            serde_json::to_writer(&mut *self.out, metadata).expect("metadata serializes");
        }
    }

    fn close(self) {
        self.out.push(b'}');
    }
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// One JSON string of the concatenated `parts`, escaped as serde_json escapes: `"` and `\`
/// with a backslash, the control characters below 0x20 as `\b \t \n \f \r` or `\u00xx`;
/// everything else (DEL, any non-ASCII) as it is.
fn string(out: &mut Vec<u8>, parts: &[&str]) {
    out.push(b'"');
    for part in parts {
        let bytes = part.as_bytes();
        // Names and amounts almost never need escaping: one branch-free pass (which the
        // compiler vectorizes) and one copy.
        if !bytes.iter().fold(false, |any, &b| any | (b < 0x20) | (b == b'"') | (b == b'\\')) {
            out.extend_from_slice(bytes);
            continue;
        }
        let mut plain = 0;
        for (i, &byte) in bytes.iter().enumerate() {
            let escape = match byte {
                b'"' => b'"',
                b'\\' => b'\\',
                0x08 => b'b',
                0x09 => b't',
                0x0A => b'n',
                0x0C => b'f',
                0x0D => b'r',
                0x00..=0x1F => b'u',
                _ => continue,
            };
            out.extend_from_slice(&bytes[plain..i]);
            if escape == b'u' {
                out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX_DIGITS[usize::from(byte >> 4)], HEX_DIGITS[usize::from(byte & 0xF)]]);
            } else {
                out.extend_from_slice(&[b'\\', escape]);
            }
            plain = i + 1;
        }
        out.extend_from_slice(&bytes[plain..]);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::reply::{Code, Status};
    use proptest::prelude::*;
    use serde_json::{json, Value};

    fn written(value: &impl CanonicalJson) -> String {
        let mut out = Vec::new();
        value.write_json(&mut out);
        String::from_utf8(out).expect("UTF-8")
    }

    fn serde(value: &impl serde::Serialize) -> String {
        serde_json::to_string(value).expect("serializes")
    }

    /// Any string, weighted to what needs escaping: quotes, backslashes, every control
    /// character, DEL, non-ASCII.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9:._/-]{0,12}",
            proptest::collection::vec(
                prop_oneof![
                    (0u32..0x20).prop_map(|c| char::from_u32(c).unwrap()),
                    Just('"'),
                    Just('\\'),
                    Just('/'),
                    Just('\u{7f}'),
                    Just('é'),
                    Just('€'),
                    Just('😀'),
                    any::<char>(),
                    "[a-z]".prop_map(|s| s.chars().next().unwrap()),
                ],
                0..10
            )
            .prop_map(|chars| chars.into_iter().collect()),
        ]
    }

    fn metadata() -> impl Strategy<Value = Option<Value>> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e30f64..1e30).prop_map(Value::from),
            text().prop_map(Value::from),
        ];
        let value = leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(text(), inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        });
        proptest::option::of(value)
    }

    fn movement() -> impl Strategy<Value = Movement> {
        (text(), text(), text(), text(), metadata()).prop_map(|(debit, credit, amount, asset, metadata)| Movement {
            debit,
            credit,
            amount,
            asset,
            metadata,
        })
    }

    fn single_op() -> impl Strategy<Value = Op> {
        let flag = prop_oneof![Just(Flag::NoOverdraft), Just(Flag::Issuance)];
        prop_oneof![
            (text(), text(), proptest::collection::vec(flag, 0..3), proptest::option::of(text()))
                .prop_map(|(account, asset, flags, overdraft_limit)| Op::OpenAccount { account, asset, flags, overdraft_limit }),
            text().prop_map(|account| Op::CloseAccount { account }),
            movement().prop_map(Op::Transfer),
            (movement(), proptest::option::of(any::<u64>())).prop_map(|(movement, timeout_s)| Op::Hold { movement, timeout_s }),
            (text(), proptest::option::of(text())).prop_map(|(pending_id, amount)| Op::Post { pending_id, amount }),
            text().prop_map(|pending_id| Op::Void { pending_id }),
            text().prop_map(|account| Op::Balance { account }),
        ]
    }

    fn command() -> impl Strategy<Value = Command> {
        let single = || (text(), single_op()).prop_map(|(id, op)| Command { id, op });
        prop_oneof![
            4 => single(),
            1 => (text(), proptest::collection::vec(single(), 0..4)).prop_map(|(id, ops)| Command { id, op: Op::Batch { ops } }),
        ]
    }

    fn node_command() -> impl Strategy<Value = NodeCommand> {
        let status = prop_oneof![Just(Status::Committed), Just(Status::Rejected)];
        let code = prop_oneof![Just(Code::Ok), Just(Code::InsufficientFunds), Just(Code::IdConflict)];
        let op = prop_oneof![
            text().prop_map(|pending_id| NodeOp::Expire { pending_id }),
            (text(), movement()).prop_map(|(source, movement)| NodeOp::Receive { source, movement }),
            (text(), status, code, text()).prop_map(|(pending_id, status, code, message)| NodeOp::Settle {
                pending_id,
                status,
                code,
                message
            }),
        ];
        (text(), op).prop_map(|(id, op)| NodeCommand { id, op })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn a_command_is_written_as_serde_json_writes_it(command in command()) {
            prop_assert_eq!(written(&command), serde(&command));
            let journaled = Journaled::Device(command.clone());
            prop_assert_eq!(written(&journaled), serde(&journaled));
            if let Op::Batch { ops } = &command.op {
                for op in ops {
                    let renamed = Command { id: format!("{}/{}", command.id, op.id), op: op.op.clone() };
                    let mut out = Vec::new();
                    write_batch_op(&command.id, op, &mut out);
                    prop_assert_eq!(String::from_utf8(out).unwrap(), serde(&renamed));
                }
            }
        }

        #[test]
        fn a_node_command_is_written_as_serde_json_writes_it(command in node_command()) {
            prop_assert_eq!(written(&command), serde(&command));
            let journaled = Journaled::Node(command);
            prop_assert_eq!(written(&journaled), serde(&journaled));
        }
    }

    #[test]
    fn every_op_and_escape_as_written_before() {
        // Fixed bytes: what fingerprints taken by earlier releases hashed.
        let command: Command = serde_json::from_value(json!({
            "id": "q\"1\\\u{1}\u{8}\t\n\u{c}\r\u{1f}\u{7f}é/",
            "op": "batch",
            "ops": [
                {"id": "a", "op": "open_account", "account": "shop:1", "asset": "EUR", "flags": ["no_overdraft", "issuance"], "overdraft_limit": "5.00"},
                {"id": "b", "op": "hold", "debit": "d", "credit": "c", "amount": "1.50", "asset": "EUR", "metadata": {"z": 1, "a": [true, null, 2.5]}, "timeout_s": 30},
                {"id": "c", "op": "post", "pending_id": "p"}
            ]
        }))
        .unwrap();
        assert_eq!(
            written(&command),
            concat!(
                r#"{"id":"q\"1\\\u0001\b\t\n\f\r\u001f"#,
                "\u{7f}é/",
                r#"","op":"batch","ops":[{"id":"a","op":"open_account","account":"shop:1","asset":"EUR","flags":["no_overdraft","issuance"],"overdraft_limit":"5.00"},"#,
                r#"{"id":"b","op":"hold","debit":"d","credit":"c","amount":"1.50","asset":"EUR","metadata":{"a":[true,null,2.5],"z":1},"timeout_s":30},"#,
                r#"{"id":"c","op":"post","pending_id":"p"}]}"#
            )
        );
        assert_eq!(written(&command), serde(&command));
    }
}
