//! The CPU a guest sees through CPUID: an allow-list over the host's values. Every feature
//! bit a guest may see is listed here; anything not listed reads as 0, so a newer host CPU
//! cannot leak a feature the hypervisor does not virtualize (WAITPKG, CET, HWP, AMX...).
//!
//! What is added: the hypervisor bit and leaf 0x4000_0000, x2APIC and TSC-deadline (the
//! local APIC model), ARAT and the invariant TSC, and leaves 0x15/0x16 carrying the TSC
//! rate the hypervisor measured (Linux's `native_calibrate_tsc` then trusts it and needs
//! neither PIT nor HPET; a CPU model's nominal rate would be wrong under emulation).
//! What is hidden: VMX and SMX, the PMU (the hypervisor owns it), MONITOR/MWAIT, XSAVE and
//! everything that needs it (XSETBV always exits and XCR0 is not switched yet), machine
//! check (its bank MSRs are not virtualized), thermal and power management, speculation
//! control MSRs, and the topology of the host.

/// The CPUID leaf range a hypervisor announces itself in.
pub const HV_BASE: u32 = 0x4000_0000;
/// "HVprofHVprof" in EBX, ECX, EDX of leaf 0x4000_0000.
pub const HV_SIGNATURE: [u8; 12] = *b"HVprofHVprof";
/// How many leaves above [`HV_BASE`] the hypervisor range spans.
const HV_RANGE: u32 = 0x100;

/// Leaf numbers.
pub mod leaf {
    pub const VENDOR: u32 = 0x0;
    pub const FEATURES: u32 = 0x1;
    pub const CACHE_DESCRIPTORS: u32 = 0x2;
    pub const CACHE_PARAMS: u32 = 0x4;
    pub const THERMAL_POWER: u32 = 0x6;
    pub const EXTENDED_FEATURES: u32 = 0x7;
    pub const TOPOLOGY: u32 = 0xb;
    pub const TSC_CRYSTAL: u32 = 0x15;
    pub const FREQUENCY: u32 = 0x16;
    pub const EXT_MAX: u32 = 0x8000_0000;
    pub const EXT_FEATURES: u32 = 0x8000_0001;
    pub const BRAND_FIRST: u32 = 0x8000_0002;
    pub const BRAND_LAST: u32 = 0x8000_0004;
    pub const EXT_CACHE: u32 = 0x8000_0006;
    pub const EXT_POWER: u32 = 0x8000_0007;
    pub const ADDRESS_SIZES: u32 = 0x8000_0008;
}

/// The highest basic leaf guests see: 0x16, whatever the host has.
const MAX_BASIC: u32 = leaf::FREQUENCY;
/// The highest extended leaf guests see.
const MAX_EXTENDED: u32 = leaf::ADDRESS_SIZES;

/// CPUID.1:ECX bits.
pub mod ecx1 {
    pub const SSE3: u32 = 1 << 0;
    pub const PCLMULQDQ: u32 = 1 << 1;
    pub const MONITOR: u32 = 1 << 3;
    pub const VMX: u32 = 1 << 5;
    pub const SSSE3: u32 = 1 << 9;
    pub const CX16: u32 = 1 << 13;
    pub const PCID: u32 = 1 << 17;
    pub const SSE4_1: u32 = 1 << 19;
    pub const SSE4_2: u32 = 1 << 20;
    pub const X2APIC: u32 = 1 << 21;
    pub const MOVBE: u32 = 1 << 22;
    pub const POPCNT: u32 = 1 << 23;
    pub const TSC_DEADLINE: u32 = 1 << 24;
    pub const AES: u32 = 1 << 25;
    pub const XSAVE: u32 = 1 << 26;
    pub const RDRAND: u32 = 1 << 30;
    pub const HYPERVISOR: u32 = 1 << 31;
    /// Passed through when the host has them.
    pub const ALLOWED: u32 =
        SSE3 | PCLMULQDQ | SSSE3 | CX16 | PCID | SSE4_1 | SSE4_2 | MOVBE | POPCNT | AES | RDRAND;
    /// Always set: virtualized by the hypervisor.
    pub const FORCED: u32 = X2APIC | TSC_DEADLINE | HYPERVISOR;
}

