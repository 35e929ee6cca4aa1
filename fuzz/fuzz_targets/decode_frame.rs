//! One frame: un-stuffing, CRC, header and lazy sample decoding; a frame that
//! decodes re-encodes to the same samples.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vmlog::wire::{self, Body};

fuzz_target!(|data: &[u8]| {
    let mut buf = data.to_vec();
    let Ok(frame) = wire::decode_frame(&mut buf) else {
        return;
    };
    if let Body::Samples(iter) = frame.body {
        let samples: Vec<vmlog::Sample> = iter.filter_map(Result::ok).collect();
        let mut out = [0u8; vmlog::MAX_FRAME_LEN];
        let mut rest = &samples[..];
        let mut back = Vec::new();
        while !rest.is_empty() {
            let e = vmlog::encode_samples(&mut out, frame.stream, 0, 50_000, rest).expect("encode");
            let mut chunk = out[..e.bytes - 1].to_vec();
            let f = wire::decode_frame(&mut chunk).expect("own frame decodes");
            if let Body::Samples(it) = f.body {
                back.extend(it.map(|s| s.expect("own sample decodes")));
            }
            rest = &rest[e.samples..];
        }
        assert_eq!(back, samples);
    }
});
