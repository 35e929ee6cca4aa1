//! The guest-data channel: VMCALL `GUEST_DATA` (docs/contracts.md, "Guests") copies a guest
//! buffer into the sample log, so a guest's bundle reaches the host without a VM exit per
//! byte as the emulated UART costs.
//!
//! Everything a guest hands over is checked here before a byte is copied: who may call
//! (the VM's [`Channel`] and the caller's CPL), the kind, the length, the rate and total
//! budget, and every page of the buffer, translated through the guest's own page tables
//! (present, and user-accessible at every level for a user caller) to guest-physical memory
//! inside the VM's RAM. The bytes go into a staging buffer the VM owns (64 KiB, allocated
//! once); the run loop hands them to the exporter before the guest runs again.
//!
//! Pure logic on plain memory: the exit handler passes the guest's RAM, paging mode, CR3
//! and the host TSC.

extern crate alloc;

use alloc::boxed::Box;
use alloc::vec;
use core::fmt;

pub use loader::cmdline::Channel;

use super::mmio::{self, GuestMemory, PagingMode, Privilege, WalkError};

/// Most bytes one call may hand over.
pub const MAX_CALL_BYTES: u64 = 64 << 10;
/// Most bytes one VM may hand over in the whole run.
pub const TOTAL_BYTES: u64 = 16 << 20;
/// Token bucket: its size (bytes that may go at once after a quiet time) ...
pub const BURST_BYTES: u64 = 1 << 20;
/// ... and how fast it fills, in bytes per second of host time.
pub const REFILL_BYTES_PER_SEC: u64 = 1 << 20;

/// Kinds of data (`RDX`) the channel accepts: the guest bundle text.
pub const KIND_BUNDLE: u64 = vmlog::GUEST_DATA_BUNDLE as u64;

/// `RAX` after an accepted call.
pub const ACCEPTED: u64 = 0;

/// Why a call was refused; its number is what the guest gets in `RAX`. Nothing of a refused
/// call reaches the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The VM's channel is off, or the caller is not at CPL 0 and the VM allows only the
    /// kernel.
    NotAllowed,
    /// Some byte of the buffer is not mapped as the caller may read it, not in the VM's RAM,
    /// or the range is not canonical or wraps.
    BadAddress(WalkError),
    /// Length 0 or above [`MAX_CALL_BYTES`].
    TooLong,
    /// Over the rate ([`BURST_BYTES`], [`REFILL_BYTES_PER_SEC`]) or the [`TOTAL_BYTES`]
    /// limit, or the previous call's bytes are not exported yet.
    OverBudget,
    /// A kind other than [`KIND_BUNDLE`].
    BadKind,
}

impl Refusal {
    /// The code returned in `RAX`.
    pub const fn code(self) -> u64 {
        match self {
            Refusal::NotAllowed => 1,
            Refusal::BadAddress(_) => 2,
            Refusal::TooLong => 3,
            Refusal::OverBudget => 4,
            Refusal::BadKind => 5,
        }
    }
}

/// The registers of one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Call {
    /// `RBX`: guest-virtual address of the buffer.
    pub addr: u64,
    /// `RCX`: its length in bytes.
    pub len: u64,
    /// `RDX`: what the bytes are.
    pub kind: u64,
    /// The caller's privilege level (guest SS.DPL).
    pub cpl: u8,
}

/// How the guest's addresses translate at the time of the call.
pub struct GuestView<'m, M: ?Sized> {
    /// The VM's RAM, guest-physical 0 up.
    pub mem: &'m M,
    pub mode: PagingMode,
    pub cr3: u64,
}

/// Accepted and refused calls of one VM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelStats {
    pub accepted_calls: u64,
    pub accepted_bytes: u64,
    pub not_allowed: u64,
    pub bad_address: u64,
    pub too_long: u64,
    pub over_budget: u64,
    pub bad_kind: u64,
}

impl ChannelStats {
    fn count(&mut self, r: Refusal) {
        let c = match r {
            Refusal::NotAllowed => &mut self.not_allowed,
            Refusal::BadAddress(_) => &mut self.bad_address,
            Refusal::TooLong => &mut self.too_long,
            Refusal::OverBudget => &mut self.over_budget,
            Refusal::BadKind => &mut self.bad_kind,
        };
        *c += 1;
    }

