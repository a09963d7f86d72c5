//! The fuzzer's bytes read as a sequence of small values, for targets that
//! need structured input (sizes, flags, numbers) and not just a byte stream.
//! Reading past the end yields zeros, so every input means something.

/// A cursor over the fuzzer's bytes.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    bytes: &'a [u8],
}

impl<'a> Input<'a> {
    /// Reads `bytes` from the start.
    pub fn new(bytes: &'a [u8]) -> Self {
        Input { bytes }
    }

    /// True when every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The next `n` bytes (fewer at the end).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (taken, rest) = self.bytes.split_at(n.min(self.bytes.len()));
        self.bytes = rest;
        taken
    }

    /// Everything not read yet.
    pub fn rest(self) -> &'a [u8] {
        self.bytes
    }

    /// The next byte, or 0.
    pub fn u8(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }

    /// The next byte's low bit.
    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    /// The next two bytes, little-endian (missing bytes are 0).
    pub fn u16(&mut self) -> u16 {
        u16::from(self.u8()) | (u16::from(self.u8()) << 8)
    }

    /// The next four bytes, little-endian (missing bytes are 0).
    pub fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | (u32::from(self.u16()) << 16)
    }

    /// A length-prefixed chunk: one byte of length (at most `max`), then
    /// that many bytes.
    pub fn chunk(&mut self, max: u8) -> &'a [u8] {
        let len = usize::from(self.u8()) % (usize::from(max) + 1);
        self.take(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_read_in_order_and_zero_past_the_end() {
        let mut input = Input::new(&[1, 2, 3, 4, 5, 2, b'a', b'b', b'c']);
        assert_eq!(input.u8(), 1);
        assert_eq!(input.u16(), 0x0302);
        assert!(!input.bool());
        assert!(input.bool());
        assert_eq!(input.chunk(8), b"ab");
        assert_eq!(input.rest(), b"c");
        let mut empty = Input::new(&[]);
        assert_eq!((empty.u32(), empty.take(3)), (0, &[][..]));
        assert!(empty.is_empty());
    }
}
