//! Frame encoding and decoding (no_std, no allocation).
//!
//! A frame before COBS stuffing:
//!
//! ```text
//! major:u8  stream:varint  seq:varint  kind:varint  body...  crc32:u32 LE
//! ```
//!
//! The CRC-32 (ISO-HDLC) covers every byte before it. The frame is then COBS
//! encoded and followed by one `0x00` delimiter, so a reader resynchronises on
//! the next zero after any lost or corrupted byte.
//!
//! Bodies are postcard-encoded record structs, except sample batches:
//!
//! ```text
//! first_tsc:varint  period:varint  { tag:u8 [ctx:postcard] [tsc:zigzag] [rip:zigzag] }*
//! ```
//!
//! Each sample's tag holds a context slot (bits 0-2), `NEW_CTX` (bit 3: a
//! postcard context key follows and replaces the slot), `TSC_EXACT` (bit 4: the
//! TSC delta equals the period, no TSC bytes) and `RIP_SAME` (bit 5: same RIP as
//! the slot's previous sample). Otherwise the TSC is `prev + period + zigzag`
//! and the RIP `slot_rip + zigzag` (wrapping). The first sample's TSC is
//! `first_tsc`. Slots start empty in every frame, so each frame decodes alone.
//! A sample batch stays within [`MAX_BATCH_RAW_FRAME`] bytes before its CRC.
//!
//! Guest data ([`GuestData`], kind 8, format minor 1) is not postcard either:
//!
//! ```text
//! vm:varint  kind:varint  seq:varint  len:varint  data[len]
//! ```
//!
//! with `len` at most [`MAX_GUEST_DATA_RECORD`]; [`MAX_RAW_FRAME`] holds the largest one.

use serde::{Deserialize, Serialize};

use crate::types::*;

/// Stream number of records that belong to no pCPU (header, VM table, end).
pub const GLOBAL_STREAM: u16 = u16::MAX;
/// Largest frame before its CRC and COBS stuffing: a [`GuestData`] record with
/// [`MAX_GUEST_DATA_RECORD`] bytes and every varint at its longest, with room to spare.
pub const MAX_RAW_FRAME: usize = MAX_GUEST_DATA_RECORD + 64;
/// Largest sample batch before its CRC: what [`MAX_RAW_FRAME`] was before guest data
/// raised it, so batches keep the size they had.
pub const MAX_BATCH_RAW_FRAME: usize = 1024;
/// Largest frame on the wire, delimiter included: the COBS worst case of
/// [`MAX_RAW_FRAME`] plus the CRC, and the delimiter. An output buffer of this size always
/// holds one frame.
pub const MAX_FRAME_LEN: usize = cobs::max_encoding_length(MAX_RAW_FRAME + CRC_LEN) + 1;
/// Most samples in one batch frame.
pub const MAX_BATCH_SAMPLES: usize = 255;

/// Slice-by-16 tables (16 KiB of read-only data): the analyzer checks tens
/// of megabytes, and the hypervisor encodes from a non-critical path.
const CRC: crc::Crc<u32, crc::Table<16>> =
    crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISO_HDLC);
const CRC_LEN: usize = 4;
/// Longest varint of a u16, a u32.
const VARINT_U16: usize = 3;
const VARINT_U32: usize = 5;
/// The largest [`GuestData`] frame before its CRC: major, stream, seq, kind, then the
/// body (vm, kind, seq, length of [`MAX_GUEST_DATA_RECORD`] = 2 bytes, the data).
const WORST_GUEST_DATA: usize = 1
    + VARINT_U16
    + VARINT_U32
    + 1
    + VARINT_U16
    + VARINT_U16
    + VARINT_U32
    + 2
    + MAX_GUEST_DATA_RECORD;
const _: () = assert!(WORST_GUEST_DATA <= MAX_RAW_FRAME);
const _: () = assert!(MAX_BATCH_RAW_FRAME <= MAX_RAW_FRAME);
/// Upper bound of one encoded sample (tag + context key + two varints).
const WORST_SAMPLE: usize = 1 + 32 + 10 + 10;
const SLOTS: usize = 8;

const TAG_SLOT_MASK: u8 = 0x07;
const TAG_NEW_CTX: u8 = 1 << 3;
const TAG_TSC_EXACT: u8 = 1 << 4;
const TAG_RIP_SAME: u8 = 1 << 5;
const TAG_RESERVED: u8 = 0xc0;

