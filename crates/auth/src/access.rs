//! Access decisions: who may read, write and force-push which repository.
//!
//! The decision is a pure function of the [`Caller`] (a principal and its org memberships,
//! loaded beforehand), the repo id, whether the repo is private, and the [`Access`] wanted. No
//! I/O happens here, so the matrix below is tested exhaustively and the gateway can call it
//! from async code. Revoked and unknown tokens never get here: `authenticate` already returned
//! `None` for them.
//!
//! The rules follow the Hub:
//! - public repos are readable by anyone, anonymous callers included;
//! - a private repo is visible to its owner user, to members of its owning org (any role) and
//!   to site admins, through a token that may read it; to everyone else it does not exist
//!   ([`Decision::NotFound`], exactly as for a missing repo, also for write attempts);
//! - a write needs a principal ([`Decision::Unauthorized`] otherwise), a token allowing write
//!   on that repo (coarse `write`, or a fine-grained grant covering the repo or its namespace
//!   with `write`), and a user who owns the namespace, is a site admin, or is an org member with
//!   role `contributor`, `write` or `admin`; otherwise [`Decision::Forbidden`];
//! - force pushes and deleting a branch or tag (rewriting history) additionally need the
//!   owner, a site admin, or role `write`/`admin`: `contributor` may add commits but not
//!   rewrite or remove them ([`decide_force_push`]);
//! - administering a repo — changing its visibility, renaming or moving it, deleting it —
//!   additionally needs the owner, a site admin, or role `admin` ([`decide_admin`]).

use crate::{Access, Principal, Role};
use hub_protocol::repo::RepoId;

/// The outcome of an access check. The gateway maps it to a response: `NotFound` → 404 with
/// `X-Error-Code: RepoNotFound`, `Unauthorized` → 401, `Forbidden` → 403.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    Allow,
    /// The repo must look as if it did not exist.
    NotFound,
    /// The request needs a token.
    Unauthorized,
    /// The caller may see the repo but not do this.
    Forbidden,
}

impl Decision {
    pub fn is_allowed(self) -> bool {
        self == Decision::Allow
    }
}

/// An authenticated caller with what decisions need to know about it.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub principal: &'a Principal,
    /// The user's organisations and roles ([`crate::AuthStore::orgs_of`]).
    pub orgs: &'a [(String, Role)],
}

/// How the caller's user stands to a namespace, before looking at the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    Stranger,
    Member(Role),
    /// The owner user, or a site admin.
    Owner,
}

impl Caller<'_> {
    fn standing(&self, namespace: &str) -> Standing {
        let user = &self.principal.user;
        if user.site_admin || user.name == namespace {
            return Standing::Owner;
        }
        self.orgs
            .iter()
            .find(|(org, _)| org == namespace)
            .map_or(Standing::Stranger, |(_, role)| Standing::Member(*role))
    }
}

/// May `caller` (`None`: anonymous) have `access` to `repo`, which is `private` or public?
pub fn decide(
    caller: Option<&Caller<'_>>,
    repo: &RepoId,
    private: bool,
    access: Access,
) -> Decision {
    let Some(caller) = caller else {
        return match (access, private) {
            (Access::Write, _) => Decision::Unauthorized,
            (Access::Read, true) => Decision::NotFound,
            (Access::Read, false) => Decision::Allow,
        };
    };
    let token = &caller.principal.token;
    let standing = caller.standing(repo.namespace());
    if private && (standing == Standing::Stranger || !token.allows(repo, Access::Read)) {
        return Decision::NotFound;
    }
    match access {
        Access::Read => Decision::Allow,
        Access::Write => {
            let user_may = match standing {
                Standing::Owner => true,
                Standing::Member(role) => role >= Role::Contributor,
                Standing::Stranger => false,
            };
            if user_may && token.allows(repo, Access::Write) {
                Decision::Allow
            } else {
                Decision::Forbidden
            }
        }
    }
}

