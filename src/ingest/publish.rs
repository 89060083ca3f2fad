//! Publishing a JSON-lines fixture into a Redis stream the way rindexer does (field `payload`),
//! optionally shuffled and with a share of entries published twice: the input of tests and of
//! the benchmark.

use anyhow::Context;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use redis::aio::MultiplexedConnection;

/// How to publish.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    /// Shuffle the entries (seeded).
    pub shuffle: bool,
    /// Share of entries, 0.0 to 1.0, published a second time (at a random later position when
    /// shuffled, right after the first otherwise).
    pub duplicate_share: f64,
    pub seed: u64,
}

/// The order in which `lines` are published: indexes into `lines`, repeats included.
pub fn publish_order(lines: usize, opts: &PublishOptions) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let mut order = Vec::with_capacity(lines + (lines as f64 * opts.duplicate_share) as usize + 1);
    for i in 0..lines {
        order.push(i);
        if opts.duplicate_share > 0.0 && rng.random_bool(opts.duplicate_share.clamp(0.0, 1.0)) {
            order.push(i);
        }
    }
    if opts.shuffle {
        order.shuffle(&mut rng);
    }
    order
}

/// Pushes `lines` (one envelope each) to `stream`, pipelined in chunks; calls `progress` with the
/// number of entries written so far. Returns the number of entries written.
pub async fn publish(
    conn: &mut MultiplexedConnection,
    stream: &str,
    lines: &[&str],
    opts: &PublishOptions,
    mut progress: impl FnMut(usize),
) -> anyhow::Result<usize> {
    let order = publish_order(lines.len(), opts);
    for (n, chunk) in order.chunks(500).enumerate() {
        let mut pipe = redis::pipe();
        for &i in chunk {
            pipe.xadd(stream, "*", &[("payload", lines[i])]).ignore();
        }
        pipe.query_async::<()>(conn)
            .await
            .with_context(|| format!("publishing to stream {stream}"))?;
        progress((n * 500 + chunk.len()).min(order.len()));
    }
    Ok(order.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_keeps_every_line_and_duplicates_a_share() {
        let opts = PublishOptions {
            shuffle: true,
            duplicate_share: 0.2,
            seed: 9,
        };
        let order = publish_order(1000, &opts);
        let mut seen = vec![0u32; 1000];
        for i in &order {
            seen[*i] += 1;
        }
        assert!(seen.iter().all(|n| (1..=2).contains(n)));
        let twice = seen.iter().filter(|n| **n == 2).count();
        assert!((120..=280).contains(&twice), "{twice}");
        assert_ne!(order[..10], (0..10).collect::<Vec<_>>()[..]);
        assert_eq!(publish_order(1000, &opts), order, "seeded");
        assert_eq!(
            publish_order(5, &PublishOptions::default()),
            vec![0, 1, 2, 3, 4]
        );
    }
}
