//! The saved form of the model: JSON keyed by state key, so a file does not depend on the
//! interning (ids are renumbered at every collection) and two snapshots merge by adding counts,
//! which is what sharing one model across a fleet needs.

use serde::{Deserialize, Serialize};

use super::{Id, Map, Markov, State, Succ};

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

impl Markov {
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
            st.succ.shrink_to(top);
        }
        self.within_budget(None);
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::model;

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