/// Record kind numbers on the wire. New kinds get new numbers (a minor bump).
mod kind {
    pub const HEADER: u32 = 0;
    pub const VM: u32 = 1;
    pub const SAMPLES: u32 = 2;
    pub const DROPPED: u32 = 3;
    pub const EXIT_STAT: u32 = 4;
    pub const SCHED: u32 = 5;
    pub const GUEST_TIME_OFFSET: u32 = 6;
    pub const END: u32 = 7;
    pub const GUEST_DATA: u32 = 8;
}

/// Why a frame could not be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// The output buffer cannot hold the frame; [`MAX_FRAME_LEN`] always does.
    OutputTooSmall,
    /// The record does not fit in [`MAX_RAW_FRAME`] bytes (e.g. a huge name).
    RecordTooLarge,
}

impl core::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            EncodeError::OutputTooSmall => write!(f, "output buffer too small for a frame"),
            EncodeError::RecordTooLarge => {
                write!(f, "record larger than {MAX_RAW_FRAME} bytes")
            }
        }
    }
}

/// Why a frame was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// COBS stuffing is invalid.
    BadCobs,
    /// Shorter than the smallest frame.
    TooShort,
    /// CRC mismatch.
    BadCrc,
    /// Written by a newer major version of the format.
    NewerVersion {
        /// The frame's major version.
        major: u8,
    },
    /// A record kind this reader does not know (from a newer minor version).
    UnknownKind {
        /// The kind number.
        kind: u32,
    },
    /// CRC matched but the body does not parse.
    Malformed,
}

impl core::fmt::Display for FrameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FrameError::BadCobs => write!(f, "invalid COBS framing"),
            FrameError::TooShort => write!(f, "frame too short"),
            FrameError::BadCrc => write!(f, "CRC mismatch"),
            FrameError::NewerVersion { major } => write!(
                f,
                "log format {major}.x is newer than this analyzer ({FORMAT_MAJOR}.x); update the analyzer"
            ),
            FrameError::UnknownKind { kind } => write!(f, "unknown record kind {kind}"),
            FrameError::Malformed => write!(f, "malformed record body"),
        }
    }
}

// ---------------------------------------------------------------- varints

struct Out<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Out<'_> {
    fn byte(&mut self, b: u8) -> Result<(), EncodeError> {
        let slot = self
            .buf
            .get_mut(self.pos)
            .ok_or(EncodeError::RecordTooLarge)?;
        *slot = b;
        self.pos += 1;
        Ok(())
    }

    fn varint(&mut self, mut v: u64) -> Result<(), EncodeError> {
        loop {
            let low = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                return self.byte(low);
            }
            self.byte(low | 0x80)?;
        }
    }

    fn zigzag(&mut self, v: i64) -> Result<(), EncodeError> {
        self.varint(((v << 1) ^ (v >> 63)) as u64)
    }

    fn bytes(&mut self, b: &[u8]) -> Result<(), EncodeError> {
        let end = self
            .pos
            .checked_add(b.len())
            .ok_or(EncodeError::RecordTooLarge)?;
        self.buf
            .get_mut(self.pos..end)
            .ok_or(EncodeError::RecordTooLarge)?
            .copy_from_slice(b);
        self.pos = end;
        Ok(())
    }

    fn postcard<T: Serialize>(&mut self, value: &T) -> Result<(), EncodeError> {
        let rest = self
            .buf
            .get_mut(self.pos..)
            .ok_or(EncodeError::RecordTooLarge)?;
        let used = postcard::to_slice(value, rest)
            .map_err(|_| EncodeError::RecordTooLarge)?
            .len();
        self.pos += used;
        Ok(())
    }
}

