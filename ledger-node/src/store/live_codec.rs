//! The bytes of a live account and a live hold (`live`): written for every account and hold a
//! group touched, so they are compact and cheap, unlike JSON. Integers are big-endian;
//! a string is its length (u16) then its UTF-8 bytes; an option is a byte (0 none, 1 some)
//! then the value. Every value starts with `VERSION`.

use crate::core::reply::Resolution;
use crate::core::wire::{Reader, Writer};
use crate::core::{Account, Floor, Hold, HoldState};

const VERSION: u8 = 1;

pub fn encode_account(account: &Account, out: &mut Vec<u8>) {
    write_account(&mut start(out), account);
}

pub fn decode_account(bytes: &[u8]) -> Result<Account, String> {
    let mut r = read(bytes)?;
    let account = read_account(&mut r)?;
    r.end()?;
    Ok(account)
}

/// A group's accounts, each with its value after the group (None: removed), as one delta
/// row: the version, how many (varint), then each name and its value.
pub fn encode_account_delta(accounts: &[(String, Option<Account>)], out: &mut Vec<u8>) {
    let mut w = start(out);
    w.varint(accounts.len() as u64);
    for (name, account) in accounts {
        w.str16(name);
        w.option(account.as_ref(), write_account);
    }
}

pub fn decode_account_delta(bytes: &[u8]) -> Result<Vec<(String, Option<Account>)>, String> {
    let mut r = read(bytes)?;
    let count = r.varint()?;
    // Not trusted for an allocation: each account takes bytes that must be there.
    let mut out = Vec::new();
    for _ in 0..count {
        let name = r.str16()?;
        let account = r.option(read_account)?;
        out.push((name, account));
    }
    r.end()?;
    Ok(out)
}

fn write_account(w: &mut Writer<'_>, account: &Account) {
    w.str16(&account.asset);
    match account.floor {
        Floor::Issuance => w.u8(0),
        Floor::Overdraft(limit) => {
            w.u8(1);
            w.i64_be(limit);
        }
    }
    w.u8(u8::from(account.closed));
    w.i64_be(account.posted);
    w.i64_be(account.pending_debits);
    w.i64_be(account.pending_credits);
}

fn read_account(r: &mut Reader<'_>) -> Result<Account, String> {
    let asset = r.str16()?;
    let floor = match r.u8()? {
        0 => Floor::Issuance,
        1 => Floor::Overdraft(r.i64_be()?),
        tag => return Err(format!("floor tag {tag}")),
    };
    let closed = r.bool()?;
    Ok(Account { asset: asset.into(), floor, closed, posted: r.i64_be()?, pending_debits: r.i64_be()?, pending_credits: r.i64_be()? })
}

pub fn encode_hold(hold: &Hold, out: &mut Vec<u8>) {
    let mut w = start(out);
    w.str16(&hold.debit);
    w.str16(&hold.credit);
    w.str16(&hold.asset);
    w.i64_be(hold.amount);
    w.option(hold.expires_at_ms.as_ref(), |w, t| w.u64_be(*t));
    w.option(hold.device.as_ref(), |w, d| w.str16(d));
    w.u8(match hold.state {
        HoldState::Pending => 0,
        HoldState::Resolved(Resolution::Posted) => 1,
        HoldState::Resolved(Resolution::Voided) => 2,
        HoldState::Resolved(Resolution::Expired) => 3,
    });
    w.option(hold.remote.as_ref(), |w, r| w.str16(r));
}

pub fn decode_hold(bytes: &[u8]) -> Result<Hold, String> {
    let mut r = read(bytes)?;
    let (debit, credit, asset, amount) = (r.str16()?, r.str16()?, r.str16()?, r.i64_be()?);
    let expires_at_ms = r.option(Reader::u64_be)?;
    let device = r.option(Reader::str16)?;
    let state = match r.u8()? {
        0 => HoldState::Pending,
        1 => HoldState::Resolved(Resolution::Posted),
        2 => HoldState::Resolved(Resolution::Voided),
        3 => HoldState::Resolved(Resolution::Expired),
        tag => return Err(format!("hold state {tag}")),
    };
    let remote = r.option(Reader::str16)?;
    r.end()?;
    Ok(Hold { debit, credit, asset, amount, expires_at_ms, device, state, remote })
}

/// Starts a value: clears `out` and writes the version.
fn start(out: &mut Vec<u8>) -> Writer<'_> {
    out.clear();
    out.push(VERSION);
    Writer(out)
}

/// A reader past the version byte, which must be ours.
fn read(bytes: &[u8]) -> Result<Reader<'_>, String> {
    match bytes.split_first() {
        Some((&VERSION, rest)) => Ok(Reader::new(rest)),
        Some((v, _)) => Err(format!("unknown version {v}")),
        None => Err("empty value".to_string()),
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

    #[test]
    fn a_delta_row_reads_back_as_written_and_damage_is_refused() {
        let account =
            Account { asset: "EUR".into(), floor: Floor::Issuance, closed: false, posted: 12, pending_debits: 0, pending_credits: 4 };
        let delta = vec![("issuer:eur".to_string(), Some(account.clone())), ("wallet:gone".to_string(), None)];
        let mut bytes = Vec::new();
        encode_account_delta(&delta, &mut bytes);
        assert_eq!(decode_account_delta(&bytes), Ok(delta.clone()));
        for cut in 1..bytes.len() {
            assert!(decode_account_delta(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        bytes.push(0);
        assert!(decode_account_delta(&bytes).unwrap_err().contains("left over"));
        // A count that claims more than the bytes hold is refused, not allocated for.
        let mut lying = vec![VERSION];
        Writer(&mut lying).varint(u64::MAX);
        assert!(decode_account_delta(&lying).is_err());
        encode_account_delta(&[], &mut bytes);
        assert_eq!(decode_account_delta(&bytes), Ok(Vec::new()));
    }
}
