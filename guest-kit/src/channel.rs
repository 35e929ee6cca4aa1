//! The hypercall channel: a guest hands a buffer to the hypervisor, which copies it into
//! the sample log (`vmlog` `GuestData` records on the global stream), so a bundle reaches
//! the host without crossing the emulated UART byte by byte (docs/contracts.md, "Guest
//! bundle").
//!
//! Guest side ([`send`], x86_64 only): `VMCALL` with `RAX` = [`GUEST_DATA`], `RBX` = the
//! guest-virtual address of the buffer, `RCX` = its length (1 to [`MAX_CALL`] bytes),
//! `RDX` = the kind ([`KIND_BUNDLE`]); `RAX` returns 0 or a [`Refusal`] code. The
//! hypervisor announces itself with [`SIGNATURE`] at CPUID leaf [`HV_LEAF`]; without it
//! `VMCALL` raises #UD (SIGILL), so [`send`] checks first.
//!
//! Host side ([`Reassembler`]): the hypervisor splits each call into records of at most
//! 1024 bytes numbered per (VM, kind) from 0 over the whole run. The stream of one VM's
//! kind-1 records, in `seq` order, is its bundles one after the other:
//!
//! - a bundle starts with a record whose data begins with `gk-bundle ` (every delivery
//!   starts a new record, and a bundle is one delivery of one or more calls);
//! - a bundle is *complete* when none of its records is missing and its data ends with a
//!   newline: [`call_ranges`] never ends a call other than the last right after a
//!   newline, so a delivery cut off after a refused call never looks whole;
//! - the bundle used is the **last** complete one that parses; a missing `seq` (a lost
//!   frame) is reported, and the bundle it falls into is never used (nothing is spliced
//!   over the hole).

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use crate::bundle::Bundle;

/// `RAX` of the `GUEST_DATA` hypercall.
pub const GUEST_DATA: u64 = 0x04;

/// `RDX` (kind) of a guest bundle; `vmlog::GUEST_DATA_BUNDLE`.
pub const KIND_BUNDLE: u16 = 1;

/// The most bytes one call may hand over.
pub const MAX_CALL: usize = 65536;

/// CPUID leaf of the hypervisor's signature.
pub const HV_LEAF: u32 = 0x4000_0000;

/// The profiling hypervisor's signature in EBX, ECX, EDX of [`HV_LEAF`].
pub const SIGNATURE: [u8; 12] = *b"HVprofHVprof";

/// How a bundle's data starts.
const BUNDLE_START: &[u8] = b"gk-bundle ";

/// Why the hypervisor refused a call (its `RAX`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 1: the VM's channel is off, or the caller is in user mode and the VM allows only
    /// kernel callers (`vm=...:channel=user` allows user mode).
    NotAllowed,
    /// 2: the buffer is not mapped, or not inside the VM's memory.
    BadAddress,
    /// 3: longer than [`MAX_CALL`] (or empty).
    TooLong,
    /// 4: over the VM's budget (1 MiB burst, 1 MiB/s, 16 MiB per run).
    OverBudget,
    /// 5: a kind the hypervisor does not take.
    BadKind,
    /// Any other code.
    Other(u64),
}

impl Refusal {
    /// The refusal of a returned `RAX`; `None` for 0 (accepted).
    pub fn from_code(code: u64) -> Option<Refusal> {
        Some(match code {
            0 => return None,
            1 => Refusal::NotAllowed,
            2 => Refusal::BadAddress,
            3 => Refusal::TooLong,
            4 => Refusal::OverBudget,
            5 => Refusal::BadKind,
            n => Refusal::Other(n),
        })
    }

    /// The code in `RAX`.
    pub fn code(self) -> u64 {
        match self {
            Refusal::NotAllowed => 1,
            Refusal::BadAddress => 2,
            Refusal::TooLong => 3,
            Refusal::OverBudget => 4,
            Refusal::BadKind => 5,
            Refusal::Other(n) => n,
        }
    }

