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
//! eighth is dropped when the cap is reached), at most `max_clients` tracked clients.
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

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The model's maps hash with foldhash: SipHash (std's default, built against HashDoS) costs
/// several times more. The keys are request paths an attacker could choose, so the hasher is
/// seeded per process.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// An interned state key: an index into `Markov::nodes`.
type Id = u32;
const NO_ID: Id = Id::MAX;

/// Collect unreferenced keys no more often than this many keys.
const MIN_COLLECT_AT: usize = 4096;

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

/// A transition `from ─► to`, by ids valid in the epoch of the prediction that carries it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Credit {
    from: Id,
    to: Id,
}

/// The transitions behind one prediction: a concrete URL and a template transition may both
/// predict the same URL, so two are kept inline (no allocation), any more spill to a `Vec`.
#[derive(Debug, Clone, Default, PartialEq)]
struct Credits {
    inline: [Credit; 2],
    len: usize,
    spill: Vec<Credit>,
}

impl Credits {
    fn one(c: Credit) -> Credits {
        Credits {
            inline: [c, Credit::default()],
            len: 1,
            spill: Vec::new(),
        }
    }

    fn push(&mut self, c: Credit) {
        match self.inline.get_mut(self.len) {
            Some(slot) => *slot = c,
            None => self.spill.push(c),
        }
        self.len += 1;
    }

    fn iter(&self) -> impl Iterator<Item = &Credit> {
        self.inline[..self.len.min(2)].iter().chain(&self.spill)
    }
}

/// A predicted next request.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// Concrete path and query to fetch.
    pub pq: String,
    /// Estimated probability.
    pub p: f32,
    /// The transitions that predicted it, for crediting the outcome ([`Markov::credit_keys`]).
    credits: Credits,
    /// The key numbering `credits` refers to.
    epoch: u64,
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

/// The saved form (version 1): state key ─► counts and successors by key. Unchanged by the
/// interning, so files written before it load as they are.
#[derive(Deserialize)]
struct Snapshot {
    version: u32,
    states: Map<String, SnapState<String>>,
}

#[derive(Serialize)]
struct SnapshotRef<'a> {
    version: u32,
    states: Map<&'a str, SnapState<&'a str>>,
}

#[derive(Serialize, Deserialize)]
struct SnapState<S> {
    total: f32,
    updated_ms: u64,
    succ: Vec<SnapSucc<S>>,
}

#[derive(Serialize, Deserialize)]
struct SnapSucc<S> {
    to: S,
    count: f32,
    #[serde(default)]
    issued: f32,
    #[serde(default)]
    used: f32,
}

const SNAPSHOT_VERSION: u32 = 1;

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
    /// The current request's keys and ids, reused from request to request.
    scratch: Keys,
}

/// A request's two state keys (`r…` and `t…`) and the byte ranges of its ids in the path.
#[derive(Debug, Default)]
struct Keys {
    raw: String,
    tmpl: String,
    ids: Vec<Range<usize>>,
    /// `ids` are the current request's.
    scanned: bool,
    /// `tmpl` is the current request's.
    templated: bool,
    /// A predicted template made concrete.
    filled: String,
}

impl Keys {
    /// Fill in place (no allocation once the buffers have grown).
    fn set_raw(&mut self, host: &str, pq: &str) {
        self.raw.clear();
        self.raw.push('r');
        self.raw.push_str(host);
        self.raw.push_str(pq);
        self.scanned = false;
        self.templated = false;
    }

    /// The ids only: all a known URL needs to fill a predicted template.
    fn scan_ids(&mut self, pq: &str) {
        if !self.scanned {
            id_ranges(pq, &mut self.ids);
            self.scanned = true;
        }
    }

