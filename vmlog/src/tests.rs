use proptest::prelude::*;

use crate::synth::{self, PERIOD, Rng};
use crate::*;

fn header() -> Header<'static> {
    Header {
        format_major: FORMAT_MAJOR,
        format_minor: FORMAT_MINOR,
        hv_build_id: "test-build",
        tsc_hz: synth::TSC_HZ,
        source: SamplingSource::PmuNmi { event: 0x013c },
        period_tsc: PERIOD,
        pcpus: 2,
        vm_count: 1,
        start_tsc: synth::START_TSC,
    }
}

/// A small two-pCPU log and the sample batches it holds, frame by frame.
fn small_log() -> (Vec<u8>, Vec<(u16, Vec<Sample>)>) {
    let mut rng = Rng::new(7);
    let a = synth::realistic_samples(&mut rng, 0, 600);
    let b = synth::realistic_samples(&mut rng, 1, 600);
    let mut w = LogWriter::new();
    w.header(
        &header(),
        &[VmInfo {
            id: 0,
            name: "vm0",
            vcpus: 2,
        }],
    )
    .unwrap();
    w.samples(0, PERIOD, &a).unwrap();
    w.samples(1, PERIOD, &b).unwrap();
    w.end(0, 0).unwrap();
    let bytes = w.into_bytes();
    let batches = decode_all(&bytes).0.into_iter().filter_map(|i| match i {
        Item::Samples { pcpu, samples } => Some((pcpu, samples)),
        _ => None,
    });
    (bytes, batches.collect())
}

fn decode_all(bytes: &[u8]) -> (Vec<Item>, Stats, Option<String>) {
    let mut d = Decoder::from_slice(bytes);
    let mut items = Vec::new();
    let mut err = None;
    for r in d.by_ref() {
        match r {
            Ok(i) => items.push(i),
            Err(e) => err = Some(e.to_string()),
        }
    }
    (items, d.stats().clone(), err)
}

fn all_samples(items: &[Item]) -> Vec<(u16, Sample)> {
    items
        .iter()
        .flat_map(|i| match i {
            Item::Samples { pcpu, samples } => {
                samples.iter().map(|s| (*pcpu, *s)).collect::<Vec<_>>()
            }
            _ => Vec::new(),
        })
        .collect()
}

#[test]
fn realistic_round_trip_is_exact() {
    let mut rng = Rng::new(1);
    let samples = synth::realistic_samples(&mut rng, 0, 5000);
    let mut w = LogWriter::new();
    w.header(&header(), &[]).unwrap();
    w.samples(0, PERIOD, &samples).unwrap();
    let (items, stats, err) = decode_all(w.bytes());
    assert_eq!(err, None);
    let got: Vec<Sample> = all_samples(&items).into_iter().map(|(_, s)| s).collect();
    assert_eq!(got, samples);
    assert_eq!(stats.corrupt_frames, 0);
    assert_eq!(stats.gaps(), 0);
    match &items[0] {
        Item::Header(h) => {
            assert_eq!(h.hv_build_id, "test-build");
            assert_eq!(h.source, SamplingSource::PmuNmi { event: 0x013c });
        }
        other => panic!("first item {other:?}"),
    }
}

