//! A fixed-size single-producer single-consumer ring for sample records. The producers are
//! the sampling points of one pCPU (its tick handler, and its run or idle loop, which
//! sample with interrupts disabled), the consumer the exporter; neither ever blocks or
//! allocates. A full ring drops the new record and counts it. `push` also guards itself
//! against a second producer arriving while one is inside it (an interrupt on top of a
//! push, or another CPU): the late one drops its record (counted) instead of sharing a slot.

use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// The ring. `N` must be a power of two.
pub struct SampleRing<T: Copy, const N: usize> {
    slots: UnsafeCell<[MaybeUninit<T>; N]>,
    /// Next slot the producer writes (monotonic, wraps modulo usize).
    head: AtomicUsize,
    /// Next slot the consumer reads.
    tail: AtomicUsize,
    dropped: AtomicU64,
    pushed: AtomicU64,
    /// A producer is inside `push`: taken by swap, so at most one producer writes slots.
    producing: AtomicBool,
}

// SAFETY: at most one producer writes slots at a time: `push` writes only after winning
// the `producing` flag (a producer that loses drops its record), which it releases after
// publishing head. The one consumer (`pop_into`, called only by the exporter on the boot
// pCPU) reads only slots in [tail, head); the producer writes only the slot at head, outside
// that range; head/tail stores are Release and the other side's loads Acquire, so no slot
// is accessed by both at once. T: Send makes moving records across contexts sound.
unsafe impl<T: Copy + Send, const N: usize> Sync for SampleRing<T, N> {}

impl<T: Copy, const N: usize> Default for SampleRing<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy, const N: usize> SampleRing<T, N> {
    const CHECK: () = assert!(N.is_power_of_two());

    pub const fn new() -> Self {
        #[allow(clippy::let_unit_value)]
        let _ = Self::CHECK;
        SampleRing {
            slots: UnsafeCell::new([const { MaybeUninit::uninit() }; N]),
            head: AtomicUsize::new(0),
            tail: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            pushed: AtomicU64::new(0),
            producing: AtomicBool::new(false),
        }
    }

    /// Producer side: stores `value`, or drops it (counted) when the ring is full or
    /// another producer is inside `push` at this moment.
    pub fn push(&self, value: T) -> bool {
        // Acquire pairs with the Release below: the previous producer's head is visible.
        if self.producing.swap(true, Ordering::Acquire) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let head = self.head.load(Ordering::Relaxed);
        let tail = self.tail.load(Ordering::Acquire);
        let stored = head.wrapping_sub(tail) < N;
        if stored {
            // SAFETY: slot `head % N` is outside [tail, head), so the consumer does not
            // read it; this producer holds `producing`, so no other writes it. See the
            // Sync impl.
            unsafe { (*self.slots.get())[head % N].write(value) };
            self.head.store(head.wrapping_add(1), Ordering::Release);
            self.pushed.fetch_add(1, Ordering::Relaxed);
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.producing.store(false, Ordering::Release);
        stored
    }

    /// Consumer side: moves up to `out.len()` records out, oldest first; returns how many.
    pub fn pop_into(&self, out: &mut [T]) -> usize {
        let tail = self.tail.load(Ordering::Relaxed);
        let head = self.head.load(Ordering::Acquire);
        let n = head.wrapping_sub(tail).min(out.len());
        for (i, slot) in out.iter_mut().enumerate().take(n) {
            // SAFETY: slots in [tail, head) were fully written before the Release store of
            // head that the Acquire load above observed; the producer does not touch them
            // until tail moves past them.
            *slot = unsafe { (*self.slots.get())[tail.wrapping_add(i) % N].assume_init() };
        }
        self.tail.store(tail.wrapping_add(n), Ordering::Release);
        n
    }

    pub fn len(&self) -> usize {
        self.head
            .load(Ordering::Acquire)
            .wrapping_sub(self.tail.load(Ordering::Acquire))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub const fn capacity(&self) -> usize {
        N
    }

    /// Records dropped because the ring was full, since the last call (resets the count).
    pub fn take_dropped(&self) -> u64 {
        self.dropped.swap(0, Ordering::Relaxed)
    }

    /// Records dropped so far without resetting.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Records accepted so far.
    pub fn pushed(&self) -> u64 {
        self.pushed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_ring_drops_and_counts() {
        let ring: SampleRing<u32, 4> = SampleRing::new();
        for i in 0..6 {
            ring.push(i);
        }
        assert_eq!(ring.len(), 4);
        assert_eq!(ring.dropped(), 2);
        assert_eq!(ring.pushed(), 4);
        let mut out = [0u32; 3];
        assert_eq!(ring.pop_into(&mut out), 3);
        assert_eq!(out, [0, 1, 2]);
        assert!(ring.push(10));
        assert!(ring.push(11));
        assert!(ring.push(12));
        assert!(!ring.push(13));
        let mut out = [0u32; 8];
        assert_eq!(ring.pop_into(&mut out), 4);
        assert_eq!(&out[..4], &[3, 10, 11, 12]);
        assert_eq!(ring.take_dropped(), 3);
        assert_eq!(ring.take_dropped(), 0);
        assert!(ring.is_empty());
    }

    #[test]
    fn a_producer_arriving_inside_push_drops_instead_of_sharing_a_slot() {
        let ring: SampleRing<u32, 8> = SampleRing::new();
        assert!(ring.push(1));
        // As if an interrupt came in the middle of a push on this pCPU.
        ring.producing.store(true, Ordering::Relaxed);
        assert!(!ring.push(2));
        ring.producing.store(false, Ordering::Relaxed);
        assert!(ring.push(3));
        let mut out = [0u32; 8];
        assert_eq!(ring.pop_into(&mut out), 2);
        assert_eq!(&out[..2], &[1, 3]);
        assert_eq!(ring.dropped(), 1);
        assert_eq!(ring.pushed(), 2);
    }

    #[test]
    fn producer_and_consumer_on_two_threads_lose_nothing_they_kept() {
        use std::sync::Arc;
        let ring: Arc<SampleRing<u64, 64>> = Arc::new(SampleRing::new());
        let r2 = ring.clone();
        let producer = std::thread::spawn(move || {
            for i in 0..100_000u64 {
                r2.push(i);
            }
        });
        let mut seen = Vec::new();
        let mut buf = [0u64; 16];
        while !producer.is_finished() || !ring.is_empty() {
            let n = ring.pop_into(&mut buf);
            seen.extend_from_slice(&buf[..n]);
        }
        producer.join().unwrap();
        let n = ring.pop_into(&mut buf);
        seen.extend_from_slice(&buf[..n]);
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "order kept");
        assert_eq!(seen.len() as u64 + ring.dropped(), 100_000);
    }
}
