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
//! The state table serialises as JSON ([`Markov::to_json`]); two snapshots merge by adding
//! counts ([`Markov::merge`]), which is what sharing one model across a fleet needs.

use std::collections::HashMap;
use std::ops::Range;

use serde::{Deserialize, Serialize};

/// The model's maps hash with foldhash: every request hashes four state keys and a client id,
/// and SipHash (std's default, built against HashDoS) costs several times more. The keys are
/// request paths an attacker could choose, so the hasher is seeded per process.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

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
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Succ {
    /// The successor's state key (same granularity as the state).
    pub to: String,
    pub count: f32,
    /// Prefetches this transition caused whose fate is known (used or wasted).
    #[serde(default)]
    pub issued: f32,
    /// Of those, the ones a real request used.
    #[serde(default)]
    pub used: f32,
}

impl Succ {
    /// `used / issued`, or `None` without evidence.
    pub fn precision(&self) -> Option<f32> {
        (self.issued > 0.0).then(|| self.used / self.issued)
    }
}

/// A state: the decayed count of transitions out of it and its strongest successors.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct State {
    pub total: f32,
    /// When the counts were last decayed (unix ms).
    pub updated_ms: u64,
    pub succ: Vec<Succ>,
    /// Recency tick for LRU dropping; not persisted.
    #[serde(skip)]
    last_used: u64,
}

/// Where a client's sequence stands.
#[derive(Debug, Clone)]
struct Last {
    raw: String,
    tmpl: String,
    at_ms: u64,
}

/// A predicted next request.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// Concrete path and query to fetch.
    pub pq: String,
    /// Estimated probability.
    pub p: f32,
    /// The transitions (`from`, `to`) that predicted it, for crediting the outcome: a concrete
    /// URL and a template transition may both predict the same URL.
    pub credits: Vec<(String, String)>,
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

#[derive(Serialize, Deserialize)]
struct Snapshot {
    version: u32,
    states: Map<String, State>,
}

const SNAPSHOT_VERSION: u32 = 1;

/// The transition table plus each client's last request.
#[derive(Debug)]
pub struct Markov {
    settings: ModelSettings,
    states: Map<String, State>,
    clients: Map<u64, Last>,
    tick: u64,
    dropped_states: u64,
    /// The current request's state keys and ids, reused from request to request.
    scratch: Keys,
}

/// A request's two state keys (`r…` and `t…`) and the byte ranges of its ids in the path.
#[derive(Debug, Default)]
struct Keys {
    raw: String,
    tmpl: String,
    ids: Vec<Range<usize>>,
}

impl Keys {
    /// Fill in place (no allocation once the buffers have grown).
    fn set(&mut self, host: &str, pq: &str) {
        self.raw.clear();
        self.raw.push('r');
        self.raw.push_str(host);
        self.raw.push_str(pq);
        self.tmpl.clear();
        self.tmpl.push('t');
        self.tmpl.push_str(host);
        template_into(pq, &mut self.tmpl, &mut self.ids);
    }
}

impl Markov {
    pub fn new(settings: ModelSettings) -> Markov {
        Markov {
            settings,
            states: Map::default(),
            clients: Map::default(),
            tick: 0,
            dropped_states: 0,
            scratch: Keys::default(),
        }
    }

    /// Learn from `client` asking for `host` + `pq` at `now_ms`: the transition from the
    /// client's previous request (unless the idle gap passed), at both granularities.
    pub fn observe(&mut self, client: u64, host: &str, pq: &str, now_ms: u64) {
        let mut keys = std::mem::take(&mut self.scratch);
        keys.set(host, pq);
        self.observe_keys(client, &keys, now_ms);
        self.scratch = keys;
    }

    /// [`Markov::observe`] then [`Markov::predict`] for the same request, what the prefetch
    /// worker does for every client GET: the state keys and the template are built once.
    pub fn observe_predict(
        &mut self,
        client: u64,
        host: &str,
        pq: &str,
        now_ms: u64,
        k: usize,
        threshold: f32,
    ) -> Vec<Prediction> {
        let mut keys = std::mem::take(&mut self.scratch);
        keys.set(host, pq);
        self.observe_keys(client, &keys, now_ms);
        let out = self.predict_keys(&keys, host, pq, now_ms, k, threshold);
        self.scratch = keys;
        out
    }