    /// The code's name.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::NotAllowed => "NOT_ALLOWED",
            Refusal::BadAddress => "BAD_ADDRESS",
            Refusal::TooLong => "TOO_LONG",
            Refusal::OverBudget => "OVER_BUDGET",
            Refusal::BadKind => "BAD_KIND",
            Refusal::Other(_) => "UNKNOWN",
        }
    }

    fn meaning(self) -> &'static str {
        match self {
            Refusal::NotAllowed => {
                "the VM's channel is off, or it takes kernel callers only (boot it with `vm=...:channel=user`)"
            }
            Refusal::BadAddress => "the buffer is not mapped inside the VM",
            Refusal::TooLong => "the call is longer than 65536 bytes",
            Refusal::OverBudget => "over the VM's budget (1 MiB burst, 1 MiB/s, 16 MiB per run)",
            Refusal::BadKind => "the hypervisor does not take this kind",
            Refusal::Other(_) => "a code this guest-kit does not know",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.name(), self.code(), self.meaning())
    }
}

/// The byte ranges of the calls that deliver `len` bytes of `data`: each at most
/// [`MAX_CALL`] bytes, and no call but the last ends right after a newline (so a
/// delivery cut short never ends with one, see the module documentation). Empty data
/// gives no call.
pub fn call_ranges(data: &[u8]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < data.len() {
        let mut end = (start + MAX_CALL).min(data.len());
        if end < data.len() {
            // Step back over newlines; a call of newlines only stays as it is.
            let mut e = end;
            while e > start + 1 && data[e - 1] == b'\n' {
                e -= 1;
            }
            if data[e - 1] != b'\n' {
                end = e;
            }
        }
        out.push(start..end);
        start = end;
    }
    out
}

/// What [`send_with`] delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sent {
    /// Bytes handed over.
    pub bytes: usize,
    /// Calls made.
    pub calls: usize,
}

/// Why a delivery failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendError {
    /// CPUID leaf 0x4000_0000 does not carry [`SIGNATURE`] (here: what it does carry).
    NotUnderHypervisor([u8; 12]),
    /// Nothing to send.
    Empty,
    /// The hypervisor refused call `call` (from 1) of `calls`; `sent` bytes had been
    /// accepted before it.
    Refused {
        refusal: Refusal,
        call: usize,
        calls: usize,
        sent: usize,
    },
    /// Not an x86_64 guest.
    Unsupported,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::NotUnderHypervisor(sig) => write!(
                f,
                "not under the profiling hypervisor (CPUID {HV_LEAF:#x} says `{}`, not `{}`): no hypercall made",
                String::from_utf8_lossy(sig).escape_debug(),
                String::from_utf8_lossy(&SIGNATURE)
            ),
            SendError::Empty => write!(f, "nothing to send (0 bytes)"),
            SendError::Refused {
                refusal,
                call,
                calls,
                sent,
            } => write!(
                f,
                "the hypervisor refused call {call} of {calls} with {refusal} ({sent} bytes accepted before it)"
            ),
            SendError::Unsupported => write!(f, "the hypercall channel is x86_64 only"),
        }
    }
}

impl std::error::Error for SendError {}

/// Delivers `data` as `kind` through `call` (one hypercall: the chunk and the kind, returns
/// `RAX`), in the chunks of [`call_ranges`]; stops at the first refusal.
pub fn send_with(
    data: &[u8],
    kind: u16,
    mut call: impl FnMut(&[u8], u16) -> u64,
) -> Result<Sent, SendError> {
    let ranges = call_ranges(data);
    if ranges.is_empty() {
        return Err(SendError::Empty);
    }
    let calls = ranges.len();
    let mut sent = 0;
    for (i, r) in ranges.into_iter().enumerate() {
        let chunk = &data[r];
        if let Some(refusal) = Refusal::from_code(call(chunk, kind)) {
            return Err(SendError::Refused {
                refusal,
                call: i + 1,
                calls,
                sent,
            });
        }
        sent += chunk.len();
    }
    Ok(Sent { bytes: sent, calls })
}

/// EAX, EBX, ECX, EDX of CPUID `leaf` (sub-leaf 0); zeros off x86_64.
pub fn cpuid(leaf: u32) -> [u32; 4] {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: CPUID exists on every x86_64 CPU, works in user mode and only writes
        // the four registers the intrinsic returns.
        #[allow(unused_unsafe)]
        let r = unsafe { core::arch::x86_64::__cpuid_count(leaf, 0) };
        [r.eax, r.ebx, r.ecx, r.edx]
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = leaf;
        [0; 4]
    }
}

