//! Which repos a mirror may pull from its upstream, and which it keeps pinned.
//!
//! Rules are patterns over `type/ns/name` ids written as the Hub writes repo ids: `*` (every
//! repo), `ns/*` (a namespace), `ns/name` (one repo; `datasets/ns/name` and
//! `spaces/ns/name` for the other kinds), or `re:REGEX` matched against the whole id
//! (`models/ns/name`, `datasets/ns/name`, `spaces/ns/name`). A repo is mirrored when no deny
//! rule matches and the allow list is empty or one of its rules matches. A pinned repo is
//! pulled once and then moved only by an explicit refresh.
//!
//! A pin may name a revision: `pin = "ns/name@REV"` (one repo; `REV` a full commit sha, a
//! tag or a branch of the upstream). Such a repo is mirrored *at that revision*: its `main`
//! is that commit, so what clients fetch by default (`revision="main"`, `git clone`) is the
//! approved revision with the upstream's commit sha, and a pinned tag keeps its name too. No
//! other ref and no later commit of the upstream is fetched. This is what a site's review
//! process asks of a mirror (the issue: "a repo at a fixed commit or tag, refreshed only on
//! request"): users keep writing `from_pretrained("ns/name")` and get the approved weights.
//! Only pin rules take a revision.
//!
//! Rules come from the configuration (`[mirror] allow/deny/pin`) and from run time
//! (`hubmesh mirror add|rm`), the latter kept in `DATA/mirror/policy.json` so they survive
//! restarts.

use hub_protocol::repo::{RepoId, RepoType};
use regex::Regex;
use serde::{Deserialize, Serialize};
use std::fmt;

/// What a rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
    Pin,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::Pin => "pin",
        }
    }
}

/// Why a pattern is not one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PatternError {
    #[error("invalid mirror pattern {pattern:?}: {reason}")]
    Invalid { pattern: String, reason: String },
}

/// One pattern over repo ids.
#[derive(Clone)]
pub struct Pattern {
    text: String,
    matcher: Matcher,
    /// `ns/name@REV`: the revision a pin holds the repo at.
    revision: Option<String>,
}

#[derive(Clone)]
enum Matcher {
    All,
    Namespace(Option<RepoType>, String),
    Repo(Option<RepoType>, String, String),
    Regex(Regex),
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

/// A regex longer than this is refused (a pattern is configuration, not data).
const MAX_PATTERN: usize = 512;

impl Pattern {
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let invalid = |reason: &str| PatternError::Invalid {
            pattern: text.chars().take(64).collect(),
            reason: reason.to_owned(),
        };
        let text = text.trim();
        let original = text;
        if text.is_empty() || text.len() > MAX_PATTERN {
            return Err(invalid("empty or too long"));
        }
        let matcher = if let Some(re) = text.strip_prefix("re:") {
            let re = Regex::new(&format!("^(?:{re})$")).map_err(|e| invalid(&e.to_string()))?;
            Matcher::Regex(re)
        } else if text == "*" {
            Matcher::All
        } else {
            let (text, revision) = match text.rsplit_once('@') {
                Some((repo, rev)) if valid_revision(rev) => (repo, Some(rev.to_owned())),
                Some(_) => {
                    return Err(invalid("expected ns/name@REV with a commit, tag or branch"));
                }
                None => (text, None),
            };
            let (kind, rest) = match text.split_once('/') {
                Some(("datasets", rest)) => (Some(RepoType::Dataset), rest),
                Some(("spaces", rest)) => (Some(RepoType::Space), rest),
                Some(("models", rest)) => (Some(RepoType::Model), rest),
                _ => (None, text),
            };
            let matcher = match rest.split_once('/') {
                Some((_, "*")) if revision.is_some() => {
                    return Err(invalid(
                        "only one repo (ns/name@REV) can be pinned at a revision",
                    ));
                }
                Some((ns, "*")) if valid_part(ns) => Matcher::Namespace(kind, ns.to_owned()),
                Some((ns, name)) if valid_part(ns) && valid_part(name) => {
                    Matcher::Repo(kind, ns.to_owned(), name.to_owned())
                }
                _ => return Err(invalid("expected *, ns/*, ns/name or re:REGEX")),
            };
            return Ok(Self {
                text: original.to_owned(),
                matcher,
                revision,
            });
        };
        Ok(Self {
            text: text.to_owned(),
            matcher,
            revision: None,
        })
    }

