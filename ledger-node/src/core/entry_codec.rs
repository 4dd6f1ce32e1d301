//! The stored bytes of a journal entry's body: a compact, versioned binary encoding. The
//! hash chain covers exactly these bytes and replication carries them as they are; JSON is
//! only for the edges (replies, queries, `ledgerctl`).
//!
//! A body starts with its version byte. Bodies written before this encoding are JSON and
//! start with `{`: they are read as they are, so older journals, and the replicas made of
//! them, keep their hashes. Must not: change how a version reads once written (add a
//! version instead), or trust a length or a count read from the bytes, which may come from
//! another node.
//!
//! Version 1: integers are varints (signed ones zigzag); an option is a byte (0, 1) then
//! the value; enums are a byte (codes: their index in `Code::ALL`); a reply starts with a
//! byte of flags saying which of its optional fields follow, and whether its id and seq
//! are the entry's (then they are not repeated). A string is a varint
//! `n`: even, a literal of `n / 2` bytes follows; odd, it repeats string `n / 2` of the
//! table, which starts with `COMMON` and grows with each literal of the body (account names
//! and ids repeat between the command, its changes and its reply).

use super::change::{Change, EntryBody, Floor};
use super::command::{Command, Flag, Journaled, Movement, NodeCommand, NodeOp, Op};
use super::reply::{BalanceView, Code, OpResult, Reply, Resolution, Status};
use super::wire;

pub const VERSION_1: u8 = 1;
/// How a body written as JSON starts.
const JSON: u8 = b'{';
/// Strings of most bodies, in the table before the body's own. Part of version 1.
const COMMON: [&str; 4] = ["transfer committed", "hold placed; post or void it with this id as pending_id", "EUR", "USD"];
const REPLY_ID: u8 = 1;
const REPLY_ID_IS_COMMAND_ID: u8 = 1 << 1;
const REPLY_SEQ: u8 = 1 << 2;
const REPLY_SEQ_IS_ENTRY_SEQ: u8 = 1 << 3;
const REPLY_DUPLICATE: u8 = 1 << 4;
const REPLY_BALANCE: u8 = 1 << 5;
const REPLY_RESULTS: u8 = 1 << 6;
/// `posted`, `released`, `expires_at_ms` and `resolution` follow, each an option.
const REPLY_MORE: u8 = 1 << 7;
/// Literals remembered per body: a batch names many strings; looking them up stays cheap.
const MAX_TABLE: usize = 64;
/// What string references of one body may copy in all: `MIN_COPY_BUDGET` (more than the
/// largest command the config allows, 1 MiB, with its changes and reply: a batch's names
/// are mostly references), plus this many times the body's length.
const COPY_BUDGET_PER_BYTE: usize = 16;
const MIN_COPY_BUDGET: usize = 16 * 1024 * 1024;
/// A batch's ops are commands; a batch inside a batch is as deep as the parser lets them go.
const MAX_DEPTH: u8 = 2;

pub fn encode(body: &EntryBody) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    out.push(VERSION_1);
    let mut w = Writer { w: wire::Writer(&mut out), table: Names::common() };
    w.body(body);
    out
}

/// Reads a stored body, binary or (from before the binary encoding) JSON.
pub fn decode(bytes: &[u8]) -> Result<EntryBody, String> {
    match bytes.split_first() {
        Some((&VERSION_1, rest)) => {
            let mut r = Reader::new(rest);
            let body = r.body()?;
            r.r.end()?;
            Ok(body)
        }
        Some((&JSON, _)) => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
        Some((v, _)) => Err(format!("unknown body version {v}")),
        None => Err("empty body".to_string()),
    }
}

/// A reply alone (an id record that outlived its entry), in the encoding of a body's reply;
/// `id` and `seq` are those it was recorded under, not repeated when the reply carries them.
pub fn encode_reply(reply: &Reply, id: &str, seq: u64, out: &mut Vec<u8>) {
    let mut w = Writer { w: wire::Writer(out), table: Names::common() };
    w.reply(reply, id, seq);
}

/// Reads back what `encode_reply` wrote, all of `bytes`.
pub fn decode_reply(bytes: &[u8], id: &str, seq: u64) -> Result<Reply, String> {
    let mut r = Reader::new(bytes);
    let reply = r.reply(id, seq)?;
    r.r.end()?;
    Ok(reply)
}