/// The 12 signature bytes of CPUID leaf [`HV_LEAF`] (EBX, ECX, EDX).
pub fn hypervisor_signature() -> [u8; 12] {
    let [_, b, c, d] = cpuid(HV_LEAF);
    let mut sig = [0u8; 12];
    sig[..4].copy_from_slice(&b.to_le_bytes());
    sig[4..8].copy_from_slice(&c.to_le_bytes());
    sig[8..].copy_from_slice(&d.to_le_bytes());
    sig
}

/// Whether this runs under the profiling hypervisor (and may use `VMCALL`).
pub fn under_hypervisor() -> bool {
    hypervisor_signature() == SIGNATURE
}

/// The TSC rate from CPUID leaf 0x15 (crystal Hz in ECX times EBX/EAX; the hypervisor
/// puts its measured TSC rate in ECX with EAX = EBX = 1), if the CPU gives one.
pub fn tsc_hz() -> Option<u64> {
    if cpuid(0)[0] < 0x15 {
        return None;
    }
    let [den, num, crystal, _] = cpuid(0x15);
    if den == 0 || num == 0 || crystal == 0 {
        return None;
    }
    Some(u64::from(crystal) * u64::from(num) / u64::from(den))
}

/// The TSC (the host's under the hypervisor: offset 0, not trapped).
pub fn rdtsc() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: RDTSC reads the time-stamp counter; user mode may (CR4.TSD clear on
        // Linux); no memory is touched.
        #[allow(unused_unsafe)]
        unsafe {
            core::arch::x86_64::_rdtsc()
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        0
    }
}

/// One `GUEST_DATA` hypercall; returns `RAX`.
///
/// # Safety
///
/// Only under the profiling hypervisor ([`under_hypervisor`]): elsewhere `VMCALL` raises
/// #UD. `addr..addr + len` must be readable memory of this process.
#[cfg(target_arch = "x86_64")]
unsafe fn vmcall_guest_data(addr: u64, len: u64, kind: u64) -> u64 {
    let rax: u64;
    // SAFETY: the caller guarantees the hypervisor is there and the buffer readable; the
    // hypervisor only reads it and writes RAX. RBX is reserved by the compiler, so the
    // address goes in through a scratch register swapped with it around the VMCALL.
    unsafe {
        core::arch::asm!(
            "xchg {addr}, rbx",
            "vmcall",
            "xchg {addr}, rbx",
            addr = inout(reg) addr => _,
            inout("rax") GUEST_DATA => rax,
            inout("rcx") len => _,
            inout("rdx") kind => _,
            options(nostack, readonly),
        );
    }
    rax
}

/// Delivers `data` as `kind` to the host through the hypercall channel: checks the
/// hypervisor's signature, then one `VMCALL` per chunk of [`call_ranges`], each after
/// reading one byte of every page of the chunk (so the pages are present when the
/// hypervisor walks the page tables).
pub fn send(data: &[u8], kind: u16) -> Result<Sent, SendError> {
    #[cfg(target_arch = "x86_64")]
    {
        let sig = hypervisor_signature();
        if sig != SIGNATURE {
            return Err(SendError::NotUnderHypervisor(sig));
        }
        send_with(data, kind, |chunk, kind| {
            touch_pages(chunk);
            // SAFETY: the signature says the profiling hypervisor is there; `chunk` is a
            // live borrowed slice of this process's memory for the whole call.
            unsafe { vmcall_guest_data(chunk.as_ptr() as u64, chunk.len() as u64, u64::from(kind)) }
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (data, kind);
        Err(SendError::Unsupported)
    }
}

/// Reads one byte of every page `data` spans.
fn touch_pages(data: &[u8]) {
    const PAGE: usize = 4096;
    let base = data.as_ptr() as usize;
    let mut at = 0;
    while at < data.len() {
        std::hint::black_box(data[at]);
        // The next page boundary.
        at = (base + at + PAGE) / PAGE * PAGE - base;
    }
    if let Some(last) = data.last() {
        std::hint::black_box(*last);
    }
}

/// One bundle delivered through the channel and reassembled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered {
    /// Its text.
    pub text: String,
    /// Parsed.
    pub bundle: Bundle,
    /// `seq` of its first record, and how many records it took.
    pub first_seq: u32,
    pub records: u32,
}

/// What one VM's kind-1 records held.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmChannel {
    /// The last complete bundle that parses (see the module documentation).
    pub bundle: Option<Delivered>,
    /// Bundles started (records beginning with `gk-bundle `).
    pub deliveries: usize,
    /// Records and data bytes seen.
    pub records: u64,
    pub bytes: u64,
    /// Records missing according to `seq`.
    pub missing: u64,
    /// What went wrong, one line each (without the VM's name).
    pub warnings: Vec<String>,
}

