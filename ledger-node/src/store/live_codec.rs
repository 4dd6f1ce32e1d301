//! The bytes of a live account and a live hold (`live`): written for every account and hold a
//! group touched, so they are compact and cheap, unlike JSON. Integers are big-endian;
//! a string is its length (u16) then its UTF-8 bytes; an option is a byte (0 none, 1 some)
//! then the value. Every value starts with `VERSION`.

use crate::core::reply::Resolution;
use crate::core::{Account, Floor, Hold, HoldState};

const VERSION: u8 = 1;

pub fn encode_account(account: &Account, out: &mut Vec<u8>) {
    let mut w = Writer(out);
    w.start();
    w.str(&account.asset);
    match account.floor {
        Floor::Issuance => w.u8(0),
        Floor::Overdraft(limit) => {
            w.u8(1);
            w.i64(limit);
        }
    }
    w.u8(u8::from(account.closed));
    w.i64(account.posted);
    w.i64(account.pending_debits);
    w.i64(account.pending_credits);
}

pub fn decode_account(bytes: &[u8]) -> Result<Account, String> {
    let mut r = Reader::new(bytes)?;
    let asset = r.str()?;
    let floor = match r.u8()? {
        0 => Floor::Issuance,
        1 => Floor::Overdraft(r.i64()?),
        tag => return Err(format!("floor tag {tag}")),
    };
    let closed = r.bool()?;
    let account = Account { asset, floor, closed, posted: r.i64()?, pending_debits: r.i64()?, pending_credits: r.i64()? };
    r.end()?;
    Ok(account)
}

pub fn encode_hold(hold: &Hold, out: &mut Vec<u8>) {
    let mut w = Writer(out);
    w.start();
    w.str(&hold.debit);
    w.str(&hold.credit);
    w.str(&hold.asset);
    w.i64(hold.amount);
    w.option(hold.expires_at_ms.as_ref(), |w, t| w.u64(*t));
    w.option(hold.device.as_ref(), |w, d| w.str(d));
    w.u8(match hold.state {
        HoldState::Pending => 0,
        HoldState::Resolved(Resolution::Posted) => 1,
        HoldState::Resolved(Resolution::Voided) => 2,
        HoldState::Resolved(Resolution::Expired) => 3,
    });
    w.option(hold.remote.as_ref(), |w, r| w.str(r));
}

pub fn decode_hold(bytes: &[u8]) -> Result<Hold, String> {
    let mut r = Reader::new(bytes)?;
    let (debit, credit, asset, amount) = (r.str()?, r.str()?, r.str()?, r.i64()?);
    let expires_at_ms = r.option(Reader::u64)?;
    let device = r.option(Reader::str)?;
    let state = match r.u8()? {
        0 => HoldState::Pending,
        1 => HoldState::Resolved(Resolution::Posted),
        2 => HoldState::Resolved(Resolution::Voided),
        3 => HoldState::Resolved(Resolution::Expired),
        tag => return Err(format!("hold state {tag}")),
    };
    let remote = r.option(Reader::str)?;
    r.end()?;
    Ok(Hold { debit, credit, asset, amount, expires_at_ms, device, state, remote })
}

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn start(&mut self) {
        self.0.clear();
        self.0.push(VERSION);
    }

    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }

    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }

    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }

    fn str(&mut self, s: &str) {
        // Names, ids and assets are limited far below this at the edge of the node.
        let len = u16::try_from(s.len()).expect("live strings are short");
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }

    fn option<T>(&mut self, value: Option<&T>, write: impl FnOnce(&mut Self, &T)) {
        match value {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                write(self, v);
            }
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Result<Reader<'a>, String> {
        match bytes.split_first() {
            Some((&VERSION, rest)) => Ok(Reader { bytes: rest }),
            Some((v, _)) => Err(format!("unknown version {v}")),
            None => Err("empty value".to_string()),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.bytes.len() < n {
            return Err(format!("cut short: {n} bytes wanted, {} left", self.bytes.len()));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn bool(&mut self) -> Result<bool, String> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(format!("bool {b}")),
        }
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    fn str(&mut self) -> Result<String, String> {
        let len = u16::from_be_bytes(self.take(2)?.try_into().expect("2 bytes"));
        let bytes = self.take(usize::from(len))?;
        String::from_utf8(bytes.to_vec()).map_err(|e| e.to_string())
    }

    fn option<T>(&mut self, read: impl FnOnce(&mut Self) -> Result<T, String>) -> Result<Option<T>, String> {
        match self.u8()? {
            0 => Ok(None),
            1 => read(self).map(Some),
            b => Err(format!("option tag {b}")),
        }
    }

    fn end(&self) -> Result<(), String> {
        match self.bytes.len() {
            0 => Ok(()),
            n => Err(format!("{n} bytes left over")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_and_holds_read_back_as_written_and_damage_is_refused() {
        let account =
            Account { asset: "EUR".into(), floor: Floor::Overdraft(500), closed: true, posted: -7, pending_debits: 3, pending_credits: 0 };
        let mut bytes = Vec::new();
        encode_account(&account, &mut bytes);
        assert_eq!(decode_account(&bytes), Ok(account));
        assert_eq!(bytes.len(), 40, "1 + 2 + 3 + 1 + 8 + 1 + 3 × 8 bytes");
        assert!(decode_account(&bytes[..bytes.len() - 1]).is_err(), "cut short");
        let hold = Hold {
            debit: "wallet:alice".into(),
            credit: "merchant:cafe@us/nyc-1".into(),
            asset: "EUR".into(),
            amount: 2500,
            expires_at_ms: Some(1_700_000_000_000),
            device: Some("pos-1".into()),
            state: HoldState::Resolved(Resolution::Expired),
            remote: Some("us/nyc-1".into()),
        };
        encode_hold(&hold, &mut bytes);
        assert_eq!(decode_hold(&bytes), Ok(hold.clone()));
        let plain = Hold { expires_at_ms: None, device: None, remote: None, state: HoldState::Pending, ..hold };
        encode_hold(&plain, &mut bytes);
        assert_eq!(decode_hold(&bytes), Ok(plain));
        bytes.push(0);
        assert!(decode_hold(&bytes).unwrap_err().contains("left over"));
        bytes[0] = 9;
        assert!(decode_hold(&bytes).unwrap_err().contains("version"));
    }
}
