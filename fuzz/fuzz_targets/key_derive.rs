//! Key derivation on arbitrary request targets and heads: `normalise::path`, the route's key
//! (`Route::key` ─► `CacheKey::derive`) and the query the upstream is sent
//! (`normalise::keyed_query`). The properties are the ones cache poisoning breaks: the
//! upstream's query keys to the same entry as the client's, normalising is idempotent and
//! leaves no dot segment, and spellings the key calls equal (HEAD/GET, host case) are equal.
#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use augur::config::{Config, QueryKey};
use augur::key::CacheKey;
use augur::normalise::{self, EscapedSlashes, PathRules};
use augur::route::Routes;
use augur_fuzz::{headers, names, AnyMethod, Field, FieldName};
use http::Method;
use libfuzzer_sys::fuzz_target;

/// Routes as an operator writes them: every query rule, key headers, hosts and globs.
const ROUTES: &str = r#"
[[route]]
name = "include"
hosts = ["api.example.com", "*.example.net"]
path = "/v1/**"
upstream = "http://127.0.0.1:9"
query_include = ["id", "page", "q%20x"]
key_headers = ["accept-language", "x-tenant"]

[[route]]
name = "exclude"
path_prefix = "/v2/"
methods = ["GET", "POST"]
upstream = "http://127.0.0.1:9"
query_exclude = ["utm_source", "utm_medium", "_"]

[[route]]
name = "all"
upstream = "http://127.0.0.1:9"
"#;

fn routes() -> &'static Routes {
    static ROUTES_ONCE: OnceLock<Routes> = OnceLock::new();
    ROUTES_ONCE.get_or_init(|| {
        let config = Config::from_str(ROUTES, "fuzz.toml").unwrap_or_else(|e| panic!("{e}"));
        Routes::new(&config.routes).unwrap_or_else(|e| panic!("{e}"))
    })
}

#[derive(Arbitrary, Debug)]
enum Rule {
    All,
    Include(Vec<String>),
    Exclude(Vec<String>),
}

#[derive(Arbitrary, Debug)]
struct Case {
    method: AnyMethod,
    host: String,
    path: String,
    query: Option<String>,
    rule: Rule,
    key_headers: Vec<FieldName>,
    headers: Vec<Field>,
    merge_slashes: bool,
    escaped: u8,
}

fn check_path(path: &str, rules: &PathRules) {
    let Ok(once) = normalise::path(path, rules) else {
        return;
    };
    if !path.starts_with('/') {
        // `*` and the empty path are passed through as they are.
        assert_eq!(once, path);
        return;
    }
    assert!(once.starts_with('/'));
    let segments: Vec<&str> = once[1..].split('/').collect();
    assert!(
        !segments.iter().any(|s| *s == "." || *s == ".."),
        "{path:?} ─► {once:?} keeps a dot segment"
    );
    if rules.merge_slashes {
        assert!(!once.contains("//"), "{path:?} ─► {once:?}");
    }
    let twice = normalise::path(&once, rules);
    assert_eq!(twice.as_deref(), Ok(&*once), "not idempotent on {path:?}");
}

fuzz_target!(|c: Case| {
    let escaped = match c.escaped % 3 {
        0 => EscapedSlashes::Reject,
        1 => EscapedSlashes::Keep,
        _ => EscapedSlashes::Decode,
    };
    let rules = PathRules {
        merge_slashes: c.merge_slashes,
        escaped_slashes: escaped,
    };
    check_path(&c.path, &rules);

    let Some(method) = c.method.method() else {
        return;
    };
    let rule = match c.rule {
        Rule::All => QueryKey::All,
        Rule::Include(v) => QueryKey::Include(v.into_iter().take(8).collect()),
        Rule::Exclude(v) => QueryKey::Exclude(v.into_iter().take(8).collect()),
    };
    let key_headers = names(&c.key_headers);
    let hdrs = headers(&c.headers);
    let pq = match &c.query {
        Some(q) => format!("{}?{q}", c.path),
        None => c.path.clone(),
    };
    let derive = |m: &Method, host: &str, pq: &str| {
        CacheKey::derive(m, host, pq, &rule, &key_headers, &hdrs)
    };
    let key = derive(&method, &c.host, &pq);
    assert_eq!(CacheKey::from_hex(&key.to_hex()), Some(key));
    let _ = augur::key::canonical(&method, &c.host, &pq, &rule, &key_headers, &hdrs);
    if method == Method::HEAD {
        assert_eq!(key, derive(&Method::GET, &c.host, &pq));
    }
    assert_eq!(key, derive(&method, &c.host.to_ascii_uppercase(), &pq));

    // What the upstream is sent must key to the entry the client's request keys to: a
    // parameter the key leaves out but the upstream sees is an unkeyed input.
    if let (Some(q), false) = (&c.query, c.path.contains('?')) {
        if let Some(kept) = normalise::keyed_query(q, &rule) {
            let upstream = format!("{}?{kept}", c.path);
            assert_eq!(
                key,
                derive(&method, &c.host, &upstream),
                "{pq:?} vs {upstream:?}"
            );
            assert_eq!(normalise::keyed_query(&kept, &rule), None, "{kept:?}");
        }
    }

    // The configured routes, as the request path uses them.
    let routes = routes();
    if let Some(route) = routes.find(&c.host, &c.path, &method) {
        let key = route.key(&method, &c.host, &pq, &hdrs);
        if let Some(q) = &c.query {
            if let (Some(kept), false) = (
                normalise::keyed_query(q, &route.cfg.query),
                c.path.contains('?'),
            ) {
                let upstream = format!("{}?{kept}", c.path);
                assert_eq!(key, route.key(&method, &c.host, &upstream, &hdrs));
            }
        }
    }
});
