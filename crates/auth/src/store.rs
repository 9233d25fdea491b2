//! The redb-backed account store.
//!
//! Tables (JSON values, so records can gain fields without a migration):
//! - `users`: user name → [`User`];
//! - `orgs`: org name → [`Org`] (user and org names share one namespace: a name is in at most
//!   one of the two tables, checked inside the write transaction that adds it);
//! - `members`: (user, org) → [`Role`] as text, keyed by user first because the hot query is
//!   "which orgs is this caller in" ([`AuthStore::orgs_of`], one range scan per request);
//! - `tokens`: SHA-256 of the token → [`TokenRecord`];
//! - `token_ids`: token id → SHA-256, so a token can be revoked by its public id. Databases
//!   written before this index existed get it filled in by [`AuthStore::open`].
//!
//! Every change is one redb write transaction: committed entirely or not at all, and durable
//! once the call returns. Revocation deletes the token in that transaction, so the next
//! [`AuthStore::authenticate`] (a fresh read transaction) no longer finds it.

use crate::access::{self, Caller, Decision};
use crate::token::{token_hash, token_id};
use crate::{
    Access, NamespaceKind, Org, Permissions, Principal, Role, Scope, TokenRecord, TokenSecret, User,
};
use hub_protocol::name::Name;
use hub_protocol::repo::RepoId;
use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition,
};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
const ORGS: TableDefinition<&str, &[u8]> = TableDefinition::new("orgs");
const MEMBERS: TableDefinition<(&str, &str), &str> = TableDefinition::new("members");
const TOKENS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("tokens");
const TOKEN_IDS: TableDefinition<&str, &[u8; 32]> = TableDefinition::new("token_ids");

/// The longest token display name, in bytes.
pub const MAX_DISPLAY_NAME: usize = 100;

/// Errors of the account store. Messages never contain a token secret.
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
    /// A user or org of that name exists already.
    #[error("the name {name} is taken")]
    NameTaken { name: String },
    #[error("no user named {name}")]
    NoSuchUser { name: String },
    #[error("no organisation named {name}")]
    NoSuchOrg { name: String },
    #[error("no token with id {id}")]
    NoSuchToken { id: String },
    #[error("a fine-grained token needs at least one grant")]
    NoGrants,
    #[error("token display name must be 1 to {MAX_DISPLAY_NAME} printable characters")]
    BadDisplayName,
}

impl AuthError {
    fn db(e: impl Into<redb::Error>) -> Self {
        Self::Db(e.into())
    }
}

