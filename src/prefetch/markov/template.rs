//! URL templating for the `t` states: ids in a path (numbers, dash-joined digit runs, UUIDs,
//! long hex) become `{id}`, and a predicted template is made concrete again with the current
//! request's ids. Pure string work, kept apart from the model it serves; the scans work on
//! byte ranges into a reused buffer because they run for every client GET.

use std::ops::Range;

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
pub(super) fn id_ranges(pq: &str, ids: &mut Vec<Range<usize>>) {
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
pub(super) fn template_from(pq: &str, ids: &[Range<usize>], out: &mut String) {
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
pub(super) fn fill_ranges(
    template: &str,
    pq: &str,
    ids: &[Range<usize>],
    out: &mut String,
) -> bool {
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
}
