//! hubmesh accounts: users, organisations, roles and access tokens, persisted in redb, and the
//! access decisions they drive.
//!
//! Place in the graph: `protocol ← store ← repo ← auth ← … ← gateway ← node`. The gateway
//! turns an `Authorization` header into a [`Principal`] with [`AuthStore::authenticate`], then
//! asks [`AuthStore::decide`] whether that principal (or an anonymous caller) may read or write
//! a repository; the node calls [`AuthStore::bootstrap_admin`] on first start.
//!
//! Owns the account database and the pure access decisions; which repo is hosted where and
//! the order of the checks belong to `hub-core` (`Hub::access`). Depends on `hub-protocol`
//! only among ours, and must not depend on repositories, the store, the network or HTTP.
//!
//! - **Users and organisations** share one namespace: a name is either a user or an org, never
//!   both. An org is owned by its members, each with a [`Role`] (`read`, `contributor`, `write`,
//!   `admin`, as on the Hub).
//! - **Tokens** are random (`hf_` followed by 34 letters and digits, as on the Hub) and are
//!   stored only as their SHA-256: the database never holds a usable secret. A plain hash (no
//!   salt, no slow KDF) is the right tool for high-entropy random tokens, as for GitHub's; a
//!   password store would need more. [`TokenSecret`] never prints its value through `Debug`.
//!   A token is *coarse* (`read` or `write` on everything its user may reach) or
//!   *fine-grained* (a list of [`Grant`]s, each naming a repo or a namespace); see
//!   [`TokenRecord`]. Revocation ([`AuthStore::revoke_token`]) takes effect at the next
//!   [`AuthStore::authenticate`].
//! - **Decisions** ([`decide`], [`decide_force_push`]) are pure functions of a [`Caller`] (the
//!   principal plus its org memberships), the repo, its visibility and the [`Access`] wanted, so
//!   the whole matrix is unit-tested without a database.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! use hub_auth::{Access, AuthStore, Decision, Permissions, Role, Scope};
//! use hub_protocol::name::Name;
//! use hub_protocol::repo::{RepoId, RepoType};
//!
//! let store = AuthStore::open(dir.path().join("auth.redb"))?;
//! let mut saved = None;
//! let token = store
//!     .bootstrap_admin(&Name::new("admin")?, |secret| {
//!         saved = Some(secret.expose().to_owned());
//!         Ok(())
//!     })?
//!     .expect("first start creates the admin");
//! assert_eq!(token.scope, Scope::Write);
//! let who = store.authenticate(saved.as_deref().unwrap())?.expect("valid token");
//! assert_eq!(who.user.name, "admin");
//!
//! store.create_user(&Name::new("alice")?, None)?;
//! store.create_org(&Name::new("acme")?, None)?;
//! store.set_member("acme", "alice", Role::Read)?;
//! let (_, secret) = store.create_token("alice", "laptop", Permissions::Scope(Scope::Write))?;
//! let alice = store.authenticate(secret.expose())?;
//! let repo = RepoId::new(RepoType::Model, "acme", "private-model")?;
//! // A `read` member sees the org's private repo but may not write to it.
//! assert_eq!(store.decide(alice.as_ref(), &repo, true, Access::Read)?, Decision::Allow);
//! assert_eq!(store.decide(alice.as_ref(), &repo, true, Access::Write)?, Decision::Forbidden);
//! // Anonymous callers cannot tell a private repo from a missing one.
//! assert_eq!(store.decide(None, &repo, true, Access::Read)?, Decision::NotFound);
//! # Ok(()) }
//! ```

mod access;
mod store;
mod token;

pub use access::{Caller, Decision, decide, decide_admin, decide_force_push};
pub use store::{AuthError, AuthStore};
pub use token::TokenSecret;

use hub_protocol::name::validate_name_part;
use hub_protocol::repo::{RepoId, RepoType};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// What a coarse token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Read,
    Write,
}

impl Scope {
    /// The Hub's name for the role of a token with this scope (`whoami-v2`'s `role`).
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
        }
    }
}

impl FromStr for Scope {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Scope::Read),
            "write" => Ok(Scope::Write),
            _ => Err(ParseError::new("scope", s, "read, write")),
        }
    }
}

/// What a request wants to do with a repository; also the access a [`Grant`] gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Read,
    Write,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
        }
    }
}

impl From<Scope> for Access {
    fn from(scope: Scope) -> Self {
        match scope {
            Scope::Read => Access::Read,
            Scope::Write => Access::Write,
        }
    }
}

/// A member's role in an organisation, as on the Hub, from least to most powerful.
///
/// - `read`: sees the org's private repos;
/// - `contributor`: also writes to them (but may not rewrite history);
/// - `write`: also force-pushes (rewrites branches);
/// - `admin`: also manages the org (its members).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Read,
    Contributor,
    Write,
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Read, Role::Contributor, Role::Write, Role::Admin];

    /// The Hub's name of the role (`whoami-v2`'s `roleInOrg`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Contributor => "contributor",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| ParseError::new("role", s, "read, contributor, write, admin"))
    }
}

/// A value that is not one of the allowed words. The message is safe to show a user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {found:?} is not one of {allowed}")]
pub struct ParseError {
    what: &'static str,
    found: String,
    allowed: &'static str,
}

impl ParseError {
    fn new(what: &'static str, found: &str, allowed: &'static str) -> Self {
        Self {
            what,
            found: found.chars().take(64).collect(),
            allowed,
        }
    }
}

