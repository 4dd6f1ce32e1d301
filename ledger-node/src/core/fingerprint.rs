//! The fingerprint of a command: what tells a resend (same content) from a conflict (same
//! id, other content). 16 bytes, copied by value: every accepted command's fingerprint is
//! kept in the id cache and handed to the store, and as a 32-digit hex `String` it was two
//! allocations per command. JSON (a rejection's record, a received transfer's) and logs
//! write it as the 32 lowercase hex digits it always was.

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;

pub const FINGERPRINT_BYTES: usize = 16;

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; FINGERPRINT_BYTES]);

impl Fingerprint {
    /// The first 16 bytes of the BLAKE3 hash of `bytes`.
    pub fn of(bytes: &[u8]) -> Fingerprint {
        let hash = blake3::hash(bytes);
        let mut out = [0; FINGERPRINT_BYTES];
        out.copy_from_slice(&hash.as_bytes()[..FINGERPRINT_BYTES]);
        Fingerprint(out)
    }

    /// Reads the written form back: exactly 32 lowercase hex digits.
    pub fn parse_hex(text: &str) -> Option<Fingerprint> {
        super::journal::parse_hex(text).map(Fingerprint)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl Serialize for Fingerprint {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Fingerprint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Fingerprint::parse_hex(&text).ok_or_else(|| de::Error::custom(format!("fingerprint {text:?} is not 32 lowercase hex digits")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_as_the_first_32_hex_digits_of_the_hash() {
        let f = Fingerprint::of(b"dev\0{\"id\":\"t1\"}");
        assert_eq!(f.to_string(), blake3::hash(b"dev\0{\"id\":\"t1\"}").to_hex()[..32]);
        assert_eq!(Fingerprint::parse_hex(&f.to_string()), Some(f));
        let json = serde_json::to_string(&f).unwrap();
        assert_eq!(json, format!("\"{f}\""));
        assert_eq!(serde_json::from_str::<Fingerprint>(&json).unwrap(), f);
    }

    #[test]
    fn only_32_lowercase_hex_digits_read_back() {
        for bad in ["", "00", &"0".repeat(31), &"0".repeat(33), &"A".repeat(32), &"g".repeat(32), &"é".repeat(16)] {
            assert_eq!(Fingerprint::parse_hex(bad), None, "{bad:?}");
            assert!(serde_json::from_str::<Fingerprint>(&format!("\"{bad}\"")).is_err());
        }
        assert_eq!(Fingerprint::parse_hex(&"0f".repeat(16)), Some(Fingerprint([0x0f; 16])));
    }
}