struct In<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> In<'a> {
    #[inline(always)]
    fn byte(&mut self) -> Result<u8, FrameError> {
        let b = *self.buf.get(self.pos).ok_or(FrameError::Malformed)?;
        self.pos += 1;
        Ok(b)
    }

    #[inline(always)]
    fn varint(&mut self) -> Result<u64, FrameError> {
        // Most varints in a batch (small deltas) are one byte.
        if let Some(&b) = self.buf.get(self.pos)
            && b & 0x80 == 0
        {
            self.pos += 1;
            return Ok(u64::from(b));
        }
        self.varint_long()
    }

    #[inline(never)]
    fn varint_long(&mut self) -> Result<u64, FrameError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(FrameError::Malformed);
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(FrameError::Malformed)
    }

    #[inline(always)]
    fn zigzag(&mut self) -> Result<i64, FrameError> {
        let v = self.varint()?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    fn bytes(&mut self, n: u64) -> Result<&'a [u8], FrameError> {
        let n = usize::try_from(n).map_err(|_| FrameError::Malformed)?;
        let end = self.pos.checked_add(n).ok_or(FrameError::Malformed)?;
        let b = self.buf.get(self.pos..end).ok_or(FrameError::Malformed)?;
        self.pos = end;
        Ok(b)
    }

    fn guest_data(&mut self) -> Result<GuestData<'a>, FrameError> {
        let vm = u16::try_from(self.varint()?).map_err(|_| FrameError::Malformed)?;
        let kind = u16::try_from(self.varint()?).map_err(|_| FrameError::Malformed)?;
        let seq = u32::try_from(self.varint()?).map_err(|_| FrameError::Malformed)?;
        let len = self.varint()?;
        if len > MAX_GUEST_DATA_RECORD as u64 {
            return Err(FrameError::Malformed);
        }
        let data = self.bytes(len)?;
        Ok(GuestData {
            vm,
            kind,
            seq,
            data,
        })
    }

    fn postcard<T: Deserialize<'a>>(&mut self) -> Result<T, FrameError> {
        let rest = self.buf.get(self.pos..).ok_or(FrameError::Malformed)?;
        let (value, tail) = postcard::take_from_bytes(rest).map_err(|_| FrameError::Malformed)?;
        self.pos = self.buf.len() - tail.len();
        Ok(value)
    }

    fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }
}

// ---------------------------------------------------------------- contexts

/// A sample's context without its RIP: what the slots remember.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum CtxKey {
    Host {
        serving: Option<VcpuRef>,
        state: VcpuState,
    },
    Guest {
        vm: u16,
        vcpu: u16,
        vpid: u16,
        cr3: u64,
        cpl: u8,
        last_exit: Option<ExitReason>,
    },
}

impl CtxKey {
    fn of(ctx: &Context) -> Self {
        match *ctx {
            Context::Host(h) => CtxKey::Host {
                serving: h.serving,
                state: h.vcpu_state,
            },
            Context::Guest(g) => CtxKey::Guest {
                vm: g.vm,
                vcpu: g.vcpu,
                vpid: g.vpid,
                cr3: g.cr3,
                cpl: g.cpl,
                last_exit: g.last_exit_reason,
            },
        }
    }

    fn with_rip(self, rip: u64) -> Context {
        match self {
            CtxKey::Host { serving, state } => Context::Host(HostContext {
                rip,
                serving,
                vcpu_state: state,
            }),
            CtxKey::Guest {
                vm,
                vcpu,
                vpid,
                cr3,
                cpl,
                last_exit,
            } => Context::Guest(GuestContext {
                vm,
                vcpu,
                vpid,
                rip,
                cr3,
                cpl,
                last_exit_reason: last_exit,
            }),
        }
    }
}

// ---------------------------------------------------------------- encoding

fn prefix(out: &mut Out<'_>, stream: u16, seq: u32, kind: u32) -> Result<(), EncodeError> {
    out.byte(FORMAT_MAJOR)?;
    out.varint(u64::from(stream))?;
    out.varint(u64::from(seq))?;
    out.varint(u64::from(kind))
}

/// Adds the CRC, COBS-stuffs `raw[..len]` into `out` and appends the delimiter.
fn seal(
    raw: &mut [u8; MAX_RAW_FRAME + CRC_LEN],
    len: usize,
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    let crc = CRC.checksum(&raw[..len]);
    raw[len..len + CRC_LEN].copy_from_slice(&crc.to_le_bytes());
    let total = len + CRC_LEN;
    if out.len() < cobs::max_encoding_length(total) + 1 {
        return Err(EncodeError::OutputTooSmall);
    }
    let mut enc = cobs::CobsEncoder::new(out);
    enc.push(&raw[..total])
        .map_err(|_| EncodeError::OutputTooSmall)?;
    let n = enc.finalize();
    *out.get_mut(n).ok_or(EncodeError::OutputTooSmall)? = 0;
    Ok(n + 1)
}

