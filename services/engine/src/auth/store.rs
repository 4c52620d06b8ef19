//! Where tokens are kept: the [`TokenStore`] trait and its file
//! implementation, [`FileTokenStore`].
//!
//! The trait is what a PostgreSQL-backed store (several engines sharing one
//! set of tokens) implements later; the server and the CLI only see it.
//!
//! The file store lives in `DATA_DIR/auth/`, apart from the sensor store, so
//! `engine token ...` works while `engine serve` holds the data directory's
//! lock:
//! - `tokens.json`: every token (hash, never the secret), rewritten whole
//!   under its own lock (`tokens.lock`, `flock`) and replaced by rename, so a
//!   reader never sees half a file. A running server notices the new file
//!   (its inode and modification time change) within a quarter second.
//! - `last_used.json`: when each token was last used, written by the server
//!   alone (every few seconds), so uses never contend with CLI changes.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// A stored token: everything but the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public id (`tok_` + 16 hex): what lists, revocation and the audit
    /// trail name.
    pub id: String,
    /// A name people choose ("grafana", "alice's laptop").
    pub name: String,
    /// Hex SHA-256 of the secret.
    pub hash: String,
    /// Scopes as written (`read:plant/**`, `admin`).
    pub scopes: Vec<String>,
    pub created_ms: i64,
    /// After this instant the token is refused; `None`: never expires.
    #[serde(default)]
    pub expires_ms: Option<i64>,
    /// When it was revoked; a revoked token is refused for good.
    #[serde(default)]
    pub revoked_ms: Option<i64>,
}

/// Why a token store failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenStoreError {
    #[error("token store {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("token store {path} is damaged: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("no token with id {0:?}")]
    NotFound(String),
}

/// A change counter of a store: when it differs from the last one seen, the
/// tokens must be loaded again.
pub type Stamp = (u64, i64, i64, u64);

/// Holds tokens for one or several engines.
#[async_trait]
pub trait TokenStore: Send + Sync + 'static {
    /// Every token, revoked and expired ones included.
    async fn all(&self) -> Result<Vec<TokenRecord>, TokenStoreError>;
    /// Adds a token.
    async fn insert(&self, record: TokenRecord) -> Result<(), TokenStoreError>;
    /// Marks a token revoked at `at_ms`; revoking twice keeps the first time.
    async fn revoke(&self, id: &str, at_ms: i64) -> Result<TokenRecord, TokenStoreError>;
    /// A cheap change stamp: polled, and the tokens reloaded when it moves.
    async fn stamp(&self) -> Result<Stamp, TokenStoreError>;
    /// When each token was last used.
    async fn last_used(&self) -> Result<HashMap<String, i64>, TokenStoreError>;
    /// Merges newer uses into the stored ones.
    async fn record_uses(&self, uses: &HashMap<String, i64>) -> Result<(), TokenStoreError>;
}

#[derive(Serialize, Deserialize)]
struct TokensFile {
    version: u32,
    tokens: Vec<TokenRecord>,
}

/// Tokens in `DATA_DIR/auth/` (see the module docs).
pub struct FileTokenStore {
    dir: PathBuf,
}

impl FileTokenStore {
    /// The store of the data directory `data_dir`; creates `auth/` (mode
    /// 0700) when missing.
    pub fn open(data_dir: &Path) -> Result<Self, TokenStoreError> {
        let dir = data_dir.join("auth");
        fs::create_dir_all(&dir).map_err(|source| io(&dir, source))?;
        let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o700));
        Ok(Self { dir })
    }

    /// `DATA_DIR/auth/`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn tokens_path(&self) -> PathBuf {
        self.dir.join("tokens.json")
    }

    fn read_tokens(&self) -> Result<Vec<TokenRecord>, TokenStoreError> {
        let path = self.tokens_path();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<TokensFile>(&bytes)
                .map(|file| file.tokens)
                .map_err(|e| TokenStoreError::Corrupt {
                    path,
                    message: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(source) => Err(io(&path, source)),
        }
    }

    /// Read-modify-write of `tokens.json` under `tokens.lock`.
    fn update<T>(
        &self,
        change: impl FnOnce(&mut Vec<TokenRecord>) -> Result<T, TokenStoreError>,
    ) -> Result<T, TokenStoreError> {
        let lock_path = self.dir.join("tokens.lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|source| io(&lock_path, source))?;
        let _held = Flock::exclusive(&lock).map_err(|source| io(&lock_path, source))?;
        let mut tokens = self.read_tokens()?;
        let result = change(&mut tokens)?;
        let bytes = serde_json::to_vec_pretty(&TokensFile { version: 1, tokens })
            .map_err(|e| io(&lock_path, std::io::Error::other(e)))?;
        write_atomically(&self.tokens_path(), &bytes)?;
        Ok(result)
    }
}

/// An exclusive `flock`, released on drop (or when the process dies).
struct Flock<'a>(&'a File);