/// A bundle being put together.
#[derive(Clone, Debug, Default)]
struct Piece {
    data: Vec<u8>,
    first_seq: u32,
    last_seq: u32,
    records: u32,
    /// Records are missing inside or after it.
    holed: bool,
}

#[derive(Clone, Debug, Default)]
struct Stream {
    next: u32,
    cur: Option<Piece>,
    done: Vec<Piece>,
    /// Bytes that came before any `gk-bundle ` record (not after a gap).
    stray: u64,
    out: VmChannel,
}

/// Puts the bundles of every VM back together from `GuestData` records, fed in log order.
#[derive(Clone, Debug, Default)]
pub struct Reassembler {
    streams: BTreeMap<u16, Stream>,
    /// Records of other kinds, per kind.
    pub other_kinds: BTreeMap<u16, u64>,
}

impl Reassembler {
    pub fn new() -> Self {
        Self::default()
    }

    /// One `GuestData` record.
    pub fn push(&mut self, vm: u16, kind: u16, seq: u32, data: &[u8]) {
        if kind != KIND_BUNDLE {
            *self.other_kinds.entry(kind).or_default() += 1;
            return;
        }
        let s = self.streams.entry(vm).or_default();
        if seq < s.next {
            s.out.warnings.push(format!(
                "bundle record seq {seq} came again or out of order (expected {}): ignored",
                s.next
            ));
            return;
        }
        s.out.records += 1;
        s.out.bytes += data.len() as u64;
        if seq > s.next {
            let lost = u64::from(seq - s.next);
            s.out.missing += lost;
            s.out.warnings.push(format!(
                "bundle records seq {}..={} are missing (lost frames): the bundle they belong to is not used",
                s.next,
                seq - 1
            ));
            if let Some(cur) = s.cur.as_mut() {
                cur.holed = true;
            }
        }
        s.next = seq.wrapping_add(1);
        if data.starts_with(BUNDLE_START) {
            if let Some(cur) = s.cur.take() {
                s.done.push(cur);
            }
            s.out.deliveries += 1;
            s.cur = Some(Piece {
                data: data.to_vec(),
                first_seq: seq,
                last_seq: seq,
                records: 1,
                holed: false,
            });
        } else if let Some(cur) = s.cur.as_mut() {
            cur.data.extend_from_slice(data);
            cur.records += 1;
            cur.last_seq = seq;
        } else if s.out.missing == 0 {
            // After a gap, headerless data is the rest of a bundle whose start was lost
            // (already reported).
            s.stray += data.len() as u64;
        }
    }