    fn set_tmpl(&mut self, host: &str, pq: &str) {
        if self.templated {
            return;
        }
        self.scan_ids(pq);
        self.tmpl.clear();
        self.tmpl.push('t');
        self.tmpl.push_str(host);
        template_from(pq, &self.ids, &mut self.tmpl);
        self.templated = true;
    }
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
        let (raw, tmpl) = self.intern_request(&mut keys, host, pq);
        self.observe_ids(client, raw, tmpl, now_ms);
        let out = self.predict_ids(
            Some(raw),
            Some(tmpl),
            &mut keys,
            host,
            pq,
            now_ms,
            k,
            threshold,
        );
        self.scratch = keys;
        out
    }

    fn lookup(&self, key: &str) -> Option<Id> {
        self.index.get(key).copied()
    }

    fn intern(&mut self, key: &str) -> Id {
        if let Some(id) = self.lookup(key) {
            return id;
        }
        let id = Id::try_from(self.nodes.len()).unwrap_or(NO_ID - 1);
        let key: Arc<str> = Arc::from(key);
        self.nodes.push(Node {
            key: key.clone(),
            state: None,
            tmpl: NO_ID,
        });
        self.index.insert(key, id);
        id
    }

    /// The request's URL and template ids; the path is templated only if the URL is new.
    fn intern_request(&mut self, keys: &mut Keys, host: &str, pq: &str) -> (Id, Id) {
        keys.set_raw(host, pq);
        let raw = self.intern(&keys.raw);
        let cached = self.nodes[raw as usize].tmpl;
        if cached != NO_ID {
            return (raw, cached);
        }
        keys.set_tmpl(host, pq);
        let tmpl = self.intern(&keys.tmpl);
        self.nodes[raw as usize].tmpl = tmpl;
        (raw, tmpl)
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
                succ: Vec::new(),
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
        let cap = self.settings.max_states.max(1);
        if self.states < cap {
            return;
        }
        let mut ticks: Vec<u64> = self
            .nodes
            .iter()
            .filter_map(|n| n.state.as_ref().map(|s| s.last_used))
            .collect();
        if ticks.is_empty() {
            return;
        }
        let n = (ticks.len() / 8).max(1);
        let (_, nth, _) = ticks.select_nth_unstable(n - 1);
        let cutoff = *nth;
        for node in &mut self.nodes {
            if node.state.as_ref().is_some_and(|s| s.last_used <= cutoff) {
                node.state = None;
                self.states -= 1;
                self.dropped_states += 1;
            }
        }
    }

    /// Forget interned keys nothing refers to any more (no state, no successor, no client),
    /// once their number has doubled since the last time: amortised O(1) per request.
    fn maybe_collect(&mut self) {
        if self.nodes.len() < self.collect_at {
            return;
        }
        let mut live = vec![false; self.nodes.len()];
        for (id, node) in self.nodes.iter().enumerate() {
            if let Some(st) = &node.state {
                live[id] = true;
                for s in &st.succ {
                    live[s.to as usize] = true;
                }
            }
        }
        for l in self.clients.values() {
            live[l.raw as usize] = true;
            live[l.tmpl as usize] = true;
        }
        // A live URL keeps its cached template.
        for (id, node) in self.nodes.iter().enumerate() {
            if live[id] && node.tmpl != NO_ID {
                live[node.tmpl as usize] = true;
            }
        }
        let mut remap = vec![NO_ID; self.nodes.len()];
        let mut next: Id = 0;
        for (id, &alive) in live.iter().enumerate() {
            if alive {
                remap[id] = next;
                next += 1;
            }
        }
        let old = std::mem::take(&mut self.nodes);
        self.nodes = old
            .into_iter()
            .zip(&live)
            .filter(|(_, &alive)| alive)
            .map(|(mut node, _)| {
                if node.tmpl != NO_ID {
                    node.tmpl = remap[node.tmpl as usize];
                }
                if let Some(st) = &mut node.state {
                    for s in &mut st.succ {
                        s.to = remap[s.to as usize];
                    }
                }
                node
            })
            .collect();
        self.index.retain(|_, id| {
            *id = remap[*id as usize];
            *id != NO_ID
        });
        for l in self.clients.values_mut() {
            l.raw = remap[l.raw as usize];
            l.tmpl = remap[l.tmpl as usize];
        }
        self.epoch += 1;
        self.collect_at = (2 * self.nodes.len()).max(MIN_COLLECT_AT);
    }

    /// Up to `k` likely next requests after `host` + `pq`, each with probability ≥ `threshold`,
    /// best first. Concrete-URL predictions come first; templates fill in, made concrete with
    /// the current ids. Transitions below the precision floor are skipped.
    pub fn predict(
        &mut self,
        host: &str,
        pq: &str,
        now_ms: u64,
        k: usize,
        threshold: f32,
    ) -> Vec<Prediction> {
        let mut keys = std::mem::take(&mut self.scratch);
        keys.set_raw(host, pq);
        let raw = self.lookup(&keys.raw);
        let tmpl = match raw.map(|r| self.nodes[r as usize].tmpl) {
            Some(t) if t != NO_ID => Some(t),
            _ => {
                keys.set_tmpl(host, pq);
                self.lookup(&keys.tmpl)
            }
        };
        let out = self.predict_ids(raw, tmpl, &mut keys, host, pq, now_ms, k, threshold);
        self.scratch = keys;
        out
    }

    #[allow(clippy::too_many_arguments)] // reason: the two entry points' arguments, passed on
    fn predict_ids(
        &mut self,
        raw: Option<Id>,
        tmpl: Option<Id>,
        keys: &mut Keys,
        host: &str,
        pq: &str,
        now_ms: u64,
        k: usize,
        threshold: f32,
    ) -> Vec<Prediction> {
        let mut out: Vec<Prediction> = Vec::new();
        if k == 0 {
            return out;
        }
        self.tick += 1;
        let tick = self.tick;
        let half_life = self.settings.half_life_ms;
        for id in [raw, tmpl].into_iter().flatten() {
            if let Some(state) = self.nodes[id as usize].state.as_mut() {
                decay(state, now_ms, half_life);
                state.last_used = tick;
            }
        }
        let (floor, min_samples) = (self.settings.precision_floor, self.settings.min_samples);
        let ok = |s: &Succ| !suppressed(s, floor, min_samples);
        let epoch = self.epoch;
        let nodes = &self.nodes;
        let state_of =
            |id: Option<Id>| id.and_then(|id| Some((id, nodes[id as usize].state.as_ref()?)));

        // URLs whose concrete transition is switched off: a template must not bring them back.
        let mut vetoed: Vec<&str> = Vec::new();
        if let Some((from, state)) = state_of(raw) {
            for s in &state.succ {
                let p = s.count / state.total.max(f32::MIN_POSITIVE);
                if p < threshold {
                    continue;
                }
                let to = &nodes[s.to as usize].key;
                let Some(next) = to.strip_prefix('r').and_then(|u| u.strip_prefix(host)) else {
                    continue;
                };
                if !ok(s) {
                    vetoed.push(next);
                } else if next != pq {
                    push(&mut out, next, p, Credit { from, to: s.to }, epoch);
                }
            }
        }
        if let Some((from, state)) = state_of(tmpl) {
            for s in &state.succ {
                let p = s.count / state.total.max(f32::MIN_POSITIVE);
                if p < threshold || !ok(s) {
                    continue;
                }
                let to = &nodes[s.to as usize].key;
                let Some(t) = to.strip_prefix('t').and_then(|u| u.strip_prefix(host)) else {
                    continue;
                };
                keys.scan_ids(pq);
                if fill_ranges(t, pq, &keys.ids, &mut keys.filled) {
                    let next = keys.filled.as_str();
                    if next != pq && !vetoed.contains(&next) {
                        push(&mut out, next, p, Credit { from, to: s.to }, epoch);
                    }
                }
            }
        }
        out.sort_by(|a, b| b.p.total_cmp(&a.p));
        out.truncate(k);
        out
    }

    /// The transitions (`from`, `to` state keys) that predicted `pred`, for
    /// [`Markov::record_outcome`]: built only for a prefetch that is issued. Empty if the
    /// keys were renumbered since the prediction.
    pub fn credit_keys(&self, pred: &Prediction) -> Vec<(String, String)> {
        if pred.epoch != self.epoch {
            return Vec::new();
        }
        let key = |id: Id| self.nodes.get(id as usize).map(|n| n.key.to_string());
        pred.credits
            .iter()
            .filter_map(|c| Some((key(c.from)?, key(c.to)?)))
            .collect()
    }

    /// Credit the transition `from ─► to` with the fate of one prefetch it caused.
    pub fn record_outcome(&mut self, from: &str, to: &str, used: bool, now_ms: u64) {
        let half_life = self.settings.half_life_ms;
        let (Some(from), Some(to)) = (self.lookup(from), self.lookup(to)) else {
            return;
        };
        if let Some(state) = self.nodes[from as usize].state.as_mut() {
            decay(state, now_ms, half_life);
            if let Some(s) = state.succ.iter_mut().find(|s| s.to == to) {
                s.issued += 1.0;
                if used {
                    s.used += 1.0;
                }
            }
        }
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
        let mut transitions = 0;
        // Each key is held once (shared by the node and the index) plus an index slot.
        let mut bytes = self.nodes.capacity() * std::mem::size_of::<Node>();
        for n in &self.nodes {
            bytes += n.key.len() + 16 + std::mem::size_of::<(Arc<str>, Id)>() + 8;
            if let Some(s) = &n.state {
                transitions += s.succ.len();
                bytes += s.succ.capacity() * std::mem::size_of::<Succ>();
            }
        }
        bytes += self.clients.len() * (std::mem::size_of::<(u64, Last)>() + 8);
        ModelStats {
            states: self.states,
            transitions,
            clients: self.clients.len(),
            approx_bytes: bytes,
            dropped_states: self.dropped_states,
        }
    }

    /// The state table as JSON (client positions are not saved: they are short-lived).
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        let key = |id: Id| -> &str { &self.nodes[id as usize].key };
        let states = self
            .nodes
            .iter()
            .filter_map(|n| {
                let st = n.state.as_ref()?;
                let succ = st
                    .succ
                    .iter()
                    .map(|s| SnapSucc {
                        to: key(s.to),
                        count: s.count,
                        issued: s.issued,
                        used: s.used,
                    })
                    .collect();
                Some((
                    &*n.key,
                    SnapState {
                        total: st.total,
                        updated_ms: st.updated_ms,
                        succ,
                    },
                ))
            })
            .collect();
        serde_json::to_string(&SnapshotRef {
            version: SNAPSHOT_VERSION,
            states,
        })
    }

    /// Replace the state table with a saved one (capped at `max_states`).
    pub fn load_json(&mut self, json: &str) -> Result<(), String> {
        let snap: Snapshot = serde_json::from_str(json).map_err(|e| e.to_string())?;
        if snap.version != SNAPSHOT_VERSION {
            return Err(format!(
                "unsupported model version {} (expected {SNAPSHOT_VERSION})",
                snap.version
            ));
        }
        for node in &mut self.nodes {
            node.state = None;
        }
        self.states = 0;
        self.merge_states(snap.states);
        Ok(())
    }

    /// Add another model's counts into this one (how a fleet would share one model).
    pub fn merge(&mut self, json: &str) -> Result<(), String> {
        let snap: Snapshot = serde_json::from_str(json).map_err(|e| e.to_string())?;
        self.merge_states(snap.states);
        Ok(())
    }

    fn merge_states(&mut self, states: Map<String, SnapState<String>>) {
        self.maybe_collect();
        let top = self.settings.top_successors.max(1);
        for (key, incoming) in states {
            let id = self.intern(&key);
            let succ: Vec<Succ> = incoming
                .succ
                .iter()
                .map(|s| Succ {
                    to: self.intern(&s.to),
                    count: s.count,
                    issued: s.issued,
                    used: s.used,
                })
                .collect();
            if self.nodes[id as usize].state.is_none() {
                self.make_room();
                self.states += 1;
            }
            self.tick += 1;
            let tick = self.tick;
            let st = self.nodes[id as usize].state.get_or_insert_with(|| State {
                total: 0.0,
                updated_ms: incoming.updated_ms,
                succ: Vec::new(),
                last_used: tick,
            });
            st.total += incoming.total;
            st.updated_ms = st.updated_ms.max(incoming.updated_ms);
            st.last_used = tick;
            for s in succ {
                match st.succ.iter_mut().find(|x| x.to == s.to) {
                    Some(x) => {
                        x.count += s.count;
                        x.issued += s.issued;
                        x.used += s.used;
                    }
                    None => st.succ.push(s),
                }
            }
            st.succ.sort_by(|a, b| b.count.total_cmp(&a.count));
            st.succ.truncate(top);
        }
    }
}

