//! State keys: the two a request has (`r` + its URL, `t` + its template), their interning to
//! integer ids, and the collection of ids nothing refers to any more.
//!
//! Interning is what keeps `observe` cheap on every client GET: one string hash per request,
//! and a URL seen before is not templated again (its node caches its template's id). The cost
//! is that ids must be collected, which renumbers them; predictions carry the `epoch` they were
//! made in so a stale one is never credited to the wrong transition.

use std::ops::Range;
use std::sync::Arc;

use super::template::{id_ranges, template_from};
use super::{Id, Markov, Node, NO_ID};

/// Collect unreferenced keys no more often than this many keys.
pub(super) const MIN_COLLECT_AT: usize = 4096;

/// A request's two state keys (`r…` and `t…`) and the byte ranges of its ids in the path.
#[derive(Debug, Default)]
pub(super) struct Keys {
    pub(super) raw: String,
    pub(super) tmpl: String,
    pub(super) ids: Vec<Range<usize>>,
    /// `ids` are the current request's.
    pub(super) scanned: bool,
    /// `tmpl` is the current request's.
    pub(super) templated: bool,
    /// A predicted template made concrete.
    pub(super) filled: String,
}

impl Keys {
    /// Fill in place (no allocation once the buffers have grown).
    pub(super) fn set_raw(&mut self, host: &str, pq: &str) {
        self.raw.clear();
        self.raw.push('r');
        self.raw.push_str(host);
        self.raw.push_str(pq);
        self.scanned = false;
        self.templated = false;
    }

    /// The ids only: all a known URL needs to fill a predicted template.
    pub(super) fn scan_ids(&mut self, pq: &str) {
        if !self.scanned {
            id_ranges(pq, &mut self.ids);
            self.scanned = true;
        }
    }

    pub(super) fn set_tmpl(&mut self, host: &str, pq: &str) {
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
    pub(super) fn lookup(&self, key: &str) -> Option<Id> {
        self.index.get(key).copied()
    }

    pub(super) fn intern(&mut self, key: &str) -> Id {
        if let Some(id) = self.lookup(key) {
            return id;
        }
        let id = Id::try_from(self.nodes.len()).unwrap_or(NO_ID - 1);
        let key: Arc<str> = Arc::from(key);
        self.key_bytes += key.len();
        self.nodes.push(Node {
            key: key.clone(),
            state: None,
            tmpl: NO_ID,
        });
        self.index.insert(key, id);
        id
    }

    /// The request's URL and template ids; the path is templated only if the URL is new.
    pub(super) fn intern_request(&mut self, keys: &mut Keys, host: &str, pq: &str) -> (Id, Id) {
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

    /// Forget interned keys nothing refers to any more (no state, no successor, no client),
    /// once their number has doubled since the last time: amortised O(1) per request.
    pub(super) fn maybe_collect(&mut self) {
        if self.nodes.len() >= self.collect_at {
            self.collect();
        }
    }

    /// Forget the interned keys nothing refers to, renumbering the ids (a new epoch).
    pub(super) fn collect(&mut self) {
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
        // A map keeps its capacity when emptied: give it back, so the byte budget sees it.
        self.index.shrink_to_fit();
        self.key_bytes = self.nodes.iter().map(|n| n.key.len()).sum();
        for l in self.clients.values_mut() {
            l.raw = remap[l.raw as usize];
            l.tmpl = remap[l.tmpl as usize];
        }
        self.epoch += 1;
        self.collect_at = (2 * self.nodes.len()).max(MIN_COLLECT_AT);
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::model;
    use super::*;

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
}
