//! hubmesh accounts: users and access tokens, persisted in redb.
//!
//! Place in the graph: `protocol ← store ← repo ← auth ← … ← gateway ← node`. The gateway
//! turns an `Authorization` header into a [`Principal`] with [`AuthStore::authenticate`]; the
//! node calls [`AuthStore::bootstrap_admin`] on first start.
//!
//! Tokens are random (`hf_` followed by 34 letters and digits, as on the Hub) and are stored
//! only as their SHA-256: the database never holds a usable secret. A plain hash (no salt, no
//! slow KDF) is the right tool for high-entropy random tokens, as for GitHub's; a password
//! store would need more. [`TokenSecret`] never prints its value through `Debug`.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! use hub_auth::{AuthStore, Scope};
//! use hub_protocol::name::Name;
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
//! # Ok(()) }
//! ```

mod store;
mod token;

pub use store::{AuthError, AuthStore};
pub use token::TokenSecret;

use serde::{Deserialize, Serialize};

/// What a token may do.
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

/// A person with an account on this site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub fullname: String,
    /// Site administrators manage accounts through `/api/admin/`.
    pub site_admin: bool,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
}

/// A token as the database keeps it: everything but the secret.
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
}

/// Who is making a request: a user, through one of their tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: User,
    pub token: TokenRecord,
}
