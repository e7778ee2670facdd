//! Prediction: the likely next requests after one request, read from the table (concrete URL
//! first, then its template made concrete with the current ids), and the way back: each
//! prediction carries the transitions that made it, so the fate of the prefetch it caused is
//! credited to them and a transition below the precision floor stops being predicted.

use super::intern::Keys;
use super::template::fill_ranges;
use super::{decay, suppressed, Id, Markov, Succ, NO_ID};

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

/// What a prediction is asked for: after `host` + `pq` at `now_ms`, at most `k` successors
/// with probability ≥ `threshold`.
pub(super) struct Ask<'a> {
    pub host: &'a str,
    pub pq: &'a str,
    pub now_ms: u64,
    pub k: usize,
    pub threshold: f32,
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

impl Markov {
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
        let ask = Ask {
            host,
            pq,
            now_ms,
            k,
            threshold,
        };
        let out = self.predict_ids(raw, tmpl, &mut keys, &ask);
        self.scratch = keys;
        out
    }

    /// [`Markov::predict`] for the state ids of the request (its URL and its template).
    pub(super) fn predict_ids(
        &mut self,
        raw: Option<Id>,
        tmpl: Option<Id>,
        keys: &mut Keys,
        ask: &Ask<'_>,
    ) -> Vec<Prediction> {
        let &Ask {
            host,
            pq,
            now_ms,
            k,
            threshold,
        } = ask;
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

#[cfg(test)]
mod tests {
    use super::super::tests::model;

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
}
