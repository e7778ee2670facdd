//! The prefetch model (pure: no I/O, `now` is a parameter): a first-order Markov transition
//! table learned online from each client's consecutive requests.
//!
//! Two granularities share one table, told apart by a one-letter prefix on the state key:
//!
//! * `r` concrete URLs, `host/path?query`: `/users/42` ─► `/users/42/orders`;
//! * `t` endpoint templates with ids abstracted (numbers, dash-joined digit runs such as EDGAR
//!   accessions, UUIDs, hex runs of 16+ characters ─► `{id}`): `/users/{id}` ─►
//!   `/users/{id}/orders`. A predicted template is made concrete by carrying over the ids of the
//!   current request, in order; a template needing a different number of ids is not predicted.
//!
//! Counts decay exponentially with a half-life (applied lazily when a state is touched), so the
//! model follows changing behaviour. Memory is bounded: at most `top_successors` successors per
//! state (the weakest one is replaced), at most `max_states` states (the least recently used
//! eighth is dropped when the cap is reached), at most `max_clients` tracked clients, and at
//! most `max_bytes` in all ([`Markov::approx_bytes`], counted on the interned keys, whose
//! length the model does not choose: past it, least recently used states and then the
//! longest-idle clients are dropped and the keys nothing refers to are collected).
//!
//! Each successor also carries the decayed outcome of the prefetches it caused (`issued`, `used`),
//! so a transition whose precision falls below the floor stops being predicted. Because those
//! counts decay too, a switched-off transition is retried once its evidence has faded.
//!
//! Cost: this runs for every client GET, so state keys are interned once per request (one
//! string hash for the URL; its template is cached with it, so a known URL is not re-templated)
//! and everything after that works on integer ids: successors, client positions and the
//! credits of a prediction are ids, turned back into strings only for a prefetch that is
//! actually issued. Interned keys no longer referenced are collected when their number has
//! doubled since the last collection, which renumbers the ids (a new `epoch`).
//!
//! The state table serialises as JSON ([`Markov::to_json`]); two snapshots merge by adding
//! counts ([`Markov::merge`]), which is what sharing one model across a fleet needs.
//!
//! Files: this one is the model (the table, learning from each client's sequence, decay, the
//! memory bounds, the admin and metrics views); `predict` reads the table for a request and
//! credits the prefetches' fates back; `intern` makes a request's state keys, interns them to
//! ids and collects the unreferenced ones; `snapshot` is the JSON form (save, load, merge);
//! `template` is the URL templating (id scan, template, fill).

mod intern;
mod predict;
mod snapshot;
mod template;

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;

use intern::{Keys, MIN_COLLECT_AT};
pub use predict::Prediction;
pub use template::{fill, template};

/// The model's maps hash with foldhash: SipHash (std's default, built against HashDoS) costs
/// several times more. The keys are request paths an attacker could choose, so the hasher is
/// seeded per process.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// An interned state key: an index into `Markov::nodes`.
type Id = u32;
const NO_ID: Id = Id::MAX;

/// Tunables of the model (from `[prefetch]`).
#[derive(Debug, Clone)]
pub struct ModelSettings {
    pub max_states: usize,
    pub top_successors: usize,
    pub max_clients: usize,
    /// A client's sequence ends after this long without a request.
    pub idle_gap_ms: u64,
    /// Half-life of every count.
    pub half_life_ms: u64,
    /// Transitions whose prefetch precision is below this are not predicted…
    pub precision_floor: f32,
    /// …once they have at least this much (decayed) evidence.
    pub min_samples: f32,
    /// Memory the model may hold ([`Markov::approx_bytes`]): beyond, the least recently used
    /// states and the longest-idle clients are dropped and their keys collected.
    pub max_bytes: usize,
}

impl Default for ModelSettings {
    fn default() -> Self {
        ModelSettings {
            max_states: 100_000,
            top_successors: 4,
            max_clients: 100_000,
            idle_gap_ms: 300_000,
            half_life_ms: 3_600_000,
            precision_floor: 0.3,
            min_samples: 3.0,
            max_bytes: 64 << 20,
        }
    }
}

/// One successor of a state.
#[derive(Debug, Clone, Copy)]
struct Succ {
    /// The successor's state key (same granularity as the state).
    to: Id,
    count: f32,
    /// Prefetches this transition caused whose fate is known (used or wasted).
    issued: f32,
    /// Of those, the ones a real request used.
    used: f32,
}