/// The string table of one body: `COMMON`, then the body's literals in order, at most
/// `MAX_TABLE`. On the stack: a body is encoded or decoded per entry, on the hot path.
struct Names<'a> {
    names: [&'a str; MAX_TABLE],
    len: usize,
}

impl<'a> Names<'a> {
    fn common() -> Names<'a> {
        let mut names = [""; MAX_TABLE];
        names[..COMMON.len()].copy_from_slice(&COMMON);
        Names { names, len: COMMON.len() }
    }

    fn position(&self, s: &str) -> Option<usize> {
        self.names[..self.len].iter().position(|known| *known == s)
    }

    fn get(&self, i: usize) -> Option<&'a str> {
        self.names[..self.len].get(i).copied()
    }

    /// Adds `s` unless the table is full; both ends drop the same literals.
    fn push(&mut self, s: &'a str) {
        if self.len < MAX_TABLE {
            self.names[self.len] = s;
            self.len += 1;
        }
    }
}

struct Writer<'a, 'b> {
    w: wire::Writer<'b>,
    table: Names<'a>,
}

impl<'a> Writer<'a, '_> {
    fn str(&mut self, s: &'a str) {
        if let Some(i) = self.table.position(s) {
            self.w.varint(((i as u64) << 1) | 1);
            return;
        }
        self.w.varint((s.len() as u64) << 1);
        self.w.bytes(s.as_bytes());
        self.table.push(s);
    }

    fn opt_str(&mut self, s: Option<&'a String>) {
        match s {
            None => self.w.u8(0),
            Some(s) => {
                self.w.u8(1);
                self.str(s);
            }
        }
    }

    fn opt_u64(&mut self, v: Option<u64>) {
        self.w.option(v.as_ref(), |w, v| w.varint(*v));
    }

    fn body(&mut self, body: &'a EntryBody) {
        self.w.varint(body.seq);
        self.w.varint(body.ts_ms);
        self.opt_str(body.device.as_ref());
        match &body.command {
            Journaled::Device(command) => {
                self.w.u8(0);
                self.command(command);
            }
            Journaled::Node(command) => {
                self.w.u8(1);
                self.node_command(command);
            }
        }
        self.w.varint(body.changes.len() as u64);
        for change in &body.changes {
            self.change(change);
        }
        match &body.reply {
            None => self.w.u8(0),
            Some(reply) => {
                self.w.u8(1);
                self.reply(reply, body.command.id(), body.seq);
            }
        }
    }

    fn command(&mut self, command: &'a Command) {
        self.str(&command.id);
        match &command.op {
            Op::OpenAccount { account, asset, flags, overdraft_limit } => {
                self.w.u8(0);
                self.str(account);
                self.str(asset);
                self.w.varint(flags.len() as u64);
                for flag in flags {
                    self.w.u8(match flag {
                        Flag::NoOverdraft => 0,
                        Flag::Issuance => 1,
                    });
                }
                self.opt_str(overdraft_limit.as_ref());
            }
            Op::CloseAccount { account } => {
                self.w.u8(1);
                self.str(account);
            }
            Op::Transfer(movement) => {
                self.w.u8(2);
                self.movement(movement);
            }
            Op::Hold { movement, timeout_s } => {
                self.w.u8(3);
                self.movement(movement);
                self.opt_u64(*timeout_s);
            }
            Op::Post { pending_id, amount } => {
                self.w.u8(4);
                self.str(pending_id);
                self.opt_str(amount.as_ref());
            }
            Op::Void { pending_id } => {
                self.w.u8(5);
                self.str(pending_id);
            }
            Op::Batch { ops } => {
                self.w.u8(6);
                self.w.varint(ops.len() as u64);
                for op in ops {
                    self.command(op);
                }
            }
            Op::Balance { account } => {
                self.w.u8(7);
                self.str(account);
            }
        }
    }

    fn movement(&mut self, m: &'a Movement) {
        self.str(&m.debit);
        self.str(&m.credit);
        self.str(&m.amount);
        self.str(&m.asset);
        match &m.metadata {
            None => self.w.u8(0),
            Some(metadata) => {
                self.w.u8(1);
                let json = serde_json::to_vec(metadata).expect("metadata serializes");
                self.w.varint(json.len() as u64);
                self.w.bytes(&json);
            }
        }
    }

    fn node_command(&mut self, command: &'a NodeCommand) {
        self.str(&command.id);
        match &command.op {
            NodeOp::Expire { pending_id } => {
                self.w.u8(0);
                self.str(pending_id);
            }
            NodeOp::Receive { source, movement } => {
                self.w.u8(1);
                self.str(source);
                self.movement(movement);
            }
            NodeOp::Settle { pending_id, status, code, message } => {
                self.w.u8(2);
                self.str(pending_id);
                self.w.u8(status_byte(*status));
                self.w.u8(code_byte(*code));
                self.str(message);
            }
        }
    }

    fn change(&mut self, change: &'a Change) {
        match change {
            Change::AccountOpened { account, asset, scale, floor } => {
                self.w.u8(0);
                self.str(account);
                self.str(asset);
                self.w.varint(u64::from(*scale));
                match floor {
                    Floor::Issuance => self.w.u8(0),
                    Floor::Overdraft(limit) => {
                        self.w.u8(1);
                        self.w.signed(*limit);
                    }
                }
            }
            Change::AccountClosed { account } => {
                self.w.u8(1);
                self.str(account);
            }
            Change::Transferred { debit, credit, asset, amount } => {
                self.w.u8(2);
                self.str(debit);
                self.str(credit);
                self.str(asset);
                self.w.signed(*amount);
            }
            Change::HoldPlaced { pending_id, debit, credit, asset, amount, expires_at_ms, device, remote } => {
                self.w.u8(3);
                self.str(pending_id);
                self.str(debit);
                self.str(credit);
                self.str(asset);
                self.w.signed(*amount);
                self.opt_u64(*expires_at_ms);
                self.opt_str(device.as_ref());
                self.opt_str(remote.as_ref());
            }
            Change::HoldResolved { pending_id, debit, credit, resolution, posted } => {
                self.w.u8(4);
                self.str(pending_id);
                self.str(debit);
                self.str(credit);
                self.w.u8(resolution_byte(*resolution));
                self.w.signed(*posted);
            }
        }
    }

    /// The reply, most of whose fields are usually absent or repeat the entry's: a byte of
    /// `REPLY_*` flags says which follow.
    fn reply(&mut self, reply: &'a Reply, command_id: &str, seq: u64) {
        let more = reply.posted.is_some() || reply.released.is_some() || reply.expires_at_ms.is_some() || reply.resolution.is_some();
        let mut flags = 0;
        for (set, flag) in [
            (reply.id.is_some(), REPLY_ID),
            (reply.id.as_deref() == Some(command_id), REPLY_ID_IS_COMMAND_ID),
            (reply.seq.is_some(), REPLY_SEQ),
            (reply.seq == Some(seq), REPLY_SEQ_IS_ENTRY_SEQ),
            (reply.duplicate, REPLY_DUPLICATE),
            (reply.balance.is_some(), REPLY_BALANCE),
            (!reply.results.is_empty(), REPLY_RESULTS),
            (more, REPLY_MORE),
        ] {
            if set {
                flags |= flag;
            }
        }
        self.w.u8(flags);
        self.w.u8(status_byte(reply.status));
        self.w.u8(code_byte(reply.code));
        self.str(&reply.message);
        if let Some(id) = reply.id.as_ref().filter(|_| flags & REPLY_ID_IS_COMMAND_ID == 0) {
            self.str(id);
        }
        if let Some(seq) = reply.seq.filter(|_| flags & REPLY_SEQ_IS_ENTRY_SEQ == 0) {
            self.w.varint(seq);
        }
        if let Some(b) = &reply.balance {
            for s in [&b.account, &b.asset, &b.posted, &b.pending_debits, &b.pending_credits, &b.available] {
                self.str(s);
            }
        }
        if !reply.results.is_empty() {
            self.w.varint(reply.results.len() as u64);
            for result in &reply.results {
                self.str(&result.id);
                self.w.u8(status_byte(result.status));
                self.w.u8(code_byte(result.code));
            }
        }
        if more {
            self.opt_str(reply.posted.as_ref());
            self.opt_str(reply.released.as_ref());
            self.opt_u64(reply.expires_at_ms);
            self.w.option(reply.resolution.as_ref(), |w, r| w.u8(resolution_byte(*r)));
        }
    }
}