    fn observe_keys(&mut self, client: u64, keys: &Keys, now_ms: u64) {
        if let Some(prev) = self.clients.get_mut(&client) {
            // Taken out (not cloned) while the table learns; refilled in place below.
            let mut last = std::mem::replace(
                prev,
                Last {
                    raw: String::new(),
                    tmpl: String::new(),
                    at_ms: now_ms,
                },
            );
            // A repeated request (a reload) is not a transition.
            if now_ms.saturating_sub(last.at_ms) <= self.settings.idle_gap_ms
                && last.raw != keys.raw
            {
                self.learn(&last.raw, &keys.raw, now_ms);
                self.learn(&last.tmpl, &keys.tmpl, now_ms);
            }
            last.raw.clone_from(&keys.raw);
            last.tmpl.clone_from(&keys.tmpl);
            last.at_ms = now_ms;
            if let Some(slot) = self.clients.get_mut(&client) {
                *slot = last;
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
        self.clients.insert(
            client,
            Last {
                raw: keys.raw.clone(),
                tmpl: keys.tmpl.clone(),
                at_ms: now_ms,
            },
        );
    }

    fn learn(&mut self, from: &str, to: &str, now_ms: u64) {
        self.tick += 1;
        let tick = self.tick;
        let half_life = self.settings.half_life_ms;
        let top = self.settings.top_successors.max(1);
        if !self.states.contains_key(from) {
            self.make_room();
            self.states.insert(
                from.to_owned(),
                State {
                    total: 0.0,
                    updated_ms: now_ms,
                    succ: Vec::new(),
                    last_used: tick,
                },
            );
        }
        let Some(state) = self.states.get_mut(from) else {
            return;
        };
        decay(state, now_ms, half_life);
        state.last_used = tick;
        state.total += 1.0;
        if let Some(s) = state.succ.iter_mut().find(|s| s.to == to) {
            s.count += 1.0;
        } else if state.succ.len() < top {
            state.succ.push(Succ {
                to: to.to_owned(),
                count: 1.0,
                issued: 0.0,
                used: 0.0,
            });
        } else if let Some(weakest) = state
            .succ
            .iter_mut()
            .min_by(|a, b| a.count.total_cmp(&b.count))
        {
            // Space-saving replacement: a newcomer takes the weakest slot. Its count starts at
            // 1, not at the evicted count, so a stream of one-off successors cannot look strong.
            *weakest = Succ {
                to: to.to_owned(),
                count: 1.0,
                issued: 0.0,
                used: 0.0,
            };
        }
        state
            .succ
            .sort_unstable_by(|a, b| b.count.total_cmp(&a.count));
    }

    /// Drop the least recently used eighth of the states when the cap is reached.
    fn make_room(&mut self) {
        let cap = self.settings.max_states.max(1);
        if self.states.len() < cap {
            return;
        }
        let mut ticks: Vec<u64> = self.states.values().map(|s| s.last_used).collect();
        let n = (ticks.len() / 8).max(1);
        let (_, nth, _) = ticks.select_nth_unstable(n - 1);
        let cutoff = *nth;
        let before = self.states.len();
        self.states.retain(|_, s| s.last_used > cutoff);
        self.dropped_states += (before - self.states.len()) as u64;
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
        keys.set(host, pq);
        let out = self.predict_keys(&keys, host, pq, now_ms, k, threshold);
        self.scratch = keys;
        out
    }

    fn predict_keys(
        &mut self,
        keys: &Keys,
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
        let (floor, min_samples) = (self.settings.precision_floor, self.settings.min_samples);
        let ok = |s: &Succ| !suppressed(s, floor, min_samples);

        // URLs whose concrete transition is switched off: a template must not bring them back.
        let mut vetoed: Vec<String> = Vec::new();
        let raw = keys.raw.as_str();
        if let Some(state) = self.states.get_mut(raw) {
            decay(state, now_ms, half_life);
            state.last_used = tick;
            for s in &state.succ {
                let p = s.count / state.total.max(f32::MIN_POSITIVE);
                if p < threshold {
                    continue;
                }
                let Some(next) = s.to.strip_prefix('r').and_then(|u| u.strip_prefix(host)) else {
                    continue;
                };
                if !ok(s) {
                    vetoed.push(next.to_owned());
                } else if next != pq {
                    push(&mut out, next.to_owned(), p, raw, &s.to);
                }
            }
        }
        let tkey = keys.tmpl.as_str();
        if let Some(state) = self.states.get_mut(tkey) {
            decay(state, now_ms, half_life);
            state.last_used = tick;
            for s in &state.succ {
                let p = s.count / state.total.max(f32::MIN_POSITIVE);
                if p < threshold || !ok(s) {
                    continue;
                }
                let Some(t) = s.to.strip_prefix('t').and_then(|u| u.strip_prefix(host)) else {
                    continue;
                };
                if let Some(next) = fill_ranges(t, pq, &keys.ids) {
                    if next != pq && !vetoed.contains(&next) {
                        push(&mut out, next, p, tkey, &s.to);
                    }
                }
            }
        }
        out.sort_by(|a, b| b.p.total_cmp(&a.p));
        out.truncate(k);
        out
    }

    /// Credit the transition `from ─► to` with the fate of one prefetch it caused.
    pub fn record_outcome(&mut self, from: &str, to: &str, used: bool, now_ms: u64) {
        let half_life = self.settings.half_life_ms;
        if let Some(state) = self.states.get_mut(from) {
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
        let mut all: Vec<TransitionView> = self
            .states
            .iter()
            .flat_map(|(from, st)| {
                st.succ.iter().map(move |s| TransitionView {
                    from: from.clone(),
                    to: s.to.clone(),
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
        let mut bytes = 0;
        for (k, s) in &self.states {
            transitions += s.succ.len();
            bytes += k.len() + std::mem::size_of::<State>() + 48;
            bytes += s
                .succ
                .iter()
                .map(|x| x.to.len() + std::mem::size_of::<Succ>())
                .sum::<usize>();
        }
        for l in self.clients.values() {
            bytes += l.raw.len() + l.tmpl.len() + std::mem::size_of::<Last>() + 48;
        }
        ModelStats {
            states: self.states.len(),
            transitions,
            clients: self.clients.len(),
            approx_bytes: bytes,
            dropped_states: self.dropped_states,
        }
    }

    /// The state table as JSON (client positions are not saved: they are short-lived).
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        let snap = SnapshotRef {
            version: SNAPSHOT_VERSION,
            states: &self.states,
        };
        serde_json::to_string(&snap)
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
        self.states.clear();
        self.merge_states(snap.states);
        Ok(())
    }

    /// Add another model's counts into this one (how a fleet would share one model).
    pub fn merge(&mut self, json: &str) -> Result<(), String> {
        let snap: Snapshot = serde_json::from_str(json).map_err(|e| e.to_string())?;
        self.merge_states(snap.states);
        Ok(())
    }

    fn merge_states(&mut self, states: Map<String, State>) {
        let top = self.settings.top_successors.max(1);
        for (key, mut incoming) in states {
            if !self.states.contains_key(&key) {
                self.make_room();
            }
            self.tick += 1;
            let tick = self.tick;
            let st = self.states.entry(key).or_insert_with(|| State {
                total: 0.0,
                updated_ms: incoming.updated_ms,
                succ: Vec::new(),
                last_used: tick,
            });
            st.total += incoming.total;
            st.updated_ms = st.updated_ms.max(incoming.updated_ms);
            st.last_used = tick;
            for s in incoming.succ.drain(..) {
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

#[derive(Serialize)]
struct SnapshotRef<'a> {
    version: u32,
    states: &'a Map<String, State>,
}

/// Enough evidence (decayed counts, so "about `min_samples`") and precision under the floor.
fn suppressed(s: &Succ, floor: f32, min_samples: f32) -> bool {
    s.issued + 0.5 >= min_samples && s.used < floor * s.issued
}

fn push(out: &mut Vec<Prediction>, pq: String, p: f32, from: &str, to: &str) {
    match out.iter_mut().find(|x| x.pq == pq) {
        Some(x) => {
            x.p = x.p.max(p);
            x.credits.push((from.to_owned(), to.to_owned()));
        }
        None => out.push(Prediction {
            pq,
            p,
            credits: vec![(from.to_owned(), to.to_owned())],
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
    template_into(pq, &mut out, &mut ids);
    (out, ids.into_iter().map(|r| &pq[r]).collect())
}

/// [`template`] appended to `out`, the ids as byte ranges of `pq` in `ids` (cleared first).
fn template_into(pq: &str, out: &mut String, ids: &mut Vec<Range<usize>>) {
    let b = pq.as_bytes();
    ids.clear();
    let mut i = 0;
    let mut copied = 0;
    while i < b.len() {
        let boundary_before = i == 0 || !b[i - 1].is_ascii_alphanumeric();
        if boundary_before && b[i].is_ascii_hexdigit() {
            if let Some(len) = id_at(&b[i..]) {
                out.push_str(&pq[copied..i]);
                out.push_str(ID);
                ids.push(i..i + len);
                i += len;
                copied = i;
                continue;
            }
        }
        i += 1;
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
        let mut ends_at = vec![first];
        let mut n = first;
        while s.get(n) == Some(&b'-') {
            let d = digits(n + 1);
            if d == 0 {
                break;
            }
            n += 1 + d;
            ends_at.push(n);
        }
        if let Some(&e) = ends_at.iter().rev().find(|&&e| ends(e)) {
            return Some(e);
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
fn fill_ranges(template: &str, pq: &str, ids: &[Range<usize>]) -> Option<String> {
    let slots = template.matches(ID).count();
    if slots != ids.len() {
        return None;
    }
    let mut out = String::with_capacity(template.len() + pq.len());
    let mut rest = template;
    for id in ids {
        let at = rest.find(ID)?;
        out.push_str(&rest[..at]);
        out.push_str(pq.get(id.clone())?);
        rest = &rest[at + ID.len()..];
    }
    out.push_str(rest);
    Some(out)
}

/// A template made concrete with `ids`; `None` if the slot count differs.
pub fn fill(template: &str, ids: &[&str]) -> Option<String> {
    let slots = template.matches(ID).count();
    if slots != ids.len() {
        return None;
    }
    let mut out =
        String::with_capacity(template.len() + ids.iter().map(|i| i.len()).sum::<usize>());
    let mut rest = template;
    for id in ids {
        let at = rest.find(ID)?;
        out.push_str(&rest[..at]);
        out.push_str(id);
        rest = &rest[at + ID.len()..];
    }
    out.push_str(rest);
    Some(out)
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
        let (mut a, mut b) = (model(), model());
        let paths = [
            "/users/1",
            "/users/1/orders",
            "/o/5",
            "/users/2",
            "/users/2/orders",
        ];
        for i in 0..200u64 {
            let (client, pq) = (i % 3, paths[(i * 7 % 5) as usize]);
            a.observe(client, "h", pq, i * 50);
            let want = a.predict("h", pq, i * 50, 2, 0.1);
            assert_eq!(b.observe_predict(client, "h", pq, i * 50, 2, 0.1), want);
        }
        let table = |m: &Markov| -> serde_json::Value {
            serde_json::from_str(&m.to_json().unwrap_or_default()).unwrap_or_default()
        };
        assert_eq!(table(&a), table(&b));
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
        assert!(p[0].credits.iter().any(|(from, _)| from.starts_with('t')));
    }

    #[test]
    fn precision_floor_switches_a_transition_off_and_decay_brings_it_back() {
        let mut m = model();
        m.observe(1, "h", "/a", 0);
        m.observe(1, "h", "/b", 10);
        let p = m.predict("h", "/a", 20, 1, 0.5);
        assert_eq!(p[0].credits.len(), 2, "URL and template both predict /b");
        for _ in 0..4 {
            for (from, to) in &p[0].credits {
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
