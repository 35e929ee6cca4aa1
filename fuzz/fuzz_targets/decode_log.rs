//! Any bytes through the streaming decoder: no panic, counters consistent.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut dec = vmlog::Decoder::from_slice(data);
    let mut samples = 0u64;
    for item in dec.by_ref() {
        if let Ok(vmlog::Item::Samples { samples: s, .. }) = item {
            samples += s.len() as u64;
        }
    }
    let stats = dec.stats();
    assert_eq!(stats.samples(), samples);
    assert!(stats.bytes <= data.len() as u64);
});