/// Enough evidence (decayed counts, so "about `min_samples`") and precision under the floor.
fn suppressed(s: &Succ, floor: f32, min_samples: f32) -> bool {
    s.issued + 0.5 >= min_samples && s.used < floor * s.issued
}

/// Add a candidate, or credit the one already predicting the same URL (no allocation then).
fn push(out: &mut Vec<Prediction>, pq: &str, p: f32, credit: Credit, epoch: u64) {
    match out.iter_mut().find(|x| x.pq == pq) {
        Some(x) => {
            x.p = x.p.max(p);
            x.credits.push(credit);
        }
        None => out.push(Prediction {
            pq: pq.to_owned(),
            p,
            credits: Credits::one(credit),
            epoch,
        }),
    }
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

const ID: &str = "{id}";

/// `pq` with ids replaced by `{id}`, and the ids in order. Ids are tokens not glued to a letter
/// or digit on either side: a UUID, a digit run optionally joined by dashes to more digit runs
/// (`0001193125-12-324016`), or a hex run of 16+ characters containing a digit.
pub fn template(pq: &str) -> (String, Vec<&str>) {
    let mut out = String::with_capacity(pq.len());
    let mut ids = Vec::new();
    id_ranges(pq, &mut ids);
    template_from(pq, &ids, &mut out);
    (out, ids.into_iter().map(|r| &pq[r]).collect())
}

/// The ids of `pq` as byte ranges, in order (`ids` is cleared first).
fn id_ranges(pq: &str, ids: &mut Vec<Range<usize>>) {
    let b = pq.as_bytes();
    ids.clear();
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_alphanumeric() {
            i += 1;
            continue;
        }
        // `i` starts a run of letters and digits: only there can an id start.
        if b[i].is_ascii_hexdigit() {
            if let Some(len) = id_at(&b[i..]) {
                ids.push(i..i + len);
                i += len;
                continue;
            }
        }
        while i < b.len() && b[i].is_ascii_alphanumeric() {
            i += 1;
        }
    }
}