    /// Calls refused, all reasons.
    pub fn refused(&self) -> u64 {
        self.not_allowed + self.bad_address + self.too_long + self.over_budget + self.bad_kind
    }
}

/// `N bytes in M calls accepted; refused: not-allowed A, bad-address B, too-long C,
/// over-budget D, bad-kind E` (the stop report prints it after `hv: vm NAME channel: `).
impl fmt::Display for ChannelStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} bytes in {} calls accepted; refused: not-allowed {}, bad-address {}, too-long {}, over-budget {}, bad-kind {}",
            self.accepted_bytes,
            self.accepted_calls,
            self.not_allowed,
            self.bad_address,
            self.too_long,
            self.over_budget,
            self.bad_kind
        )
    }
}

/// The rate and total limits: a token bucket in bytes over the host TSC, and a running
/// total.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    tokens: u64,
    /// TSC of the last refill; `None` before the first call (the bucket starts full).
    last_tsc: Option<u64>,
    /// Refill credit below one byte, in byte-ticks (`bytes * tsc_hz`), kept so that
    /// frequent calls do not lose the fractions.
    remainder: u128,
    /// Bytes accepted so far.
    pub total: u64,
}

impl Default for Budget {
    fn default() -> Self {
        Self::new()
    }
}

impl Budget {
    pub const fn new() -> Self {
        Budget {
            tokens: BURST_BYTES,
            last_tsc: None,
            remainder: 0,
            total: 0,
        }
    }

    /// Adds the bytes earned since the last refill (up to [`BURST_BYTES`]).
    fn refill(&mut self, now: u64, tsc_hz: u64) {
        let Some(last) = self.last_tsc else {
            self.last_tsc = Some(now);
            return;
        };
        let hz = u128::from(tsc_hz.max(1));
        let credit = u128::from(now.saturating_sub(last)) * u128::from(REFILL_BYTES_PER_SEC)
            + self.remainder;
        let earned = credit / hz;
        self.remainder = credit % hz;
        let room = BURST_BYTES - self.tokens;
        if earned >= u128::from(room) {
            self.tokens = BURST_BYTES;
            self.remainder = 0;
        } else {
            self.tokens += earned as u64;
        }
        self.last_tsc = Some(now.max(last));
    }

    /// Whether `len` bytes may go at `now` (refilling first); takes nothing.
    pub fn allows(&mut self, len: u64, now: u64, tsc_hz: u64) -> bool {
        self.refill(now, tsc_hz);
        len <= self.tokens && self.total.saturating_add(len) <= TOTAL_BYTES
    }

    /// Takes `len` bytes [`Self::allows`] just allowed.
    fn take(&mut self, len: u64) {
        self.tokens = self.tokens.saturating_sub(len);
        self.total = self.total.saturating_add(len);
    }

    /// Bytes that may go at once now (without refilling).
    pub fn tokens(&self) -> u64 {
        self.tokens
    }
}

/// One VM's channel: its permission, budget, counters and staging buffer.
pub struct GuestChannel {
    permission: Channel,
    /// [`MAX_CALL_BYTES`] long (empty when the channel is off); never grows.
    staging: Box<[u8]>,
    /// Bytes of the last accepted call at the front of `staging`, not yet exported.
    staged: usize,
    staged_kind: u16,
    pub budget: Budget,
    pub stats: ChannelStats,
}

impl GuestChannel {
    /// A channel with `permission`; the staging buffer is allocated here, once, unless the
    /// channel is off.
    pub fn new(permission: Channel) -> Self {
        let staging = match permission {
            Channel::Off => Box::default(),
            Channel::Kernel | Channel::User => {
                vec![0u8; MAX_CALL_BYTES as usize].into_boxed_slice()
            }
        };
        GuestChannel {
            permission,
            staging,
            staged: 0,
            staged_kind: 0,
            budget: Budget::new(),
            stats: ChannelStats::default(),
        }
    }

    pub fn permission(&self) -> Channel {
        self.permission
    }

