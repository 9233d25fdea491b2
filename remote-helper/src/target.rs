//! `hubmesh://` URLs: which repository, and optionally which node hosts it.
//!
//! Forms: `hubmesh://NS/NAME` (a model), `hubmesh://datasets/NS/NAME`,
//! `hubmesh://spaces/NS/NAME`, each optionally led by the hosting node's peer id:
//! `hubmesh://PEER_ID/NS/NAME`. A trailing `.git` or `/` is ignored. Credentials never go in
//! the URL (git stores remote URLs in plain config and prints them): one with `user@` or
//! `:password@` is refused.

use anyhow::{bail, ensure};

/// The kind of a repository, as the node's URL prefixes name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Model,
    Dataset,
    Space,
}

impl Kind {
    /// The prefix of the repository's paths on the node (`""`, `"datasets/"`, `"spaces/"`).
    pub fn prefix(self) -> &'static str {
        match self {
            Kind::Model => "",
            Kind::Dataset => "datasets/",
            Kind::Space => "spaces/",
        }
    }
}

/// A repository named by a `hubmesh://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The node that hosts the repository's namespace, when the URL names one.
    pub peer: Option<String>,
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl Target {
    /// Parses a `hubmesh://` URL.
    pub fn parse(url: &str) -> anyhow::Result<Target> {
        let Some(rest) = url.strip_prefix("hubmesh://") else {
            bail!("{url:?} is not a hubmesh:// URL");
        };
        ensure!(
            !rest.contains('@'),
            "credentials do not go in a hubmesh:// URL; set HUBMESH_TOKEN or `git config hubmesh.token`"
        );
        ensure!(
            !rest.contains(['?', '#', '\\', '%', ':']) && !rest.chars().any(char::is_control),
            "{url:?} is not a valid hubmesh:// URL"
        );
        let rest = rest.trim_end_matches('/');
        let mut parts: Vec<&str> = rest.split('/').collect();
        let peer = match parts.first() {
            Some(first) if parts.len() > 2 && is_peer_id(first) => Some(parts.remove(0).to_owned()),
            _ => None,
        };
        let kind = match parts.first() {
            Some(&"datasets") if parts.len() == 3 => Kind::Dataset,
            Some(&"spaces") if parts.len() == 3 => Kind::Space,
            Some(&"models") if parts.len() == 3 => Kind::Model,
            Some(first)
                if parts.len() == 2 && !["datasets", "spaces", "models"].contains(first) =>
            {
                Kind::Model
            }
            _ => bail!("{url:?}: expected hubmesh://[PEER_ID/][datasets/|spaces/]NAMESPACE/NAME"),
        };
        if parts.len() == 3 {
            parts.remove(0);
        }
        let namespace = parts[0];
        let name = parts[1].strip_suffix(".git").unwrap_or(parts[1]);
        for part in [namespace, name] {
            ensure!(
                !part.is_empty()
                    && part != "."
                    && part != ".."
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
                "{url:?}: {part:?} is not a valid namespace or repository name"
            );
        }
        Ok(Target {
            peer,
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }

    /// `ns/name`, with the kind's prefix: how the node's URLs and messages name it.
    pub fn path(&self) -> String {
        format!("{}{}/{}", self.kind.prefix(), self.namespace, self.name)
    }
}

/// A libp2p peer id as the node prints it (base58: `12D3KooW…` for ed25519 keys, `Qm…`).
fn is_peer_id(s: &str) -> bool {
    (s.starts_with("12D3KooW") || s.starts_with("Qm"))
        && s.len() >= 46
        && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: &str = "12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo";

    #[test]
    fn parses_every_form() {
        let t = Target::parse("hubmesh://alice/tiny").unwrap();
        assert_eq!(
            (t.kind, t.path(), t.peer),
            (Kind::Model, "alice/tiny".into(), None)
        );
        let t = Target::parse("hubmesh://datasets/alice/data.git/").unwrap();
        assert_eq!(
            (t.kind, t.path()),
            (Kind::Dataset, "datasets/alice/data".into())
        );
        let t = Target::parse("hubmesh://spaces/alice/demo").unwrap();
        assert_eq!(t.path(), "spaces/alice/demo");
        let t = Target::parse(&format!("hubmesh://{PEER}/alice/tiny")).unwrap();
        assert_eq!(
            (t.peer.as_deref(), t.path()),
            (Some(PEER), "alice/tiny".into())
        );
        let t = Target::parse(&format!("hubmesh://{PEER}/datasets/alice/d")).unwrap();
        assert_eq!((t.peer.as_deref(), t.kind), (Some(PEER), Kind::Dataset));
    }

    #[test]
    fn refuses_tokens_and_bad_paths() {
        for bad in [
            "hubmesh://alice:hf_secret@alice/tiny",
            "hubmesh://token@alice/tiny",
            "hubmesh://alice",
            "hubmesh://a/b/c/d",
            "hubmesh://alice/../x",
            "hubmesh://alice/x?y",
            "hubmesh://alice/%2e%2e",
            "http://alice/tiny",
            "hubmesh://models/alice",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