/// CPUID.1:EDX bits.
pub mod edx1 {
    pub const FPU: u32 = 1 << 0;
    pub const VME: u32 = 1 << 1;
    pub const DE: u32 = 1 << 2;
    pub const PSE: u32 = 1 << 3;
    pub const TSC: u32 = 1 << 4;
    pub const MSR: u32 = 1 << 5;
    pub const PAE: u32 = 1 << 6;
    pub const MCE: u32 = 1 << 7;
    pub const CX8: u32 = 1 << 8;
    pub const APIC: u32 = 1 << 9;
    pub const SEP: u32 = 1 << 11;
    pub const MTRR: u32 = 1 << 12;
    pub const PGE: u32 = 1 << 13;
    pub const MCA: u32 = 1 << 14;
    pub const CMOV: u32 = 1 << 15;
    pub const PAT: u32 = 1 << 16;
    pub const PSE36: u32 = 1 << 17;
    pub const CLFSH: u32 = 1 << 19;
    pub const MMX: u32 = 1 << 23;
    pub const FXSR: u32 = 1 << 24;
    pub const SSE: u32 = 1 << 25;
    pub const SSE2: u32 = 1 << 26;
    pub const ALLOWED: u32 = FPU
        | VME
        | DE
        | PSE
        | TSC
        | MSR
        | PAE
        | CX8
        | SEP
        | MTRR
        | PGE
        | CMOV
        | PAT
        | PSE36
        | CLFSH
        | MMX
        | FXSR
        | SSE
        | SSE2;
    /// The local APIC is the hypervisor's model.
    pub const FORCED: u32 = APIC;
}

/// CPUID.1:EBX fields.
mod ebx1 {
    /// CLFLUSH line size and brand index: kept.
    pub const KEEP: u32 = 0xffff;
    /// The logical-processor count and initial APIC id fields are 8 bits wide.
    pub const FIELD: u32 = 0xff;
    pub const LOGICAL_SHIFT: u32 = 16;
    pub const APIC_ID_SHIFT: u32 = 24;
}

/// CPUID.6:EAX bit 2: the APIC timer runs at a constant rate in every C-state.
pub const ARAT: u32 = 1 << 2;

/// CPUID.7.0:EBX bits passed through.
pub mod ebx7 {
    pub const FSGSBASE: u32 = 1 << 0;
    pub const BMI1: u32 = 1 << 3;
    pub const SMEP: u32 = 1 << 7;
    pub const BMI2: u32 = 1 << 8;
    pub const ERMS: u32 = 1 << 9;
    pub const INVPCID: u32 = 1 << 10;
    pub const RDSEED: u32 = 1 << 18;
    pub const ADX: u32 = 1 << 19;
    pub const SMAP: u32 = 1 << 20;
    pub const CLFLUSHOPT: u32 = 1 << 23;
    pub const SHA: u32 = 1 << 29;
    pub const ALLOWED: u32 =
        FSGSBASE | BMI1 | SMEP | BMI2 | ERMS | RDSEED | ADX | SMAP | CLFLUSHOPT | SHA;
}

/// CPUID.0x8000_0001 bits passed through.
pub mod ext1 {
    pub const ECX_LAHF: u32 = 1 << 0;
    pub const ECX_ABM: u32 = 1 << 5;
    pub const ECX_PREFETCHW: u32 = 1 << 8;
    pub const ECX_ALLOWED: u32 = ECX_LAHF | ECX_ABM | ECX_PREFETCHW;
    pub const EDX_SYSCALL: u32 = 1 << 11;
    pub const EDX_NX: u32 = 1 << 20;
    pub const EDX_PAGE1GB: u32 = 1 << 26;
    pub const EDX_RDTSCP: u32 = 1 << 27;
    pub const EDX_LM: u32 = 1 << 29;
    pub const EDX_ALLOWED: u32 = EDX_SYSCALL | EDX_NX | EDX_PAGE1GB | EDX_LM;
}