#[test]
fn records_round_trip() {
    let recs = [
        Record::Header(header()),
        Record::Vm(VmInfo {
            id: 3,
            name: "db",
            vcpus: 4,
        }),
        Record::Dropped(Dropped { count: 17 }),
        Record::ExitStat(ExitStat {
            vcpu: VcpuRef { vm: 1, vcpu: 2 },
            reason: ExitReason::WRMSR,
            count: 99,
            tsc_total: 123_456,
        }),
        Record::Sched(SchedEvent {
            tsc: 5,
            vcpu: VcpuRef { vm: 0, vcpu: 1 },
            dir: SchedDir::Out,
            reason: SchedReason::Halted,
        }),
        Record::GuestTimeOffset(GuestTimeOffset { vm: 2, offset: -42 }),
        Record::End(End {
            end_tsc: 9,
            samples_total: 8,
            dropped_total: 7,
            frames_total: 6,
        }),
        Record::GuestData(GuestData {
            vm: 1,
            kind: GUEST_DATA_BUNDLE,
            seq: 0,
            data: b"gk-bundle 2\nvm linux\n",
        }),
        Record::GuestData(GuestData {
            vm: 0,
            kind: 9,
            seq: 70_000,
            data: &[],
        }),
    ];
    for (i, r) in recs.iter().enumerate() {
        let mut buf = [0u8; MAX_FRAME_LEN];
        let n = encode_record(&mut buf, 4, i as u32, r).unwrap();
        assert_eq!(buf[n - 1], 0);
        let f = wire::decode_frame(&mut buf[..n - 1]).unwrap();
        assert_eq!((f.stream, f.seq), (4, i as u32));
        match f.body {
            wire::Body::Record(got) => assert_eq!(&got, r),
            wire::Body::Samples(_) => panic!("record {i} decoded as samples"),
        }
    }
}

#[test]
fn realistic_stream_costs_at_most_12_bytes_per_sample() {
    let per_pcpu = 100_000;
    let bytes = synth::realistic_log(2, per_pcpu, 42);
    let (items, stats, err) = decode_all(&bytes);
    assert_eq!(err, None);
    assert_eq!(stats.samples(), 2 * per_pcpu as u64);
    assert_eq!(all_samples(&items).len(), 2 * per_pcpu);
    let bps = bytes.len() as f64 / (2 * per_pcpu) as f64;
    println!(
        "vmlog: {} samples in {} bytes = {bps:.2} bytes/sample (1 kHz, 50 MHz TSC, 3 processes)",
        2 * per_pcpu,
        bytes.len()
    );
    assert!(bps <= 12.0, "{bps} bytes per sample");
}

#[test]
fn corruption_at_every_byte_loses_at_most_the_frames_it_touches() {
    let (bytes, batches) = small_log();
    let (clean, _, _) = decode_all(&bytes);
    let total_frames = clean.len();
    for pos in 0..bytes.len() {
        for flip in [0xffu8, 0x01] {
            let mut bad = bytes.clone();
            bad[pos] ^= flip;
            let (items, stats, err) = decode_all(&bad);
            assert_eq!(err, None, "pos {pos}");
            // A flipped delimiter merges two frames; any other byte hits one.
            let lost = if bytes[pos] == 0 { 2 } else { 1 };
            assert!(
                items.len() + lost >= total_frames,
                "pos {pos}: {} of {total_frames} frames",
                items.len()
            );
            assert!(
                stats.corrupt_frames >= 1,
                "pos {pos}: corruption not noticed"
            );
            for it in &items {
                if let Item::Samples { pcpu, samples } = it {
                    assert!(
                        batches.iter().any(|(p, s)| p == pcpu && s == samples),
                        "pos {pos}: altered batch decoded"
                    );
                }
            }
        }
    }
}

#[test]
fn gaps_are_reported_per_pcpu() {
    let (bytes, _) = small_log();
    // Find the frame boundaries and drop the second frame of pCPU 0's stream.
    let ends: Vec<usize> = bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == 0)
        .map(|(i, _)| i + 1)
        .collect();
    let starts: Vec<usize> = std::iter::once(0).chain(ends.iter().copied()).collect();
    // Frames: header, vm, then pCPU 0 batches.
    // Chunk 0 is the leading delimiter.
    let victim = 1 + 2 + 1;
    let mut cut = bytes[..starts[victim]].to_vec();
    cut.extend_from_slice(&bytes[ends[victim]..]);
    let (_, stats, err) = decode_all(&cut);
    assert_eq!(err, None);
    assert_eq!(stats.streams[&0].gaps, 1);
    assert_eq!(stats.streams[&0].missing_frames, 1);
    assert_eq!(stats.streams[&1].gaps, 0);
    assert_eq!(stats.corrupt_frames, 0);
}