    /// Parses the pattern of a rule doing `action`: only pins take a revision.
    pub fn for_rule(action: Action, text: &str) -> Result<Self, PatternError> {
        let pattern = Self::parse(text)?;
        if pattern.revision.is_some() && action != Action::Pin {
            return Err(PatternError::Invalid {
                pattern: text.chars().take(64).collect(),
                reason: format!("only pin rules take @REV, not {}", action.as_str()),
            });
        }
        Ok(pattern)
    }

    /// The revision of an `ns/name@REV` pattern.
    pub fn revision(&self) -> Option<&str> {
        self.revision.as_deref()
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn matches(&self, id: &RepoId) -> bool {
        let kind_ok = |k: &Option<RepoType>| k.is_none_or(|k| k == id.kind());
        match &self.matcher {
            Matcher::All => true,
            Matcher::Namespace(k, ns) => kind_ok(k) && ns == id.namespace(),
            Matcher::Repo(k, ns, name) => kind_ok(k) && ns == id.namespace() && name == id.name(),
            Matcher::Regex(re) => re.is_match(&full_id(id)),
        }
    }
}

/// A full commit sha, or a tag or branch name git would take (no `..`, no control or
/// special characters).
fn valid_revision(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && !s.contains("..")
        && !s.starts_with(['-', '/'])
        && !s.ends_with(['/', '.'])
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !b"~^:?*[\\@{}".contains(&b))
}

fn valid_part(s: &str) -> bool {
    !s.is_empty() && !s.contains(['/', '*', '@']) && !s.chars().any(char::is_whitespace)
}

/// `models/ns/name`, `datasets/ns/name`, `spaces/ns/name`.
pub fn full_id(id: &RepoId) -> String {
    format!("{}/{}/{}", id.kind().plural(), id.namespace(), id.name())
}

/// One rule with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub action: Action,
    pub pattern: Pattern,
    /// `config` or `runtime`.
    pub source: &'static str,
}

/// The verdict on one repo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed {
        pinned: bool,
    },
    /// Refused; the text says by which rule.
    Refused(String),
}

/// The rules in force.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: Vec<Rule>,
}

impl Policy {
    pub fn new(rules: Vec<Rule>) -> Self {
        Self { rules }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Adds a run-time rule; `false` when the same rule is there already.
    pub fn add(&mut self, action: Action, pattern: Pattern) -> bool {
        if self
            .rules
            .iter()
            .any(|r| r.action == action && r.pattern == pattern)
        {
            return false;
        }
        self.rules.push(Rule {
            action,
            pattern,
            source: "runtime",
        });
        true
    }

    /// Removes the run-time rules with this pattern text; how many went.
    pub fn remove(&mut self, pattern: &str) -> usize {
        let before = self.rules.len();
        self.rules
            .retain(|r| r.source != "runtime" || r.pattern.as_str() != pattern.trim());
        before - self.rules.len()
    }

    /// The run-time rules, as stored in `policy.json`.
    pub fn runtime(&self) -> Vec<StoredRule> {
        self.rules
            .iter()
            .filter(|r| r.source == "runtime")
            .map(|r| StoredRule {
                action: r.action,
                pattern: r.pattern.as_str().to_owned(),
            })
            .collect()
    }

    pub fn verdict(&self, id: &RepoId) -> Verdict {
        let hub_id = full_id(id);
        if let Some(rule) = self
            .rules
            .iter()
            .find(|r| r.action == Action::Deny && r.pattern.matches(id))
        {
            return Verdict::Refused(format!(
                "{hub_id} is refused by this mirror's policy (deny {})",
                rule.pattern
            ));
        }
        let allows: Vec<_> = self
            .rules
            .iter()
            .filter(|r| r.action == Action::Allow)
            .collect();
        if !allows.is_empty() && !allows.iter().any(|r| r.pattern.matches(id)) {
            return Verdict::Refused(format!("{hub_id} is not in this mirror's allow list"));
        }
        let pinned = self
            .rules
            .iter()
            .any(|r| r.action == Action::Pin && r.pattern.matches(id));
        Verdict::Allowed { pinned }
    }

    /// The revision a pin holds `id` at (`ns/name@REV`), the first such rule's.
    pub fn pinned_revision(&self, id: &RepoId) -> Option<String> {
        self.rules
            .iter()
            .filter(|r| r.action == Action::Pin && r.pattern.matches(id))
            .find_map(|r| r.pattern.revision().map(str::to_owned))
    }
}

/// A run-time rule as `policy.json` holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredRule {
    pub action: Action,
    pub pattern: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(kind: RepoType, s: &str) -> RepoId {
        RepoId::parse(kind, s).unwrap()
    }