/// CPUID.0x8000_0007:EDX bit 8: the TSC runs at a constant rate.
pub const INVARIANT_TSC: u32 = 1 << 8;

/// x2APIC topology level types (CPUID.0xB:ECX[15:8]).
mod topology {
    pub const SMT: u32 = 1;
    pub const CORE: u32 = 2;
    pub const TYPE_SHIFT: u32 = 8;
    /// ECX[7:0]: the level number (the subleaf).
    pub const LEVEL_MASK: u32 = 0xff;
}

/// CPUID.4:EAX bits kept: cache type, level, self-initialising, fully associative
/// (bits 0-13); the core and sharing counts above describe the host's package.
const CACHE_PARAMS_EAX_KEEP: u32 = 0x3fff;
/// CPUID.0x8000_0008:EAX bits kept: physical (7:0) and linear (15:8) address sizes.
const ADDRESS_SIZES_EAX_KEEP: u32 = 0xffff;

/// What the guest's CPU depends on besides the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestCpu {
    /// This vCPU's (x2)APIC id.
    pub apic_id: u32,
    /// vCPUs in the VM (one core each, no SMT).
    pub vcpus: u32,
    /// The TSC rate the hypervisor measured.
    pub tsc_hz: u64,
    /// RDTSCP and INVPCID work in the guest (their VM-execution controls are on).
    pub rdtscp: bool,
    pub invpcid: bool,
}