/// Writes one frame holding `record` on `stream` with sequence number `seq`
/// into `out`; returns the bytes written (delimiter included).
pub fn encode_record(
    out: &mut [u8],
    stream: u16,
    seq: u32,
    record: &Record<'_>,
) -> Result<usize, EncodeError> {
    let mut raw = [0u8; MAX_RAW_FRAME + CRC_LEN];
    let mut w = Out {
        buf: &mut raw[..MAX_RAW_FRAME],
        pos: 0,
    };
    match record {
        Record::Header(r) => {
            prefix(&mut w, stream, seq, kind::HEADER)?;
            w.postcard(r)?;
        }
        Record::Vm(r) => {
            prefix(&mut w, stream, seq, kind::VM)?;
            w.postcard(r)?;
        }
        Record::Dropped(r) => {
            prefix(&mut w, stream, seq, kind::DROPPED)?;
            w.postcard(r)?;
        }
        Record::ExitStat(r) => {
            prefix(&mut w, stream, seq, kind::EXIT_STAT)?;
            w.postcard(r)?;
        }
        Record::Sched(r) => {
            prefix(&mut w, stream, seq, kind::SCHED)?;
            w.postcard(r)?;
        }
        Record::GuestTimeOffset(r) => {
            prefix(&mut w, stream, seq, kind::GUEST_TIME_OFFSET)?;
            w.postcard(r)?;
        }
        Record::End(r) => {
            prefix(&mut w, stream, seq, kind::END)?;
            w.postcard(r)?;
        }
        Record::GuestData(r) => {
            if r.data.len() > MAX_GUEST_DATA_RECORD {
                return Err(EncodeError::RecordTooLarge);
            }
            prefix(&mut w, stream, seq, kind::GUEST_DATA)?;
            w.varint(u64::from(r.vm))?;
            w.varint(u64::from(r.kind))?;
            w.varint(u64::from(r.seq))?;
            w.varint(r.data.len() as u64)?;
            w.bytes(r.data)?;
        }
    }
    let len = w.pos;
    seal(&mut raw, len, out)
}

/// What [`encode_samples`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Encoded {
    /// Bytes written to the output, delimiter included.
    pub bytes: usize,
    /// Samples taken from the front of the input; encode the rest in further
    /// frames (with further sequence numbers).
    pub samples: usize,
}

/// Writes one batch frame with as many of `samples` (all from pCPU `pcpu`, in
/// time order) as fit, delta-encoded against `period` TSC ticks. No
/// allocation; about 1 KiB of stack. An empty input writes nothing.
pub fn encode_samples(
    out: &mut [u8],
    pcpu: u16,
    seq: u32,
    period: u64,
    samples: &[Sample],
) -> Result<Encoded, EncodeError> {
    let Some(first) = samples.first() else {
        return Ok(Encoded {
            bytes: 0,
            samples: 0,
        });
    };
    let mut raw = [0u8; MAX_RAW_FRAME + CRC_LEN];
    let mut w = Out {
        buf: &mut raw[..MAX_BATCH_RAW_FRAME],
        pos: 0,
    };
    prefix(&mut w, pcpu, seq, kind::SAMPLES)?;
    w.varint(first.tsc)?;
    w.varint(period)?;

    let mut slots: [Option<(CtxKey, u64)>; SLOTS] = [None; SLOTS];
    let mut next_slot = 0usize;
    let mut prev_tsc = first.tsc;
    let mut taken = 0usize;
    for (i, s) in samples.iter().enumerate().take(MAX_BATCH_SAMPLES) {
        if w.pos + WORST_SAMPLE > MAX_BATCH_RAW_FRAME {
            break;
        }
        let key = CtxKey::of(&s.context);
        let rip = s.context.rip();
        let found = slots
            .iter()
            .position(|e| matches!(e, Some((k, _)) if *k == key));
        let (slot, mut tag, base_rip) = match found {
            Some(i) => (i, 0u8, slots[i].map_or(0, |(_, r)| r)),
            None => {
                let i = next_slot;
                next_slot = (next_slot + 1) % SLOTS;
                (i, TAG_NEW_CTX, 0)
            }
        };
        tag |= slot as u8;
        let tsc_delta = s.tsc.wrapping_sub(prev_tsc).wrapping_sub(period) as i64;
        if i == 0 || tsc_delta == 0 {
            tag |= TAG_TSC_EXACT;
        }
        if found.is_some() && rip == base_rip {
            tag |= TAG_RIP_SAME;
        }
        w.byte(tag)?;
        if tag & TAG_NEW_CTX != 0 {
            w.postcard(&key)?;
        }
        if tag & TAG_TSC_EXACT == 0 {
            w.zigzag(tsc_delta)?;
        }
        if tag & TAG_RIP_SAME == 0 {
            w.zigzag(rip.wrapping_sub(base_rip) as i64)?;
        }
        slots[slot] = Some((key, rip));
        prev_tsc = s.tsc;
        taken += 1;
    }
    let len = w.pos;
    let bytes = seal(&mut raw, len, out)?;
    Ok(Encoded {
        bytes,
        samples: taken,
    })
}

