//! Little helpers for the engine's hand-written binary formats: varints and
//! fixed-width little-endian integers.

/// Appends `value` as a LEB128 varint (1 to 10 bytes).
pub(crate) fn put_varint(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buf.push((value as u8) | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

/// Appends `bytes` preceded by its length as a varint.
pub(crate) fn put_length_prefixed(buf: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

/// A cursor over a byte slice that decodes the formats above.
///
/// Every method returns `None` when the input is too short or malformed;
/// callers turn that into a corruption error carrying the file and offset.
#[derive(Debug, Clone)]
pub(crate) struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    /// Starts decoding at the beginning of `buf`.
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Decoder { buf, pos: 0 }
    }

    /// Bytes consumed so far.
    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    /// Whether everything was consumed.
    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// Reads a varint of at most 64 bits.
    pub(crate) fn varint(&mut self) -> Option<u64> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = *self.buf.get(self.pos)?;
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Some(value);
            }
        }
        None
    }

    /// Reads a varint that must fit a `usize`.
    pub(crate) fn varint_usize(&mut self) -> Option<usize> {
        usize::try_from(self.varint()?).ok()
    }

    /// Reads `len` raw bytes.
    pub(crate) fn bytes(&mut self, len: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(len)?;
        let out = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }

    /// Reads a varint length and then that many bytes.
    pub(crate) fn length_prefixed(&mut self) -> Option<&'a [u8]> {
        let len = self.varint_usize()?;
        self.bytes(len)
    }

    /// Reads one byte.
    pub(crate) fn u8(&mut self) -> Option<u8> {
        let byte = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(byte)
    }

    /// Reads a little-endian `u32`.
    pub(crate) fn u32_le(&mut self) -> Option<u32> {
        let raw = self.bytes(4)?;
        Some(u32::from_le_bytes(raw.try_into().ok()?))
    }

    /// Reads a little-endian `u64`.
    pub(crate) fn u64_le(&mut self) -> Option<u64> {
        let raw = self.bytes(8)?;
        Some(u64::from_le_bytes(raw.try_into().ok()?))
    }
}

/// Reads a little-endian `u32` at `pos`; the caller guarantees the bounds.
pub(crate) fn u32_le_at(buf: &[u8], pos: usize) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&buf[pos..pos + 4]);
    u32::from_le_bytes(raw)
}

/// Reads a little-endian `u64` at `pos`; the caller guarantees the bounds.
pub(crate) fn u64_le_at(buf: &[u8], pos: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&buf[pos..pos + 8]);
    u64::from_le_bytes(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_every_width() {
        let values = [0u64, 1, 127, 128, 300, 16_383, 16_384, u32::MAX as u64, u64::MAX];
        let mut buf = Vec::new();
        for v in values {
            put_varint(&mut buf, v);
        }
        let mut dec = Decoder::new(&buf);
        for v in values {
            assert_eq!(dec.varint(), Some(v));
        }
        assert!(dec.is_empty());
    }

    #[test]
    fn truncated_input_decodes_to_none() {
        let mut buf = Vec::new();
        put_length_prefixed(&mut buf, b"hello");
        let mut dec = Decoder::new(&buf[..4]);
        assert_eq!(dec.length_prefixed(), None);
        assert_eq!(Decoder::new(&[0x80, 0x80]).varint(), None);
    }
}
