//! Bearer tokens for internal clients: a file of `<scope> <token>` lines, held as SHA-256
//! digests so the table never compares secrets byte by byte.

use std::collections::HashMap;
use std::path::Path;

use sha2::{Digest as _, Sha256};

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Inspect: status, listings, settings.
    Read,
    /// Everything, including the calls that change state.
    Admin,
}

impl Scope {
    /// The scope's name in the token file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Admin => "admin",
        }
    }
}

/// The accepted tokens and their scopes.
#[derive(Debug, Clone, Default)]
pub struct TokenTable {
    fingerprint: Vec<u8>,
    scopes: HashMap<[u8; 32], Scope>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl TokenTable {
    /// Parses the token file's text. Lines are `<scope> <token>`; blank lines and `#` comments
    /// are skipped. Errors name the line (never the token).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut scopes = HashMap::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace();
            let scope = match words.next() {
                Some("read") => Scope::Read,
                Some("admin") => Scope::Admin,
                Some(other) => {
                    return Err(format!(
                        "line {}: scope {other:?} is not read or admin",
                        number + 1
                    ));
                }
                None => continue,
            };
            let (Some(token), None) = (words.next(), words.next()) else {
                return Err(format!("line {}: expected `<scope> <token>`", number + 1));
            };
            if token.len() < 16 {
                return Err(format!(
                    "line {}: a token must be at least 16 characters",
                    number + 1
                ));
            }
            scopes.insert(digest(token), scope);
        }
        Ok(Self {
            fingerprint: Sha256::digest(text.as_bytes()).to_vec(),
            scopes,
        })
    }

    /// Reads and parses the token file.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
        Self::parse(&text).map_err(|err| format!("{}: {err}", path.display()))
    }

    /// The scope `token` grants, if it is accepted.
    pub fn scope(&self, token: &str) -> Option<Scope> {
        self.scopes.get(&digest(token)).copied()
    }

    /// Number of accepted tokens.
    pub fn len(&self) -> usize {
        self.scopes.len()
    }

    /// Whether no token is accepted.
    pub fn is_empty(&self) -> bool {
        self.scopes.is_empty()
    }
}

impl super::Fingerprinted for TokenTable {
    fn fingerprint(&self) -> &[u8] {
        &self.fingerprint
    }
}

/// The token table, reloaded from its file in the background.
pub type ReloadingTokens = super::Reloading<TokenTable>;

impl ReloadingTokens {
    /// Loads `path` now and checks it again every `every`.
    pub fn from_file(path: std::path::PathBuf, every: std::time::Duration) -> Result<Self, String> {
        super::Reloading::start("auth tokens", move || TokenTable::read(&path), every)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_map_to_their_scopes() {
        let table = TokenTable::parse(
            "# operators\nadmin 0123456789abcdef-admin\n\nread  0123456789abcdef-read  # dashboards\n",
        )
        .unwrap();
        assert_eq!(table.len(), 2);
        assert_eq!(table.scope("0123456789abcdef-admin"), Some(Scope::Admin));
        assert_eq!(table.scope("0123456789abcdef-read"), Some(Scope::Read));
        assert_eq!(table.scope("0123456789abcdef"), None);
        assert!(Scope::Admin > Scope::Read);
    }

    #[test]
    fn bad_lines_are_named_without_the_token() {
        let err = TokenTable::parse("write secret-secret-secret\n").unwrap_err();
        assert_eq!(err, "line 1: scope \"write\" is not read or admin");
        let err = TokenTable::parse("admin a b\n").unwrap_err();
        assert!(err.starts_with("line 1: expected"), "{err}");
        let err = TokenTable::parse("read short\n").unwrap_err();
        assert!(err.contains("at least 16"), "{err}");
    }
}
