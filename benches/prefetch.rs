//! The prefetch model's cost per request: `Markov::observe_predict` (learn, then predict), as
//! the background worker runs it for every client GET. Compare with the hit path
//! (`cargo bench --bench hot_path -- hit_path`).
//!
//! `cargo bench --bench prefetch` (CI only compiles it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use augur::prefetch::markov::{Markov, ModelSettings};
use criterion::{criterion_group, criterion_main, Criterion};

/// A synthetic API workload: 2,000 clients walking `/users/{id}` ─► `/users/{id}/orders` ─►
/// `/orders/{id}` ─► `/static/app.js`, ids drawn from a small LCG.
fn workload(n: usize) -> Vec<(u64, String)> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        x >> 33
    };
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let client = next() % 2000;
        let user = next() % 5000;
        out.push((client, format!("/users/{user}")));
        out.push((client, format!("/users/{user}/orders?page=1")));
        out.push((client, format!("/orders/{}", next() % 50_000)));
        out.push((client, "/static/app.js".to_owned()));
    }
    out.truncate(n);
    out
}

fn markov(c: &mut Criterion) {
    let reqs = workload(200_000);
    let mut m = Markov::new(ModelSettings::default());
    // Warm: the model holds a realistic table before measuring.
    for (i, (client, pq)) in reqs.iter().enumerate().take(100_000) {
        m.observe(*client, "api.example.com", pq, i as u64 * 10);
    }
    let mut g = c.benchmark_group("prefetch");
    let mut i = 100_000usize;
    g.bench_function("observe_predict", |b| {
        b.iter(|| {
            let (client, pq) = &reqs[i % reqs.len()];
            let now = i as u64 * 10;
            let p = m.observe_predict(*client, "api.example.com", pq, now, 1, 0.3);
            i += 1;
            black_box(p)
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = markov
}
criterion_main!(benches);
