//! The checks every table shares: durations, addresses, URLs, paths relative to the config file,
//! client TLS, and the one error type that names the file, the key and the problem.

use std::cell::RefCell;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// A configuration problem: where, which key, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file, self.problem)
        } else {
            write!(f, "{}: {}: {}", self.file, self.key, self.problem)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Turns a TOML/serde error into "file:line:col: [table] message".
pub(super) fn toml_error(file: &str, text: &str, e: &toml::de::Error) -> ConfigError {
    let mut key = String::new();
    if let Some(span) = e.span() {
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        // Name the table the error sits in: the nearest header above it.
        let table = before.lines().rev().map(str::trim).find(|l| l.starts_with('[')).unwrap_or("top level");
        key = format!("line {line}, column {col}, in {table}");
        // A value of the wrong type: name the key written on that line before it.
        let this_line = &before[before.rfind('\n').map_or(0, |i| i + 1)..];
        if let Some((name, _)) = this_line.split_once('=') {
            key.push_str(&format!(", key {}", name.trim()));
        }
    }
    ConfigError { file: file.to_string(), key, problem: e.message().trim().to_string() }
}

pub(super) struct Validator<'a> {
    pub file: &'a str,
    pub base: Option<PathBuf>,
    /// Every file the config names, stamped before it is read (see `Config::files`).
    pub files: RefCell<Vec<(PathBuf, Option<FileStamp>)>>,
}

/// A file's identity and version as seen through symlinks: a ConfigMap's `..data` swap or a
/// rewritten certificate changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    modified: Option<SystemTime>,
}

impl FileStamp {
    /// `None` when the file cannot be read (that is a state too: its return is a change).
    pub fn of(path: &Path) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(FileStamp { dev: m.dev(), ino: m.ino(), len: m.len(), modified: m.modified().ok() })
    }
}

impl Validator<'_> {
    pub(super) fn err(&self, key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError { file: self.file.to_string(), key: key.into(), problem: problem.into() }
    }

    pub(super) fn duration(&self, key: &str, s: &str) -> Result<Duration, ConfigError> {
        humantime::parse_duration(s.trim())
            .map_err(|e| self.err(key, format!("bad duration {s:?} ({e}); write e.g. \"500ms\", \"2s\", \"5m\"")))
    }

    pub(super) fn addr(&self, key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
        s.parse().map_err(|_| self.err(key, format!("bad socket address {s:?}; write e.g. \"127.0.0.1:8080\"")))
    }

    /// A path the config names, resolved against the config's folder and noted for the watcher.
    pub(super) fn path(&self, p: &str) -> PathBuf {
        let path = match &self.base {
            Some(base) if Path::new(p).is_relative() => base.join(p),
            _ => PathBuf::from(p),
        };
        self.files.borrow_mut().push((path.clone(), FileStamp::of(&path)));
        path
    }

    /// Client TLS for an upstream or key server: platform roots, `ca_file`, optional identity.
    pub(super) fn client_tls(
        &self,
        key: &str,
        ca_file: Option<&str>,
        cert: Option<&str>,
        private_key: Option<&str>,
    ) -> Result<crate::tls::ClientTls, ConfigError> {
        let identity = match (cert, private_key) {
            (Some(c), Some(k)) => Some(crate::tls::Identity { cert: self.path(c), key: self.path(k) }),
            (None, None) => None,
            _ => return Err(self.err(format!("{key}.client_cert"), "client_cert and client_key go together")),
        };
        let ca = ca_file.map(|p| self.path(p));
        crate::tls::client_config(ca.as_deref(), identity.as_ref())
            .map(crate::tls::ClientTls)
            .map_err(|e| self.err(key, crate::error_chain::describe(&e)))
    }

    pub(super) fn nonzero(&self, key: &str, s: &str) -> Result<Duration, ConfigError> {
        let d = self.duration(key, s)?;
        if d.is_zero() {
            return Err(self.err(key, "must be greater than zero"));
        }
        Ok(d)
    }

    /// Checks a URL's syntax and scheme; returns the parsed URI.
    /// One secret of at least `min` printable characters, read from `file` (surrounding white
    /// space dropped). Errors name `key` and the file, never the content.
    pub(super) fn secret_file(&self, key: &str, file: &str, min: usize) -> Result<Vec<u8>, ConfigError> {
        let path = self.path(file);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| self.err(key, format!("cannot read {}: {e}", path.display())))?;
        let secret = text.trim();
        if secret.len() < min || !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(self
                .err(key, format!("{} must hold one secret of at least {min} printable characters", path.display())));
        }
        Ok(secret.as_bytes().to_vec())
    }

    /// A public origin, `scheme://host[:port]`, normalized as a DPoP proof's `htu` is.
    pub(super) fn origin(&self, key: &str, s: &str) -> Result<String, ConfigError> {
        let bare = !s.contains(['?', '#']) && s.split_once("://").is_some_and(|(_, rest)| !rest.contains('/'));
        match crate::auth::dpop::normalize_htu(s) {
            Some(n) if bare => Ok(n.trim_end_matches('/').to_owned()),
            _ => Err(self
                .err(key, format!("{s:?}: give the origin clients use, e.g. \"https://api.example.com\" (no path)"))),
        }
    }

    pub(super) fn url(&self, key: &str, s: &str) -> Result<http::Uri, ConfigError> {
        let uri: http::Uri = s.parse().map_err(|e| self.err(key, format!("bad URL {s:?}: {e}")))?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            _ => return Err(self.err(key, format!("bad URL {s:?}: scheme must be http or https"))),
        }
        if uri.authority().is_none() {
            return Err(self.err(key, format!("bad URL {s:?}: no host")));
        }
        Ok(uri)
    }
}