/// `pq` with the `ids` ranges replaced by `{id}`, appended to `out`.
fn template_from(pq: &str, ids: &[Range<usize>], out: &mut String) {
    let mut copied = 0;
    for id in ids {
        out.push_str(&pq[copied..id.start]);
        out.push_str(ID);
        copied = id.end;
    }
    out.push_str(&pq[copied..]);
}

/// Length of the id starting at `s[0]`, if one does.
fn id_at(s: &[u8]) -> Option<usize> {
    let ends = |n: usize| n == s.len() || !s[n].is_ascii_alphanumeric();
    // UUID 8-4-4-4-12
    let groups = [8usize, 4, 4, 4, 12];
    let mut n = 0;
    let mut uuid = true;
    for (g, len) in groups.iter().enumerate() {
        if g > 0 {
            if s.get(n) != Some(&b'-') {
                uuid = false;
                break;
            }
            n += 1;
        }
        if s.len() < n + len || !s[n..n + len].iter().all(u8::is_ascii_hexdigit) {
            uuid = false;
            break;
        }
        n += len;
    }
    if uuid && ends(n) {
        return Some(n);
    }
    // Digit runs joined by dashes; backs off group by group like a regex would.
    let digits = |from: usize| s[from..].iter().take_while(|c| c.is_ascii_digit()).count();
    let first = digits(0);
    if first > 0 {
        // The longest run of groups that ends on a boundary.
        let mut longest = ends(first).then_some(first);
        let mut n = first;
        while s.get(n) == Some(&b'-') {
            let d = digits(n + 1);
            if d == 0 {
                break;
            }
            n += 1 + d;
            if ends(n) {
                longest = Some(n);
            }
        }
        if longest.is_some() {
            return longest;
        }
    }
    // Long hex with at least one digit.
    let hex = s.iter().take_while(|c| c.is_ascii_hexdigit()).count();
    if hex >= 16 && ends(hex) && s[..hex].iter().any(u8::is_ascii_digit) {
        return Some(hex);
    }
    None
}

