//! The gitremote-helpers(7) conversation with git.
//!
//! Capabilities: `stateless-connect` for fetches (git speaks protocol v2 and the helper
//! relays each request to the node's smart HTTP endpoint as one POST, ending each answer with
//! a response-end packet, as git's own `git-remote-http` does), `push` (receive-pack has no
//! v2: the helper builds the pack with `git pack-objects` and sends it with the commands in
//! one POST, see [`crate::push`]) and `option`. `list for-push` reads the node's
//! receive-pack advertisement. Fetches need protocol v2, git's default since 2.26.

use crate::node::{Node, read_body, refusal_message};
use crate::pkt::{self, Pkt};
use crate::push::{self, PushOptions, Remote};
use crate::target::Target;
use anyhow::{Context, bail};
use std::io::{BufRead, Write};

/// Most bytes of one fetch request relayed (wants and haves; git sends far less).
const MAX_REQUEST: usize = 64 << 20;

/// Most bytes of a ref advertisement.
const MAX_ADVERTISEMENT: u64 = 64 << 20;

/// Runs the helper for `url` until git is done.
pub fn run(url: &str) -> anyhow::Result<()> {
    let target = Target::parse(url)?;
    let mut node = Node::new(target)?;
    configure_lfs_agent(url, &node);
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut options = PushOptions::default();
    let mut remote: Option<Remote> = None;
    let mut line = String::new();
    loop {
        line.clear();
        if input
            .read_line(&mut line)
            .context("read a command from git")?
            == 0
        {
            return Ok(());
        }
        let cmd = line.trim_end_matches(['\n', '\r']);
        if cmd.is_empty() {
            return Ok(());
        }
        if cmd == "capabilities" {
            out.write_all(b"stateless-connect\npush\noption\n\n")?;
        } else if let Some(rest) = cmd.strip_prefix("option ") {
            let answer = options.set(rest);
            writeln!(out, "{answer}")?;
        } else if cmd == "list for-push" {
            let r = push::remote_refs(&mut node)?;
            for (name, oid) in &r.refs {
                writeln!(out, "{oid} {name}")?;
            }
            writeln!(out)?;
            remote = Some(r);
        } else if cmd == "list" {
            bail!(
                "hubmesh:// fetches need git's protocol v2 (git 2.26 or later; check that \
                 protocol.version is not set to 0 or 1)"
            );
        } else if let Some(service) = cmd.strip_prefix("stateless-connect ") {
            if service != "git-upload-pack" {
                writeln!(out, "fallback")?;
                out.flush()?;
                continue;
            }
            return stateless_connect(&mut node, &mut input, &mut out);
        } else if cmd.starts_with("push ") {
            let mut specs = vec![cmd.to_owned()];
            loop {
                line.clear();
                if input.read_line(&mut line)? == 0 {
                    break;
                }
                let next = line.trim_end_matches(['\n', '\r']);
                if next.is_empty() {
                    break;
                }
                specs.push(next.to_owned());
            }
            let remote = match remote.take() {
                Some(r) => r,
                None => push::remote_refs(&mut node)?,
            };
            let results = push::push(&mut node, &remote, &options, &specs)?;
            for (dst, result) in results {
                match result {
                    Ok(()) => writeln!(out, "ok {dst}")?,
                    Err(why) => writeln!(out, "error {dst} {}", why.replace('\n', " "))?,
                }
            }
            writeln!(out)?;
        } else {
            bail!("unknown command from git: {cmd:?}");
        }
        out.flush()?;
    }
}