/// CPUID leaf `leaf`, subleaf `sub` as the guest sees it; `host` answers for the real CPU.
pub fn guest_cpuid(
    leaf: u32,
    sub: u32,
    cpu: &GuestCpu,
    host: impl Fn(u32, u32) -> [u32; 4],
) -> [u32; 4] {
    let host_max = host(leaf::VENDOR, 0)[0];
    let host_ext_max = host(leaf::EXT_MAX, 0)[0];
    // Leaves the host lacks read as 0 here (the CPU would repeat its highest leaf).
    let from_host = |l: u32, s: u32| -> [u32; 4] {
        let present = if l >= leaf::EXT_MAX {
            l <= host_ext_max
        } else {
            l <= host_max
        };
        if present { host(l, s) } else { [0; 4] }
    };
    match leaf {
        leaf::VENDOR => {
            let [_, b, c, d] = host(leaf::VENDOR, 0);
            [MAX_BASIC, b, c, d]
        }
        leaf::FEATURES => {
            let [a, b, c, d] = from_host(leaf::FEATURES, 0);
            let b = (b & ebx1::KEEP)
                | (cpu.vcpus.min(ebx1::FIELD) << ebx1::LOGICAL_SHIFT)
                | ((cpu.apic_id & ebx1::FIELD) << ebx1::APIC_ID_SHIFT);
            [
                a,
                b,
                (c & ecx1::ALLOWED) | ecx1::FORCED,
                (d & edx1::ALLOWED) | edx1::FORCED,
            ]
        }
        leaf::CACHE_DESCRIPTORS => from_host(leaf, sub),
        leaf::CACHE_PARAMS => {
            // Keep the cache geometry; EAX[31:26] (cores per package - 1) and EAX[25:14]
            // (threads sharing the cache - 1) describe one core of our own.
            let [a, b, c, d] = from_host(leaf, sub);
            [a & CACHE_PARAMS_EAX_KEEP, b, c, d]
        }
        leaf::THERMAL_POWER => [ARAT, 0, 0, 0],
        leaf::EXTENDED_FEATURES if sub == 0 => {
            let [_, b, _, _] = from_host(leaf, 0);
            let invpcid = if cpu.invpcid { ebx7::INVPCID } else { 0 };
            [0, b & (ebx7::ALLOWED | invpcid), 0, 0]
        }
        leaf::TOPOLOGY => {
            let bits = 32 - cpu.vcpus.max(1).saturating_sub(1).leading_zeros();
            match sub {
                0 => [
                    0,
                    1,
                    (topology::SMT << topology::TYPE_SHIFT) | sub,
                    cpu.apic_id,
                ],
                1 => [
                    bits,
                    cpu.vcpus,
                    (topology::CORE << topology::TYPE_SHIFT) | sub,
                    cpu.apic_id,
                ],
                _ => [0, 0, sub & topology::LEVEL_MASK, cpu.apic_id],
            }
        }
        leaf::TSC_CRYSTAL => {
            // TSC = crystal * EBX / EAX with a crystal of exactly the TSC rate: Linux takes
            // tsc_khz from this and the LAPIC timer period from ECX (arch/x86/kernel/tsc.c).
            let hz = cpu.tsc_hz.min(u64::from(u32::MAX)) as u32;
            [1, 1, hz, 0]
        }
        leaf::FREQUENCY => {
            let mhz = (cpu.tsc_hz / 1_000_000).clamp(1, 0xffff) as u32;
            [mhz, mhz, mhz, 0]
        }
        HV_BASE => {
            let s = HV_SIGNATURE;
            let w = |i: usize| u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
            [HV_BASE + 1, w(0), w(4), w(8)]
        }
        leaf::EXT_MAX => {
            let [_, b, c, d] = host(leaf::EXT_MAX, 0);
            [MAX_EXTENDED.min(host_ext_max.max(leaf::EXT_MAX)), b, c, d]
        }
        leaf::EXT_FEATURES => {
            let [_, _, c, d] = from_host(leaf, 0);
            let rdtscp = if cpu.rdtscp { ext1::EDX_RDTSCP } else { 0 };
            [
                0,
                0,
                c & ext1::ECX_ALLOWED,
                d & (ext1::EDX_ALLOWED | rdtscp),
            ]
        }
        leaf::BRAND_FIRST..=leaf::BRAND_LAST | leaf::EXT_CACHE => from_host(leaf, sub),
        leaf::EXT_POWER => [0, 0, 0, INVARIANT_TSC],
        leaf::ADDRESS_SIZES => {
            // Physical and linear address sizes only.
            let [a, _, _, _] = from_host(leaf, 0);
            [a & ADDRESS_SIZES_EAX_KEEP, 0, 0, 0]
        }
        l if (HV_BASE + 1..HV_BASE + HV_RANGE).contains(&l) => [0; 4],
        _ => [0; 4],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Haswell-like host (Bochs corei7_haswell_4770: max basic leaf 0xd) with every bit
    /// set in the feature words, so the allow-list alone decides.
    fn host(leaf: u32, sub: u32) -> [u32; 4] {
        match leaf {
            0 => [0xd, 0x756e_6547, 0x6c65_746e, 0x4965_6e69],
            1 => [0x306c3, 0x0110_0800, u32::MAX, u32::MAX],
            4 => [0xfc00_4121 + sub, 0x1c0_003f, 0x3f, 0],
            7 => [0, u32::MAX, u32::MAX, u32::MAX],
            0xa => [0x0730_0403, 0, 0, 0x603],
            0x15 | 0x16 => [0x55; 4],
            0x8000_0000 => [0x8000_0008, 0, 0, 0],
            0x8000_0001 => [0, 0, u32::MAX, u32::MAX],
            0x8000_0008 => [0x3027, u32::MAX, 0, 0],
            _ => [leaf, sub, 0x77, 0x77],
        }
    }

    fn cpu() -> GuestCpu {
        GuestCpu {
            apic_id: 0,
            vcpus: 1,
            tsc_hz: 49_990_000,
            rdtscp: true,
            invpcid: false,
        }
    }

    fn q(leaf: u32, sub: u32) -> [u32; 4] {
        guest_cpuid(leaf, sub, &cpu(), host)
    }

    #[test]
    fn leaf_1_is_the_allow_list_plus_forced_bits() {
        let [a, b, c, d] = q(1, 0);
        assert_eq!(a, 0x306c3, "family/model/stepping from the host");
        assert_eq!(b, 0x0001_0800, "one logical processor, APIC id 0");
        assert_eq!(c, ecx1::ALLOWED | ecx1::FORCED);
        assert_eq!(c & (ecx1::VMX | ecx1::MONITOR | ecx1::XSAVE), 0);
        assert_ne!(c & ecx1::X2APIC, 0);
        assert_ne!(c & ecx1::TSC_DEADLINE, 0);
        assert_ne!(c & ecx1::HYPERVISOR, 0);
        assert_eq!(d, edx1::ALLOWED | edx1::APIC);
        assert_eq!(d & (edx1::MCE | edx1::MCA), 0);
    }

    #[test]
    fn tsc_rate_is_the_measured_one() {
        assert_eq!(
            q(0, 0)[0],
            0x16,
            "leaves 0x15/0x16 exist even on a Haswell host"
        );
        assert_eq!(q(0x15, 0), [1, 1, 49_990_000, 0]);
        assert_eq!(q(0x16, 0), [49, 49, 49, 0]);
        assert_eq!(q(6, 0), [ARAT, 0, 0, 0]);
        assert_eq!(q(0x8000_0007, 0), [0, 0, 0, INVARIANT_TSC]);
    }

    #[test]
    fn pmu_xsave_monitor_and_unknown_leaves_are_empty() {
        for l in [0x5, 0xa, 0xd, 0x12, 0x14, 0x1f, 0x4000_0001, 0x8000_001f] {
            assert_eq!(q(l, 0), [0; 4], "leaf {l:#x}");
        }
    }

    #[test]
    fn leaf_7_passes_only_listed_bits() {
        assert_eq!(q(7, 0), [0, ebx7::ALLOWED, 0, 0]);
        let with_invpcid = guest_cpuid(
            7,
            0,
            &GuestCpu {
                invpcid: true,
                ..cpu()
            },
            host,
        );
        assert_eq!(with_invpcid[1], ebx7::ALLOWED | ebx7::INVPCID);
        assert_eq!(q(7, 1), [0; 4]);
    }

    #[test]
    fn extended_leaves() {
        assert_eq!(q(0x8000_0000, 0)[0], 0x8000_0008);
        let [_, _, c, d] = q(0x8000_0001, 0);
        assert_eq!(c, ext1::ECX_ALLOWED);
        assert_eq!(d, ext1::EDX_ALLOWED | ext1::EDX_RDTSCP);
        let no_rdtscp = guest_cpuid(
            0x8000_0001,
            0,
            &GuestCpu {
                rdtscp: false,
                ..cpu()
            },
            host,
        );
        assert_eq!(no_rdtscp[3] & ext1::EDX_RDTSCP, 0);
        assert_eq!(q(0x8000_0008, 0), [0x3027, 0, 0, 0]);
    }

    #[test]
    fn topology_and_signature() {
        let c = GuestCpu {
            apic_id: 2,
            vcpus: 3,
            ..cpu()
        };
        assert_eq!(guest_cpuid(0xb, 0, &c, host), [0, 1, 0x100, 2]);
        assert_eq!(guest_cpuid(0xb, 1, &c, host), [2, 3, 0x201, 2]);
        assert_eq!(guest_cpuid(0xb, 2, &c, host), [0, 0, 2, 2]);
        assert_eq!(guest_cpuid(1, 0, &c, host)[1] >> 24, 2);
        let [a, b, c2, d] = q(HV_BASE, 0);
        assert_eq!(a, HV_BASE + 1);
        let mut sig = Vec::new();
        for r in [b, c2, d] {
            sig.extend_from_slice(&r.to_le_bytes());
        }
        assert_eq!(&sig, b"HVprofHVprof");
    }
}
