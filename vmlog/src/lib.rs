//! # vmlog: the profiler's sample-log format
//!
//! Shared by the hypervisor (which encodes, `no_std`, no allocation) and the
//! analyzer (which decodes, feature `std`).
//!
//! - [`Sample`]: fixed-size `Copy` record the sampling interrupt pushes into a
//!   per-pCPU ring.
//! - [`encode_samples`] / [`encode_record`]: write one frame into a
//!   caller-provided buffer ([`MAX_FRAME_LEN`] bytes always suffice).
//! - Frames are postcard/varint bodies with a CRC-32, COBS-stuffed and ended by
//!   `0x00`, each carrying its stream (pCPU) and a per-stream sequence number.
//!   See [`wire`] for the exact layout.
//! - `Decoder` (feature `std`): iterates records from a slice or reader,
//!   skipping corrupt frames, counting sequence gaps; rejects newer majors.
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![warn(missing_docs)]

#[cfg(any(test, feature = "std"))]
mod decoder;
#[cfg(any(test, feature = "std"))]
pub mod synth;
mod types;
pub mod wire;

#[cfg(any(test, feature = "std"))]
pub use decoder::{
    Decoder, Item, LogError, LogHeader, LogWriter, Stats, StreamStats, VmEntry, push_raw_frame,
};
pub use types::*;
pub use wire::{
    EncodeError, Encoded, FrameError, GLOBAL_STREAM, MAX_BATCH_SAMPLES, MAX_FRAME_LEN,
    encode_record, encode_samples,
};

#[cfg(test)]
mod tests;
