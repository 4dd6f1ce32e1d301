//! The primitives of the node's binary encodings (journal bodies, live rows): a writer that
//! appends integers, strings and options to a buffer, and a reader that takes them back
//! and refuses anything cut short, malformed or left over. Readers meet bytes from other
//! nodes: nothing here trusts a length or allocates from one before the bytes are there.

/// Longest varint: 10 bytes carry 64 bits.
const MAX_VARINT_BYTES: usize = 10;

pub struct Writer<'a>(pub &'a mut Vec<u8>);

impl Writer<'_> {
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }

    pub fn bool(&mut self, v: bool) {
        self.0.push(u8::from(v));
    }

    pub fn u64_be(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }

    pub fn i64_be(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }

    /// Seven bits per byte, low bits first; the high bit says another byte follows.
    pub fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    /// Zigzag: small negative numbers stay short too.
    pub fn signed(&mut self, v: i64) {
        self.varint(((v << 1) ^ (v >> 63)) as u64);
    }

    /// Length (u16, big-endian) then the UTF-8 bytes.
    pub fn str16(&mut self, s: &str) {
        // Names, ids and assets are limited far below this at the edge of the node.
        let len = u16::try_from(s.len()).expect("stored names are short");
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }

    pub fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }

    /// A byte (0 none, 1 some), then the value.
    pub fn option<T>(&mut self, value: Option<&T>, write: impl FnOnce(&mut Self, &T)) {
        match value {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                write(self, v);
            }
        }
    }
}

pub struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes }
    }

    pub fn left(&self) -> usize {
        self.bytes.len()
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.bytes.len() < n {
            return Err(format!("cut short: {n} bytes wanted, {} left", self.bytes.len()));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    pub fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    pub fn bool(&mut self) -> Result<bool, String> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(format!("bool {b}")),
        }
    }

    pub fn u64_be(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    pub fn i64_be(&mut self) -> Result<i64, String> {
        Ok(i64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    pub fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for i in 0..MAX_VARINT_BYTES {
            let byte = self.u8()?;
            let bits = u64::from(byte & 0x7f);
            // The tenth byte may carry only the 64th bit.
            if i == MAX_VARINT_BYTES - 1 && bits > 1 {
                return Err("varint overflows 64 bits".to_string());
            }
            value |= bits << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint longer than 10 bytes".to_string())
    }

    pub fn signed(&mut self) -> Result<i64, String> {
        let v = self.varint()?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    /// A varint that must fit a `u32`.
    pub fn varint_u32(&mut self) -> Result<u32, String> {
        let v = self.varint()?;
        u32::try_from(v).map_err(|_| format!("{v} does not fit 32 bits"))
    }

    pub fn str16(&mut self) -> Result<String, String> {
        let len = u16::from_be_bytes(self.take(2)?.try_into().expect("2 bytes"));
        self.utf8(usize::from(len)).map(str::to_string)
    }

    /// The next `len` bytes as text.
    pub fn utf8(&mut self, len: usize) -> Result<&'a str, String> {
        std::str::from_utf8(self.take(len)?).map_err(|e| e.to_string())
    }

    pub fn option<T>(&mut self, read: impl FnOnce(&mut Self) -> Result<T, String>) -> Result<Option<T>, String> {
        match self.u8()? {
            0 => Ok(None),
            1 => read(self).map(Some),
            b => Err(format!("option tag {b}")),
        }
    }

    pub fn end(&self) -> Result<(), String> {
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
    fn integers_read_back_as_written() {
        let values = [0u64, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX - 1, u64::MAX];
        let signed = [0i64, 1, -1, 63, -64, 64, i64::MAX, i64::MIN];
        let mut out = Vec::new();
        let mut w = Writer(&mut out);
        values.iter().for_each(|v| w.varint(*v));
        signed.iter().for_each(|v| w.signed(*v));
        let mut r = Reader::new(&out);
        for v in values {
            assert_eq!(r.varint(), Ok(v));
        }
        for v in signed {
            assert_eq!(r.signed(), Ok(v));
        }
        assert_eq!(r.end(), Ok(()));
        assert_eq!(out[..2], [0, 1], "small numbers take one byte");
    }

    #[test]
    fn malformed_varints_are_refused() {
        assert!(Reader::new(&[0x80]).varint().unwrap_err().contains("cut short"));
        assert!(Reader::new(&[0xff; 11]).varint().is_err());
        let mut too_big = vec![0xff; 9];
        too_big.push(0x02);
        assert!(Reader::new(&too_big).varint().unwrap_err().contains("overflows"));
        assert!(Reader::new(&[0x80, 0x80, 0x80, 0x80, 0x10]).varint_u32().unwrap_err().contains("32 bits"));
    }
}
