//! Any bytes as a log through the aggregation (blank-slot bookkeeping).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut agg = analyzer::aggregate::Aggregator::new(1000, (0, u64::MAX), Default::default());
    for item in vmlog::Decoder::from_slice(data).flatten() {
        match item {
            vmlog::Item::Samples { pcpu, samples } => agg.feed(pcpu, &samples),
            vmlog::Item::Sched { pcpu, event } => agg.sched(pcpu, &event),
            _ => {}
        }
    }
    agg.finish();
    let guest: u64 = agg.host.per_vm.iter().sum();
    assert_eq!(agg.host.total, agg.host.host + guest);
});