// ---------------------------------------------------------------- decoding

/// A decoded frame, borrowing from the decoded bytes.
#[derive(Clone, Debug)]
pub struct Frame<'a> {
    /// pCPU number, or [`GLOBAL_STREAM`].
    pub stream: u16,
    /// Sequence number within the stream.
    pub seq: u32,
    /// The record.
    pub body: Body<'a>,
}

/// Body of a decoded frame.
// The sample iterator is big (its context slots) but lives on the stack for one
// frame; boxing it would need an allocator, which the hypervisor side lacks.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Body<'a> {
    /// A record other than a sample batch.
    Record(Record<'a>),
    /// A batch of samples; iterate it to decode them.
    Samples(SampleIter<'a>),
}

/// Decodes the samples of one batch frame lazily.
#[derive(Clone, Debug)]
pub struct SampleIter<'a> {
    input: In<'a>,
    period: u64,
    prev_tsc: u64,
    first: bool,
    slots: [Option<(CtxKey, u64)>; SLOTS],
    failed: bool,
}

impl core::fmt::Debug for In<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "In({}/{})", self.pos, self.buf.len())
    }
}

impl Clone for In<'_> {
    fn clone(&self) -> Self {
        In {
            buf: self.buf,
            pos: self.pos,
        }
    }
}

impl SampleIter<'_> {
    #[inline(always)]
    fn decode_one(&mut self) -> Result<Sample, FrameError> {
        let tag = self.input.byte()?;
        if tag & TAG_RESERVED != 0 {
            return Err(FrameError::Malformed);
        }
        let slot = usize::from(tag & TAG_SLOT_MASK);
        let (key, base_rip) = if tag & TAG_NEW_CTX != 0 {
            (self.input.postcard::<CtxKey>()?, 0)
        } else {
            self.slots[slot].ok_or(FrameError::Malformed)?
        };
        let tsc = if self.first {
            self.first = false;
            self.prev_tsc
        } else if tag & TAG_TSC_EXACT != 0 {
            self.prev_tsc.wrapping_add(self.period)
        } else {
            let d = self.input.zigzag()?;
            self.prev_tsc
                .wrapping_add(self.period)
                .wrapping_add(d as u64)
        };
        let rip = if tag & TAG_RIP_SAME != 0 {
            if tag & TAG_NEW_CTX != 0 {
                return Err(FrameError::Malformed);
            }
            base_rip
        } else {
            base_rip.wrapping_add(self.input.zigzag()? as u64)
        };
        self.slots[slot] = Some((key, rip));
        self.prev_tsc = tsc;
        Ok(Sample {
            tsc,
            context: key.with_rip(rip),
        })
    }

    /// Decodes the rest of the batch, appending to `out` (cleared first), as
    /// collecting the iterator would but without a `Result` per sample. On
    /// an error `out` holds the samples before it.
    #[cfg(any(test, feature = "std"))]
    pub fn decode_into(mut self, out: &mut std::vec::Vec<Sample>) -> Result<(), FrameError> {
        out.clear();
        if self.failed {
            return Ok(());
        }
        // A sample takes at least one byte (its tag).
        let left = self.input.buf.len().saturating_sub(self.input.pos);
        out.reserve(left.min(MAX_BATCH_SAMPLES));
        while !self.input.at_end() {
            let s = self.decode_one()?;
            out.push(s);
        }
        Ok(())
    }

    /// Checks that the whole batch decodes; returns the number of samples.
    pub fn validate(&self) -> Result<usize, FrameError> {
        let mut it = self.clone();
        let mut n = 0;
        while !it.input.at_end() {
            it.decode_one()?;
            n += 1;
        }
        Ok(n)
    }
}