/// A person with an account on this site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub fullname: String,
    /// Site administrators manage accounts through `/api/admin/` and may read and write every
    /// repository (within their token's permissions).
    pub site_admin: bool,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
}

/// An organisation: a namespace owned by its members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Org {
    pub name: String,
    pub fullname: String,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
}

/// What a name in the shared user/org namespace belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NamespaceKind {
    User,
    Org,
}

/// What a fine-grained [`Grant`] covers: one repository, or every repository of a namespace.
///
/// Written as text: a repo is `type/namespace/name` (or `namespace/name`, a model), a
/// namespace is its bare name. That text is also how grants are stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum GrantTarget {
    Repo(RepoId),
    Namespace(String),
}

impl GrantTarget {
    /// Whether this target covers `repo`.
    pub fn covers(&self, repo: &RepoId) -> bool {
        match self {
            GrantTarget::Repo(id) => id == repo,
            GrantTarget::Namespace(ns) => ns == repo.namespace(),
        }
    }
}

impl fmt::Display for GrantTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GrantTarget::Repo(id) => write!(f, "{id}"),
            GrantTarget::Namespace(ns) => f.write_str(ns),
        }
    }
}

/// Why a grant target was rejected. The message is safe to show a user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GrantTargetError {
    #[error("invalid namespace {0:?}")]
    Namespace(String, #[source] hub_protocol::name::NameError),
    #[error("invalid repo id {0:?}")]
    Repo(String, #[source] hub_protocol::repo::RepoIdError),
}

impl FromStr for GrantTarget {
    type Err = GrantTargetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let shown = || s.chars().take(200).collect::<String>();
        let parts: Vec<&str> = s.split('/').collect();
        let repo = |kind: RepoType, ns: &str, name: &str| {
            RepoId::new(kind, ns, name)
                .map(GrantTarget::Repo)
                .map_err(|e| GrantTargetError::Repo(shown(), e))
        };
        match parts.as_slice() {
            [ns] => validate_name_part(ns)
                .map(|()| GrantTarget::Namespace((*ns).to_owned()))
                .map_err(|e| GrantTargetError::Namespace(shown(), e)),
            [ns, name] => repo(RepoType::Model, ns, name),
            [kind, ns, name] => {
                let kind: RepoType = kind
                    .parse()
                    .map_err(|e| GrantTargetError::Repo(shown(), e))?;
                repo(kind, ns, name)
            }
            _ => Err(GrantTargetError::Repo(
                shown(),
                hub_protocol::repo::RepoIdError::Shape,
            )),
        }
    }
}

impl TryFrom<String> for GrantTarget {
    type Error = GrantTargetError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<GrantTarget> for String {
    fn from(t: GrantTarget) -> Self {
        t.to_string()
    }
}

/// One permission of a fine-grained token: `access` to the repos `target` covers. `write`
/// includes `read`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Grant {
    pub target: GrantTarget,
    pub access: Access,
}

/// What a new token may do: see [`TokenRecord`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Permissions {
    /// A coarse `read` or `write` token.
    Scope(Scope),
    /// A fine-grained token; must hold at least one grant.
    FineGrained(Vec<Grant>),
}

/// The kind of a token, as `whoami-v2` reports it (`auth.accessToken.role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenRole {
    Read,
    Write,
    FineGrained,
}

impl TokenRole {
    /// `read`, `write`, `fineGrained`: the Hub's names.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenRole::Read => "read",
            TokenRole::Write => "write",
            TokenRole::FineGrained => "fineGrained",
        }
    }
}

/// A token as the database keeps it: everything but the secret.
///
/// Semantics: when `grants` is empty the token is *coarse* and `scope` applies to every
/// repository its user may reach (`read`: read only; `write`: read and write). When `grants`
/// is not empty the token is *fine-grained*: it reads a private repo only if a grant covers
/// that repo (or its namespace), writes only if such a grant has `write` access, and `scope` is
/// always `read` (so code that only looks at `scope` never lets a fine-grained token write).
/// Either way the user's own rights still bound what the token can do; a token never gives
/// more than its user has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// A short public id, safe to log and to name in revocations.
    pub id: String,
    /// The user the token acts for.
    pub user: String,
    /// A label chosen at creation (`whoami-v2`'s `displayName`).
    pub display_name: String,
    pub scope: Scope,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    /// The grants of a fine-grained token; empty for a coarse one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<Grant>,
}

impl TokenRecord {
    /// Read, write or fine-grained.
    pub fn role(&self) -> TokenRole {
        match (self.grants.is_empty(), self.scope) {
            (false, _) => TokenRole::FineGrained,
            (true, Scope::Read) => TokenRole::Read,
            (true, Scope::Write) => TokenRole::Write,
        }
    }

    /// Whether the token itself (not its user) allows `access` to `repo`.
    pub fn allows(&self, repo: &RepoId, access: Access) -> bool {
        if self.grants.is_empty() {
            return access <= Access::from(self.scope);
        }
        self.grants
            .iter()
            .any(|g| g.target.covers(repo) && access <= g.access)
    }

    /// Whether this is a coarse `write` token: what site administration requires.
    pub fn is_coarse_write(&self) -> bool {
        self.role() == TokenRole::Write
    }
}

/// Who is making a request: a user, through one of their tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: User,
    pub token: TokenRecord,
}