/// May `caller` rewrite the history of `repo` (force-push, delete a branch's commits)? Needs
/// everything a write needs, and the owner, a site admin, or org role `write`/`admin`.
pub fn decide_force_push(caller: Option<&Caller<'_>>, repo: &RepoId, private: bool) -> Decision {
    let write = decide(caller, repo, private, Access::Write);
    if write != Decision::Allow {
        return write;
    }
    match caller.map(|c| c.standing(repo.namespace())) {
        Some(Standing::Owner) => Decision::Allow,
        Some(Standing::Member(role)) if role >= Role::Write => Decision::Allow,
        _ => Decision::Forbidden,
    }
}

/// May `caller` administer `repo`: change its visibility, rename or move it, delete it? Needs
/// everything a write needs, and the owner, a site admin, or org role `admin`.
pub fn decide_admin(caller: Option<&Caller<'_>>, repo: &RepoId, private: bool) -> Decision {
    let write = decide(caller, repo, private, Access::Write);
    if write != Decision::Allow {
        return write;
    }
    match caller.map(|c| c.standing(repo.namespace())) {
        Some(Standing::Owner | Standing::Member(Role::Admin)) => Decision::Allow,
        _ => Decision::Forbidden,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Grant, GrantTarget, Scope, TokenRecord, User};
    use Decision::{Allow as A, Forbidden as F, NotFound as N, Unauthorized as U};
    use hub_protocol::repo::RepoType;

    /// A token: coarse (`grants` empty) or fine-grained.
    fn principal(
        user: &str,
        site_admin: bool,
        scope: Scope,
        grants: &[(&str, Access)],
    ) -> Principal {
        let grants: Vec<Grant> = grants
            .iter()
            .map(|(t, access)| Grant {
                target: t.parse().unwrap(),
                access: *access,
            })
            .collect();
        Principal {
            user: User {
                name: user.into(),
                fullname: user.into(),
                site_admin,
                created_at: 0,
            },
            token: TokenRecord {
                id: "t".into(),
                user: user.into(),
                display_name: "t".into(),
                scope: if grants.is_empty() {
                    scope
                } else {
                    Scope::Read
                },
                created_at: 0,
                grants,
            },
        }
    }

    fn repo(id: &str) -> RepoId {
        RepoId::parse(RepoType::Model, id).unwrap()
    }

    /// Expected decisions, in order: public read, public write, private read, private write.
    #[track_caller]
    fn expect(caller: Option<&Caller<'_>>, id: &str, want: [Decision; 4]) {
        let r = repo(id);
        let got = [
            decide(caller, &r, false, Access::Read),
            decide(caller, &r, false, Access::Write),
            decide(caller, &r, true, Access::Read),
            decide(caller, &r, true, Access::Write),
        ];
        let who = caller.map(|c| (&c.principal.user.name, &c.principal.token, c.orgs));
        assert_eq!(got, want, "{who:?} on {id} (pub r, pub w, priv r, priv w)");
    }

    fn with<R>(p: &Principal, orgs: &[(&str, Role)], f: impl FnOnce(&Caller<'_>) -> R) -> R {
        let orgs: Vec<(String, Role)> = orgs.iter().map(|(o, r)| ((*o).into(), *r)).collect();
        f(&Caller {
            principal: p,
            orgs: &orgs,
        })
    }

    const W: Access = Access::Write;
    const R: Access = Access::Read;

    #[test]
    fn anonymous_reads_public_only_and_never_writes() {
        for id in ["alice/m", "acme/m", "nobody/m"] {
            expect(None, id, [A, U, N, U]);
        }
    }

    #[test]
    fn owner_with_coarse_tokens() {
        let read = principal("alice", false, Scope::Read, &[]);
        with(&read, &[], |c| expect(Some(c), "alice/m", [A, F, A, F]));
        let write = principal("alice", false, Scope::Write, &[]);
        with(&write, &[], |c| expect(Some(c), "alice/m", [A, A, A, A]));
    }

    #[test]
    fn owner_with_fine_grained_tokens() {
        type Case = (&'static [(&'static str, Access)], [Decision; 4]);
        let cases: [Case; 8] = [
            // A grant for another repo: public reads only; the private repo is invisible.
            (&[("alice/other", W)], [A, F, N, N]),
            (&[("dataset/alice/m", W)], [A, F, N, N]),
            (&[("acme", W)], [A, F, N, N]),
            (&[("alice/m", R)], [A, F, A, F]),
            (&[("alice/m", W)], [A, A, A, A]),
            (&[("model/alice/m", W)], [A, A, A, A]),
            (&[("alice", R)], [A, F, A, F]),
            (&[("acme", W), ("alice", W)], [A, A, A, A]),
        ];
        for (grants, want) in cases {
            let p = principal("alice", false, Scope::Write, grants);
            with(&p, &[], |c| expect(Some(c), "alice/m", want));
        }
    }

    #[test]
    fn strangers_see_public_repos_and_write_nothing() {
        let bob = principal("bob", false, Scope::Write, &[]);
        with(&bob, &[], |c| {
            expect(Some(c), "alice/m", [A, F, N, N]);
            expect(Some(c), "acme/m", [A, F, N, N]);
            expect(Some(c), "nobody/m", [A, F, N, N]);
        });
        // A member of another org is a stranger here.
        with(&bob, &[("other", Role::Admin)], |c| {
            expect(Some(c), "acme/m", [A, F, N, N]);
        });
        // A grant does not give more than the user has.
        let granted = principal("bob", false, Scope::Read, &[("alice/m", W), ("acme", W)]);
        with(&granted, &[], |c| {
            expect(Some(c), "alice/m", [A, F, N, N]);
            expect(Some(c), "acme/m", [A, F, N, N]);
        });
    }

    #[test]
    fn org_members_by_role_with_a_write_token() {
        let p = principal("carol", false, Scope::Write, &[]);
        let cases = [
            (Role::Read, [A, F, A, F]),
            (Role::Contributor, [A, A, A, A]),
            (Role::Write, [A, A, A, A]),
            (Role::Admin, [A, A, A, A]),
        ];
        for (role, want) in cases {
            with(&p, &[("acme", role)], |c| {
                expect(Some(c), "acme/m", want);
                // Membership in acme says nothing about other namespaces.
                expect(Some(c), "alice/m", [A, F, N, N]);
            });
        }
    }

    #[test]
    fn org_members_are_bounded_by_their_token() {
        for role in Role::ALL {
            let read = principal("carol", false, Scope::Read, &[]);
            with(&read, &[("acme", role)], |c| {
                expect(Some(c), "acme/m", [A, F, A, F]);
            });
            let other = principal("carol", false, Scope::Read, &[("carol", W)]);
            with(&other, &[("acme", role)], |c| {
                expect(Some(c), "acme/m", [A, F, N, N]);
            });
            let ns = principal("carol", false, Scope::Read, &[("acme", W)]);
            let want = if role >= Role::Contributor {
                [A, A, A, A]
            } else {
                [A, F, A, F]
            };
            with(&ns, &[("acme", role)], |c| expect(Some(c), "acme/m", want));
            let one = principal("carol", false, Scope::Read, &[("acme/m", R)]);
            with(&one, &[("acme", role)], |c| {
                expect(Some(c), "acme/m", [A, F, A, F]);
                expect(Some(c), "acme/n", [A, F, N, N]);
            });
        }
    }

    #[test]
    fn site_admins_reach_everything_their_token_allows() {
        let write = principal("root", true, Scope::Write, &[]);
        let read = principal("root", true, Scope::Read, &[]);
        let fine = principal("root", true, Scope::Read, &[("alice/m", W)]);
        for id in ["alice/m", "acme/m", "nobody/m"] {
            with(&write, &[], |c| expect(Some(c), id, [A, A, A, A]));
            with(&read, &[], |c| expect(Some(c), id, [A, F, A, F]));
        }
        with(&fine, &[], |c| {
            expect(Some(c), "alice/m", [A, A, A, A]);
            expect(Some(c), "acme/m", [A, F, N, N]);
        });
    }

    #[test]
    fn force_push_needs_owner_admin_or_write_role() {
        let r = repo("acme/m");
        let fp = |p: &Principal, orgs: &[(&str, Role)], private| {
            with(p, orgs, |c| decide_force_push(Some(c), &r, private))
        };
        let carol = principal("carol", false, Scope::Write, &[]);
        for private in [false, true] {
            assert_eq!(fp(&carol, &[("acme", Role::Admin)], private), A);
            assert_eq!(fp(&carol, &[("acme", Role::Write)], private), A);
            assert_eq!(fp(&carol, &[("acme", Role::Contributor)], private), F);
            assert_eq!(fp(&carol, &[("acme", Role::Read)], private), F);
            assert_eq!(decide_force_push(None, &r, private), U);
        }
        assert_eq!(fp(&carol, &[], false), F);
        assert_eq!(fp(&carol, &[], true), N);
        let root = principal("root", true, Scope::Write, &[]);
        assert_eq!(fp(&root, &[], true), A);
        let acme_owner_read = principal("carol", false, Scope::Read, &[]);
        assert_eq!(fp(&acme_owner_read, &[("acme", Role::Admin)], true), F);
        let alice = principal("alice", false, Scope::Write, &[]);
        with(&alice, &[], |c| {
            assert_eq!(decide_force_push(Some(c), &repo("alice/m"), true), A);
        });
        let alice_fg = principal("alice", false, Scope::Read, &[("alice/m", W)]);
        with(&alice_fg, &[], |c| {
            assert_eq!(decide_force_push(Some(c), &repo("alice/m"), true), A);
            assert_eq!(decide_force_push(Some(c), &repo("alice/n"), true), N);
            assert_eq!(decide_force_push(Some(c), &repo("alice/n"), false), F);
        });
    }

    #[test]
    fn administering_needs_owner_site_admin_or_admin_role() {
        let r = repo("acme/m");
        let admin = |p: &Principal, orgs: &[(&str, Role)], private| {
            with(p, orgs, |c| decide_admin(Some(c), &r, private))
        };
        let carol = principal("carol", false, Scope::Write, &[]);
        for private in [false, true] {
            assert_eq!(admin(&carol, &[("acme", Role::Admin)], private), A);
            // The Hub's roles: write and contributor may not change visibility, move or delete.
            assert_eq!(admin(&carol, &[("acme", Role::Write)], private), F);
            assert_eq!(admin(&carol, &[("acme", Role::Contributor)], private), F);
            assert_eq!(admin(&carol, &[("acme", Role::Read)], private), F);
            assert_eq!(decide_admin(None, &r, private), U);
        }
        assert_eq!(admin(&carol, &[], false), F);
        assert_eq!(admin(&carol, &[], true), N);
        // The token still bounds what an admin may do.
        let carol_read = principal("carol", false, Scope::Read, &[]);
        assert_eq!(admin(&carol_read, &[("acme", Role::Admin)], false), F);
        let root = principal("root", true, Scope::Write, &[]);
        assert_eq!(admin(&root, &[], true), A);
        let alice = principal("alice", false, Scope::Write, &[]);
        with(&alice, &[], |c| {
            assert_eq!(decide_admin(Some(c), &repo("alice/m"), true), A);
            assert_eq!(decide_admin(Some(c), &repo("acme/m"), false), F);
        });
    }

    #[test]
    fn grant_targets_parse_and_cover() {
        let t: GrantTarget = "alice".parse().unwrap();
        assert_eq!(t, GrantTarget::Namespace("alice".into()));
        assert!(t.covers(&repo("alice/x")));
        assert!(!t.covers(&repo("alicex/x")));
        let t: GrantTarget = "alice/m".parse().unwrap();
        assert_eq!(t.to_string(), "model/alice/m");
        let t: GrantTarget = "dataset/alice/m".parse().unwrap();
        assert!(!t.covers(&repo("alice/m")));
        assert_eq!(t.to_string(), "dataset/alice/m");
        for bad in ["", "a/b/c/d", "bogus/a/b", "../x", "a/", "a b"] {
            assert!(bad.parse::<GrantTarget>().is_err(), "{bad:?}");
        }
        let g = Grant {
            target: "datasets/acme/d".parse().unwrap(),
            access: Access::Write,
        };
        let json = serde_json::to_value(&g).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"target": "dataset/acme/d", "access": "write"})
        );
        assert_eq!(serde_json::from_value::<Grant>(json).unwrap(), g);
    }
}
