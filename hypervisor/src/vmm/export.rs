//! The exporter: drains the per-pCPU rings into `vmlog` frames and hands the bytes to a
//! writer (COM2 on bare metal), and writes what guests deliver through the guest-data
//! channel. Runs in host context only, never from an interrupt.

extern crate alloc;

use alloc::collections::BTreeMap;

use vmlog::{
    Dropped, End, ExitStat, GLOBAL_STREAM, GuestData, Header, MAX_BATCH_SAMPLES, MAX_FRAME_LEN,
    MAX_GUEST_DATA_RECORD, Record, Sample, VcpuRef, VmInfo, encode_record, encode_samples,
};

use super::ring::SampleRing;

/// Frame sequence numbers per stream and totals for the End record.
pub struct Exporter<W: FnMut(&[u8])> {
    write: W,
    seq: [u32; super::sampler::MAX_PCPUS],
    global_seq: u32,
    pub frames: u64,
    pub samples: u64,
    pub dropped: u64,
    /// Guest-data records and bytes written.
    pub guest_records: u64,
    pub guest_bytes: u64,
    /// Next [`GuestData::seq`] per `(vm, kind)`.
    guest_seq: BTreeMap<(u16, u16), u32>,
    period: u64,
    buf: [u8; MAX_FRAME_LEN],
}

impl<W: FnMut(&[u8])> Exporter<W> {
    /// `period`: the sampling period in TSC ticks (the batch encoder's delta base).
    pub fn new(write: W, period: u64) -> Self {
        Exporter {
            write,
            seq: [0; super::sampler::MAX_PCPUS],
            global_seq: 0,
            frames: 0,
            samples: 0,
            dropped: 0,
            guest_records: 0,
            guest_bytes: 0,
            guest_seq: BTreeMap::new(),
            period,
            buf: [0; MAX_FRAME_LEN],
        }
    }

    fn record(&mut self, stream: u16, record: &Record<'_>) {
        let seq = if stream == GLOBAL_STREAM {
            let s = self.global_seq;
            self.global_seq += 1;
            s
        } else {
            let s = self.seq[stream as usize];
            self.seq[stream as usize] += 1;
            s
        };
        // A record that does not fit (only possible for absurd names) is skipped: the log
        // stays decodable and the sequence gap shows the loss.
        if let Ok(n) = encode_record(&mut self.buf, stream, seq, record) {
            (self.write)(&self.buf[..n]);
            self.frames += 1;
        }
    }