    #[test]
    fn patterns_match_ids() {
        let m = id(RepoType::Model, "alice/tiny");
        let d = id(RepoType::Dataset, "alice/tiny");
        let p = |s| Pattern::parse(s).unwrap();
        assert!(p("*").matches(&m));
        assert!(p("alice/*").matches(&m) && p("alice/*").matches(&d));
        assert!(!p("bob/*").matches(&m));
        assert!(p("alice/tiny").matches(&m));
        assert!(!p("alice/tin").matches(&m));
        assert!(p("datasets/alice/tiny").matches(&d));
        assert!(!p("datasets/alice/tiny").matches(&m));
        assert!(p("re:models/alice/t.*").matches(&m));
        assert!(!p("re:models/alice/t.*").matches(&d));
        // Anchored: a regex matches the whole id, not a part of it.
        assert!(!p("re:alice").matches(&m));
        for bad in ["", "alice", "a/b/c/d", "re:(", "alice/ti*", "/x"] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_pin_may_name_a_revision() {
        let m = id(RepoType::Model, "alice/tiny");
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let p = Pattern::for_rule(Action::Pin, &format!("alice/tiny@{sha}")).unwrap();
        assert!(p.matches(&m));
        assert_eq!(p.revision(), Some(sha));
        assert_eq!(p.as_str(), format!("alice/tiny@{sha}"));
        let tag = Pattern::for_rule(Action::Pin, "datasets/alice/tiny@v1.0").unwrap();
        assert_eq!(tag.revision(), Some("v1.0"));
        assert!(!tag.matches(&m));
        for bad in [
            "alice/*@v1",
            "alice/tiny@",
            "alice/tiny@a..b",
            "alice/tiny@x y",
            "alice/tiny@a@b",
        ] {
            assert!(Pattern::for_rule(Action::Pin, bad).is_err(), "{bad}");
        }
        assert!(Pattern::for_rule(Action::Deny, "alice/tiny@v1").is_err());
        let mut policy = Policy::default();
        policy.add(Action::Pin, p);
        assert_eq!(policy.pinned_revision(&m).as_deref(), Some(sha));
        assert_eq!(policy.verdict(&m), Verdict::Allowed { pinned: true });
        assert_eq!(
            policy.pinned_revision(&id(RepoType::Model, "alice/other")),
            None
        );
    }

    #[test]
    fn deny_wins_then_allow_list_then_pin() {
        let p = |s| Pattern::parse(s).unwrap();
        let mut policy = Policy::default();
        let a = id(RepoType::Model, "alice/tiny");
        let b = id(RepoType::Model, "bob/big");
        assert_eq!(policy.verdict(&a), Verdict::Allowed { pinned: false });
        policy.add(Action::Allow, p("alice/*"));
        assert!(matches!(policy.verdict(&b), Verdict::Refused(_)));
        policy.add(Action::Pin, p("alice/tiny"));
        assert_eq!(policy.verdict(&a), Verdict::Allowed { pinned: true });
        assert!(!policy.add(Action::Pin, p("alice/tiny")));
        policy.add(Action::Deny, p("re:models/alice/.*"));
        match policy.verdict(&a) {
            Verdict::Refused(why) => assert!(why.contains("deny re:models/alice/.*"), "{why}"),
            v => panic!("{v:?}"),
        }
        assert_eq!(policy.remove("re:models/alice/.*"), 1);
        assert_eq!(policy.verdict(&a), Verdict::Allowed { pinned: true });
        assert_eq!(policy.runtime().len(), 2);
    }
}