/// Relays git's protocol v2 requests to the node's `git-upload-pack`, one POST each, until
/// git closes its end.
fn stateless_connect(
    node: &mut Node,
    input: &mut impl BufRead,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let url = format!("{}/info/refs?service=git-upload-pack", node.repo_url());
    let mut resp = node.get(&url, &[("Git-Protocol", "version=2")])?;
    match resp.status().as_u16() {
        200 => {}
        401 => return Err(node.unauthorized()),
        404 => return Err(node.not_found()),
        _ => bail!(
            "the hubmesh node at {} refused to serve {}: {}",
            node.base,
            node.target.path(),
            refusal_message(&mut resp)
        ),
    }
    let caps = read_body(&mut resp, MAX_ADVERTISEMENT)?;
    if !caps.starts_with(b"000eversion 2\n") {
        bail!(
            "the hubmesh node at {} does not speak git protocol v2",
            node.base
        );
    }
    out.write_all(b"\n")?;
    out.write_all(&caps)?;
    out.flush()?;
    let post_url = format!("{}/git-upload-pack", node.repo_url());
    loop {
        let mut request = Vec::new();
        loop {
            match pkt::read(input)? {
                None if request.is_empty() => return Ok(()),
                None => bail!("git ended a request half way"),
                Some(p) => {
                    pkt::encode(&mut request, &p)?;
                    if p == Pkt::Flush {
                        break;
                    }
                }
            }
            if request.len() > MAX_REQUEST {
                bail!("a fetch request over {MAX_REQUEST} bytes");
            }
        }
        let mut req = node
            .request("POST", &post_url)
            .header("Content-Type", "application/x-git-upload-pack-request")
            .header("Accept", "application/x-git-upload-pack-result")
            .header("Git-Protocol", "version=2");
        req = req.header("Content-Length", request.len().to_string());
        let mut resp = req.send(&request[..]).map_err(|e| node.unreachable(e))?;
        match resp.status().as_u16() {
            200 => {}
            401 => return Err(node.unauthorized()),
            404 => return Err(node.not_found()),
            _ => bail!(
                "the hubmesh node at {} refused a fetch of {}: {}",
                node.base,
                node.target.path(),
                refusal_message(&mut resp)
            ),
        }
        let mut body = resp.into_body().into_reader();
        std::io::copy(&mut body, out).context("relay the node's answer to git")?;
        out.write_all(b"0002")?;
        out.flush()?;
    }
}

/// Makes the repository git is working in (a clone in progress, or a fetch or push of one)
/// move its LFS objects through this binary's agent (`git-remote-hubmesh lfs-agent`): a
/// git-lfs standalone custom transfer agent, so the user sets no LFS URL and no credentials.
/// Written once, to the repository's own config, and only for a named remote whose URL is
/// this one (a clone, or a fetch or push of such a remote): a bare URL given to `git
/// ls-remote` or `git fetch` inside some other repository changes nothing there, and
/// neither does anything where the user set another agent.
///
/// git-lfs still derives an endpoint from the remote's URL for what is not a transfer (the
/// locking API), and takes `hubmesh://…` for an SSH host, which it would try to reach with
/// `ssh hubmesh git-lfs-transfer`. So the remote's `lfsurl` names the node's own LFS endpoint
/// for the repository (transfers never use it: the agent asks the current node), and lock
/// checks before pushes are off (the node has no locking).
fn configure_lfs_agent(url: &str, node: &Node) {
    if std::env::var_os("GIT_DIR").is_none() {
        return;
    }
    let Some(remote) = std::env::args().nth(1).filter(|r| !r.contains("://")) else {
        return;
    };
    if crate::node::git_config(&format!("remote.{remote}.url")).as_deref() != Some(url)
        || crate::node::git_config("lfs.standalonetransferagent").is_some()
    {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let exe = exe.to_string_lossy().into_owned();
    let lfs_url = format!("{}.git/info/lfs", node.repo_url());
    let mut settings = vec![];
    if crate::node::git_config(&format!("remote.{remote}.lfsurl")).is_none() {
        settings.push((format!("remote.{remote}.lfsurl"), lfs_url.clone()));
        settings.push((format!("lfs.{lfs_url}.locksverify"), "false".to_owned()));
    }
    let fixed = [
        ("lfs.customtransfer.hubmesh.path", exe.as_str()),
        ("lfs.customtransfer.hubmesh.args", "lfs-agent"),
        // git-lfs runs up to `lfs.concurrenttransfers` agents (8 by default), one object
        // each at a time: many small objects do not wait on one another's round trips.
        ("lfs.customtransfer.hubmesh.concurrent", "true"),
        ("lfs.standalonetransferagent", "hubmesh"),
    ];
    settings.extend(
        fixed
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    for (key, value) in &settings {
        let ok = std::process::Command::new("git")
            .args(["config", "--local", key, value])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!(
                "hubmesh: could not set {key} for LFS through {url}; git lfs may not find its objects"
            );
            return;
        }
    }
}
