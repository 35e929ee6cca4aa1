//! VMX root operation as a value. [`VmxRoot::enable`] turns VMX on for this CPU (feature
//! control, CR0/CR4 fixed bits, VMXON); holding the resulting token is the proof that
//! VMCLEAR, VMPTRLD and INVEPT run in VMX root operation, and [`VmcsRegion`] can only be
//! made by it (an allocated, revision-stamped, cleared VMCS), so those become safe calls.

use core::cell::Cell;
use core::fmt;

use super::caps::{FeatureControlAction, VmxCaps, VmxUnavailable, ept_vpid_cap};
use super::hostmem::HostFrames;
use super::hw::CpuCaps;
use super::instr::{self, InveptType};
use super::vmcs::VmFail;
use super::{cr4, ept::PAGE_SIZE};
use crate::arch::cpu::{self, Msr};

/// Why VMX could not be turned on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmxOnError {
    Unavailable(VmxUnavailable),
    NoFrame,
    Vmxon(VmFail),
}

impl fmt::Display for VmxOnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmxOnError::Unavailable(e) => write!(f, "{}", e.fatal_line()),
            VmxOnError::NoFrame => f.write_str("no free frame for the VMXON region"),
            VmxOnError::Vmxon(e) => write!(f, "VMXON failed: {e}"),
        }
    }
}

/// Why a VMCS could not be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmcsError {
    NoFrame,
    Vmclear(VmFail),
}

impl fmt::Display for VmcsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmcsError::NoFrame => f.write_str("no free frame for a VMCS"),
            VmcsError::Vmclear(e) => write!(f, "VMCLEAR: {e}"),
        }
    }
}

/// This CPU is in VMX root operation until [`VmxRoot::off`].
pub struct VmxRoot {
    caps: VmxCaps,
    _vmxon_region: HostFrames,
    /// The VMCS this CPU made current through [`VmxRoot::load`].
    current: Cell<Option<u64>>,
}

/// A VMCS region: a frame holding the revision identifier, VMCLEARed once.
pub struct VmcsRegion {
    frame: HostFrames,
}

impl VmcsRegion {
    /// Host-physical address (what VMPTRLD takes).
    pub fn pa(&self) -> u64 {
        self.frame.pa()
    }
}

fn stamped_region(caps: &VmxCaps) -> Option<HostFrames> {
    let mut f = HostFrames::alloc_zeroed(1, PAGE_SIZE)?;
    f.bytes()[..4].copy_from_slice(&caps.revision_id().to_le_bytes());
    Some(f)
}

impl VmxRoot {
    /// Turns VMX on for this CPU. The capabilities are probed here, from this CPU's MSRs,
    /// so the CR0/CR4 values written are the ones VMX requires of it.
    pub fn enable() -> Result<VmxRoot, VmxOnError> {
        let caps = VmxCaps::probe(&CpuCaps).map_err(VmxOnError::Unavailable)?;
        if let FeatureControlAction::WriteAndLock(v) = caps.feature_control {
            // SAFETY: IA32_FEATURE_CONTROL exists (CPUID reported VMX) and is unlocked
            // (else the probe would not ask to write it); the value only enables VMX.
            unsafe { cpu::wrmsr(Msr::IA32_FEATURE_CONTROL, v) };
        }
        // SAFETY: the fixed bits only add what VMX operation requires (CR4.VMXE, CR0.NE
        // and PE/PG which long mode already has); the hypervisor keeps running unchanged.
        unsafe {
            cpu::write_cr4(caps.fix_cr4(cpu::read_cr4() | cr4::VMXE));
            cpu::write_cr0(caps.fix_cr0(cpu::read_cr0()));
        }
        let region = stamped_region(&caps).ok_or(VmxOnError::NoFrame)?;
        // SAFETY: CR4.VMXE is set, CR0/CR4 satisfy the fixed bits, the region is a zeroed,
        // aligned frame holding the revision identifier, owned by the returned VmxRoot
        // (HostFrames are never freed, so it stays reserved).
        unsafe { instr::vmxon(region.pa()) }.map_err(VmxOnError::Vmxon)?;
        Ok(VmxRoot {
            caps,
            _vmxon_region: region,
            current: Cell::new(None),
        })
    }

    /// Leaves VMX operation (VMXOFF) and clears CR4.VMXE: the CPU is quiesced before the
    /// machine powers off. The VMXON region stays reserved (frames are never freed).
    pub fn off(self) -> Result<(), VmFail> {
        // SAFETY: `self` proves VMX root operation on this CPU and is consumed, so no VMX
        // instruction can follow through it.
        unsafe { instr::vmxoff() }?;
        // SAFETY: outside VMX operation CR4.VMXE may be cleared; nothing else changes.
        unsafe { cpu::write_cr4(cpu::read_cr4() & !cr4::VMXE) };
        Ok(())
    }

    pub fn caps(&self) -> &VmxCaps {
        &self.caps
    }

    /// A new VMCS region, cleared (not current).
    pub fn new_vmcs(&self) -> Result<VmcsRegion, VmcsError> {
        let frame = stamped_region(&self.caps).ok_or(VmcsError::NoFrame)?;
        // SAFETY: in VMX root operation (self exists); the frame holds the revision
        // identifier and belongs to the returned region.
        unsafe { instr::vmclear(frame.pa()) }.map_err(VmcsError::Vmclear)?;
        Ok(VmcsRegion { frame })
    }

    /// Makes `vmcs` this CPU's current VMCS (VMREAD/VMWRITE through `CurrentVmcs` then
    /// reach it).
    pub fn load(&self, vmcs: &VmcsRegion) -> Result<(), VmFail> {
        // SAFETY: in VMX root operation; `vmcs` was made by new_vmcs (stamped, cleared).
        let r = unsafe { instr::vmptrld(vmcs.pa()) };
        self.current
            .set(if r.is_ok() { Some(vmcs.pa()) } else { None });
        r
    }

    /// The VMCS made current by [`VmxRoot::load`], if any.
    pub fn current_vmcs(&self) -> Option<u64> {
        self.current.get()
    }

    /// Invalidates cached EPT translations of every context, when the CPU supports the
    /// all-context type (None when it does not: fresh hierarchies need no invalidation).
    pub fn invept_all(&self) -> Option<Result<(), VmFail>> {
        (self.caps.ept_vpid & ept_vpid_cap::INVEPT_ALL_CONTEXT != 0).then(|| {
            // SAFETY: in VMX root operation, with the all-context type supported.
            unsafe { instr::invept(InveptType::AllContext, 0) }
        })
    }
}