struct Reader<'a> {
    r: wire::Reader<'a>,
    table: Names<'a>,
    /// Bytes the references of this body may still copy: a one-byte reference to a long
    /// string must not let a small body decode to gigabytes.
    copies_left: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Reader<'a> {
        let copies_left = bytes.len().saturating_mul(COPY_BUDGET_PER_BYTE).saturating_add(MIN_COPY_BUDGET);
        Reader { r: wire::Reader::new(bytes), table: Names::common(), copies_left }
    }

    fn str(&mut self) -> Result<String, String> {
        let n = self.r.varint()?;
        if n & 1 == 1 {
            let i = usize::try_from(n >> 1).map_err(|_| "string reference out of range".to_string())?;
            let s = self.table.get(i).ok_or_else(|| format!("string reference {i} out of range"))?;
            self.copies_left = self.copies_left.checked_sub(s.len()).ok_or("string references copy more than the body could hold")?;
            return Ok(s.to_string());
        }
        let len = usize::try_from(n >> 1).map_err(|_| "string too long".to_string())?;
        let s = self.r.utf8(len)?;
        self.table.push(s);
        Ok(s.to_string())
    }

    fn opt_str(&mut self) -> Result<Option<String>, String> {
        match self.r.u8()? {
            0 => Ok(None),
            1 => self.str().map(Some),
            b => Err(format!("option tag {b}")),
        }
    }

    fn opt_u64(&mut self) -> Result<Option<u64>, String> {
        self.r.option(wire::Reader::varint)
    }

    /// A count of things that each take at least one byte: never more than the bytes left.
    fn count(&mut self, what: &str) -> Result<usize, String> {
        let n = self.r.varint()?;
        match usize::try_from(n) {
            Ok(n) if n <= self.r.left() => Ok(n),
            _ => Err(format!("{what}: {n} announced, {} bytes left", self.r.left())),
        }
    }

    fn body(&mut self) -> Result<EntryBody, String> {
        let seq = self.r.varint()?;
        let ts_ms = self.r.varint()?;
        let device = self.opt_str()?;
        let command = match self.r.u8()? {
            0 => Journaled::Device(self.command(0)?),
            1 => Journaled::Node(self.node_command()?),
            tag => return Err(format!("command kind {tag}")),
        };
        let mut changes = Vec::new();
        for _ in 0..self.count("changes")? {
            changes.push(self.change()?);
        }
        let reply = match self.r.u8()? {
            0 => None,
            1 => Some(self.reply(command.id(), seq)?),
            tag => return Err(format!("reply tag {tag}")),
        };
        Ok(EntryBody { seq, ts_ms, device, command, changes, reply })
    }

    fn command(&mut self, depth: u8) -> Result<Command, String> {
        if depth >= MAX_DEPTH {
            return Err("batches nested too deep".to_string());
        }
        let id = self.str()?;
        let op = match self.r.u8()? {
            0 => {
                let (account, asset) = (self.str()?, self.str()?);
                let mut flags = Vec::new();
                for _ in 0..self.count("flags")? {
                    flags.push(match self.r.u8()? {
                        0 => Flag::NoOverdraft,
                        1 => Flag::Issuance,
                        b => return Err(format!("flag {b}")),
                    });
                }
                Op::OpenAccount { account, asset, flags, overdraft_limit: self.opt_str()? }
            }
            1 => Op::CloseAccount { account: self.str()? },
            2 => Op::Transfer(self.movement()?),
            3 => Op::Hold { movement: self.movement()?, timeout_s: self.opt_u64()? },
            4 => Op::Post { pending_id: self.str()?, amount: self.opt_str()? },
            5 => Op::Void { pending_id: self.str()? },
            6 => {
                let mut ops = Vec::new();
                for _ in 0..self.count("batch ops")? {
                    ops.push(self.command(depth + 1)?);
                }
                Op::Batch { ops }
            }
            7 => Op::Balance { account: self.str()? },
            tag => return Err(format!("op {tag}")),
        };
        Ok(Command { id, op })
    }

    fn movement(&mut self) -> Result<Movement, String> {
        let (debit, credit, amount, asset) = (self.str()?, self.str()?, self.str()?, self.str()?);
        let metadata = match self.r.u8()? {
            0 => None,
            1 => {
                let len = self.count("metadata")?;
                // As written: an entry journaled before such metadata was refused still reads.
                Some(super::json_fields::read_plain(self.r.take(len)?).map_err(|e| format!("metadata: {e}"))?)
            }
            tag => return Err(format!("metadata tag {tag}")),
        };
        Ok(Movement { debit, credit, amount, asset, metadata })
    }

    fn node_command(&mut self) -> Result<NodeCommand, String> {
        let id = self.str()?;
        let op = match self.r.u8()? {
            0 => NodeOp::Expire { pending_id: self.str()? },
            1 => NodeOp::Receive { source: self.str()?, movement: self.movement()? },
            2 => NodeOp::Settle { pending_id: self.str()?, status: self.status()?, code: self.code()?, message: self.str()? },
            tag => return Err(format!("node op {tag}")),
        };
        Ok(NodeCommand { id, op })
    }

    fn change(&mut self) -> Result<Change, String> {
        Ok(match self.r.u8()? {
            0 => {
                let (account, asset, scale) = (self.str()?, self.str()?, self.r.varint_u32()?);
                let floor = match self.r.u8()? {
                    0 => Floor::Issuance,
                    1 => Floor::Overdraft(self.r.signed()?),
                    tag => return Err(format!("floor {tag}")),
                };
                Change::AccountOpened { account, asset, scale, floor }
            }
            1 => Change::AccountClosed { account: self.str()? },
            2 => Change::Transferred { debit: self.str()?, credit: self.str()?, asset: self.str()?, amount: self.r.signed()? },
            3 => Change::HoldPlaced {
                pending_id: self.str()?,
                debit: self.str()?,
                credit: self.str()?,
                asset: self.str()?,
                amount: self.r.signed()?,
                expires_at_ms: self.opt_u64()?,
                device: self.opt_str()?,
                remote: self.opt_str()?,
            },
            4 => Change::HoldResolved {
                pending_id: self.str()?,
                debit: self.str()?,
                credit: self.str()?,
                resolution: self.resolution()?,
                posted: self.r.signed()?,
            },
            tag => return Err(format!("change {tag}")),
        })
    }

    fn reply(&mut self, command_id: &str, entry_seq: u64) -> Result<Reply, String> {
        let flags = self.r.u8()?;
        let (status, code, message) = (self.status()?, self.code()?, self.str()?);
        let id = match (flags & REPLY_ID != 0, flags & REPLY_ID_IS_COMMAND_ID != 0) {
            (false, false) => None,
            (true, true) => Some(command_id.to_string()),
            (true, false) => Some(self.str()?),
            (false, true) => return Err("reply flags: the command's id without an id".to_string()),
        };
        let seq = match (flags & REPLY_SEQ != 0, flags & REPLY_SEQ_IS_ENTRY_SEQ != 0) {
            (false, false) => None,
            (true, true) => Some(entry_seq),
            (true, false) => Some(self.r.varint()?),
            (false, true) => return Err("reply flags: the entry's seq without a seq".to_string()),
        };
        let balance = if flags & REPLY_BALANCE == 0 {
            None
        } else {
            Some(BalanceView {
                account: self.str()?,
                asset: self.str()?,
                posted: self.str()?,
                pending_debits: self.str()?,
                pending_credits: self.str()?,
                available: self.str()?,
            })
        };
        let mut results = Vec::new();
        if flags & REPLY_RESULTS != 0 {
            for _ in 0..self.count("results")? {
                results.push(OpResult { id: self.str()?, status: self.status()?, code: self.code()? });
            }
            if results.is_empty() {
                return Err("reply flags: results, but none".to_string());
            }
        }
        let duplicate = flags & REPLY_DUPLICATE != 0;
        let mut reply = Reply {
            id,
            status,
            code,
            message: message.into(),
            seq,
            duplicate,
            balance,
            posted: None,
            released: None,
            expires_at_ms: None,
            results,
            resolution: None,
        };
        if flags & REPLY_MORE != 0 {
            reply.posted = self.opt_str()?;
            reply.released = self.opt_str()?;
            reply.expires_at_ms = self.opt_u64()?;
            reply.resolution = self.r.option(|r| resolution_of(r.u8()?))?;
            if reply.posted.is_none() && reply.released.is_none() && reply.expires_at_ms.is_none() && reply.resolution.is_none() {
                return Err("reply flags: more fields, but none".to_string());
            }
        }
        Ok(reply)
    }

    fn status(&mut self) -> Result<Status, String> {
        match self.r.u8()? {
            0 => Ok(Status::Committed),
            1 => Ok(Status::Pending),
            2 => Ok(Status::Rejected),
            b => Err(format!("status {b}")),
        }
    }

    fn code(&mut self) -> Result<Code, String> {
        let b = self.r.u8()?;
        Code::ALL.get(usize::from(b)).copied().ok_or_else(|| format!("code {b}"))
    }

    fn resolution(&mut self) -> Result<Resolution, String> {
        resolution_of(self.r.u8()?)
    }
}

