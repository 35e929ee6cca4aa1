//! Record mode: the exporter's encoded frames go to a large buffer in memory, not straight
//! to the slow serial line, so that draining the sample rings never waits on the UART
//! while a guest wants the pCPU. The buffer is written out in the time no guest wants
//! (the idle loop, in small chunks that end before the next guest timer) and at the stop.
//!
//! When the buffer fills up, it is written out at once (the guest then waits, as it did
//! before record mode) and the stall is counted: frames are never reordered or dropped.

/// Bytes of encoded log and what became of them.
pub struct RecordBuffer<'a> {
    buf: &'a mut [u8],
    /// Bytes not yet written out, at `buf[head..tail]`.
    head: usize,
    tail: usize,
    /// Times the buffer was full and had to be written out synchronously.
    pub forced_flushes: u64,
    /// Largest backlog seen, in bytes.
    pub high_water: usize,
}

impl<'a> RecordBuffer<'a> {
    pub fn new(buf: &'a mut [u8]) -> Self {
        RecordBuffer {
            buf,
            head: 0,
            tail: 0,
            forced_flushes: 0,
            high_water: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Bytes waiting to be written out.
    pub fn pending(&self) -> usize {
        self.tail - self.head
    }

    /// Appends `bytes`; when they do not fit, writes everything pending (then, if still
    /// too large, `bytes` itself) to `out` first, keeping the order.
    pub fn push(&mut self, bytes: &[u8], mut out: impl FnMut(&[u8])) {
        if self.tail + bytes.len() > self.buf.len() {
            // Compact first: space before `head` is free.
            self.buf.copy_within(self.head..self.tail, 0);
            self.tail -= self.head;
            self.head = 0;
        }
        if self.tail + bytes.len() > self.buf.len() {
            self.forced_flushes += 1;
            self.flush_all(&mut out);
            if bytes.len() > self.buf.len() {
                out(bytes);
                return;
            }
        }
        self.buf[self.tail..self.tail + bytes.len()].copy_from_slice(bytes);
        self.tail += bytes.len();
        self.high_water = self.high_water.max(self.pending());
    }

    /// Writes at most `max` pending bytes to `out`; returns how many.
    pub fn flush_some(&mut self, max: usize, mut out: impl FnMut(&[u8])) -> usize {
        let n = max.min(self.pending());
        if n > 0 {
            out(&self.buf[self.head..self.head + n]);
            self.head += n;
        }
        if self.head == self.tail {
            self.head = 0;
            self.tail = 0;
        }
        n
    }

    /// Writes everything pending to `out`.
    pub fn flush_all(&mut self, mut out: impl FnMut(&[u8])) {
        let n = self.pending();
        self.flush_some(n, &mut out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_come_out_in_order_through_partial_and_forced_flushes() {
        let mut mem = [0u8; 8];
        let mut r = RecordBuffer::new(&mut mem);
        let mut out = Vec::new();
        r.push(b"abc", |b| out.extend_from_slice(b));
        r.push(b"de", |b| out.extend_from_slice(b));
        assert_eq!(
            (r.pending(), out.len()),
            (5, 0),
            "buffered, nothing written"
        );
        assert_eq!(r.flush_some(2, |b| out.extend_from_slice(b)), 2);
        assert_eq!(out, b"ab");
        // 3 pending + 5 new = 8: fits after compaction, no forced flush.
        r.push(b"fghij", |b| out.extend_from_slice(b));
        assert_eq!((r.pending(), r.forced_flushes), (8, 0));
        // Full: the backlog goes out first, then the new bytes are kept.
        r.push(b"kl", |b| out.extend_from_slice(b));
        assert_eq!(r.forced_flushes, 1);
        assert_eq!(out, b"abcdefghij");
        r.flush_all(|b| out.extend_from_slice(b));
        assert_eq!(out, b"abcdefghijkl");
        assert_eq!(r.pending(), 0);
        assert_eq!(r.high_water, 8);
    }

    #[test]
    fn a_frame_larger_than_the_buffer_passes_straight_through() {
        let mut mem = [0u8; 4];
        let mut r = RecordBuffer::new(&mut mem);
        let mut out = Vec::new();
        r.push(b"xy", |b| out.extend_from_slice(b));
        r.push(b"0123456789", |b| out.extend_from_slice(b));
        assert_eq!(out, b"xy0123456789");
        assert_eq!(r.pending(), 0);
    }
}