#[test]
fn truncated_input_decodes_a_prefix() {
    let (bytes, _) = small_log();
    let full = all_samples(&decode_all(&bytes).0);
    for cut in 0..bytes.len() {
        let (items, _, err) = decode_all(&bytes[..cut]);
        assert_eq!(err, None);
        let got = all_samples(&items);
        assert!(got.len() <= full.len());
        // Samples come out in the same order; the truncated tail is lost.
        let mut it = full.iter();
        for g in &got {
            assert!(it.any(|f| f == g), "cut {cut}: sample not in original");
        }
    }
}

#[test]
fn garbage_between_frames_is_skipped() {
    let (bytes, _) = small_log();
    let clean = decode_all(&bytes).0;
    let mut rng = Rng::new(99);
    let mut noisy = Vec::new();
    noisy.extend((0..37).map(|_| rng.next_u64() as u8));
    for frame in bytes.split_inclusive(|b| *b == 0) {
        noisy.extend_from_slice(frame);
        // Garbage that ends with a delimiter, as a line glitch would.
        noisy.extend((0..rng.below(40)).map(|_| (rng.next_u64() as u8) | 1));
        noisy.push(0);
    }
    let (items, stats, err) = decode_all(&noisy);
    assert_eq!(err, None);
    assert!(items == clean, "frames lost to garbage");
    assert!(stats.corrupt_frames >= 1);
}

#[test]
fn newer_major_is_rejected_with_a_clear_message() {
    let mut log = Vec::new();
    let mut buf = [0u8; MAX_FRAME_LEN];
    let n = encode_record(&mut buf, GLOBAL_STREAM, 0, &Record::Header(header())).unwrap();
    // Same frame, major bumped to 2 (CRC recomputed).
    let mut raw = buf[..n - 1].to_vec();
    let len = cobs::decode_in_place(&mut raw).unwrap();
    raw.truncate(len - 4);
    raw[0] = 2;
    push_raw_frame(&mut log, &raw);
    let (items, _, err) = decode_all(&log);
    assert!(items.is_empty());
    assert_eq!(
        err.as_deref(),
        Some("log format 2.x is newer than this analyzer (1.x); update the analyzer")
    );
}

#[test]
fn unknown_record_kind_from_newer_minor_is_skipped() {
    let mut log = Vec::new();
    // major 1, stream 0xffff (varint ff ff 03), seq 0, kind 42, some body.
    push_raw_frame(&mut log, &[1, 0xff, 0xff, 0x03, 0, 42, 1, 2, 3]);
    let mut w = LogWriter::new();
    w.header(&header(), &[]).unwrap();
    log.extend_from_slice(w.bytes());
    let (items, stats, err) = decode_all(&log);
    assert_eq!(err, None);
    assert_eq!(items.len(), 1);
    assert_eq!(stats.unknown_records, 1);
    assert_eq!(stats.corrupt_frames, 0);
}

#[test]
fn fields_appended_by_a_newer_minor_are_ignored() {
    // A Dropped record (kind 3) on pCPU 1, seq 0, count 5, then two bytes a
    // newer minor might append.
    let mut log = Vec::new();
    push_raw_frame(&mut log, &[1, 1, 0, 3, 5, 0xaa, 0xbb]);
    let (items, stats, err) = decode_all(&log);
    assert_eq!(err, None);
    assert_eq!(items, [Item::Dropped { pcpu: 1, count: 5 }]);
    assert_eq!(stats.dropped(), 5);
}

#[test]
fn small_output_buffer_is_an_error_not_a_panic() {
    let mut buf = [0u8; 8];
    let s = synth::realistic_samples(&mut Rng::new(3), 0, 10);
    assert_eq!(
        encode_samples(&mut buf, 0, 0, PERIOD, &s),
        Err(EncodeError::OutputTooSmall)
    );
    assert_eq!(
        encode_record(&mut buf, 0, 0, &Record::Header(header())),
        Err(EncodeError::OutputTooSmall)
    );
    let long = "x".repeat(2000);
    let mut big = [0u8; MAX_FRAME_LEN];
    let r = Record::Vm(VmInfo {
        id: 0,
        name: &long,
        vcpus: 1,
    });
    assert_eq!(
        encode_record(&mut big, 0, 0, &r),
        Err(EncodeError::RecordTooLarge)
    );
}

