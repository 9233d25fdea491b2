//! The redb-backed account store.
//!
//! Tables (values are JSON, so records can gain fields without a migration):
//! - `users`: user name → [`User`];
//! - `tokens`: SHA-256 of the token → [`TokenRecord`].
//!
//! Every change is one redb write transaction: committed entirely or not at all, and durable
//! once the call returns.

use crate::token::{token_hash, token_id};
use crate::{Principal, Scope, TokenRecord, TokenSecret, User};
use hub_protocol::name::Name;
use redb::{Database, ReadableDatabase, ReadableTableMetadata, TableDefinition};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
const TOKENS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("tokens");

/// Errors of the account store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    #[error("open account database {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("account database")]
    Db(#[source] redb::Error),
    #[error("account database holds an unreadable {what} record")]
    Corrupt {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("generate a token")]
    Random(#[source] getrandom::Error),
    #[error("save the new admin token")]
    Persist(#[source] std::io::Error),
}

impl AuthError {
    fn db(e: impl Into<redb::Error>) -> Self {
        Self::Db(e.into())
    }
}

/// Users and tokens of one node. Cheap to share behind an `Arc`; all methods block briefly
/// on disk and are meant for `spawn_blocking` or start-up code.
#[derive(Debug)]
pub struct AuthStore {
    db: Database,
}

impl AuthStore {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, AuthError> {
        let path = path.as_ref();
        let db = Database::create(path).map_err(|source| AuthError::Open {
            path: path.to_owned(),
            source,
        })?;
        let tx = db.begin_write().map_err(AuthError::db)?;
        tx.open_table(USERS).map_err(AuthError::db)?;
        tx.open_table(TOKENS).map_err(AuthError::db)?;
        tx.commit().map_err(AuthError::db)?;
        Ok(Self { db })
    }

    /// Number of user accounts.
    pub fn user_count(&self) -> Result<u64, AuthError> {
        let tx = self.db.begin_read().map_err(AuthError::db)?;
        let users = tx.open_table(USERS).map_err(AuthError::db)?;
        users.len().map_err(AuthError::db)
    }

    /// On a site with no accounts, creates the site admin `name` with a write token, hands the
    /// secret to `persist` (which must store it durably), and commits. Returns `None`, changing
    /// nothing, when accounts exist. If `persist` fails nothing is committed, so the next start
    /// tries again.
    pub fn bootstrap_admin(
        &self,
        name: &Name,
        persist: impl FnOnce(&TokenSecret) -> std::io::Result<()>,
    ) -> Result<Option<TokenRecord>, AuthError> {
        let tx = self.db.begin_write().map_err(AuthError::db)?;
        let record = {
            let mut users = tx.open_table(USERS).map_err(AuthError::db)?;
            if users.len().map_err(AuthError::db)? > 0 {
                return Ok(None);
            }
            let now = unix_now();
            let user = User {
                name: name.to_string(),
                fullname: name.to_string(),
                site_admin: true,
                created_at: now,
            };
            users
                .insert(user.name.as_str(), to_json(&user).as_slice())
                .map_err(AuthError::db)?;
            let secret = TokenSecret::generate().map_err(AuthError::Random)?;
            let record = TokenRecord {
                id: token_id().map_err(AuthError::Random)?,
                user: user.name.clone(),
                display_name: "admin (created at first start)".into(),
                scope: Scope::Write,
                created_at: now,
            };
            let mut tokens = tx.open_table(TOKENS).map_err(AuthError::db)?;
            tokens
                .insert(&token_hash(secret.expose()), to_json(&record).as_slice())
                .map_err(AuthError::db)?;
            persist(&secret).map_err(AuthError::Persist)?;
            record
        };
        tx.commit().map_err(AuthError::db)?;
        Ok(Some(record))
    }

    /// The user and token behind `secret`, or `None` when it is not a valid token.
    pub fn authenticate(&self, secret: &str) -> Result<Option<Principal>, AuthError> {
        let tx = self.db.begin_read().map_err(AuthError::db)?;
        let tokens = tx.open_table(TOKENS).map_err(AuthError::db)?;
        let Some(raw) = tokens.get(&token_hash(secret)).map_err(AuthError::db)? else {
            return Ok(None);
        };
        let token: TokenRecord = from_json("token", raw.value())?;
        let users = tx.open_table(USERS).map_err(AuthError::db)?;
        let Some(raw) = users.get(token.user.as_str()).map_err(AuthError::db)? else {
            // A token whose user is gone grants nothing.
            return Ok(None);
        };
        let user: User = from_json("user", raw.value())?;
        Ok(Some(Principal { user, token }))
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail (no maps with non-string keys, no I/O).
    serde_json::to_vec(value).unwrap_or_default()
}

fn from_json<T: serde::de::DeserializeOwned>(
    what: &'static str,
    raw: &[u8],
) -> Result<T, AuthError> {
    serde_json::from_slice(raw).map_err(|source| AuthError::Corrupt { what, source })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin() -> Name {
        Name::new("admin").unwrap()
    }

    #[test]
    fn bootstrap_creates_admin_once_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.redb");
        let mut secret = None;
        {
            let store = AuthStore::open(&path).unwrap();
            let rec = store
                .bootstrap_admin(&admin(), |s| {
                    secret = Some(s.clone());
                    Ok(())
                })
                .unwrap()
                .unwrap();
            assert_eq!(rec.user, "admin");
            assert_eq!(store.user_count().unwrap(), 1);
        }
        let secret = secret.unwrap();
        let store = AuthStore::open(&path).unwrap();
        let again = store
            .bootstrap_admin(&admin(), |_| panic!("must not create a second admin"))
            .unwrap();
        assert!(again.is_none());
        let who = store.authenticate(secret.expose()).unwrap().unwrap();
        assert!(who.user.site_admin);
        assert_eq!(who.token.scope, Scope::Write);
    }

    #[test]
    fn failed_persist_commits_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = AuthStore::open(dir.path().join("auth.redb")).unwrap();
        let mut leaked = None;
        let err = store
            .bootstrap_admin(&admin(), |s| {
                leaked = Some(s.clone());
                Err(std::io::Error::other("disk full"))
            })
            .unwrap_err();
        assert!(matches!(err, AuthError::Persist(_)), "{err:?}");
        assert_eq!(store.user_count().unwrap(), 0);
        assert!(
            store
                .authenticate(leaked.unwrap().expose())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn unknown_and_malformed_tokens_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let store = AuthStore::open(dir.path().join("auth.redb")).unwrap();
        store.bootstrap_admin(&admin(), |_| Ok(())).unwrap();
        for bad in ["", "hf_bad", "\0\0", &"x".repeat(10_000)] {
            assert!(store.authenticate(bad).unwrap().is_none(), "{bad:?}");
        }
    }
}