    /// Every VM's bundles.
    pub fn finish(self) -> BTreeMap<u16, VmChannel> {
        self.streams
            .into_iter()
            .map(|(vm, mut s)| {
                if let Some(cur) = s.cur.take() {
                    s.done.push(cur);
                }
                let mut out = s.out;
                if s.stray > 0 {
                    out.warnings.push(format!(
                        "{} bytes of bundle data before any `gk-bundle` header: ignored",
                        s.stray
                    ));
                }
                let n = s.done.len();
                for (i, piece) in s.done.into_iter().enumerate().rev() {
                    let what = format!(
                        "bundle {} of {n} (records {}..={}, {} bytes)",
                        i + 1,
                        piece.first_seq,
                        piece.last_seq,
                        piece.data.len()
                    );
                    let problem = if piece.holed {
                        Some("records of it are missing".to_string())
                    } else if piece.data.last() != Some(&b'\n') {
                        Some(
                            "it was cut off (no newline at its end: a call was refused or lost)"
                                .to_string(),
                        )
                    } else {
                        match String::from_utf8(piece.data) {
                            Err(_) => Some("it is not UTF-8 text".to_string()),
                            Ok(text) => match Bundle::parse(&text) {
                                Err(e) => Some(format!("it does not parse: {e}")),
                                Ok(bundle) => {
                                    out.bundle = Some(Delivered {
                                        text,
                                        bundle,
                                        first_seq: piece.first_seq,
                                        records: piece.records,
                                    });
                                    None
                                }
                            },
                        }
                    };
                    if let Some(p) = problem {
                        out.warnings.push(format!("{what} is not used: {p}"));
                    }
                    if out.bundle.is_some() {
                        if i + 1 < n {
                            out.warnings
                                .push(format!("using {what}, the last complete one"));
                        }
                        break;
                    }
                }
                (vm, out)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B1: &str = "gk-bundle 1\nvm linux\nproc 7 sh cr3=0x8000\n";
    const B2: &str = "gk-bundle 1\nvm linux\nproc 9 workload cr3=0xa000\n";

    /// Records of `data` split at `size` bytes, numbered from `seq`.
    fn records(data: &[u8], size: usize, seq: &mut u32) -> Vec<(u32, Vec<u8>)> {
        data.chunks(size)
            .map(|c| {
                *seq += 1;
                (*seq - 1, c.to_vec())
            })
            .collect()
    }

    fn reassemble(recs: &[(u32, Vec<u8>)]) -> VmChannel {
        let mut r = Reassembler::new();
        for (seq, data) in recs {
            r.push(0, KIND_BUNDLE, *seq, data);
        }
        r.finish().remove(&0).unwrap_or_default()
    }

    #[test]
    fn a_bundle_split_over_records_comes_back_whole() {
        let mut seq = 0;
        let got = reassemble(&records(B1.as_bytes(), 12, &mut seq));
        assert_eq!(got.warnings, Vec::<String>::new());
        let d = got.bundle.unwrap();
        assert_eq!(d.text, B1);
        assert_eq!((d.first_seq, d.records), (0, seq));
        assert_eq!((got.deliveries, got.missing), (1, 0));
    }

    #[test]
    fn the_last_complete_bundle_wins_and_other_vms_and_kinds_stay_apart() {
        let mut seq = 0;
        let mut recs = records(B1.as_bytes(), 11, &mut seq);
        recs.extend(records(B2.as_bytes(), 1024, &mut seq));
        let mut r = Reassembler::new();
        for (i, (seq, data)) in recs.iter().enumerate() {
            r.push(0, KIND_BUNDLE, *seq, data);
            if i == 2 {
                r.push(1, KIND_BUNDLE, 0, B1.as_bytes());
                r.push(0, 9, 0, b"gk-bundle 1\nvm other\n");
            }
        }
        assert_eq!(r.other_kinds, BTreeMap::from([(9, 1)]));
        let all = r.finish();
        assert_eq!(all[&0].bundle.as_ref().unwrap().text, B2);
        assert_eq!(all[&0].deliveries, 2);
        assert_eq!(all[&0].warnings, Vec::<String>::new());
        assert_eq!(all[&1].bundle.as_ref().unwrap().text, B1);
    }

    #[test]
    fn a_gap_is_reported_and_its_bundle_not_used() {
        let mut seq = 0;
        let mut recs = records(B1.as_bytes(), 10, &mut seq);
        recs.remove(2);
        let got = reassemble(&recs);
        assert!(got.bundle.is_none());
        assert_eq!(got.missing, 1);
        assert_eq!(
            got.warnings,
            [
                "bundle records seq 2..=2 are missing (lost frames): the bundle they belong to is not used",
                "bundle 1 of 1 (records 0..=4, 32 bytes) is not used: records of it are missing",
            ]
        );
        // The last record lost: the bundle may look whole, it is not used either.
        let mut seq = 0;
        let mut recs = records(B1.as_bytes(), 10, &mut seq);
        recs.extend(records(B2.as_bytes(), 1024, &mut seq));
        let b2 = recs.pop().unwrap();
        recs.pop();
        recs.push(b2);
        let got = reassemble(&recs);
        assert_eq!(got.bundle.unwrap().text, B2);
        // A bundle whose first records were lost: its rest is not stray data.
        let mut seq = 0;
        let recs = records(B1.as_bytes(), 10, &mut seq);
        let got = reassemble(&recs[2..]);
        assert!(got.bundle.is_none());
        assert_eq!(got.warnings.len(), 1, "{:?}", got.warnings);
    }

    #[test]
    fn a_cut_off_delivery_falls_back_to_the_one_before() {
        let mut seq = 0;
        let mut recs = records(B1.as_bytes(), 1024, &mut seq);
        // The second delivery's first call was accepted, the next refused.
        recs.extend(records(&B2.as_bytes()[..20], 1024, &mut seq));
        let got = reassemble(&recs);
        assert_eq!(got.bundle.unwrap().text, B1);
        assert_eq!(
            got.warnings,
            [
                "bundle 2 of 2 (records 1..=1, 20 bytes) is not used: it was cut off (no newline at its end: a call was refused or lost)",
                "using bundle 1 of 2 (records 0..=0, 42 bytes), the last complete one",
            ]
        );
        // Junk before any header, a repeated record, text that does not parse.
        let got = reassemble(&[
            (0, b"junk".to_vec()),
            (1, b"gk-bundle 9\nvm x\n".to_vec()),
            (1, b"again".to_vec()),
        ]);
        assert!(got.bundle.is_none());
        assert_eq!(got.warnings.len(), 3, "{:?}", got.warnings);
        assert!(got.warnings[0].contains("came again"));
        assert!(got.warnings[1].contains("4 bytes of bundle data before"));
        assert!(got.warnings[2].contains("does not parse"));
    }

    #[test]
    fn calls_never_end_after_a_newline_except_the_last() {
        let mut data = vec![b'a'; MAX_CALL * 2 + 10];
        data[MAX_CALL - 1] = b'\n';
        data[MAX_CALL - 2] = b'\n';
        *data.last_mut().unwrap() = b'\n';
        let r = call_ranges(&data);
        assert_eq!(
            r,
            [
                0..MAX_CALL - 2,
                MAX_CALL - 2..2 * MAX_CALL - 2,
                2 * MAX_CALL - 2..data.len()
            ]
        );
        assert!(r.iter().all(|c| c.len() <= MAX_CALL));
        let one = call_ranges(b"x\n");
        assert_eq!((one.len(), one[0].clone()), (1, 0..2));
        assert!(call_ranges(b"").is_empty());
        // Newlines only: plain chunks.
        let nl = vec![b'\n'; MAX_CALL + 1];
        assert_eq!(call_ranges(&nl), [0..MAX_CALL, MAX_CALL..MAX_CALL + 1]);
    }

    #[test]
    fn send_stops_at_the_first_refusal_and_names_it() {
        let data = vec![b'x'; MAX_CALL * 3];
        let mut seen = Vec::new();
        let ok = send_with(&data, KIND_BUNDLE, |c, k| {
            seen.push((c.len(), k));
            0
        });
        assert_eq!(
            ok,
            Ok(Sent {
                bytes: data.len(),
                calls: 3
            })
        );
        assert_eq!(seen, [(MAX_CALL, 1); 3]);
        let mut n = 0;
        let err = send_with(&data, KIND_BUNDLE, |_, _| {
            n += 1;
            if n == 2 { 4 } else { 0 }
        })
        .unwrap_err();
        assert_eq!(
            err,
            SendError::Refused {
                refusal: Refusal::OverBudget,
                call: 2,
                calls: 3,
                sent: MAX_CALL
            }
        );
        assert_eq!(
            err.to_string(),
            "the hypervisor refused call 2 of 3 with OVER_BUDGET (4): over the VM's budget (1 MiB burst, 1 MiB/s, 16 MiB per run) (65536 bytes accepted before it)"
        );
        assert_eq!(send_with(b"", 1, |_, _| 0), Err(SendError::Empty));
        for code in 1..=6 {
            let r = Refusal::from_code(code).unwrap();
            assert_eq!(r.code(), code);
        }
        assert_eq!(Refusal::from_code(0), None);
        assert_eq!(Refusal::from_code(1).unwrap().name(), "NOT_ALLOWED");
    }

    #[test]
    fn pages_are_touched_without_reading_past_the_end() {
        let v = vec![1u8; 3 * 4096 + 17];
        for start in [0, 1, 4095, 4096] {
            touch_pages(&v[start..]);
        }
        touch_pages(&[]);
    }
}