#[test]
fn empty_and_garbage_only_input() {
    let (items, stats, err) = decode_all(&[]);
    assert!(items.is_empty() && err.is_none());
    assert_eq!(stats.frames, 0);
    let (items, stats, _) = decode_all(b"hello world\0\0\0more garbage");
    assert!(items.is_empty());
    assert_eq!(stats.corrupt_frames, 2);
}

fn arb_exit() -> impl Strategy<Value = Option<ExitReason>> {
    proptest::option::of(any::<u16>().prop_map(ExitReason))
}

fn arb_context() -> impl Strategy<Value = Context> {
    let host = (
        any::<u64>(),
        proptest::option::of(
            (any::<u16>(), any::<u16>()).prop_map(|(vm, vcpu)| VcpuRef { vm, vcpu }),
        ),
        prop_oneof![
            Just(VcpuState::Running),
            Just(VcpuState::Halted),
            any::<u16>().prop_map(|r| VcpuState::ExitHandling {
                reason: ExitReason(r)
            }),
        ],
    )
        .prop_map(|(rip, serving, vcpu_state)| {
            Context::Host(HostContext {
                rip,
                serving,
                vcpu_state,
            })
        });
    let guest = (
        0u16..4,
        0u16..4,
        any::<u16>(),
        any::<u64>(),
        any::<u64>(),
        0u8..4,
        arb_exit(),
    )
        .prop_map(|(vm, vcpu, vpid, rip, cr3, cpl, last_exit_reason)| {
            Context::Guest(GuestContext {
                vm,
                vcpu,
                vpid,
                rip,
                cr3,
                cpl,
                last_exit_reason,
            })
        });
    prop_oneof![host, guest]
}

proptest! {
    #[test]
    fn any_samples_round_trip(
        ctxs in proptest::collection::vec(arb_context(), 1..600),
        tscs in proptest::collection::vec(any::<u64>(), 600),
        period in any::<u64>(),
    ) {
        let samples: Vec<Sample> = ctxs.iter().zip(&tscs).map(|(c, t)| Sample { tsc: *t, context: *c }).collect();
        let mut w = LogWriter::new();
        w.samples(3, period, &samples).unwrap();
        let (items, stats, err) = decode_all(w.bytes());
        prop_assert_eq!(err, None);
        prop_assert_eq!(stats.corrupt_frames, 0);
        let got: Vec<Sample> = all_samples(&items).into_iter().map(|(_, s)| s).collect();
        prop_assert_eq!(got, samples);
    }

    #[test]
    fn decoder_never_panics_on_noise(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let _ = decode_all(&data);
    }
}

/// The largest guest-data record: every varint at its longest, 1024 bytes without a zero
/// (COBS's worst case).
fn worst_guest_data(data: &[u8]) -> Record<'_> {
    Record::GuestData(GuestData {
        vm: u16::MAX,
        kind: u16::MAX,
        seq: u32::MAX,
        data,
    })
}

