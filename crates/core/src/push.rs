//! A push's ref updates: which of its commands may land. `hub-repo` checks each command
//! against the pushed objects ([`hub_repo::Quarantine::check`]: ref namespaces, fast-forward,
//! paths, LFS pointers); this module adds the Hub's rights on top — rewriting history (a
//! non-fast-forward update or a moved tag) and deleting a ref need more than adding commits
//! (the owner, a site admin, or org role write/admin; `contributor` may not) — and makes a push
//! atomic: if any command is refused, none lands.
//!
//! Pure functions over the checks, so git smart HTTP and the git remote helper decide alike.

use crate::{Hub, lfs_objects};
use hub_auth::{Decision, Principal};
use hub_protocol::repo::RepoId;
use hub_repo::{Checked, RefCommand, Rejection};
use hub_store::Sha256;

/// Whether the push needs the right to rewrite history: a command deletes a ref, or a check
/// that passed is not a fast-forward.
pub fn needs_rewrite(commands: &[RefCommand], checks: &[Result<Checked, Rejection>]) -> bool {
    commands.iter().any(RefCommand::is_delete)
        || checks.iter().any(|c| {
            matches!(
                c,
                Ok(Checked {
                    fast_forward: false
                })
            )
        })
}

/// The verdict on a push: `Ok` when every command may land, else the reason for each command
/// (those that were fine are refused as [`Rejection::Atomic`]). `may_rewrite`: the pusher has
/// the right [`needs_rewrite`] asks for.
pub fn verdict(
    commands: &[RefCommand],
    checks: Vec<Result<Checked, Rejection>>,
    may_rewrite: bool,
) -> Result<(), Vec<Rejection>> {
    let verdicts: Vec<Result<(), Rejection>> = checks
        .into_iter()
        .zip(commands)
        .map(|(c, command)| match c {
            Ok(_) if command.is_delete() && !may_rewrite => Err(Rejection::DeleteForbidden),
            Ok(Checked {
                fast_forward: false,
            }) if !may_rewrite => Err(Rejection::NonFastForward),
            Ok(_) => Ok(()),
            Err(r) => Err(r),
        })
        .collect();
    if verdicts.iter().all(Result::is_ok) {
        return Ok(());
    }
    Err(verdicts
        .into_iter()
        .map(|v| v.err().unwrap_or(Rejection::Atomic))
        .collect())
}

impl Hub {
    /// Whether `principal` may rewrite the history of `id` (blocking: call from a blocking
    /// task, such as the one that checks the pushed pack). A failure to decide is a refusal.
    pub fn may_rewrite_history(
        &self,
        principal: Option<&Principal>,
        id: &RepoId,
        private: bool,
    ) -> bool {
        matches!(
            self.auth().decide_force_push(principal, id, private),
            Ok(Decision::Allow)
        )
    }

    /// Whether an LFS pointer pushed to `id` may name `oid` (hex): only an object that belongs
    /// to the repo ([`lfs_objects::belongs`]; blocking). A malformed oid, or a failure to
    /// look, is a refusal.
    pub fn pointer_allowed(&self, id: &RepoId, oid: &str) -> bool {
        oid.parse::<Sha256>().ok().is_some_and(|sha| {
            lfs_objects::belongs(self.repos(), self.store(), id, &sha).unwrap_or(false)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hub_repo::ZERO_ID;

    fn command(old: &str, new: &str, name: &str) -> RefCommand {
        RefCommand {
            old: old.to_owned(),
            new: new.to_owned(),
            name: name.to_owned(),
        }
    }

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";
    const FF: Result<Checked, Rejection> = Ok(Checked { fast_forward: true });
    const FORCED: Result<Checked, Rejection> = Ok(Checked {
        fast_forward: false,
    });

    #[test]
    fn fast_forwards_land_without_rewrite_rights() {
        let commands = [
            command(A, B, "refs/heads/main"),
            command(ZERO_ID, A, "refs/heads/x"),
        ];
        let checks = vec![FF, FF];
        assert!(!needs_rewrite(&commands, &checks));
        assert_eq!(verdict(&commands, checks, false), Ok(()));
    }

    #[test]
    fn rewrites_and_deletes_need_the_right_and_refuse_the_whole_push() {
        let commands = [
            command(A, B, "refs/heads/main"),
            command(B, A, "refs/heads/dev"),
            command(A, ZERO_ID, "refs/tags/v1"),
        ];
        let checks = || vec![FF, FORCED, FF];
        assert!(needs_rewrite(&commands, &checks()));
        assert_eq!(
            verdict(&commands, checks(), false),
            Err(vec![
                Rejection::Atomic,
                Rejection::NonFastForward,
                Rejection::DeleteForbidden
            ])
        );
        assert_eq!(verdict(&commands, checks(), true), Ok(()));
        // A refusal from the checks refuses the rest too, whatever the rights.
        let checks = vec![FF, Err(Rejection::Stale), FF];
        assert_eq!(
            verdict(&commands, checks, true),
            Err(vec![Rejection::Atomic, Rejection::Stale, Rejection::Atomic])
        );
    }

    #[test]
    fn deletes_alone_need_the_right() {
        let commands = [command(A, ZERO_ID, "refs/heads/dev")];
        assert!(needs_rewrite(&commands, &[FF]));
    }
}