    /// Handles one call at host TSC `now`: `Ok(())` when its bytes are staged (and then
    /// taken from the budget and counted), else why not (counted, nothing staged).
    pub fn call<M: GuestMemory + ?Sized>(
        &mut self,
        call: Call,
        guest: &GuestView<'_, M>,
        now: u64,
        tsc_hz: u64,
    ) -> Result<(), Refusal> {
        let result = self.try_call(call, guest, now, tsc_hz);
        match result {
            Ok(len) => {
                self.budget.take(len as u64);
                self.staged = len;
                self.staged_kind = call.kind as u16;
                self.stats.accepted_calls += 1;
                self.stats.accepted_bytes += len as u64;
                Ok(())
            }
            Err(r) => {
                self.stats.count(r);
                Err(r)
            }
        }
    }

    /// The checks, in the order their refusals take precedence, then the copy. Returns the
    /// number of bytes staged.
    fn try_call<M: GuestMemory + ?Sized>(
        &mut self,
        call: Call,
        guest: &GuestView<'_, M>,
        now: u64,
        tsc_hz: u64,
    ) -> Result<usize, Refusal> {
        let who = match (self.permission, call.cpl) {
            (Channel::Off, _) | (Channel::Kernel, 1..) => return Err(Refusal::NotAllowed),
            (_, 0) => Privilege::Supervisor,
            (Channel::User, _) => Privilege::User,
        };
        if call.kind != KIND_BUNDLE {
            return Err(Refusal::BadKind);
        }
        if call.len == 0 || call.len > MAX_CALL_BYTES {
            return Err(Refusal::TooLong);
        }
        // Before any walk, so that a guest calling in a loop costs little once over budget.
        if self.staged > 0 || !self.budget.allows(call.len, now, tsc_hz) {
            return Err(Refusal::OverBudget);
        }
        copy_in(guest, call.addr, call.len, who, &mut self.staging).map_err(Refusal::BadAddress)
    }

    /// The bytes of the last accepted call and their kind, until [`Self::clear_staged`].
    pub fn staged(&self) -> Option<(u16, &[u8])> {
        match self.staging.get(..self.staged) {
            Some(bytes) if !bytes.is_empty() => Some((self.staged_kind, bytes)),
            _ => None,
        }
    }

    /// The staged bytes are exported: the next call may stage its own.
    pub fn clear_staged(&mut self) {
        self.staged = 0;
    }

    /// Size of the staging buffer (fixed).
    pub fn staging_capacity(&self) -> usize {
        self.staging.len()
    }
}