fn status_byte(status: Status) -> u8 {
    match status {
        Status::Committed => 0,
        Status::Pending => 1,
        Status::Rejected => 2,
    }
}

/// A code's index in `Code::ALL`, which only ever grows at its end.
fn code_byte(code: Code) -> u8 {
    let i = Code::ALL.iter().position(|c| *c == code).expect("every code is in Code::ALL");
    u8::try_from(i).expect("fewer than 256 codes")
}

fn resolution_byte(resolution: Resolution) -> u8 {
    match resolution {
        Resolution::Posted => 0,
        Resolution::Voided => 1,
        Resolution::Expired => 2,
    }
}

fn resolution_of(b: u8) -> Result<Resolution, String> {
    match b {
        0 => Ok(Resolution::Posted),
        1 => Ok(Resolution::Voided),
        2 => Ok(Resolution::Expired),
        b => Err(format!("resolution {b}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn movement(debit: &str, credit: &str, amount: &str) -> Movement {
        Movement { debit: debit.into(), credit: credit.into(), amount: amount.into(), asset: "EUR".into(), metadata: None }
    }

    fn body(seq: u64, command: Journaled, changes: Vec<Change>, reply: Option<Reply>) -> EntryBody {
        EntryBody { seq, ts_ms: 1_763_836_800_000 + seq % 1000, device: Some("pos-1".into()), command, changes, reply }
    }

    /// One body of every kind of command, change and reply field.
    fn bodies() -> Vec<EntryBody> {
        let device = |id: &str, op| Journaled::Device(Command { id: id.into(), op });
        let node = |id: &str, op| Journaled::Node(NodeCommand { id: id.into(), op });
        let transferred = Change::Transferred { debit: "wallet:alice".into(), credit: "till:1".into(), asset: "EUR".into(), amount: 250 };
        let mut with_metadata = movement("wallet:alice", "till:1", "2.50");
        with_metadata.metadata = Some(serde_json::json!({"order": "A-17", "lines": [1, 2.5, null, {"x": true}]}));
        let mut full_reply = Reply::ok("h-1", Status::Pending, 7, "hold placed; post or void it with this id as pending_id");
        full_reply.duplicate = true;
        full_reply.posted = Some("1.00".into());
        full_reply.released = Some("0.50".into());
        full_reply.expires_at_ms = Some(u64::MAX);
        full_reply.resolution = Some(Resolution::Expired);
        full_reply.balance = Some(BalanceView {
            account: "wallet:alice".into(),
            asset: "EUR".into(),
            posted: "-1.00".into(),
            pending_debits: "0.50".into(),
            pending_credits: "0".into(),
            available: "-1.50".into(),
        });
        let mut batch_reply = Reply::ok("b-1", Status::Committed, 9, "batch of 2 committed");
        batch_reply.results = vec![
            OpResult { id: "b-1a".into(), status: Status::Committed, code: Code::Ok },
            OpResult { id: "b-1b".into(), status: Status::Rejected, code: Code::DiskFull },
        ];
        vec![
            body(
                1,
                device(
                    "o-1",
                    Op::OpenAccount {
                        account: "wallet:alice".into(),
                        asset: "EUR".into(),
                        flags: vec![Flag::NoOverdraft, Flag::Issuance],
                        overdraft_limit: Some("5".into()),
                    },
                ),
                vec![
                    Change::AccountOpened { account: "wallet:alice".into(), asset: "EUR".into(), scale: 2, floor: Floor::Overdraft(-500) },
                    Change::AccountOpened { account: "mint".into(), asset: "JPY".into(), scale: u32::MAX, floor: Floor::Issuance },
                ],
                Some(Reply::ok("o-1", Status::Committed, 1, "account wallet:alice opened")),
            ),
            body(
                2,
                device("c-1", Op::CloseAccount { account: "till:1".into() }),
                vec![Change::AccountClosed { account: "till:1".into() }],
                None,
            ),
            body(
                u64::MAX,
                device("t-1", Op::Transfer(with_metadata)),
                vec![transferred.clone()],
                Some(Reply::ok("t-1", Status::Committed, u64::MAX, "transfer committed")),
            ),
            body(
                4,
                device("h-1", Op::Hold { movement: movement("wallet:alice", "till:1@eu/berlin-1", "1.50"), timeout_s: Some(30) }),
                vec![Change::HoldPlaced {
                    pending_id: "h-1".into(),
                    debit: "wallet:alice".into(),
                    credit: "till:1@eu/berlin-1".into(),
                    asset: "EUR".into(),
                    amount: i64::MAX,
                    expires_at_ms: Some(0),
                    device: Some("pos-1".into()),
                    remote: Some("eu/berlin-1".into()),
                }],
                Some(full_reply),
            ),
            body(
                5,
                device("p-1", Op::Post { pending_id: "h-1".into(), amount: Some("1.00".into()) }),
                vec![Change::HoldResolved {
                    pending_id: "h-1".into(),
                    debit: "a".into(),
                    credit: "b".into(),
                    resolution: Resolution::Posted,
                    posted: i64::MIN,
                }],
                None,
            ),
            body(
                6,
                device("v-1", Op::Void { pending_id: "h-2".into() }),
                vec![],
                Some(Reply::ok("v-other", Status::Committed, 3, "pending h-2 voided")),
            ),
            body(7, device("r-1", Op::Balance { account: "wallet:alice".into() }), vec![], None),
            body(
                9,
                device(
                    "b-1",
                    Op::Batch {
                        ops: vec![
                            Command { id: "b-1a".into(), op: Op::Transfer(movement("a", "b", "1")) },
                            Command { id: "b-1b".into(), op: Op::Transfer(movement("b", "a", "1")) },
                        ],
                    },
                ),
                vec![transferred.clone(), transferred],
                Some(batch_reply),
            ),
            EntryBody { device: None, ..body(10, node("h-2", NodeOp::Expire { pending_id: "h-2".into() }), vec![], None) },
            body(
                11,
                node("x-1", NodeOp::Receive { source: "eu/berlin-1".into(), movement: movement("w@eu/berlin-1", "m@us/nyc-1", "3") }),
                vec![],
                None,
            ),
            body(
                12,
                node(
                    "x-1",
                    NodeOp::Settle {
                        pending_id: "x-1".into(),
                        status: Status::Rejected,
                        code: Code::InsufficientFunds,
                        message: "ünïcode".into(),
                    },
                ),
                vec![],
                Some(Reply::rejected(None, crate::core::reply::Rejection { code: Code::Forbidden, message: String::new() })),
            ),
        ]
    }

    #[test]
    fn every_kind_of_body_reads_back_as_written() {
        for body in bodies() {
            let bytes = encode(&body);
            assert_eq!(bytes[0], VERSION_1);
            assert_eq!(decode(&bytes), Ok(body.clone()), "seq {}", body.seq);
        }
    }

    #[test]
    fn metadata_reads_back_as_written_even_with_serde_jsons_raw_value_key() {
        // Refused at intake now (`command`), but journals written before may hold it.
        let mut metadata = serde_json::Map::new();
        metadata.insert("a".into(), serde_json::json!(1));
        metadata.insert(super::super::json_fields::RAW_VALUE_KEY.into(), serde_json::json!("[1]"));
        let mut m = movement("wallet:alice", "till:1", "2.50");
        m.metadata = Some(serde_json::Value::Object(metadata));
        let body = body(3, Journaled::Device(Command { id: "t-1".into(), op: Op::Transfer(m) }), Vec::new(), None);
        assert_eq!(decode(&encode(&body)), Ok(body));
    }

    #[test]
    fn a_body_with_more_names_than_the_table_holds_reads_back() {
        // 2 × 150 distinct account names: the table fills at `MAX_TABLE` and both ends stop
        // adding at the same literal; names seen again after that are written out in full.
        let ops: Vec<Command> = (0..150)
            .map(|i| Command { id: format!("op-{i}"), op: Op::Transfer(movement(&format!("wallet:w{i}"), &format!("shop:s{i}"), "1")) })
            .collect();
        let changes: Vec<Change> = (0..150)
            .map(|i| Change::Transferred { debit: format!("wallet:w{i}"), credit: format!("shop:s{i}"), asset: "EUR".into(), amount: 100 })
            .collect();
        let body = body(13, Journaled::Device(Command { id: "b-big".into(), op: Op::Batch { ops } }), changes, None);
        let bytes = encode(&body);
        assert_eq!(decode(&bytes), Ok(body.clone()));
        // The bytes of the encoding as first written: stored journals must read the same.
        assert_eq!(bytes.len(), 8007);
        assert_eq!(blake3::hash(&bytes).to_hex().as_str(), "09919daaf78960e3e68f42b6d919652f7494f8ab1b991dc50944a684b31894ff");
        // An early name is a reference in the changes, a late one is written again.
        let count = |name: &[u8]| bytes.windows(name.len()).filter(|w| *w == name).count();
        assert_eq!(count(b"wallet:w0"), 1);
        assert_eq!(count(b"wallet:w149"), 2);
    }

    #[test]
    fn replies_alone_read_back_as_written() {
        for body in bodies() {
            let Some(reply) = &body.reply else { continue };
            let mut bytes = Vec::new();
            encode_reply(reply, body.command.id(), body.seq, &mut bytes);
            assert_eq!(decode_reply(&bytes, body.command.id(), body.seq).as_ref(), Ok(reply));
            assert!(decode_reply(&bytes[..bytes.len() - 1], body.command.id(), body.seq).is_err());
        }
        let mut bytes = Vec::new();
        encode_reply(&Reply::ok("t-9", Status::Committed, 77, "transfer committed"), "t-9", 77, &mut bytes);
        assert_eq!(bytes.len(), 4, "flags, status, code, message: the rest is the record's own");
    }

    #[test]
    fn a_transfer_is_a_fraction_of_its_json() {
        let body = &bodies()[2];
        let mut plain = body.clone();
        if let Journaled::Device(Command { op: Op::Transfer(m), .. }) = &mut plain.command {
            m.metadata = None;
        }
        plain.seq = 123_456;
        let (binary, json) = (encode(&plain).len(), serde_json::to_vec(&plain).unwrap().len());
        assert!(binary * 3 < json, "{binary} bytes binary, {json} JSON");
    }

    #[test]
    fn bodies_written_as_json_still_read() {
        for body in bodies() {
            assert_eq!(decode(&serde_json::to_vec(&body).unwrap()), Ok(body));
        }
    }

    #[test]
    fn damaged_bodies_are_refused_without_panicking() {
        for body in bodies() {
            let bytes = encode(&body);
            for cut in 0..bytes.len() {
                assert!(decode(&bytes[..cut]).is_err(), "seq {} cut at {cut}", body.seq);
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(decode(&longer).unwrap_err().contains("left over"));
            // Every single byte changed: refused or read as something else, never a panic.
            for at in 0..bytes.len() {
                for delta in [1u8, 0x40, 0x80] {
                    let mut damaged = bytes.clone();
                    damaged[at] = damaged[at].wrapping_add(delta);
                    let _ = decode(&damaged);
                }
            }
        }
        assert!(decode(&[9]).unwrap_err().contains("version"));
        assert!(decode(&[]).is_err());
    }

    #[test]
    fn counts_and_references_cannot_reach_past_the_bytes() {
        // A body announcing 2^60 changes, and one referring to string 1000.
        let mut huge = vec![VERSION_1, 1, 1, 0, 0, 2, 0x61];
        huge.push(6);
        let mut w = wire::Writer(&mut huge);
        w.varint(1 << 60);
        assert!(decode(&huge).unwrap_err().contains("announced"));
        let mut bad_ref = vec![VERSION_1, 1, 1, 0, 0];
        wire::Writer(&mut bad_ref).varint((1000 << 1) | 1);
        assert!(decode(&bad_ref).unwrap_err().contains("out of range"));
    }

    #[test]
    fn references_cannot_blow_a_small_body_up() {
        // A 100 KiB device name, then 200,000 closed accounts each naming it by reference:
        // a 500 KiB body that would decode to 20 GB.
        let mut bytes = vec![VERSION_1, 1, 1, 1];
        let mut w = wire::Writer(&mut bytes);
        let name = "x".repeat(100 * 1024);
        w.varint((name.len() as u64) << 1);
        w.bytes(name.as_bytes());
        w.u8(1); // node command
        w.varint(2); // id "e"
        w.u8(b'e');
        w.u8(0); // expire
        w.varint((COMMON.len() as u64) << 1 | 1); // pending_id: the device name again
        w.varint(200_000);
        for _ in 0..200_000 {
            w.u8(1); // account closed
            w.varint((COMMON.len() as u64) << 1 | 1);
        }
        w.u8(0);
        assert!(decode(&bytes).unwrap_err().contains("copy more"));
        // Ordinary bodies stay far below the budget.
        for body in bodies() {
            assert_eq!(decode(&encode(&body)), Ok(body));
        }
    }

    #[test]
    fn stored_codes_keep_their_bytes() {
        assert_eq!(code_byte(Code::Ok), 0);
        assert_eq!(code_byte(Code::InsufficientFunds), 14);
        assert_eq!(code_byte(Code::DiskFull), 24);
        for (i, code) in Code::ALL.iter().enumerate() {
            assert_eq!(usize::from(code_byte(*code)), i);
        }
    }
}
