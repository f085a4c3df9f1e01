//! Fixed-size scrollback ring: keeps the newest `cap` bytes written to it.

/// Exposed for the benchmarks; the agent uses it for session scrollback.
///
/// Invariants: `buf` is never empty, `start < buf.len()`, `len <= buf.len()`.
pub struct Ring {
    buf: Vec<u8>,
    /// Index of the oldest byte.
    start: usize,
    len: usize,
}

impl Ring {
    /// An empty ring keeping the newest `cap` bytes (at least 1).
    pub fn new(cap: usize) -> Ring {
        Ring {
            buf: vec![0; cap.max(1)],
            start: 0,
            len: 0,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }

    /// `i` wrapped to an index into `buf` (whose length is never 0).
    fn wrap(&self, i: usize) -> usize {
        i.checked_rem(self.buf.len()).unwrap_or(0)
    }

    /// Appends `data`, dropping the oldest bytes beyond the capacity.
    pub fn write(&mut self, data: &[u8]) {
        let cap = self.buf.len();
        if let Some(skip) = data.len().checked_sub(cap) {
            // Only the newest `cap` bytes can survive.
            self.buf.copy_from_slice(&data[skip..]);
            self.start = 0;
            self.len = cap;
            return;
        }
        // From here `data.len() < cap`, and `start + len < 2 * cap`: no sum
        // below can saturate.
        let end = self.wrap(self.start.saturating_add(self.len));
        let room = &mut self.buf[end..];
        let (head, wrapped) = data.split_at(data.len().min(room.len()));
        room[..head.len()].copy_from_slice(head);
        self.buf[..wrapped.len()].copy_from_slice(wrapped);
        let total = self.len.saturating_add(data.len());
        match total.checked_sub(cap) {
            Some(dropped) if dropped > 0 => {
                self.start = self.wrap(self.start.saturating_add(dropped));
                self.len = cap;
            }
            _ => self.len = total,
        }
    }

    /// The retained bytes, oldest first.
    pub fn contents(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len);
        let tail = &self.buf[self.start..];
        let first = &tail[..self.len.min(tail.len())];
        out.extend_from_slice(first);
        // The rest wrapped around to the front (`first.len() <= len`).
        out.extend_from_slice(&self.buf[..self.len.saturating_sub(first.len())]);
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