    /// Header and VM table.
    pub fn start(&mut self, header: Header<'_>, vms: &[VmInfo<'_>]) {
        // A frame delimiter first: noise on the line before the log (a UART's power-on
        // garbage) then ends in a corrupt frame of its own instead of swallowing the header.
        (self.write)(&[0]);
        self.record(GLOBAL_STREAM, &Record::Header(header));
        for vm in vms {
            self.record(GLOBAL_STREAM, &Record::Vm(*vm));
        }
    }

    /// Moves the samples `ring` holds when called out as sample batches (not those that
    /// arrive meanwhile), preceded by a `Dropped` record
    /// when the ring lost samples since the last drain.
    pub fn drain<const N: usize>(&mut self, pcpu: u16, ring: &SampleRing<Sample, N>) {
        let lost = ring.take_dropped();
        if lost > 0 {
            self.dropped += lost;
            self.record(pcpu, &Record::Dropped(Dropped { count: lost }));
        }
        let mut batch = [Sample {
            tsc: 0,
            context: vmlog::Context::Host(vmlog::HostContext {
                rip: 0,
                serving: None,
                vcpu_state: vmlog::VcpuState::Running,
            }),
        }; MAX_BATCH_SAMPLES];
        // Only what is there now: samples keep arriving while the (slow) writer runs, and
        // chasing them could keep the caller here forever.
        let mut left = ring.len();
        while left > 0 {
            let want = left.min(batch.len());
            let n = ring.pop_into(&mut batch[..want]);
            if n == 0 {
                break;
            }
            left -= n;
            let mut done = 0;
            while done < n {
                let seq = self.seq[pcpu as usize];
                match encode_samples(&mut self.buf, pcpu, seq, self.period, &batch[done..n]) {
                    Ok(enc) if enc.samples > 0 => {
                        self.seq[pcpu as usize] += 1;
                        (self.write)(&self.buf[..enc.bytes]);
                        self.frames += 1;
                        self.samples += enc.samples as u64;
                        done += enc.samples;
                    }
                    _ => break,
                }
            }
        }
    }

    /// Cumulative exit statistics of one vCPU for one reason.
    pub fn exit_stat(&mut self, pcpu: u16, vcpu: VcpuRef, reason: u16, count: u64, tsc_total: u64) {
        self.record(
            pcpu,
            &Record::ExitStat(ExitStat {
                vcpu,
                reason: vmlog::ExitReason(reason),
                count,
                tsc_total,
            }),
        );
    }

    /// Bytes VM `vm` delivered (one accepted `GUEST_DATA` call), as [`GuestData`] records on
    /// the global stream of at most [`MAX_GUEST_DATA_RECORD`] bytes each, numbered on per
    /// `(vm, kind)` from 0 over the run.
    pub fn guest_data(&mut self, vm: u16, kind: u16, bytes: &[u8]) {
        for chunk in bytes.chunks(MAX_GUEST_DATA_RECORD) {
            let next = self.guest_seq.entry((vm, kind)).or_insert(0);
            let seq = *next;
            *next = next.wrapping_add(1);
            self.record(
                GLOBAL_STREAM,
                &Record::GuestData(GuestData {
                    vm,
                    kind,
                    seq,
                    data: chunk,
                }),
            );
            self.guest_records += 1;
            self.guest_bytes += chunk.len() as u64;
        }
    }

    /// The End record.
    pub fn end(&mut self, end_tsc: u64) {
        let end = End {
            end_tsc,
            samples_total: self.samples,
            dropped_total: self.dropped,
            frames_total: self.frames,
        };
        self.record(GLOBAL_STREAM, &Record::End(end));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmlog::{Context, GuestContext, HostContext, SamplingSource, VcpuState};

    #[test]
    fn a_drained_ring_decodes_back_with_its_drop_count() {
        let ring: SampleRing<Sample, 512> = SampleRing::new();
        for i in 0..600u64 {
            let context = if i % 3 == 0 {
                Context::Host(HostContext {
                    rip: 0x20_0000 + i,
                    serving: None,
                    vcpu_state: VcpuState::Running,
                })
            } else {
                Context::Guest(GuestContext {
                    vm: 0,
                    vcpu: 0,
                    vpid: 1,
                    rip: 0x10_0000 + i,
                    cr3: 0,
                    cpl: 0,
                    last_exit_reason: None,
                })
            };
            ring.push(Sample {
                tsc: 1000 + i * 50_000,
                context,
            });
        }
        let mut bytes = Vec::new();
        let mut ex = Exporter::new(|b: &[u8]| bytes.extend_from_slice(b), 50_000);
        ex.start(
            Header {
                format_major: vmlog::FORMAT_MAJOR,
                format_minor: vmlog::FORMAT_MINOR,
                hv_build_id: "test",
                tsc_hz: 50_000_000,
                source: SamplingSource::LapicTimer,
                period_tsc: 50_000,
                pcpus: 1,
                vm_count: 1,
                start_tsc: 0,
            },
            &[VmInfo {
                id: 0,
                name: "t",
                vcpus: 1,
            }],
        );
        ex.drain(0, &ring);
        ex.end(1 << 40);
        assert_eq!((ex.samples, ex.dropped), (512, 88));
        let _ = ex;
        let mut samples = Vec::new();
        let mut dropped = 0;
        let mut ended = false;
        for item in vmlog::Decoder::from_slice(&bytes[..]) {
            match item.unwrap() {
                vmlog::Item::Samples { samples: s, .. } => samples.extend(s),
                vmlog::Item::Dropped { count, .. } => dropped += count,
                vmlog::Item::End(e) => {
                    ended = true;
                    assert_eq!((e.samples_total, e.dropped_total), (512, 88));
                }
                _ => {}
            }
        }
        assert!(ended);
        assert_eq!(dropped, 88);
        assert_eq!(samples.len(), 512);
        assert_eq!(samples[0].tsc, 1000);
        assert_eq!(samples[1].context.rip(), 0x10_0001);
        assert_eq!(samples[511].tsc, 1000 + 511 * 50_000);
    }

    #[test]
    fn a_drain_takes_only_what_was_there_when_it_started() {
        let ring: SampleRing<Sample, 64> = SampleRing::new();
        let host = |tsc| Sample {
            tsc,
            context: Context::Host(HostContext {
                rip: 1,
                serving: None,
                vcpu_state: VcpuState::Halted,
            }),
        };
        for i in 0..3u64 {
            ring.push(host(i * 50_000));
        }
        // A writer so slow that a new sample arrives during every frame it writes.
        let mut next = 3u64;
        let mut ex = Exporter::new(
            |_: &[u8]| {
                ring.push(host(next * 50_000));
                next += 1;
            },
            50_000,
        );
        ex.drain(0, &ring);
        assert_eq!(ex.samples, 3);
        assert_eq!(
            ring.len(),
            ex.frames as usize,
            "one new sample per frame written"
        );
        assert!(ex.frames >= 1);
    }

    #[test]
    fn guest_data_is_split_and_numbered_per_vm_and_kind() {
        let mut bytes = Vec::new();
        let mut ex = Exporter::new(|b: &[u8]| bytes.extend_from_slice(b), 1);
        let a: Vec<u8> = (0..2500u32).map(|i| (i * 13) as u8).collect();
        ex.guest_data(0, 1, &a);
        ex.guest_data(1, 1, b"other vm");
        ex.guest_data(0, 2, b"other kind");
        ex.guest_data(0, 1, &[]);
        ex.guest_data(0, 1, b"more");
        ex.end(5);
        assert_eq!((ex.guest_records, ex.guest_bytes), (6, 2500 + 8 + 10 + 4));
        let frames = ex.frames;
        let _ = ex;
        let mut got = Vec::new();
        let mut end = None;
        for item in vmlog::Decoder::from_slice(&bytes[..]) {
            match item.unwrap() {
                vmlog::Item::GuestData {
                    vm,
                    kind,
                    seq,
                    data,
                } => got.push((vm, kind, seq, data.len())),
                vmlog::Item::End(e) => end = Some(e),
                _ => {}
            }
        }
        assert_eq!(
            got,
            [
                (0, 1, 0, 1024),
                (0, 1, 1, 1024),
                (0, 1, 2, 452),
                (1, 1, 0, 8),
                (0, 2, 0, 10),
                (0, 1, 3, 4)
            ]
        );
        assert_eq!(end.map(|e| e.frames_total), Some(frames - 1));
    }
}
