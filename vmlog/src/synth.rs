//! Synthetic sample streams that look like a real run: a 50 MHz TSC sampled at
//! 1 kHz, guests running 2-3 processes whose RIPs stay in a few functions,
//! some kernel time, some hypervisor time. Deterministic (seeded).

use crate::decoder::LogWriter;
use crate::types::*;

/// TSC rate of the synthetic runs.
pub const TSC_HZ: u64 = 50_000_000;
/// Sampling rate of the synthetic runs.
pub const SAMPLE_HZ: u64 = 1000;
/// Sampling period in TSC ticks.
pub const PERIOD: u64 = TSC_HZ / SAMPLE_HZ;
/// Start TSC of the synthetic runs.
pub const START_TSC: u64 = 1_000_000_000;

/// Small deterministic PRNG (xorshift64*).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator (a zero seed is replaced).
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// User-space text base of process `p` in the synthetic runs.
pub fn user_base(p: u64) -> u64 {
    0x5555_5555_0000 + p * 0x10_0000
}
/// CR3 of process `p` in the synthetic runs.
pub fn user_cr3(p: u64) -> u64 {
    0x0123_4000 + p * 0x2000
}
/// Kernel text base in the synthetic runs.
pub const KERNEL_BASE: u64 = 0xffff_ffff_8100_0000;
/// Hypervisor text base in the synthetic runs.
pub const HV_BASE: u64 = 0x20_0000;

/// Generates `n` realistic samples for one pCPU running vCPU `vcpu` of VM 0.
pub fn realistic_samples(rng: &mut Rng, vcpu: u16, n: usize) -> Vec<Sample> {
    let mut out = Vec::with_capacity(n);
    let mut tsc = START_TSC;
    let mut proc_ = 0u64;
    let mut slice_left = 0u64;
    let mut last_exit = ExitReason::EXTERNAL_INTERRUPT;
    for _ in 0..n {
        // Timer jitter: most ticks land exactly, some a few hundred ticks off.
        let jitter = if rng.below(4) == 0 {
            rng.below(400) as i64 - 200
        } else {
            0
        };
        tsc = tsc.wrapping_add(PERIOD).wrapping_add(jitter as u64);
        if slice_left == 0 {
            proc_ = rng.below(3);
            slice_left = 5 + rng.below(20);
        }
        slice_left -= 1;
        if rng.below(50) == 0 {
            last_exit = match rng.below(4) {
                0 => ExitReason::IO_INSTRUCTION,
                1 => ExitReason::HLT,
                2 => ExitReason::WRMSR,
                _ => ExitReason::EXTERNAL_INTERRUPT,
            };
        }
        let roll = rng.below(100);
        let context = if roll < 5 {
            let state = if rng.below(2) == 0 {
                VcpuState::ExitHandling { reason: last_exit }
            } else {
                VcpuState::Running
            };
            Context::Host(HostContext {
                rip: HV_BASE + rng.below(4) * 0x800 + rng.below(0x200),
                serving: Some(VcpuRef { vm: 0, vcpu }),
                vcpu_state: state,
            })
        } else if roll < 25 {
            Context::Guest(GuestContext {
                vm: 0,
                vcpu,
                vpid: vcpu + 1,
                rip: KERNEL_BASE + rng.below(6) * 0x1000 + rng.below(0x300),
                cr3: user_cr3(proc_),
                cpl: 0,
                last_exit_reason: Some(last_exit),
            })
        } else {
            Context::Guest(GuestContext {
                vm: 0,
                vcpu,
                vpid: vcpu + 1,
                rip: user_base(proc_) + rng.below(4) * 0x400 + rng.below(0x180),
                cr3: user_cr3(proc_),
                cpl: 3,
                last_exit_reason: Some(last_exit),
            })
        };
        out.push(Sample { tsc, context });
    }
    out
}

/// A whole realistic log: header, one VM with one vCPU per pCPU, `per_pcpu`
/// samples on each pCPU (written in batches of 512 samples interleaved across
/// pCPUs, as an exporter draining rings would), end record.
pub fn realistic_log(pcpus: u16, per_pcpu: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut w = LogWriter::new();
    let header = Header {
        format_major: FORMAT_MAJOR,
        format_minor: FORMAT_MINOR,
        hv_build_id: "synthetic",
        tsc_hz: TSC_HZ,
        source: SamplingSource::LapicTimer,
        period_tsc: PERIOD,
        pcpus,
        vm_count: 1,
        start_tsc: START_TSC,
    };
    let vms = [VmInfo {
        id: 0,
        name: "guest0",
        vcpus: pcpus,
    }];
    // Generation cannot fail: header and records are small.
    let _ = w.header(&header, &vms);
    let streams: Vec<Vec<Sample>> = (0..pcpus)
        .map(|p| realistic_samples(&mut rng, p, per_pcpu))
        .collect();
    let mut pos = 0;
    let mut end_tsc = START_TSC;
    while pos < per_pcpu {
        let hi = (pos + 512).min(per_pcpu);
        for (p, s) in streams.iter().enumerate() {
            let _ = w.samples(p as u16, PERIOD, &s[pos..hi]);
            if let Some(last) = s.get(hi - 1) {
                end_tsc = end_tsc.max(last.tsc);
            }
        }
        pos = hi;
    }
    let _ = w.end(end_tsc, 0);
    w.into_bytes()
}