/// Accounts of one node: users, orgs, memberships, tokens. Cheap to share behind an `Arc`;
/// all methods block briefly on disk and are meant for `spawn_blocking` or start-up code.
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
        tx.open_table(ORGS).map_err(AuthError::db)?;
        tx.open_table(MEMBERS).map_err(AuthError::db)?;
        {
            // Index tokens written before `token_ids` existed.
            let tokens = tx.open_table(TOKENS).map_err(AuthError::db)?;
            let mut ids = tx.open_table(TOKEN_IDS).map_err(AuthError::db)?;
            if ids.len().map_err(AuthError::db)? < tokens.len().map_err(AuthError::db)? {
                for entry in tokens.iter().map_err(AuthError::db)? {
                    let (hash, raw) = entry.map_err(AuthError::db)?;
                    let token: TokenRecord = from_json("token", raw.value())?;
                    ids.insert(token.id.as_str(), hash.value())
                        .map_err(AuthError::db)?;
                }
            }
        }
        tx.commit().map_err(AuthError::db)?;
        Ok(Self { db })
    }

    /// Number of user accounts.
    pub fn user_count(&self) -> Result<u64, AuthError> {
        let tx = self.read()?;
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
                grants: Vec::new(),
            };
            insert_token(&tx, &secret, &record)?;
            persist(&secret).map_err(AuthError::Persist)?;
            record
        };
        tx.commit().map_err(AuthError::db)?;
        Ok(Some(record))
    }

    /// The user and token behind `secret`, or `None` when it is not a valid token (unknown,
    /// revoked, or its user is gone).
    pub fn authenticate(&self, secret: &str) -> Result<Option<Principal>, AuthError> {
        let tx = self.read()?;
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

    /// Creates the user `name` (`fullname` defaults to the name). Fails with
    /// [`AuthError::NameTaken`] when a user or org has that name.
    pub fn create_user(&self, name: &Name, fullname: Option<&str>) -> Result<User, AuthError> {
        let user = User {
            name: name.to_string(),
            fullname: fullname.unwrap_or(name.as_str()).to_owned(),
            site_admin: false,
            created_at: unix_now(),
        };
        self.create_named(USERS, &user.name, &to_json(&user))?;
        Ok(user)
    }

    /// The user `name`, if there is one.
    pub fn user(&self, name: &str) -> Result<Option<User>, AuthError> {
        let tx = self.read()?;
        let users = tx.open_table(USERS).map_err(AuthError::db)?;
        let raw = users.get(name).map_err(AuthError::db)?;
        raw.map(|r| from_json("user", r.value())).transpose()
    }

    /// Creates the organisation `name`, with no members. Fails with [`AuthError::NameTaken`]
    /// when a user or org has that name.
    pub fn create_org(&self, name: &Name, fullname: Option<&str>) -> Result<Org, AuthError> {
        let org = Org {
            name: name.to_string(),
            fullname: fullname.unwrap_or(name.as_str()).to_owned(),
            created_at: unix_now(),
        };
        self.create_named(ORGS, &org.name, &to_json(&org))?;
        Ok(org)
    }

    /// The organisation `name`, if there is one.
    pub fn org(&self, name: &str) -> Result<Option<Org>, AuthError> {
        let tx = self.read()?;
        let orgs = tx.open_table(ORGS).map_err(AuthError::db)?;
        let raw = orgs.get(name).map_err(AuthError::db)?;
        raw.map(|r| from_json("org", r.value())).transpose()
    }

    /// The names of every user and org, sorted (users first): the namespaces this site owns.
    pub fn namespace_names(&self) -> Result<Vec<String>, AuthError> {
        let tx = self.read()?;
        let mut names = Vec::new();
        for table in [USERS, ORGS] {
            let table = tx.open_table(table).map_err(AuthError::db)?;
            for entry in table.iter().map_err(AuthError::db)? {
                let (name, _) = entry.map_err(AuthError::db)?;
                names.push(name.value().to_owned());
            }
        }
        Ok(names)
    }

    /// The stored spelling of the user or org whose name equals `name` ignoring ASCII case.
    pub fn namespace_spelling(&self, name: &str) -> Result<Option<String>, AuthError> {
        Ok(self
            .namespace_names()?
            .into_iter()
            .find(|n| n.eq_ignore_ascii_case(name)))
    }

    /// Whether `name` is a user, an org, or free.
    pub fn namespace_kind(&self, name: &str) -> Result<Option<NamespaceKind>, AuthError> {
        let tx = self.read()?;
        if tx
            .open_table(USERS)
            .map_err(AuthError::db)?
            .get(name)
            .map_err(AuthError::db)?
            .is_some()
        {
            return Ok(Some(NamespaceKind::User));
        }
        let orgs = tx.open_table(ORGS).map_err(AuthError::db)?;
        Ok(orgs
            .get(name)
            .map_err(AuthError::db)?
            .map(|_| NamespaceKind::Org))
    }

    /// Makes `user` a member of `org` with `role`, or changes the role of a member.
    pub fn set_member(&self, org: &str, user: &str, role: Role) -> Result<(), AuthError> {
        let tx = self.db.begin_write().map_err(AuthError::db)?;
        {
            let orgs = tx.open_table(ORGS).map_err(AuthError::db)?;
            if orgs.get(org).map_err(AuthError::db)?.is_none() {
                return Err(AuthError::NoSuchOrg { name: org.into() });
            }
            let users = tx.open_table(USERS).map_err(AuthError::db)?;
            if users.get(user).map_err(AuthError::db)?.is_none() {
                return Err(AuthError::NoSuchUser { name: user.into() });
            }
            let mut members = tx.open_table(MEMBERS).map_err(AuthError::db)?;
            members
                .insert((user, org), role.as_str())
                .map_err(AuthError::db)?;
        }
        tx.commit().map_err(AuthError::db)
    }

    /// Removes `user` from `org`; `false` when they were not a member.
    pub fn remove_member(&self, org: &str, user: &str) -> Result<bool, AuthError> {
        let tx = self.db.begin_write().map_err(AuthError::db)?;
        let removed = {
            let mut members = tx.open_table(MEMBERS).map_err(AuthError::db)?;
            members
                .remove((user, org))
                .map_err(AuthError::db)?
                .is_some()
        };
        tx.commit().map_err(AuthError::db)?;
        Ok(removed)
    }

    /// The organisations `user` belongs to, with their role, sorted by org name.
    pub fn orgs_of(&self, user: &str) -> Result<Vec<(String, Role)>, AuthError> {
        let tx = self.read()?;
        orgs_of(&tx, user)
    }

    /// The members of `org` and their roles, sorted by user name.
    pub fn members(&self, org: &str) -> Result<Vec<(String, Role)>, AuthError> {
        let tx = self.read()?;
        let members = tx.open_table(MEMBERS).map_err(AuthError::db)?;
        let mut out = Vec::new();
        for entry in members.iter().map_err(AuthError::db)? {
            let (key, role) = entry.map_err(AuthError::db)?;
            let (member, in_org) = key.value();
            if in_org == org {
                out.push((member.to_owned(), parse_role(role.value())?));
            }
        }
        Ok(out)
    }

    /// Creates a token for `user`. The secret is returned once and never stored.
    pub fn create_token(
        &self,
        user: &str,
        display_name: &str,
        permissions: Permissions,
    ) -> Result<(TokenRecord, TokenSecret), AuthError> {
        if display_name.is_empty()
            || display_name.len() > MAX_DISPLAY_NAME
            || display_name.chars().any(char::is_control)
        {
            return Err(AuthError::BadDisplayName);
        }
        let (scope, grants) = match permissions {
            Permissions::Scope(scope) => (scope, Vec::new()),
            Permissions::FineGrained(grants) if grants.is_empty() => {
                return Err(AuthError::NoGrants);
            }
            Permissions::FineGrained(grants) => (Scope::Read, grants),
        };
        let tx = self.db.begin_write().map_err(AuthError::db)?;
        let secret = TokenSecret::generate().map_err(AuthError::Random)?;
        let record = TokenRecord {
            id: token_id().map_err(AuthError::Random)?,
            user: user.to_owned(),
            display_name: display_name.to_owned(),
            scope,
            created_at: unix_now(),
            grants,
        };
        {
            let users = tx.open_table(USERS).map_err(AuthError::db)?;
            if users.get(user).map_err(AuthError::db)?.is_none() {
                return Err(AuthError::NoSuchUser { name: user.into() });
            }
        }
        insert_token(&tx, &secret, &record)?;
        tx.commit().map_err(AuthError::db)?;
        Ok((record, secret))
    }

    /// The tokens of `user` (never their secrets), oldest first.
    pub fn list_tokens(&self, user: &str) -> Result<Vec<TokenRecord>, AuthError> {
        let tx = self.read()?;
        let tokens = tx.open_table(TOKENS).map_err(AuthError::db)?;
        let mut out = Vec::new();
        for entry in tokens.iter().map_err(AuthError::db)? {
            let (_, raw) = entry.map_err(AuthError::db)?;
            let token: TokenRecord = from_json("token", raw.value())?;
            if token.user == user {
                out.push(token);
            }
        }
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    /// The token with public id `id`, if it exists.
    pub fn token(&self, id: &str) -> Result<Option<TokenRecord>, AuthError> {
        let tx = self.read()?;
        let ids = tx.open_table(TOKEN_IDS).map_err(AuthError::db)?;
        let Some(hash) = ids.get(id).map_err(AuthError::db)? else {
            return Ok(None);
        };
        let tokens = tx.open_table(TOKENS).map_err(AuthError::db)?;
        let raw = tokens.get(hash.value()).map_err(AuthError::db)?;
        raw.map(|r| from_json("token", r.value())).transpose()
    }

    /// Revokes the token with public id `id` and returns what it was. Takes effect at once:
    /// the next [`Self::authenticate`] with its secret returns `None`.
    pub fn revoke_token(&self, id: &str) -> Result<TokenRecord, AuthError> {
        let tx = self.db.begin_write().map_err(AuthError::db)?;
        let record = {
            let mut ids = tx.open_table(TOKEN_IDS).map_err(AuthError::db)?;
            let hash = ids
                .remove(id)
                .map_err(AuthError::db)?
                .map(|h| *h.value())
                .ok_or_else(|| AuthError::NoSuchToken { id: id.into() })?;
            let mut tokens = tx.open_table(TOKENS).map_err(AuthError::db)?;
            let raw = tokens
                .remove(&hash)
                .map_err(AuthError::db)?
                .ok_or_else(|| AuthError::NoSuchToken { id: id.into() })?;
            from_json("token", raw.value())?
        };
        tx.commit().map_err(AuthError::db)?;
        Ok(record)
    }

    /// May `principal` (`None`: anonymous) have `access` to `repo`? Loads the principal's
    /// memberships, then applies [`access::decide`].
    pub fn decide(
        &self,
        principal: Option<&Principal>,
        repo: &RepoId,
        private: bool,
        access: Access,
    ) -> Result<Decision, AuthError> {
        self.with_caller(principal, |c| access::decide(c, repo, private, access))
    }

    /// May `principal` rewrite the history of `repo`? See [`access::decide_force_push`].
    pub fn decide_force_push(
        &self,
        principal: Option<&Principal>,
        repo: &RepoId,
        private: bool,
    ) -> Result<Decision, AuthError> {
        self.with_caller(principal, |c| access::decide_force_push(c, repo, private))
    }

    /// May `principal` administer `repo` (visibility, move, delete)? See
    /// [`access::decide_admin`].
    pub fn decide_admin(
        &self,
        principal: Option<&Principal>,
        repo: &RepoId,
        private: bool,
    ) -> Result<Decision, AuthError> {
        self.with_caller(principal, |c| access::decide_admin(c, repo, private))
    }

    fn with_caller<T>(
        &self,
        principal: Option<&Principal>,
        f: impl FnOnce(Option<&Caller<'_>>) -> T,
    ) -> Result<T, AuthError> {
        let Some(principal) = principal else {
            return Ok(f(None));
        };
        let orgs = self.orgs_of(&principal.user.name)?;
        Ok(f(Some(&Caller {
            principal,
            orgs: &orgs,
        })))
    }

    fn read(&self) -> Result<ReadTransaction, AuthError> {
        self.db.begin_read().map_err(AuthError::db)
    }

    /// Inserts `name → record` into `table` (users or orgs) unless either table has `name`.
    fn create_named(
        &self,
        table: TableDefinition<&str, &[u8]>,
        name: &str,
        record: &[u8],
    ) -> Result<(), AuthError> {
        let tx = self.db.begin_write().map_err(AuthError::db)?;
        {
            // Names are case-insensitive, as the Hub's are: `Alice` is taken when `alice` is.
            for t in [USERS, ORGS] {
                let t = tx.open_table(t).map_err(AuthError::db)?;
                for entry in t.iter().map_err(AuthError::db)? {
                    let (taken, _) = entry.map_err(AuthError::db)?;
                    if taken.value().eq_ignore_ascii_case(name) {
                        return Err(AuthError::NameTaken { name: name.into() });
                    }
                }
            }
            let mut t = tx.open_table(table).map_err(AuthError::db)?;
            t.insert(name, record).map_err(AuthError::db)?;
        }
        tx.commit().map_err(AuthError::db)
    }
}

fn insert_token(
    tx: &redb::WriteTransaction,
    secret: &TokenSecret,
    record: &TokenRecord,
) -> Result<(), AuthError> {
    let hash = token_hash(secret.expose());
    let mut tokens = tx.open_table(TOKENS).map_err(AuthError::db)?;
    tokens
        .insert(&hash, to_json(record).as_slice())
        .map_err(AuthError::db)?;
    let mut ids = tx.open_table(TOKEN_IDS).map_err(AuthError::db)?;
    ids.insert(record.id.as_str(), &hash)
        .map_err(AuthError::db)?;
    Ok(())
}

fn orgs_of(tx: &ReadTransaction, user: &str) -> Result<Vec<(String, Role)>, AuthError> {
    let members = tx.open_table(MEMBERS).map_err(AuthError::db)?;
    let mut out = Vec::new();
    for entry in members.range((user, "")..).map_err(AuthError::db)? {
        let (key, role) = entry.map_err(AuthError::db)?;
        let (member, org) = key.value();
        if member != user {
            break;
        }
        out.push((org.to_owned(), parse_role(role.value())?));
    }
    Ok(out)
}

fn parse_role(raw: &str) -> Result<Role, AuthError> {
    // Roles are stored as their JSON string value's text; reuse the JSON error for corruption.
    serde_json::from_value(serde_json::Value::String(raw.to_owned())).map_err(|source| {
        AuthError::Corrupt {
            what: "membership",
            source,
        }
    })
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
    use crate::{Grant, TokenRole};

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

    /// A store with the admin, users alice and bob, org acme (alice admin, bob read).
    fn populated() -> (tempfile::TempDir, AuthStore, String) {
        let dir = tempfile::tempdir().unwrap();
        let store = AuthStore::open(dir.path().join("auth.redb")).unwrap();
        let mut admin_secret = String::new();
        store
            .bootstrap_admin(&admin(), |s| {
                admin_secret = s.expose().to_owned();
                Ok(())
            })
            .unwrap();
        store.create_user(&name("alice"), Some("Alice A.")).unwrap();
        store.create_user(&name("bob"), None).unwrap();
        store.create_org(&name("acme"), None).unwrap();
        store.set_member("acme", "alice", Role::Admin).unwrap();
        store.set_member("acme", "bob", Role::Read).unwrap();
        (dir, store, admin_secret)
    }

    fn name(n: &str) -> Name {
        Name::new(n).unwrap()
    }

    #[test]
    fn users_and_orgs_share_one_namespace() {
        let (_dir, store, _) = populated();
        for taken in ["alice", "acme", "admin"] {
            let e = store.create_user(&name(taken), None).unwrap_err();
            assert!(matches!(e, AuthError::NameTaken { .. }), "{e:?}");
            let e = store.create_org(&name(taken), None).unwrap_err();
            assert!(matches!(e, AuthError::NameTaken { .. }), "{e:?}");
        }
        assert_eq!(
            store.namespace_kind("alice").unwrap(),
            Some(NamespaceKind::User)
        );
        assert_eq!(
            store.namespace_kind("acme").unwrap(),
            Some(NamespaceKind::Org)
        );
        assert_eq!(store.namespace_kind("nobody").unwrap(), None);
        let names = store.namespace_names().unwrap();
        for account in ["alice", "bob", "acme"] {
            assert!(names.iter().any(|n| n == account), "{account} in {names:?}");
        }
        assert!(!names.iter().any(|n| n == "nobody"));
        let alice = store.user("alice").unwrap().unwrap();
        assert_eq!(alice.fullname, "Alice A.");
        assert!(!alice.site_admin);
        assert_eq!(store.user("bob").unwrap().unwrap().fullname, "bob");
        assert_eq!(store.org("acme").unwrap().unwrap().name, "acme");
        assert!(store.org("alice").unwrap().is_none());
        assert_eq!(store.user_count().unwrap(), 3);
    }

    #[test]
    fn memberships_are_listed_both_ways_and_updated() {
        let (_dir, store, _) = populated();
        store.create_org(&name("zeta"), None).unwrap();
        store.create_user(&name("alice-b"), None).unwrap();
        store
            .set_member("zeta", "alice", Role::Contributor)
            .unwrap();
        store.set_member("zeta", "alice-b", Role::Write).unwrap();
        assert_eq!(
            store.orgs_of("alice").unwrap(),
            vec![
                ("acme".into(), Role::Admin),
                ("zeta".into(), Role::Contributor)
            ]
        );
        assert_eq!(
            store.orgs_of("alice-b").unwrap(),
            vec![("zeta".into(), Role::Write)]
        );
        assert_eq!(store.orgs_of("admin").unwrap(), vec![]);
        store.set_member("acme", "bob", Role::Write).unwrap();
        assert_eq!(
            store.members("acme").unwrap(),
            vec![("alice".into(), Role::Admin), ("bob".into(), Role::Write)]
        );
        assert!(store.remove_member("acme", "bob").unwrap());
        assert!(!store.remove_member("acme", "bob").unwrap());
        assert_eq!(store.orgs_of("bob").unwrap(), vec![]);
        let e = store.set_member("nope", "bob", Role::Read).unwrap_err();
        assert!(matches!(e, AuthError::NoSuchOrg { .. }), "{e:?}");
        let e = store.set_member("acme", "nope", Role::Read).unwrap_err();
        assert!(matches!(e, AuthError::NoSuchUser { .. }), "{e:?}");
        // An org is not a user and cannot be a member.
        let e = store.set_member("acme", "zeta", Role::Read).unwrap_err();
        assert!(matches!(e, AuthError::NoSuchUser { .. }), "{e:?}");
    }

    #[test]
    fn tokens_are_created_listed_and_revoked_at_once() {
        let (_dir, store, admin_secret) = populated();
        let (read, read_secret) = store
            .create_token("alice", "ci", Permissions::Scope(Scope::Read))
            .unwrap();
        let grants = vec![Grant {
            target: "acme".parse().unwrap(),
            access: Access::Write,
        }];
        let (fine, fine_secret) = store
            .create_token("alice", "fine", Permissions::FineGrained(grants.clone()))
            .unwrap();
        assert_eq!(read.role(), TokenRole::Read);
        assert_eq!(fine.role(), TokenRole::FineGrained);
        assert_eq!(
            fine.scope,
            Scope::Read,
            "fine-grained tokens are never coarse write"
        );
        assert_eq!(fine.grants, grants);
        let who = store.authenticate(fine_secret.expose()).unwrap().unwrap();
        assert_eq!(who.token, fine);
        assert_eq!(who.user.name, "alice");

        let listed = store.list_tokens("alice").unwrap();
        assert_eq!(listed.len(), 2);
        assert!(listed.contains(&read) && listed.contains(&fine));
        assert_eq!(store.list_tokens("bob").unwrap(), vec![]);
        assert_eq!(store.token(&read.id).unwrap(), Some(read.clone()));

        assert_eq!(store.revoke_token(&read.id).unwrap(), read);
        assert!(store.authenticate(read_secret.expose()).unwrap().is_none());
        assert!(store.token(&read.id).unwrap().is_none());
        let e = store.revoke_token(&read.id).unwrap_err();
        assert!(matches!(e, AuthError::NoSuchToken { .. }), "{e:?}");
        assert!(store.authenticate(fine_secret.expose()).unwrap().is_some());
        assert!(store.authenticate(&admin_secret).unwrap().is_some());
        assert_eq!(store.list_tokens("alice").unwrap(), vec![fine]);
    }

    #[test]
    fn bad_token_requests_are_refused() {
        let (_dir, store, _) = populated();
        let e = store
            .create_token("nope", "x", Permissions::Scope(Scope::Read))
            .unwrap_err();
        assert!(matches!(e, AuthError::NoSuchUser { .. }), "{e:?}");
        let e = store
            .create_token("acme", "x", Permissions::Scope(Scope::Read))
            .unwrap_err();
        assert!(matches!(e, AuthError::NoSuchUser { .. }), "{e:?}");
        let e = store
            .create_token("bob", "x", Permissions::FineGrained(vec![]))
            .unwrap_err();
        assert!(matches!(e, AuthError::NoGrants), "{e:?}");
        for bad in ["", "a\nb", &"x".repeat(MAX_DISPLAY_NAME + 1)] {
            let e = store
                .create_token("bob", bad, Permissions::Scope(Scope::Read))
                .unwrap_err();
            assert!(matches!(e, AuthError::BadDisplayName), "{e:?}");
        }
        assert_eq!(store.list_tokens("bob").unwrap(), vec![]);
    }

    #[test]
    fn decide_loads_memberships() {
        let (_dir, store, _) = populated();
        let (_, bob) = store
            .create_token("bob", "t", Permissions::Scope(Scope::Write))
            .unwrap();
        let bob = store.authenticate(bob.expose()).unwrap();
        let repo = RepoId::new(hub_protocol::repo::RepoType::Model, "acme", "m").unwrap();
        let d = |p: Option<&Principal>, private, access| {
            store.decide(p, &repo, private, access).unwrap()
        };
        assert_eq!(d(bob.as_ref(), true, Access::Read), Decision::Allow);
        assert_eq!(d(bob.as_ref(), true, Access::Write), Decision::Forbidden);
        assert_eq!(d(None, true, Access::Read), Decision::NotFound);
        assert_eq!(d(None, false, Access::Write), Decision::Unauthorized);
        store.set_member("acme", "bob", Role::Contributor).unwrap();
        assert_eq!(d(bob.as_ref(), true, Access::Write), Decision::Allow);
        assert_eq!(
            store.decide_force_push(bob.as_ref(), &repo, true).unwrap(),
            Decision::Forbidden
        );
        store.remove_member("acme", "bob").unwrap();
        assert_eq!(d(bob.as_ref(), true, Access::Read), Decision::NotFound);
    }

    #[test]
    fn records_without_grants_still_decode_and_get_indexed() {
        // A token row as the first release wrote it: no `grants`, no `token_ids` entry.
        let old = r#"{"id":"00112233aabbccdd","user":"admin","display_name":"old","scope":"write","created_at":1}"#;
        let rec: TokenRecord = serde_json::from_str(old).unwrap();
        assert!(rec.grants.is_empty());
        assert_eq!(rec.role(), TokenRole::Write);
        assert!(!serde_json::to_string(&rec).unwrap().contains("grants"));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.redb");
        let secret = TokenSecret::generate().unwrap();
        {
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let mut users = tx.open_table(USERS).unwrap();
                let user =
                    r#"{"name":"admin","fullname":"admin","site_admin":true,"created_at":1}"#;
                users.insert("admin", user.as_bytes()).unwrap();
                let mut tokens = tx.open_table(TOKENS).unwrap();
                tokens
                    .insert(&token_hash(secret.expose()), old.as_bytes())
                    .unwrap();
            }
            tx.commit().unwrap();
        }
        let store = AuthStore::open(&path).unwrap();
        assert!(store.authenticate(secret.expose()).unwrap().is_some());
        store.revoke_token("00112233aabbccdd").unwrap();
        assert!(store.authenticate(secret.expose()).unwrap().is_none());
    }
}
