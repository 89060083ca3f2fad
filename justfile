# Everyday recipes. `just` lists them.

default:
    @just --list

# Run the service against local Postgres and Redis (see README for settings).
sync *ARGS:
    cargo run --release -- sync {{ARGS}}

# The test suite (needs local Postgres and Redis), as CI runs it.
test:
    cargo test --all-targets

# Everything CI checks: format, lints, tests.
ci:
    bash .ci/run

# Criterion benches of decoding and the fold on the recorded fixture.
bench-fold:
    cargo bench --bench fold

# Regenerate the small recorded fixture used by the tests (deterministic).
fixture-small:
    cargo run --release -- fixture --events 3000 --accounts 120 --terms 250 --seed 7 -o tests/fixtures/small.jsonl

# Generate a large fixture on demand (not committed): just fixture-large 1000000
fixture-large EVENTS="1000000":
    mkdir -p fixtures-large
    cargo run --release -- fixture --events {{EVENTS}} --accounts 20000 --terms 60000 --seed 42 -o fixtures-large/events-{{EVENTS}}.jsonl

fmt:
    cargo fmt --all

lint:
    cargo clippy --all-targets -- -D warnings

# The whole pipeline against local Postgres and Redis on a large fixture (median of 3 runs).
bench-sync EVENTS="1000000":
    test -f fixtures-large/events-{{EVENTS}}.jsonl || just fixture-large {{EVENTS}}
    cargo run --release -- bench fixtures-large/events-{{EVENTS}}.jsonl --mode sync --runs 3

# What a history's size costs (issue 14): sync events/s, peak RSS, restart → ready, a 16-block
# reorg at the head → ready again (median of 3 runs): just bench-scale 2000000
# Further flags go to bench: just bench-scale 2000000 --reorg-depth 64
bench-scale EVENTS="200000" *FLAGS:
    test -f fixtures-large/events-{{EVENTS}}.jsonl || just fixture-large {{EVENTS}}
    cargo run --release -- bench fixtures-large/events-{{EVENTS}}.jsonl --mode scale --runs 3 --log-level warn {{FLAGS}}

# The insert rate the event log's primary key alone allows at each history size, without the
# service (issue 14): just bench-pk-floor 10000000 (KEY text or bytea)
bench-pk-floor ROWS="10000000" KEY="text":
    benches/pk-floor.sh {{ROWS}} {{KEY}}

# Decode + fold in memory on a large fixture (median of 3 runs).
bench-fold-large EVENTS="1000000":
    test -f fixtures-large/events-{{EVENTS}}.jsonl || just fixture-large {{EVENTS}}
    cargo run --release -- bench fixtures-large/events-{{EVENTS}}.jsonl --mode fold --runs 3

# The fault-injection suite (kill -9 ten times, Postgres and Redis cut, a storm of bad input).
faults:
    cargo test --test it faults -- --nocapture

# Fuzz the decoder longer than CI does (proptest over bytes, JSON and mutated envelopes).
fuzz CASES="200000":
    PROPTEST_CASES={{CASES}} cargo test --release --lib fuzz

# Build localhost/redis-postgres-sync:latest: static musl binary in a scratch image, no registry needed.
image:
    deploy/container/build

# Run the built image against local Postgres and Redis on the recorded fixture and verify the tables.
image-smoke:
    deploy/container/smoke
