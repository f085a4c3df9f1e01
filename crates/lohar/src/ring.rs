//! Fixed-size scrollback ring: keeps the newest `cap` bytes written to it.

/// Exposed for the benchmarks; the agent uses it for session scrollback.
pub struct Ring {
    buf: Vec<u8>,
    /// Index of the oldest byte.
    start: usize,
    len: usize,
}

impl Ring {
    pub fn new(cap: usize) -> Ring {
        Ring {
            buf: vec![0; cap.max(1)],
            start: 0,
            len: 0,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn write(&mut self, mut data: &[u8]) {
        let cap = self.buf.len();
        if data.len() >= cap {
            // Only the newest `cap` bytes can survive.
            data = &data[data.len() - cap..];
            self.buf.copy_from_slice(data);
            self.start = 0;
            self.len = cap;
            return;
        }
        let end = (self.start + self.len) % cap;
        let first = data.len().min(cap - end);
        self.buf[end..end + first].copy_from_slice(&data[..first]);
        self.buf[..data.len() - first].copy_from_slice(&data[first..]);
        let total = self.len + data.len();
        if total > cap {
            self.start = (self.start + (total - cap)) % cap;
            self.len = cap;
        } else {
            self.len = total;
        }
    }

    /// The retained bytes, oldest first.
    pub fn contents(&self) -> Vec<u8> {
        let cap = self.buf.len();
        let mut out = Vec::with_capacity(self.len);
        let first = self.len.min(cap - self.start);
        out.extend_from_slice(&self.buf[self.start..self.start + first]);
        out.extend_from_slice(&self.buf[..self.len - first]);
        out
    }
}

#[cfg(test)]
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::arithmetic_side_effects
)] // test data of known, small sizes
mod tests {
    use super::*;

    #[test]
    fn write_below_capacity() {
        let mut r = Ring::new(8);
        r.write(b"abc");
        r.write(b"de");
        assert_eq!(r.contents(), b"abcde");
        assert_eq!(r.len(), 5);
    }

    #[test]
    fn wrap_keeps_newest_bytes_in_order() {
        let mut r = Ring::new(8);
        r.write(b"abcdef");
        r.write(b"ghij");
        assert_eq!(r.contents(), b"cdefghij");
        r.write(b"k");
        assert_eq!(r.contents(), b"defghijk");
        r.write(b"0123456789");
        assert_eq!(r.contents(), b"23456789");
        r.write(b"xy");
        assert_eq!(r.contents(), b"456789xy");
    }

    #[test]
    fn matches_a_naive_model_over_many_writes() {
        let mut r = Ring::new(64 * 1024);
        let mut model: Vec<u8> = Vec::new();
        let mut x: u32 = 7;
        for i in 0..2000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let n = (x as usize >> 8) % 3000 + if i % 97 == 0 { 70_000 } else { 0 };
            let chunk: Vec<u8> = (0..n).map(|k| (k as u32 ^ x) as u8).collect();
            r.write(&chunk);
            model.extend_from_slice(&chunk);
            if model.len() > 64 * 1024 {
                model.drain(..model.len() - 64 * 1024);
            }
            assert_eq!(r.len(), model.len());
        }
        assert_eq!(r.contents(), model);
    }
}