impl Succ {
    /// `used / issued`, or `None` without evidence.
    fn precision(&self) -> Option<f32> {
        (self.issued > 0.0).then(|| self.used / self.issued)
    }
}

/// A state: the decayed count of transitions out of it and its strongest successors.
#[derive(Debug, Clone)]
struct State {
    total: f32,
    /// When the counts were last decayed (unix ms).
    updated_ms: u64,
    succ: Vec<Succ>,
    /// Recency tick for LRU dropping; not persisted.
    last_used: u64,
}

/// An interned state key, the state it names if it has one, and (for a URL key) the id of its
/// template key, so that a URL seen before is not templated again.
#[derive(Debug)]
struct Node {
    key: Arc<str>,
    state: Option<State>,
    tmpl: Id,
}

/// Where a client's sequence stands.
#[derive(Debug, Clone, Copy)]
struct Last {
    raw: Id,
    tmpl: Id,
    at_ms: u64,
}

/// The strongest transitions, for the admin endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct TransitionView {
    pub from: String,
    pub to: String,
    pub count: f32,
    pub probability: f32,
    pub prefetch_issued: f32,
    pub prefetch_used: f32,
    pub precision: Option<f32>,
    pub suppressed: bool,
}

/// Size figures for metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct ModelStats {
    pub states: usize,
    pub transitions: usize,
    pub clients: usize,
    pub approx_bytes: usize,
    pub dropped_states: u64,
}

/// The transition table plus each client's last request.
#[derive(Debug)]
pub struct Markov {
    settings: ModelSettings,
    /// Interned keys by id, with their states.
    nodes: Vec<Node>,
    index: Map<Arc<str>, Id>,
    /// Nodes that hold a state.
    states: usize,
    clients: Map<u64, Last>,
    tick: u64,
    dropped_states: u64,
    /// Bumped when ids are renumbered.
    epoch: u64,
    /// Collect unreferenced keys once `nodes` is this long.
    collect_at: usize,
    /// Bytes of the interned keys' text, for [`Markov::approx_bytes`] in O(1).
    key_bytes: usize,
    /// The current request's keys and ids, reused from request to request.
    scratch: Keys,
}

impl Markov {
    pub fn new(settings: ModelSettings) -> Markov {
        Markov {
            settings,
            nodes: Vec::new(),
            index: Map::default(),
            states: 0,
            clients: Map::default(),
            tick: 0,
            dropped_states: 0,
            epoch: 0,
            collect_at: MIN_COLLECT_AT,
            key_bytes: 0,
            scratch: Keys::default(),
        }
    }

    /// Learn from `client` asking for `host` + `pq` at `now_ms`: the transition from the
    /// client's previous request (unless the idle gap passed), at both granularities.
    pub fn observe(&mut self, client: u64, host: &str, pq: &str, now_ms: u64) {
        // k = 0: learn only (predicting nothing touches no state).
        self.observe_predict(client, host, pq, now_ms, 0, 1.0);
    }

    /// [`Markov::observe`] then [`Markov::predict`] for the same request, what the prefetch
    /// worker does for every client GET: the state keys are interned once.
    pub fn observe_predict(
        &mut self,
        client: u64,
        host: &str,
        pq: &str,
        now_ms: u64,
        k: usize,
        threshold: f32,
    ) -> Vec<Prediction> {
        self.maybe_collect();
        let mut keys = std::mem::take(&mut self.scratch);
        let (mut raw, mut tmpl) = self.intern_request(&mut keys, host, pq);
        self.observe_ids(client, raw, tmpl, now_ms);
        if self.within_budget(Some(client)) {
            // Keys were collected (renumbered): the client's position holds the new ids.
            if let Some(last) = self.clients.get(&client) {
                (raw, tmpl) = (last.raw, last.tmpl);
            }
        }
        let ask = predict::Ask {
            host,
            pq,
            now_ms,
            k,
            threshold,
        };
        let out = self.predict_ids(Some(raw), Some(tmpl), &mut keys, &ask);
        self.scratch = keys;
        out
    }