#[test]
fn a_full_guest_data_record_fits_one_frame() {
    // docs/contracts.md ("Sample log") states it.
    assert_eq!((wire::MAX_RAW_FRAME, MAX_FRAME_LEN), (1088, 1098));
    for fill in [0xffu8, 0x00, 0x01] {
        let data = vec![fill; MAX_GUEST_DATA_RECORD];
        let mut buf = [0u8; MAX_FRAME_LEN];
        let n = encode_record(&mut buf, GLOBAL_STREAM, u32::MAX, &worst_guest_data(&data))
            .unwrap_or_else(|e| panic!("fill {fill:#x}: {e}"));
        assert!(n <= MAX_FRAME_LEN);
        assert_eq!(buf[n - 1], 0);
        let mut log = vec![0u8];
        log.extend_from_slice(&buf[..n]);
        let f = wire::decode_frame(&mut buf[..n - 1]).unwrap();
        assert_eq!((f.stream, f.seq), (GLOBAL_STREAM, u32::MAX));
        match f.body {
            wire::Body::Record(got) => assert_eq!(got, worst_guest_data(&data)),
            wire::Body::Samples(_) => panic!("decoded as samples"),
        }
        // Through the streaming decoder too (it cuts chunks at MAX_FRAME_LEN).
        let (items, stats, err) = decode_all(&log);
        assert_eq!(err, None);
        assert_eq!(stats.corrupt_frames, 0);
        assert_eq!(
            items,
            [Item::GuestData {
                vm: u16::MAX,
                kind: u16::MAX,
                seq: u32::MAX,
                data
            }]
        );
    }
    let long = vec![1u8; MAX_GUEST_DATA_RECORD + 1];
    let mut buf = [0u8; MAX_FRAME_LEN];
    assert_eq!(
        encode_record(&mut buf, GLOBAL_STREAM, 0, &worst_guest_data(&long)),
        Err(EncodeError::RecordTooLarge)
    );
}

#[test]
fn a_frame_buffer_always_holds_any_record_that_fits() {
    // Records up to and past the raw limit: each one either encodes into MAX_FRAME_LEN
    // bytes or is too large, never "output too small".
    let name = "n".repeat(wire::MAX_RAW_FRAME + 8);
    for len in 0..name.len() {
        let r = Record::Vm(VmInfo {
            id: u16::MAX,
            name: &name[..len],
            vcpus: u16::MAX,
        });
        let mut buf = [0u8; MAX_FRAME_LEN];
        match encode_record(&mut buf, GLOBAL_STREAM, u32::MAX, &r) {
            Ok(n) => assert!(n <= MAX_FRAME_LEN),
            Err(e) => assert_eq!(e, EncodeError::RecordTooLarge, "name of {len} bytes"),
        }
    }
}

#[test]
fn sample_batches_keep_their_size() {
    let s = synth::realistic_samples(&mut Rng::new(5), 0, 2000);
    let mut buf = [0u8; MAX_FRAME_LEN];
    let e = encode_samples(&mut buf, 0, 0, PERIOD, &s).unwrap();
    // 1024 raw bytes, CRC, COBS overhead and the delimiter.
    assert!(e.bytes <= 1024 + 4 + 5 + 1, "{} bytes", e.bytes);
}

/// A log with the header, samples and two guest deliveries interleaved, and the bytes of
/// each delivery.
fn guest_data_log() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let mut rng = Rng::new(11);
    let bundle: Vec<u8> = (0..3000).map(|_| rng.next_u64() as u8).collect();
    let other: Vec<u8> = (0..700).map(|i| (i % 7) as u8).collect();
    let samples = synth::realistic_samples(&mut rng, 0, 300);
    let mut w = LogWriter::new();
    w.header(&header(), &[]).unwrap();
    w.samples(0, PERIOD, &samples[..100]).unwrap();
    w.guest_data(0, GUEST_DATA_BUNDLE, &bundle[..2500]).unwrap();
    w.guest_data(1, GUEST_DATA_BUNDLE, &other).unwrap();
    w.samples(0, PERIOD, &samples[100..]).unwrap();
    w.guest_data(0, GUEST_DATA_BUNDLE, &bundle[2500..]).unwrap();
    w.end(0, 0).unwrap();
    (w.into_bytes(), bundle, other)
}