impl Iterator for SampleIter<'_> {
    type Item = Result<Sample, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.input.at_end() {
            return None;
        }
        let r = self.decode_one();
        self.failed = r.is_err();
        Some(r)
    }
}

/// Index of the first zero byte of `buf` (a word at a time).
#[doc(hidden)]
pub fn find_zero(buf: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let mut i = 0;
    while let Some(w) = buf.get(i..i + 8) {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        let x = u64::from_le_bytes(b);
        if x.wrapping_sub(LO) & !x & HI != 0 {
            break;
        }
        i += 8;
    }
    buf[i..].iter().position(|&b| b == 0).map(|p| i + p)
}

/// COBS-decodes `buf` in place up to its first zero byte (if any); returns
/// the decoded length. Accepts and rejects exactly what
/// `cobs::decode_in_place` does, a block at a time instead of a byte.
pub(crate) fn cobs_decode_in_place(buf: &mut [u8]) -> Option<usize> {
    if buf.is_empty() {
        return None;
    }
    let end = find_zero(buf).unwrap_or(buf.len());
    let (mut r, mut w) = (0, 0);
    while r < end {
        // Not zero: `buf[..end]` holds none.
        let code = usize::from(buf[r]);
        if r + code > end {
            return None;
        }
        buf.copy_within(r + 1..r + code, w);
        r += code;
        w += code - 1;
        if code != 0xff && r < end {
            buf[w] = 0;
            w += 1;
        }
    }
    Some(w)
}

/// Decodes one frame given its COBS-stuffed bytes without the delimiter.
/// The buffer is un-stuffed in place. Checks framing, CRC and version; the
/// body of a sample batch is decoded lazily (see [`SampleIter::validate`]).
pub fn decode_frame(stuffed: &mut [u8]) -> Result<Frame<'_>, FrameError> {
    let len = cobs_decode_in_place(stuffed).ok_or(FrameError::BadCobs)?;
    let raw = stuffed.get(..len).ok_or(FrameError::BadCobs)?;
    parse_raw(raw)
}

/// Decodes one un-stuffed frame (CRC included).
pub fn parse_raw(raw: &[u8]) -> Result<Frame<'_>, FrameError> {
    if raw.len() < 1 + 3 + CRC_LEN {
        return Err(FrameError::TooShort);
    }
    let (data, crc) = raw.split_at(raw.len() - CRC_LEN);
    let want = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if CRC.checksum(data) != want {
        return Err(FrameError::BadCrc);
    }
    let mut r = In { buf: data, pos: 0 };
    let major = r.byte()?;
    if major > FORMAT_MAJOR {
        return Err(FrameError::NewerVersion { major });
    }
    if major < FORMAT_MAJOR {
        // No older major exists yet.
        return Err(FrameError::Malformed);
    }
    let stream = u16::try_from(r.varint()?).map_err(|_| FrameError::Malformed)?;
    let seq = u32::try_from(r.varint()?).map_err(|_| FrameError::Malformed)?;
    let kind = u32::try_from(r.varint()?).map_err(|_| FrameError::Malformed)?;
    let body = match kind {
        kind::SAMPLES => {
            let first_tsc = r.varint()?;
            let period = r.varint()?;
            Body::Samples(SampleIter {
                input: r,
                period,
                prev_tsc: first_tsc,
                first: true,
                slots: [None; SLOTS],
                failed: false,
            })
        }
        _ => {
            let record = match kind {
                kind::HEADER => Record::Header(r.postcard()?),
                kind::VM => Record::Vm(r.postcard()?),
                kind::DROPPED => Record::Dropped(r.postcard()?),
                kind::EXIT_STAT => Record::ExitStat(r.postcard()?),
                kind::SCHED => Record::Sched(r.postcard()?),
                kind::GUEST_TIME_OFFSET => Record::GuestTimeOffset(r.postcard()?),
                kind::END => Record::End(r.postcard()?),
                kind::GUEST_DATA => Record::GuestData(r.guest_data()?),
                _ => return Err(FrameError::UnknownKind { kind }),
            };
            if !r.at_end() {
                // Trailing bytes are allowed: a newer minor may append fields.
            }
            Body::Record(record)
        }
    };
    Ok(Frame { stream, seq, body })
}