    fn observe_ids(&mut self, client: u64, raw: Id, tmpl: Id, now_ms: u64) {
        let now = Last {
            raw,
            tmpl,
            at_ms: now_ms,
        };
        if let Some(prev) = self.clients.get_mut(&client) {
            let last = std::mem::replace(prev, now);
            // A repeated request (a reload) is not a transition.
            if now_ms.saturating_sub(last.at_ms) <= self.settings.idle_gap_ms && last.raw != raw {
                self.learn(last.raw, raw, now_ms);
                self.learn(last.tmpl, tmpl, now_ms);
            }
            return;
        }
        if self.clients.len() >= self.settings.max_clients {
            let gap = self.settings.idle_gap_ms;
            self.clients
                .retain(|_, l| now_ms.saturating_sub(l.at_ms) <= gap);
            if self.clients.len() >= self.settings.max_clients {
                drop_oldest_half(&mut self.clients);
            }
        }
        self.clients.insert(client, now);
    }

    fn learn(&mut self, from: Id, to: Id, now_ms: u64) {
        self.tick += 1;
        let tick = self.tick;
        let half_life = self.settings.half_life_ms;
        let top = self.settings.top_successors.max(1);
        if self.nodes[from as usize].state.is_none() {
            self.make_room();
            self.nodes[from as usize].state = Some(State {
                total: 0.0,
                updated_ms: now_ms,
                // Exactly `top`: what `approx_bytes` counts per state.
                succ: Vec::with_capacity(top),
                last_used: tick,
            });
            self.states += 1;
        }
        let Some(state) = self.nodes[from as usize].state.as_mut() else {
            return;
        };
        decay(state, now_ms, half_life);
        state.last_used = tick;
        state.total += 1.0;
        let fresh = Succ {
            to,
            count: 1.0,
            issued: 0.0,
            used: 0.0,
        };
        if let Some(s) = state.succ.iter_mut().find(|s| s.to == to) {
            s.count += 1.0;
        } else if state.succ.len() < top {
            state.succ.push(fresh);
        } else if let Some(weakest) = state
            .succ
            .iter_mut()
            .min_by(|a, b| a.count.total_cmp(&b.count))
        {
            // Space-saving replacement: a newcomer takes the weakest slot. Its count starts at
            // 1, not at the evicted count, so a stream of one-off successors cannot look strong.
            *weakest = fresh;
        }
        state
            .succ
            .sort_unstable_by(|a, b| b.count.total_cmp(&a.count));
    }

    /// Drop the least recently used eighth of the states when the cap is reached.
    fn make_room(&mut self) {
        if self.states >= self.settings.max_states.max(1) {
            self.drop_lru_states();
        }
    }

    /// The model's memory, estimated in O(1) from what it holds: interned keys (text, node,
    /// index slot), successor slots, client positions. Upper-bounds [`ModelStats`]'s
    /// figure, which is this one.
    pub fn approx_bytes(&self) -> usize {
        use std::mem::size_of;
        let top = self.settings.top_successors.max(1);
        // An `Arc<str>` allocation carries two counters beside the text.
        self.nodes.capacity() * size_of::<Node>()
            + self.key_bytes
            + self.nodes.len() * 16
            + self.index.capacity() * (size_of::<(Arc<str>, Id)>() + 1)
            + self.states * top * size_of::<Succ>()
            + self.clients.capacity() * (size_of::<(u64, Last)>() + 1)
    }

    /// Past `max_bytes`: forget unreferenced keys; then drop the least recently used eighth
    /// of the states, then (still over) the longest-idle eighth of the clients other than
    /// `keep`, and collect again, until under. Whether keys were collected (renumbered).
    fn within_budget(&mut self, keep: Option<u64>) -> bool {
        // Each round drops an eighth: 64 rounds leave under a ten-thousandth.
        const MAX_ROUNDS: usize = 64;
        let max = self.settings.max_bytes;
        if self.approx_bytes() <= max {
            return false;
        }
        self.collect();
        for _ in 0..MAX_ROUNDS {
            if self.approx_bytes() <= max {
                break;
            }
            let states = self.drop_lru_states();
            self.collect();
            if self.approx_bytes() <= max {
                break;
            }
            // Client positions pin their keys too (two per client).
            let clients = self.drop_idle_clients(keep);
            self.collect();
            if states + clients == 0 {
                break;
            }
        }
        true
    }