/// `(vm, kind, seq, data)` of every guest-data item.
fn guest_records(items: &[Item]) -> Vec<(u16, u16, u32, Vec<u8>)> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::GuestData {
                vm,
                kind,
                seq,
                data,
            } => Some((*vm, *kind, *seq, data.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn guest_data_is_split_numbered_and_reassembled_byte_exact() {
    let (bytes, bundle, other) = guest_data_log();
    let (items, stats, err) = decode_all(&bytes);
    assert_eq!(err, None);
    assert_eq!((stats.corrupt_frames, stats.gaps()), (0, 0));
    let recs = guest_records(&items);
    let vm0: Vec<_> = recs.iter().filter(|r| r.0 == 0).collect();
    // 2500 bytes = 1024 + 1024 + 452, then 500 more: seq 0..=3, numbering goes on.
    assert_eq!(
        vm0.iter().map(|r| (r.2, r.3.len())).collect::<Vec<_>>(),
        [(0, 1024), (1, 1024), (2, 452), (3, 500)]
    );
    let joined: Vec<u8> = vm0.iter().flat_map(|r| r.3.clone()).collect();
    assert_eq!(joined, bundle);
    let vm1: Vec<_> = recs.iter().filter(|r| r.0 == 1).collect();
    assert_eq!(vm1.len(), 1);
    assert_eq!(
        (vm1[0].1, vm1[0].2, &vm1[0].3),
        (GUEST_DATA_BUNDLE, 0, &other)
    );
    // Samples around them are untouched.
    assert_eq!(all_samples(&items).len(), 300);
}

#[test]
fn truncated_guest_data_loses_whole_records_only() {
    let (bytes, _, _) = guest_data_log();
    let full = guest_records(&decode_all(&bytes).0);
    for cut in 0..bytes.len() {
        let (items, _, err) = decode_all(&bytes[..cut]);
        assert_eq!(err, None);
        let got = guest_records(&items);
        assert!(
            full.starts_with(&got),
            "cut {cut}: {} records not a prefix",
            got.len()
        );
    }
}

#[test]
fn corrupted_guest_data_is_dropped_never_altered() {
    let (bytes, _, _) = guest_data_log();
    let full = guest_records(&decode_all(&bytes).0);
    // Every byte of the first few frames and a stride through the rest (the whole log
    // at every byte takes long in debug builds).
    let positions = (0..bytes.len()).filter(|p| *p < 3000 || p % 7 == 0);
    for pos in positions {
        let mut bad = bytes.clone();
        bad[pos] ^= 0x5a;
        let (items, stats, err) = decode_all(&bad);
        assert_eq!(err, None, "pos {pos}");
        assert!(stats.corrupt_frames >= 1, "pos {pos}: not noticed");
        for r in guest_records(&items) {
            assert!(
                full.contains(&r),
                "pos {pos}: altered record {:?}",
                (r.0, r.2)
            );
        }
    }
}

#[test]
fn malformed_guest_data_bodies_are_corrupt_frames() {
    // major 1, stream 0xffff, seq 0, kind 8, then the body.
    let frame = |body: &[u8]| {
        let mut raw = vec![1, 0xff, 0xff, 0x03, 0, 8];
        raw.extend_from_slice(body);
        let mut log = Vec::new();
        push_raw_frame(&mut log, &raw);
        decode_all(&log)
    };
    // Length past the end of the frame.
    let (items, stats, _) = frame(&[0, 1, 0, 5, b'a', b'b']);
    assert!(items.is_empty());
    assert_eq!(stats.corrupt_frames, 1);
    // Length above MAX_GUEST_DATA_RECORD (1025 = varint 81 08), data present.
    let mut body = vec![0, 1, 0, 0x81, 0x08];
    body.extend(std::iter::repeat_n(7u8, 1025));
    let (items, stats, _) = frame(&body);
    assert!(items.is_empty());
    assert_eq!(stats.corrupt_frames, 1);
    // vm above u16.
    let (items, stats, _) = frame(&[0x80, 0x80, 0x04, 1, 0, 0]);
    assert!(items.is_empty());
    assert_eq!(stats.corrupt_frames, 1);
    // Well formed, with bytes a newer minor might append: accepted.
    let (items, stats, _) = frame(&[2, 1, 3, 2, b'h', b'i', 0xaa]);
    assert_eq!(stats.corrupt_frames, 0);
    assert_eq!(
        items,
        [Item::GuestData {
            vm: 2,
            kind: 1,
            seq: 3,
            data: b"hi".to_vec()
        }]
    );
}