impl<'a> Flock<'a> {
    fn exclusive(file: &'a File) -> std::io::Result<Self> {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc == 0 {
            Ok(Self(file))
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

impl Drop for Flock<'_> {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: as above.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

fn io(path: &Path, source: std::io::Error) -> TokenStoreError {
    TokenStoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `bytes` beside `path` (mode 0600), syncs, renames over `path` and
/// syncs the directory: a crash leaves the old file or the new one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), TokenStoreError> {
    let partial = path.with_extension("partial");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&partial)
        .map_err(|source| io(&partial, source))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|source| io(&partial, source))?;
    fs::rename(&partial, path).map_err(|source| io(path, source))?;
    if let Some(parent) = path.parent()
        && let Ok(dir) = File::open(parent)
    {
        let _ = dir.sync_all();
    }
    Ok(())
}

#[async_trait]
impl TokenStore for FileTokenStore {
    async fn all(&self) -> Result<Vec<TokenRecord>, TokenStoreError> {
        self.read_tokens()
    }

    async fn insert(&self, record: TokenRecord) -> Result<(), TokenStoreError> {
        self.update(|tokens| {
            tokens.push(record);
            Ok(())
        })
    }

    async fn revoke(&self, id: &str, at_ms: i64) -> Result<TokenRecord, TokenStoreError> {
        self.update(|tokens| {
            let token = tokens
                .iter_mut()
                .find(|t| t.id == id)
                .ok_or_else(|| TokenStoreError::NotFound(id.to_owned()))?;
            token.revoked_ms.get_or_insert(at_ms);
            Ok(token.clone())
        })
    }

    async fn stamp(&self) -> Result<Stamp, TokenStoreError> {
        let path = self.tokens_path();
        match fs::metadata(&path) {
            Ok(meta) => Ok((meta.ino(), meta.mtime(), meta.mtime_nsec(), meta.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((0, 0, 0, 0)),
            Err(source) => Err(io(&path, source)),
        }
    }

    async fn last_used(&self) -> Result<HashMap<String, i64>, TokenStoreError> {
        let path = self.dir.join("last_used.json");
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| TokenStoreError::Corrupt {
                path,
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HashMap::new()),
            Err(source) => Err(io(&path, source)),
        }
    }

    async fn record_uses(&self, uses: &HashMap<String, i64>) -> Result<(), TokenStoreError> {
        let mut all = self.last_used().await.unwrap_or_default();
        for (id, &at) in uses {
            let entry = all.entry(id.clone()).or_insert(at);
            *entry = (*entry).max(at);
        }
        let path = self.dir.join("last_used.json");
        let bytes = serde_json::to_vec(&all).map_err(|e| io(&path, std::io::Error::other(e)))?;
        write_atomically(&path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> TokenRecord {
        TokenRecord {
            id: id.into(),
            name: "n".into(),
            hash: "00".repeat(32),
            scopes: vec!["admin".into()],
            created_ms: 1,
            expires_ms: None,
            revoked_ms: None,
        }
    }

    #[tokio::test]
    async fn insert_revoke_and_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileTokenStore::open(dir.path()).unwrap();
        let empty = store.stamp().await.unwrap();
        store.insert(record("a")).await.unwrap();
        store.insert(record("b")).await.unwrap();
        let after = store.stamp().await.unwrap();
        assert_ne!(empty, after);
        let revoked = store.revoke("a", 5).await.unwrap();
        assert_eq!(revoked.revoked_ms, Some(5));
        assert_eq!(store.revoke("a", 9).await.unwrap().revoked_ms, Some(5));
        assert!(matches!(
            store.revoke("zz", 9).await,
            Err(TokenStoreError::NotFound(_))
        ));
        let all = store.all().await.unwrap();
        assert_eq!(all.len(), 2);
        assert_ne!(store.stamp().await.unwrap(), after);
        let mode = fs::metadata(store.tokens_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        store
            .record_uses(&HashMap::from([("b".to_owned(), 7)]))
            .await
            .unwrap();
        assert_eq!(store.last_used().await.unwrap()["b"], 7);
    }
}