    /// Drop the longest-idle eighth of the tracked clients, never `keep`. How many.
    fn drop_idle_clients(&mut self, keep: Option<u64>) -> usize {
        let before = self.clients.len();
        let at = self
            .clients
            .iter()
            .filter(|(c, _)| Some(**c) != keep)
            .map(|(_, l)| l.at_ms)
            .collect();
        let Some(cutoff) = eighth_cutoff(at) else {
            return 0;
        };
        self.clients
            .retain(|c, l| Some(*c) == keep || l.at_ms > cutoff);
        self.clients.shrink_to_fit();
        before - self.clients.len()
    }

    /// Drop the least recently used eighth of the states. How many.
    fn drop_lru_states(&mut self) -> usize {
        let before = self.states;
        let ticks = self
            .nodes
            .iter()
            .filter_map(|n| n.state.as_ref().map(|s| s.last_used))
            .collect();
        let Some(cutoff) = eighth_cutoff(ticks) else {
            return 0;
        };
        for node in &mut self.nodes {
            if node.state.as_ref().is_some_and(|s| s.last_used <= cutoff) {
                node.state = None;
                self.states -= 1;
                self.dropped_states += 1;
            }
        }
        before - self.states
    }

    /// The `limit` transitions with the highest counts.
    pub fn strongest(&self, limit: usize) -> Vec<TransitionView> {
        let (floor, min_samples) = (self.settings.precision_floor, self.settings.min_samples);
        let nodes = &self.nodes;
        let mut all: Vec<TransitionView> = nodes
            .iter()
            .filter_map(|n| Some((&n.key, n.state.as_ref()?)))
            .flat_map(|(from, st)| {
                st.succ.iter().map(move |s| TransitionView {
                    from: from.to_string(),
                    to: nodes[s.to as usize].key.to_string(),
                    count: s.count,
                    probability: s.count / st.total.max(f32::MIN_POSITIVE),
                    prefetch_issued: s.issued,
                    prefetch_used: s.used,
                    precision: s.precision(),
                    suppressed: suppressed(s, floor, min_samples),
                })
            })
            .collect();
        let limit = limit.min(all.len());
        if limit == 0 {
            return Vec::new();
        }
        all.select_nth_unstable_by(limit - 1, |a, b| b.count.total_cmp(&a.count));
        all.truncate(limit);
        all.sort_by(|a, b| b.count.total_cmp(&a.count));
        all
    }

    pub fn stats(&self) -> ModelStats {
        let transitions = self
            .nodes
            .iter()
            .filter_map(|n| n.state.as_ref())
            .map(|s| s.succ.len())
            .sum();
        ModelStats {
            states: self.states,
            transitions,
            clients: self.clients.len(),
            approx_bytes: self.approx_bytes(),
            dropped_states: self.dropped_states,
        }
    }
}

/// Enough evidence (decayed counts, so "about `min_samples`") and precision under the floor.
fn suppressed(s: &Succ, floor: f32, min_samples: f32) -> bool {
    s.issued + 0.5 >= min_samples && s.used < floor * s.issued
}

fn decay(state: &mut State, now_ms: u64, half_life_ms: u64) {
    let dt = now_ms.saturating_sub(state.updated_ms);
    if dt == 0 || half_life_ms == 0 {
        state.updated_ms = state.updated_ms.max(now_ms);
        return;
    }
    let f = (-(dt as f64) / half_life_ms as f64).exp2() as f32;
    state.total *= f;
    for s in &mut state.succ {
        s.count *= f;
        s.issued *= f;
        s.used *= f;
    }
    state.updated_ms = now_ms;
}

/// The value at or under which the lowest eighth (at least one) of `values` lies.
fn eighth_cutoff(mut values: Vec<u64>) -> Option<u64> {
    let n = (values.len() / 8).max(1);
    (!values.is_empty()).then(|| *values.select_nth_unstable(n - 1).1)
}