/// Copies guest-virtual `[va, va + len)` into the front of `out`, one mapped piece (the
/// rest of a 4 KiB, 2 MiB or 1 GiB page) at a time. Either every byte is copied, or the
/// error names the first piece that could not be; `out` is never written past `len`, nor
/// past its own end.
pub fn copy_in<M: GuestMemory + ?Sized>(
    guest: &GuestView<'_, M>,
    va: u64,
    len: u64,
    who: Privilege,
    out: &mut [u8],
) -> Result<usize, WalkError> {
    mmio::check_range(guest.mode, va, len)?;
    let total = usize::try_from(len).map_err(|_| WalkError::NonCanonical)?;
    if total > out.len() {
        // Callers check the length first; an out-of-range one is refused, not truncated.
        return Err(WalkError::NonCanonical);
    }
    let mut done = 0usize;
    while done < total {
        let left = (total - done) as u64;
        let piece = mmio::translate_piece(
            guest.mem,
            guest.mode,
            guest.cr3,
            va + done as u64,
            left,
            who,
        )?;
        // translate_piece returns at most `left` bytes.
        let n = piece.len.min(left) as usize;
        let dst = out.get_mut(done..done + n).ok_or(WalkError::OutsideRam)?;
        if !guest.mem.read(piece.gpa, dst) {
            return Err(WalkError::OutsideRam);
        }
        done += n;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: PagingMode = PagingMode {
        paging: true,
        long_mode: true,
        five_level: false,
    };
    const TSC_HZ: u64 = 1_000_000_000;
    const MIB: u64 = 1 << 20;

    const P: u64 = 1; // present
    const W: u64 = 2; // writable
    const U: u64 = 4; // user
    const PS: u64 = 1 << 7;

    /// A guest with 8 MiB of RAM and 4-level tables (PML4 at 0x1000):
    /// - user data: VA 0x40_0000.. two user 4 KiB pages -> 0x10_0000, 0x10_1000 (the second
    ///   physically apart: 0x12_3000), then VA 0x40_2000 unmapped;
    /// - VA 0x40_3000 maps a user page whose PT entry points past RAM (0x7f0_0000);
    /// - VA 0x60_0000: a 2 MiB user page -> 0x20_0000;
    /// - VA 0x7f_0000_0000.. (PML4 0, PDPT 0x1fc): a 1 GiB user page -> 0, which runs past
    ///   the 8 MiB of RAM;
    /// - VA 0x80_0000: a 4 KiB page whose PDE lacks U/S (supervisor), present -> 0x30_0000;
    /// - kernel VA 0xffff_8880_0000_0000: a supervisor 2 MiB page -> 0x40_0000.
    struct Guest {
        ram: Vec<u8>,
    }

    impl Guest {
        fn put(&mut self, addr: u64, v: u64) {
            self.ram[addr as usize..addr as usize + 8].copy_from_slice(&v.to_le_bytes());
        }

        fn new() -> Self {
            let mut g = Guest {
                ram: vec![0u8; 8 << 20],
            };
            let idx = |va: u64, shift: u32| ((va >> shift) & 0x1ff) * 8;
            // PML4[0] -> PDPT 0x2000 (user).
            g.put(0x1000, 0x2000 | P | W | U);
            // PDPT[0] -> PD 0x3000 (user).
            g.put(0x2000, 0x3000 | P | W | U);
            // PD[2] (VA 0x40_0000) -> PT 0x4000 (user).
            g.put(0x3000 + idx(0x40_0000, 21), 0x4000 | P | W | U);
            g.put(0x4000, 0x10_0000 | P | W | U);
            g.put(0x4000 + 8, 0x12_3000 | P | W | U);
            // PT[2] (VA 0x40_2000) left not present.
            g.put(0x4000 + 3 * 8, 0x7f0_0000 | P | W | U);
            // PD[3] (VA 0x60_0000): 2 MiB user page at 0x20_0000.
            g.put(0x3000 + idx(0x60_0000, 21), 0x20_0000 | P | W | U | PS);
            // PD[4] (VA 0x80_0000) -> PT 0x5000, the PDE without U/S.
            g.put(0x3000 + idx(0x80_0000, 21), 0x5000 | P | W);
            g.put(0x5000, 0x30_0000 | P | W | U);
            // PDPT[0x1fc] (VA 0x7f_0000_0000): 1 GiB user page at 0.
            g.put(0x2000 + idx(0x7f_0000_0000, 30), P | W | U | PS);
            // Kernel half: PML4[0x111] -> PDPT 0x6000 -> PD 0x7000 -> 2 MiB at 0x40_0000.
            let k: u64 = 0xffff_8880_0000_0000;
            g.put(0x1000 + idx(k, 39), 0x6000 | P | W);
            g.put(0x6000 + idx(k, 30), 0x7000 | P | W);
            g.put(0x7000 + idx(k, 21), 0x40_0000 | P | W | PS);
            // Recognisable bytes in every data page.
            for (i, b) in g.ram[0x10_0000..0x50_0000].iter_mut().enumerate() {
                *b = (i * 7 + i / 4096) as u8;
            }
            g
        }

        fn view(&self) -> GuestView<'_, [u8]> {
            GuestView {
                mem: &self.ram[..],
                mode: LONG,
                cr3: 0x1000,
            }
        }
    }

    fn call(addr: u64, len: u64, cpl: u8) -> Call {
        Call {
            addr,
            len,
            kind: KIND_BUNDLE,
            cpl,
        }
    }

    fn staged(ch: &GuestChannel) -> Vec<u8> {
        ch.staged().map(|(_, b)| b.to_vec()).unwrap_or_default()
    }

    #[test]
    fn a_user_buffer_across_two_scattered_pages_is_copied_exactly() {
        let g = Guest::new();
        let mut ch = GuestChannel::new(Channel::User);
        // 0x40_0f00..0x40_1100: 256 bytes from 0x10_0f00, 256 from 0x12_3000.
        assert_eq!(
            ch.call(call(0x40_0f00, 512, 3), &g.view(), 0, TSC_HZ),
            Ok(())
        );
        let mut want = g.ram[0x10_0f00..0x10_1000].to_vec();
        want.extend_from_slice(&g.ram[0x12_3000..0x12_3100]);
        assert_eq!(staged(&ch), want);
        assert_eq!(ch.staged().map(|(k, _)| k), Some(1));
        assert_eq!((ch.stats.accepted_calls, ch.stats.accepted_bytes), (1, 512));
        // Not exported yet: the next call is refused, nothing replaced.
        assert_eq!(
            ch.call(call(0x40_0000, 16, 3), &g.view(), 0, TSC_HZ),
            Err(Refusal::OverBudget)
        );
        assert_eq!(staged(&ch), want);
        ch.clear_staged();
        assert_eq!(ch.staged(), None);
        assert_eq!(
            ch.call(call(0x40_0000, 16, 3), &g.view(), 0, TSC_HZ),
            Ok(())
        );
    }

    #[test]
    fn large_pages_and_the_kernel_half() {
        let g = Guest::new();
        let mut ch = GuestChannel::new(Channel::User);
        // 2 MiB page: 64 KiB from its middle.
        assert_eq!(
            ch.call(call(0x61_0000, 65536, 3), &g.view(), 0, TSC_HZ),
            Ok(())
        );
        assert_eq!(staged(&ch), g.ram[0x21_0000..0x22_0000]);
        ch.clear_staged();
        // 1 GiB page mapping guest-physical 0: its start is RAM.
        assert_eq!(
            ch.call(call(0x7f_0010_0000, 100, 0), &g.view(), 0, TSC_HZ),
            Ok(())
        );
        assert_eq!(staged(&ch), g.ram[0x10_0000..0x10_0064]);
        ch.clear_staged();
        // Kernel caller, kernel address (supervisor 2 MiB page).
        let k = 0xffff_8880_0000_1000;
        assert_eq!(ch.call(call(k, 4096, 0), &g.view(), 0, TSC_HZ), Ok(()));
        assert_eq!(staged(&ch), g.ram[0x40_1000..0x40_2000]);
        ch.clear_staged();
        // The same from user mode: the PML4E is supervisor.
        assert_eq!(
            ch.call(call(k, 4096, 3), &g.view(), 0, TSC_HZ),
            Err(Refusal::BadAddress(WalkError::NotUser))
        );
    }

    #[test]
    fn user_bit_clear_at_one_level_refuses_user_callers_only() {
        let g = Guest::new();
        let mut ch = GuestChannel::new(Channel::User);
        // The PDE of 0x80_0000 lacks U/S; the PTE has it.
        let r = ch.call(call(0x80_0000, 64, 3), &g.view(), 0, TSC_HZ);
        assert_eq!(r, Err(Refusal::BadAddress(WalkError::NotUser)));
        assert_eq!(r.unwrap_err().code(), 2);
        assert_eq!(ch.staged(), None);
        assert_eq!(
            ch.call(call(0x80_0000, 64, 0), &g.view(), 0, TSC_HZ),
            Ok(())
        );
        assert_eq!(staged(&ch), g.ram[0x30_0000..0x30_0040]);
        assert_eq!((ch.stats.bad_address, ch.stats.accepted_calls), (1, 1));
    }

    #[test]
    fn unmapped_outside_ram_and_crossing_into_unmapped_are_bad_addresses() {
        let g = Guest::new();
        let mut ch = GuestChannel::new(Channel::User);
        let mut refused = |addr, len, cpl| {
            let r = ch.call(call(addr, len, cpl), &g.view(), 0, TSC_HZ);
            assert_eq!(ch.staged(), None, "{addr:#x}+{len}: nothing staged");
            r.map_err(|e| match e {
                Refusal::BadAddress(w) => w,
                other => panic!("{addr:#x}: {other:?}"),
            })
        };
        // Unmapped page (PT entry not present), and a PML4 slot with nothing.
        assert_eq!(refused(0x40_2000, 10, 0), Err(WalkError::NotPresent));
        assert_eq!(refused(0x1000_0000_0000, 10, 0), Err(WalkError::NotPresent));
        // Mapped by the guest, but to guest-physical memory outside the VM's RAM.
        assert_eq!(refused(0x40_3000, 10, 0), Err(WalkError::OutsideRam));
        // The 1 GiB page runs past the end of RAM: its first 8 MiB copy, the rest not.
        assert_eq!(
            refused(0x7f_007f_ff00, 0x200, 0),
            Err(WalkError::OutsideRam)
        );
        // Starts mapped, crosses into the unmapped page.
        assert_eq!(refused(0x40_1f00, 0x200, 3), Err(WalkError::NotPresent));
        // Non-canonical, and a range that would wrap past the top.
        assert_eq!(
            refused(0x0000_8000_0000_0000, 16, 0),
            Err(WalkError::NonCanonical)
        );
        assert_eq!(
            refused(0x0000_7fff_ffff_fff0, 32, 0),
            Err(WalkError::NonCanonical)
        );
        assert_eq!(refused(u64::MAX - 15, 32, 0), Err(WalkError::NonCanonical));
        assert_eq!(ch.stats.bad_address, 8);
        assert_eq!(ch.stats.refused(), 8);
        assert_eq!(ch.budget.total, 0, "refusals take no budget");
    }

    #[test]
    fn page_tables_outside_ram_and_a_cr3_past_it() {
        let mut g = Guest::new();
        // PD[5] (VA 0xa0_0000) -> a PT beyond RAM.
        g.put(0x3000 + 5 * 8, 0x1_0000_0000 | P | U);
        let mut ch = GuestChannel::new(Channel::User);
        assert_eq!(
            ch.call(call(0xa0_0000, 8, 3), &g.view(), 0, TSC_HZ),
            Err(Refusal::BadAddress(WalkError::OutsideRam))
        );
        let view = GuestView {
            cr3: 0xffff_f000,
            ..g.view()
        };
        assert_eq!(
            ch.call(call(0x40_0000, 8, 0), &view, 0, TSC_HZ),
            Err(Refusal::BadAddress(WalkError::OutsideRam))
        );
    }

    #[test]
    fn lengths_kinds_and_permissions() {
        let g = Guest::new();
        let mut ch = GuestChannel::new(Channel::Kernel);
        let mut code = |c: Call| {
            ch.call(c, &g.view(), 0, TSC_HZ)
                .map_or_else(|r| r.code(), |()| ACCEPTED)
        };
        assert_eq!(code(call(0x40_0000, 0, 0)), 3);
        assert_eq!(code(call(0x40_0000, 65537, 0)), 3);
        assert_eq!(code(call(0x40_0000, u64::MAX, 0)), 3);
        assert_eq!(code(call(0x40_0000, 1 << 32, 0)), 3);
        let bad_kind = |kind| Call {
            kind,
            ..call(0x40_0000, 8, 0)
        };
        assert_eq!(code(bad_kind(7)), 5);
        assert_eq!(code(bad_kind(0)), 5);
        assert_eq!(code(bad_kind(0x1_0000_0001)), 5, "all 64 bits count");
        // Kernel-only VM: CPL 3 (and 1, 2) refused before anything else is looked at.
        assert_eq!(code(call(0x40_0000, 8, 3)), 1);
        assert_eq!(code(call(0x40_0000, 0, 1)), 1);
        assert_eq!(code(call(0xdead_0000_0000_0000, 8, 2)), 1);
        assert_eq!(code(call(0x40_0000, 8, 0)), ACCEPTED);
        assert_eq!(
            ch.stats,
            ChannelStats {
                accepted_calls: 1,
                accepted_bytes: 8,
                not_allowed: 3,
                bad_address: 0,
                too_long: 4,
                over_budget: 0,
                bad_kind: 3,
            }
        );
        // Off: every call refused, no staging memory at all.
        let mut off = GuestChannel::new(Channel::Off);
        assert_eq!(off.staging_capacity(), 0);
        assert_eq!(
            off.call(call(0x40_0000, 8, 0), &g.view(), 0, TSC_HZ),
            Err(Refusal::NotAllowed)
        );
        assert_eq!(off.stats.not_allowed, 1);
    }

    #[test]
    fn the_staging_buffer_never_grows() {
        let g = Guest::new();
        let mut ch = GuestChannel::new(Channel::User);
        assert_eq!(ch.staging_capacity(), 65536);
        assert_eq!(
            ch.call(call(0x60_0000, 65536, 0), &g.view(), 0, TSC_HZ),
            Ok(())
        );
        assert_eq!(ch.staged().map(|(_, b)| b.len()), Some(65536));
        ch.clear_staged();
        assert_eq!(
            ch.call(call(0x60_0000, 65537, 0), &g.view(), 0, TSC_HZ),
            Err(Refusal::TooLong)
        );
        assert_eq!(ch.staging_capacity(), 65536);
        // copy_in itself refuses a length past its output rather than writing beyond it.
        let mut small = [0u8; 16];
        assert_eq!(
            copy_in(&g.view(), 0x40_0000, 17, Privilege::User, &mut small),
            Err(WalkError::NonCanonical)
        );
        assert_eq!(small, [0; 16]);
    }

    #[test]
    fn paging_off_is_the_identity_below_4_gib() {
        let g = Guest::new();
        let view = GuestView {
            mem: &g.ram[..],
            mode: PagingMode {
                paging: false,
                long_mode: false,
                five_level: false,
            },
            cr3: 0,
        };
        let mut ch = GuestChannel::new(Channel::Kernel);
        assert_eq!(ch.call(call(0x10_0000, 100, 0), &view, 0, TSC_HZ), Ok(()));
        assert_eq!(staged(&ch), g.ram[0x10_0000..0x10_0064]);
        ch.clear_staged();
        assert_eq!(
            ch.call(call(0x7f_fff0, 32, 0), &view, 0, TSC_HZ),
            Err(Refusal::BadAddress(WalkError::OutsideRam))
        );
        assert_eq!(
            ch.call(call(0xffff_fff0, 32, 0), &view, 0, TSC_HZ),
            Err(Refusal::BadAddress(WalkError::NonCanonical))
        );
        // 32-bit paging is not walked.
        let pg32 = GuestView {
            mode: PagingMode {
                paging: true,
                long_mode: false,
                five_level: false,
            },
            ..view
        };
        assert_eq!(
            ch.call(call(0x10_0000, 8, 0), &pg32, 0, TSC_HZ),
            Err(Refusal::BadAddress(WalkError::PagingMode))
        );
    }

    #[test]
    fn five_level_tables_walk_and_check_57_bit_canonical_addresses() {
        let mut g = Guest::new();
        // PML5 at 0x8000: entry 0 -> the 4-level PML4 at 0x1000.
        g.put(0x8000, 0x1000 | P | U);
        let view = GuestView {
            mem: &g.ram[..],
            mode: PagingMode {
                five_level: true,
                ..LONG
            },
            cr3: 0x8000,
        };
        let mut ch = GuestChannel::new(Channel::User);
        assert_eq!(ch.call(call(0x40_0010, 32, 3), &view, 0, TSC_HZ), Ok(()));
        assert_eq!(staged(&ch), g.ram[0x10_0010..0x10_0030]);
        ch.clear_staged();
        // Canonical with 48 bits' rules it is not, with 57 it is (and unmapped).
        assert_eq!(
            ch.call(call(0x0000_8000_0000_0000, 8, 3), &view, 0, TSC_HZ),
            Err(Refusal::BadAddress(WalkError::NotPresent))
        );
        assert_eq!(
            ch.call(call(0x0100_0000_0000_0000, 8, 3), &view, 0, TSC_HZ),
            Err(Refusal::BadAddress(WalkError::NonCanonical))
        );
    }

    #[test]
    fn a_ps_bit_in_a_pml4e_is_not_a_page() {
        let mut g = Guest::new();
        g.put(0x1000 + 8, P | U | PS);
        let mut ch = GuestChannel::new(Channel::User);
        assert_eq!(
            ch.call(call(0x80_0000_0000, 8, 3), &g.view(), 0, TSC_HZ),
            Err(Refusal::BadAddress(WalkError::NotPresent))
        );
    }

    #[test]
    fn the_bucket_allows_a_burst_then_refills_with_host_time() {
        let g = Guest::new();
        let mut ch = GuestChannel::new(Channel::Kernel);
        let mut t = 1_000u64;
        let send = |ch: &mut GuestChannel, t: u64| {
            let r = ch.call(call(0x60_0000, 65536, 0), &g.view(), t, TSC_HZ);
            ch.clear_staged();
            r
        };
        // 16 calls of 64 KiB = 1 MiB at once: the burst.
        for _ in 0..16 {
            assert_eq!(send(&mut ch, t), Ok(()));
        }
        assert_eq!(send(&mut ch, t), Err(Refusal::OverBudget));
        // Half a second later: half a MiB more, i.e. 8 calls.
        t += TSC_HZ / 2;
        for _ in 0..8 {
            assert_eq!(send(&mut ch, t), Ok(()));
        }
        assert_eq!(send(&mut ch, t), Err(Refusal::OverBudget));
        // Many small refills add up exactly (no fraction of a byte lost): steps of 953 ns,
        // each worth 0.999 byte.
        for _ in 0..1_049_000 {
            t += 953;
            ch.budget.allows(0, t, TSC_HZ);
        }
        // 1_049_000 * 953 ns = 0.999697 s -> 1_048_258 bytes.
        let expect = (1_049_000u128 * 953 * u128::from(MIB) / u128::from(TSC_HZ)) as u64;
        assert_eq!(ch.budget.tokens(), expect);
        // A long quiet time fills it to the burst, no further.
        t += 100 * TSC_HZ;
        assert!(ch.budget.allows(MIB, t, TSC_HZ));
        assert!(!ch.budget.allows(MIB + 1, t, TSC_HZ));
        assert_eq!(ch.stats.over_budget, 2);
        assert_eq!(ch.stats.accepted_bytes, 24 * 65536);
    }

    #[test]
    fn the_total_cap_holds_over_the_run() {
        let g = Guest::new();
        let mut ch = GuestChannel::new(Channel::Kernel);
        let mut t = 0u64;
        let mut accepted = 0u64;
        // One 64 KiB call every 1/16 s for 30 s: the rate alone would allow all of them.
        for _ in 0..30 * 16 {
            t += TSC_HZ / 16;
            if ch
                .call(call(0x60_0000, 65536, 0), &g.view(), t, TSC_HZ)
                .is_ok()
            {
                accepted += 65536;
            }
            ch.clear_staged();
        }
        assert_eq!(accepted, TOTAL_BYTES);
        assert_eq!(ch.budget.total, TOTAL_BYTES);
        assert_eq!(ch.stats.over_budget, 30 * 16 - 256);
        // Even a single byte is refused now, whatever the time.
        assert_eq!(
            ch.call(call(0x40_0000, 1, 0), &g.view(), t + 100 * TSC_HZ, TSC_HZ),
            Err(Refusal::OverBudget)
        );
    }

    #[test]
    fn a_tsc_going_backwards_or_a_zero_rate_does_not_panic() {
        let mut b = Budget::new();
        assert!(b.allows(MIB, 1000, TSC_HZ));
        b.take(MIB);
        // Earlier than the last refill: nothing earned.
        assert!(!b.allows(1, 10, TSC_HZ));
        assert_eq!(b.tokens(), 0);
        // A rate of 0 Hz counts as 1 Hz; the longest possible wait fills the bucket.
        assert!(b.allows(1, u64::MAX, 0));
        assert_eq!(b.tokens(), BURST_BYTES);
        assert!(b.allows(MIB, u64::MAX, TSC_HZ));
    }

    #[test]
    fn the_stop_report_line() {
        let s = ChannelStats {
            accepted_calls: 3,
            accepted_bytes: 70_000,
            not_allowed: 1,
            bad_address: 2,
            too_long: 3,
            over_budget: 4,
            bad_kind: 5,
        };
        assert_eq!(
            format!("{s}"),
            "70000 bytes in 3 calls accepted; refused: not-allowed 1, bad-address 2, too-long 3, over-budget 4, bad-kind 5"
        );
        assert_eq!(s.refused(), 15);
    }
}