/// [`fill`] with the ids given as byte ranges of `pq`.
/// Into `out` (cleared first; reused, so no allocation once grown), in one pass over the
/// template; `false` if the slot count differs.
fn fill_ranges(template: &str, pq: &str, ids: &[Range<usize>], out: &mut String) -> bool {
    out.clear();
    let mut ids = ids.iter();
    let mut copied = 0;
    for at in slots(template) {
        let Some(id) = ids.next().and_then(|id| pq.get(id.clone())) else {
            return false;
        };
        out.push_str(&template[copied..at]);
        out.push_str(id);
        copied = at + ID.len();
    }
    if ids.next().is_some() {
        return false;
    }
    out.push_str(&template[copied..]);
    true
}

/// Byte offsets of the `{id}` slots of a template, as `match_indices(ID)` finds them (`{id}`
/// cannot overlap itself), without building a substring searcher on every call.
fn slots(template: &str) -> impl Iterator<Item = usize> + '_ {
    let b = template.as_bytes();
    (0..b.len()).filter(move |&i| b[i] == b'{' && b[i..].starts_with(ID.as_bytes()))
}

/// A template made concrete with `ids`; `None` if the slot count differs.
pub fn fill(template: &str, ids: &[&str]) -> Option<String> {
    let joined = ids.concat();
    let mut ranges = Vec::with_capacity(ids.len());
    let mut at = 0;
    for id in ids {
        ranges.push(at..at + id.len());
        at += id.len();
    }
    let mut out = String::new();
    fill_ranges(template, &joined, &ranges, &mut out).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Markov {
        Markov::new(ModelSettings {
            idle_gap_ms: 1000,
            half_life_ms: 10_000,
            ..ModelSettings::default()
        })
    }

    #[test]
    fn templates_abstract_ids_like_the_offline_analysis() {
        assert_eq!(template("/users/42/orders").0, "/users/{id}/orders");
        assert_eq!(
            template("/Archives/edgar/data/1234/0001193125-12-324016-index.htm"),
            (
                "/Archives/edgar/data/{id}/{id}-index.htm".to_owned(),
                vec!["1234", "0001193125-12-324016"]
            )
        );
        assert_eq!(
            template("/o/123e4567-e89b-12d3-a456-426614174000?x=5").0,
            "/o/{id}?x={id}"
        );
        assert_eq!(template("/blob/deadbeef00112233").0, "/blob/{id}");
        assert_eq!(template("/v2/rrd62020/sts-70").0, "/v2/rrd62020/sts-{id}");
        assert_eq!(template("/deadbeefdeadbeef").0, "/deadbeefdeadbeef");
        assert_eq!(template("/123-45abc").0, "/{id}-45abc");
    }

    #[test]
    fn id_scan_skipping_runs_matches_a_per_byte_scan() {
        // The scan before it skipped whole runs of letters and digits.
        fn per_byte(pq: &str) -> Vec<Range<usize>> {
            let (b, mut ids, mut i) = (pq.as_bytes(), Vec::new(), 0);
            while i < b.len() {
                let boundary_before = i == 0 || !b[i - 1].is_ascii_alphanumeric();
                if boundary_before && b[i].is_ascii_hexdigit() {
                    if let Some(len) = id_at(&b[i..]) {
                        ids.push(i..i + len);
                        i += len;
                        continue;
                    }
                }
                i += 1;
            }
            ids
        }
        let alphabet = b"0123456789abcdefxyz-/?=._";
        let mut x: u64 = 7;
        let mut ids = Vec::new();
        for _ in 0..20_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let len = (x >> 58) as usize;
            let pq: String = (0..len)
                .map(|j| {
                    let r = x.rotate_left(7 * j as u32) >> 40;
                    alphabet[r as usize % alphabet.len()] as char
                })
                .collect();
            id_ranges(&pq, &mut ids);
            assert_eq!(ids, per_byte(&pq), "{pq}");
            let (t, found) = template(&pq);
            assert_eq!(fill(&t, &found).as_deref(), Some(pq.as_str()), "{pq}");
        }
    }

    #[test]
    fn fill_is_the_inverse_of_template() {
        let (t, ids) = template("/users/7/orders/9");
        assert_eq!(fill(&t, &ids).as_deref(), Some("/users/7/orders/9"));
        assert_eq!(fill("/users/{id}", &[]), None);
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
    fn collecting_unreferenced_keys_keeps_the_model() {
        let mut m = model();
        m.observe(1, "h", "/a", 0);
        m.observe(1, "h", "/b", 10);
        let before = m.predict("h", "/a", 20, 1, 0.5);
        // One-off URLs, each after the idle gap: no transitions, only keys to forget.
        for i in 0..5000u64 {
            m.observe(2, "h", &format!("/once/{i}"), 10_000 + i * 2000);
        }
        assert!(m.epoch > 0);
        assert!(
            m.nodes.len() < MIN_COLLECT_AT,
            "{} keys kept",
            m.nodes.len()
        );
        assert!(
            m.credit_keys(&before[0]).is_empty(),
            "stale ids are not credited"
        );
        let after = m.predict("h", "/a", 20, 1, 0.5);
        assert_eq!(after[0].pq, "/b");
        let credits = m.credit_keys(&after[0]);
        assert_eq!(credits.len(), 2);
        assert!(credits.contains(&("rh/a".to_owned(), "rh/b".to_owned())));
    }

    #[test]
    fn loads_a_state_file_written_before_interning() {
        let v1 = r#"{"version":1,"states":{
            "rh/users/7":{"total":2.0,"updated_ms":10,"succ":[{"to":"rh/users/7/orders","count":2.0,"issued":1.0,"used":1.0}]},
            "th/users/{id}":{"total":2.0,"updated_ms":10,"succ":[{"to":"th/users/{id}/orders","count":2.0}]}}}"#;
        let mut m = model();
        m.load_json(v1).unwrap_or_default();
        let value = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap_or_default();
        let mut want = value(v1);
        want["states"]["th/users/{id}"]["succ"][0]["issued"] = 0.0.into();
        want["states"]["th/users/{id}"]["succ"][0]["used"] = 0.0.into();
        assert_eq!(value(&m.to_json().unwrap_or_default()), want);
        let p = m.predict("h", "/users/9", 20, 1, 0.5);
        assert_eq!(p[0].pq, "/users/9/orders");
        let p = m.predict("h", "/users/7", 20, 1, 0.5);
        assert_eq!(m.credit_keys(&p[0]).len(), 2);
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
    fn template_predictions_carry_ids_over() {
        let mut m = model();
        m.observe(1, "h", "/users/1", 0);
        m.observe(1, "h", "/users/1/orders", 10);
        m.observe(2, "h", "/users/2", 20);
        m.observe(2, "h", "/users/2/orders", 30);
        let p = m.predict("h", "/users/7", 40, 1, 0.5);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].pq, "/users/7/orders");
        let credits = m.credit_keys(&p[0]);
        assert!(credits.iter().any(|(from, _)| from.starts_with('t')));
    }

    #[test]
    fn precision_floor_switches_a_transition_off_and_decay_brings_it_back() {
        let mut m = model();
        m.observe(1, "h", "/a", 0);
        m.observe(1, "h", "/b", 10);
        let p = m.predict("h", "/a", 20, 1, 0.5);
        let credits = m.credit_keys(&p[0]);
        assert_eq!(credits.len(), 2, "URL and template both predict /b");
        for _ in 0..4 {
            for (from, to) in &credits {
                m.record_outcome(from, to, false, 30);
            }
        }
        assert!(m.predict("h", "/a", 40, 1, 0.5).is_empty());
        assert!(m.strongest(10).iter().any(|t| t.suppressed));
        // Much later, evidence has faded below min_samples: tried again.
        assert_eq!(m.predict("h", "/a", 40 + 30_000, 1, 0.0).len(), 1);
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
    fn snapshot_round_trips_and_merges() {
        let mut m = model();
        m.observe(1, "h", "/a", 0);
        m.observe(1, "h", "/b", 10);
        let json = m.to_json().unwrap_or_default();
        let mut n = model();
        n.load_json(&json).unwrap_or_default();
        assert_eq!(n.predict("h", "/a", 20, 1, 0.5)[0].pq, "/b");
        n.merge(&json).unwrap_or_default();
        assert!(n.strongest(1)[0].count > 1.5);
        assert!(n.load_json("{\"version\":99,\"states\":{}}").is_err());
    }
}