fn drop_oldest_half(clients: &mut Map<u64, Last>) {
    let mut at: Vec<u64> = clients.values().map(|l| l.at_ms).collect();
    let mid = at.len() / 2;
    if mid == 0 {
        clients.clear();
        return;
    }
    let (_, nth, _) = at.select_nth_unstable(mid);
    let cutoff = *nth;
    clients.retain(|_, l| l.at_ms > cutoff);
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn model() -> Markov {
        Markov::new(ModelSettings {
            idle_gap_ms: 1000,
            half_life_ms: 10_000,
            ..ModelSettings::default()
        })
    }

    #[test]
    fn learns_a_to_b_and_predicts_b() {
        let mut m = model();
        for i in 0..3 {
            m.observe(1, "h", "/a", i * 10_000);
            m.observe(1, "h", "/b", i * 10_000 + 100);
        }
        let p = m.predict("h", "/a", 30_000, 1, 0.5);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].pq, "/b");
        assert!(p[0].p > 0.9, "{p:?}");
    }

    #[test]
    fn observe_predict_is_observe_then_predict() {
        // Few states, so that states are dropped and their keys collected on the way.
        let small = || {
            Markov::new(ModelSettings {
                max_states: 256,
                idle_gap_ms: 1000,
                half_life_ms: 10_000,
                ..ModelSettings::default()
            })
        };
        let (mut a, mut b) = (small(), small());
        let paths = [
            "/users/1",
            "/users/1/orders",
            "/o/5",
            "/users/2",
            "/users/2/orders",
        ];
        for i in 0..20_000u64 {
            // One-off URLs now and then.
            let one_off = format!("/x/{i}/y");
            let pq = if i % 4 == 3 {
                one_off.as_str()
            } else {
                paths[(i * 7 % 5) as usize]
            };
            let client = i % 3;
            a.observe(client, "h", pq, i * 50);
            let want = a.predict("h", pq, i * 50, 2, 0.1);
            assert_eq!(b.observe_predict(client, "h", pq, i * 50, 2, 0.1), want);
        }
        let table = |m: &Markov| -> serde_json::Value {
            serde_json::from_str(&m.to_json().unwrap_or_default()).unwrap_or_default()
        };
        assert_eq!(table(&a), table(&b));
        assert!(a.epoch > 0, "keys were collected");
    }

    #[test]
    fn idle_gap_ends_a_sequence_and_clients_are_separate() {
        let mut m = model();
        m.observe(1, "h", "/a", 0);
        m.observe(1, "h", "/b", 5_000); // gap > 1s: not a transition
        m.observe(2, "h", "/c", 5_100); // another client
        assert!(m.predict("h", "/a", 6_000, 3, 0.0).is_empty());
        assert!(m.predict("h", "/b", 6_000, 3, 0.0).is_empty());
    }

    #[test]
    fn decay_lets_new_behaviour_win() {
        let mut m = model();
        for i in 0..10 {
            m.observe(1, "h", "/a", i * 2000);
            m.observe(1, "h", "/b", i * 2000 + 10);
        }
        let t0 = 100_000; // ten half-lives later
        for i in 0..2 {
            m.observe(1, "h", "/a", t0 + i * 2000);
            m.observe(1, "h", "/c", t0 + i * 2000 + 10);
        }
        assert_eq!(m.predict("h", "/a", t0 + 5000, 1, 0.0)[0].pq, "/c");
    }

    #[test]
    fn memory_is_bounded() {
        let mut m = Markov::new(ModelSettings {
            max_states: 64,
            top_successors: 2,
            max_clients: 16,
            ..ModelSettings::default()
        });
        for i in 0..1000u64 {
            m.observe(i % 40, "h", &format!("/p/{i}"), i);
            m.observe(i % 40, "h", &format!("/q{}", i % 7), i);
        }
        let s = m.stats();
        assert!(s.states <= 64, "{s:?}");
        assert!(s.clients <= 16, "{s:?}");
        assert!(s.transitions <= 2 * 64);
        assert!(s.dropped_states > 0);
        assert!(s.approx_bytes > 0);
    }

    #[test]
    fn memory_is_bounded_in_bytes_whatever_the_url_length() {
        const BUDGET: usize = 8 << 20;
        let mut m = Markov::new(ModelSettings {
            max_bytes: BUDGET,
            idle_gap_ms: 1000,
            ..ModelSettings::default()
        });
        let pad = "x".repeat(60 << 10);
        for i in 0..10_000u64 {
            // A few clients, each a sequence of unique 60 KiB URLs: every request interns
            // two long keys (URL and template) and makes a state.
            m.observe(i % 5, "h", &format!("/{i}/{pad}"), i * 10);
            // Checked at every step (and stopping at the first excess, not after 1 GB).
            let bytes = m.stats().approx_bytes;
            assert!(bytes <= BUDGET, "{bytes} bytes after {i} observations");
        }
        // Still learning: the newest transitions are there.
        m.observe(1, "h", "/a", 200_000);
        m.observe(1, "h", "/b", 200_010);
        assert_eq!(m.predict("h", "/a", 200_020, 1, 0.5)[0].pq, "/b");
    }
}
