//! Criterion benches of the pure hot paths on the recorded fixture: decoding rindexer envelopes,
//! and the fold (apply every event, then refresh the triple-level analytics).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use redis_postgres_sync::domain::{Changes, State};
use redis_postgres_sync::fixture::read_events;
use redis_postgres_sync::ingest::decode::decode_envelope;

const FIXTURE: &str = include_str!("../tests/fixtures/small.jsonl");

fn decoding(c: &mut Criterion) {
    let lines: Vec<&str> = FIXTURE.lines().collect();
    let events = read_events(FIXTURE).expect("fixture decodes").len();
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(events as u64));
    group.bench_function("recorded_fixture", |b| {
        b.iter(|| {
            for line in &lines {
                std::hint::black_box(decode_envelope(line.as_bytes()).expect("valid"));
            }
        })
    });
    group.finish();
}

fn folding(c: &mut Criterion) {
    let events = read_events(FIXTURE).expect("fixture decodes");
    let mut group = c.benchmark_group("fold");
    group.throughput(Throughput::Elements(events.len() as u64));
    // The service's shape: one batch of 500 events, then the analytics refresh.
    group.bench_function("recorded_fixture", |b| {
        b.iter_batched(
            State::new,
            |mut state| {
                let mut changes = Changes::default();
                for batch in events.chunks(500) {
                    for e in batch {
                        state.apply(e, &mut changes);
                    }
                    state.refresh_analytics(&mut changes);
                }
                std::hint::black_box((state, changes))
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, decoding, folding);
criterion_main!(benches);
