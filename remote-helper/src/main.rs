//! `git-remote-hubmesh`: git's remote helper for `hubmesh://` URLs, and the git-lfs transfer
//! agent that goes with it.
//!
//! With the binary on `PATH`, `git clone hubmesh://NS/NAME` (and `datasets/…`, `spaces/…`,
//! `PEER_ID/…`) clones through the **local node** (`HUBMESH_NODE`, `git config
//! hubmesh.node`, else `127.0.0.1:8080`), which fetches from the mesh what it does not hold;
//! fetches and pushes go through the node's smart HTTP endpoint, LFS objects through its batch
//! API, with the token from `HUBMESH_TOKEN`, `git config hubmesh.token` or a git credential
//! helper (see [`node`]). The binary is small on purpose (no async runtime, no git library):
//! git does the git work, the node makes every decision.
//!
//! - `git-remote-hubmesh REMOTE URL`: the gitremote-helpers(7) conversation ([`helper`],
//!   [`push`]).
//! - `git-remote-hubmesh lfs-agent`: the git-lfs standalone custom transfer agent ([`lfs`]),
//!   which the helper configures in every repository it clones.

mod helper;
mod lfs;
mod node;
mod pkt;
mod push;
mod target;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [cmd] if cmd == "lfs-agent" => lfs::run(),
        [_remote, url] => helper::run(url),
        [url] => helper::run(url),
        _ => {
            eprintln!(
                "usage: git-remote-hubmesh REMOTE URL (run by git for hubmesh:// URLs) | \
                 git-remote-hubmesh lfs-agent (run by git-lfs)"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: hubmesh: {e:#}");
            ExitCode::from(128)
        }
    }
}
