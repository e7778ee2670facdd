//! `[admin]`: who may call the admin listener's protected endpoints, read at load time.
//!
//! Tokens live in their own file (`token_file`), never in `proxy.toml`: the TOML is often
//! committed or baked into an image, a token file is mounted from a secret store. The file is
//! read once, while the config loads, so a missing or malformed file stops Augur before it
//! binds anything. Only BLAKE3 hashes of the tokens are kept: a `Debug` print of the config,
//! a log line or a core dump does not carry them, and every comparison is between two
//! fixed-length hashes (`blake3::Hash` compares in constant time).
//!
//! The file format, one token per line:
//!
//! ```text
//! # comments and blank lines are ignored
//! read:3f9c0b7e2a1d4c58b6e0f1a2b3c4d5e6
//! purge:9a8b7c6d5e4f30211f2e3d4c5b6a7988
//! ```
//!
//! `read` opens `/cache` and `/prefetch/*`; `purge` opens those and `POST /purge`,
//! `POST /purge/all`.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

/// A token file larger than this is refused before it is read whole.
const MAX_TOKEN_FILE: u64 = 64 * 1024;
/// Shorter tokens are refused: 16 random characters are already ~95 bits from base64.
pub const MIN_TOKEN_LEN: usize = 16;
/// Longer tokens are refused (they would not fit a sane `Authorization` header anyway).
pub const MAX_TOKEN_LEN: usize = 256;

/// What a token may do. `Purge` includes `Read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Read,
    Purge,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Purge => "purge",
        }
    }
}

/// The validated `[admin]` table.
#[derive(Debug, Clone, Default)]
pub struct AdminConfig {
    /// Where the tokens came from (for the start-up log line); `None` = no tokens.
    pub token_file: Option<PathBuf>,
    pub tokens: AdminTokens,
    /// Serve the protected endpoints without a token. Only valid with no token file and a
    /// loopback `server.admin_listen` (checked with the other cross-field limits).
    pub allow_unauthenticated_loopback: bool,
}

/// The hashed tokens and their scopes. `Debug` shows how many, never what.
#[derive(Clone, Default)]
pub struct AdminTokens {
    entries: Vec<(Scope, blake3::Hash)>,
}

impl fmt::Debug for AdminTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AdminTokens({} redacted)", self.entries.len())
    }
}

impl AdminTokens {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The scope of `presented`, if it is one of the tokens. Looks at every entry whatever
    /// matched, and compares hashes in constant time, so timing says nothing about the tokens.
    pub fn scope_of(&self, presented: &[u8]) -> Option<Scope> {
        let hash = blake3::hash(presented);
        let mut found = None;
        for (scope, h) in &self.entries {
            if *h == hash {
                found = found.max(Some(*scope));
            }
        }
        found
    }

    /// Reads and parses the token file at `path`. Messages name the file and a line number,
    /// never a token.
    pub fn read(path: &Path) -> Result<AdminTokens, String> {
        let shown = path.display();
        let file = std::fs::File::open(path).map_err(|e| {
            format!("cannot read token file {shown}: {e} (mount the file, or fix the path)")
        })?;
        let mut text = String::new();
        file.take(MAX_TOKEN_FILE + 1)
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read token file {shown}: {e} (it must be UTF-8 text)"))?;
        if text.len() as u64 > MAX_TOKEN_FILE {
            return Err(format!(
                "token file {shown} is larger than 64KiB (it holds one `scope:token` per line)"
            ));
        }
        AdminTokens::parse(&text).map_err(|m| format!("token file {shown}: {m}"))
    }

    /// Parses the token file's text (see the module docs).
    pub fn parse(text: &str) -> Result<AdminTokens, String> {
        let mut entries: Vec<(Scope, blake3::Hash)> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((scope, token)) = line.split_once(':') else {
                return Err(format!(
                    "line {n}: expected `read:<token>` or `purge:<token>`"
                ));
            };
            let scope = match scope.trim() {
                "read" => Scope::Read,
                "purge" => Scope::Purge,
                _ => {
                    return Err(format!(
                        "line {n}: unknown scope (use `read` or `purge` before the colon)"
                    ))
                }
            };
            let token = token.trim();
            check_token(token).map_err(|m| format!("line {n}: {m}"))?;
            let hash = blake3::hash(token.as_bytes());
            if let Some(first) = entries.iter().position(|(_, h)| *h == hash) {
                return Err(format!(
                    "line {n}: repeats the token of an earlier line (entry {}); give each token one scope",
                    first + 1
                ));
            }
            entries.push((scope, hash));
        }
        if entries.is_empty() {
            return Err(
                "holds no token (add a line `purge:<token>` or `read:<token>`, e.g. from `openssl rand -hex 32`)"
                    .to_owned(),
            );
        }
        Ok(AdminTokens { entries })
    }
}

/// A token is an RFC 6750 `b64token` (so it travels in `Authorization: Bearer` unchanged),
/// long enough to resist guessing.
fn check_token(token: &str) -> Result<(), String> {
    if !(MIN_TOKEN_LEN..=MAX_TOKEN_LEN).contains(&token.len()) {
        return Err(format!(
            "the token must be {MIN_TOKEN_LEN} to {MAX_TOKEN_LEN} characters long (e.g. `openssl rand -hex 32`)"
        ));
    }
    let body = token.trim_end_matches('=');
    let ok = !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b));
    if ok {
        Ok(())
    } else {
        Err("the token may hold only letters, digits and `-._~+/` (then `=` padding)".to_owned())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const R: &str = "read-0123456789abcdef";
    const P: &str = "purge-0123456789abcdef";

    #[test]
    fn scopes_and_unknown_tokens() {
        let t = AdminTokens::parse(&format!("# ops\n\nread:{R}\n purge : {P} \n")).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t.scope_of(R.as_bytes()), Some(Scope::Read));
        assert_eq!(t.scope_of(P.as_bytes()), Some(Scope::Purge));
        assert_eq!(t.scope_of(b"read-0123456789abcdeX"), None);
        assert_eq!(t.scope_of(b""), None);
        assert!(Scope::Purge > Scope::Read);
    }

    #[test]
    fn bad_files_name_the_line_never_the_token() {
        for (text, want) in [
            ("", "holds no token"),
            ("# only a comment\n", "holds no token"),
            (&format!("{R}\n") as &str, "line 1: expected"),
            (&format!("\nwrite:{R}"), "line 2: unknown scope"),
            ("read:short", "line 1: the token must be 16"),
            (
                "read:has space in the token!",
                "line 1: the token may hold only",
            ),
            (&format!("read:{R}\npurge:{R}"), "line 2: repeats"),
        ] {
            let err = AdminTokens::parse(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(!err.contains(R) && !err.contains("short"), "{err}");
        }
    }

    #[test]
    fn debug_does_not_show_tokens() {
        let t = AdminTokens::parse(&format!("purge:{P}")).unwrap();
        let shown = format!("{t:?}");
        assert_eq!(shown, "AdminTokens(1 redacted)");
    }
}
