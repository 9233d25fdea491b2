//! Pushes: `list for-push` and `push`.
//!
//! receive-pack has no protocol v2, and the node's receive-pack is one POST (ADR 0003), so
//! the helper speaks it directly: it reads the refs the node advertises, checks each ref
//! update as git's own transports do (fast-forward unless forced, `--force-with-lease`
//! expectations), builds one thin pack with `git pack-objects` of what the node lacks, and
//! POSTs the commands and the pack, streamed. The node's `report-status` (inside side-band)
//! becomes git's `ok <ref>` / `error <ref> <why>`; its progress lines go to stderr. The node
//! decides everything that matters (rights, safe trees, LFS pointers, atomicity): the checks
//! here only give clearer messages before a pack is built.
//!
//! A push to a namespace another node hosts is refused by the node (`403`, naming the
//! hosting nodes); the helper still lists the refs (through upload-pack) so that git asks to
//! push, and answers `error <ref> <the node's message>` for each: pushes are not forwarded,
//! because the local node holds no rights on another site and must not act for its users
//! there.

use crate::node::{Node, read_body, refusal_message};
use crate::pkt::{self, Pkt};
use anyhow::{Context, bail};
use std::collections::HashMap;
use std::io::{Cursor, Read, Write};
use std::process::{Command, Stdio};

/// The all-zero object id: "no such ref".
pub const ZERO: &str = "0000000000000000000000000000000000000000";

/// Most bytes of the node's push report.
const MAX_REPORT: usize = 4 << 20;

/// What `option` set for pushes.
#[derive(Debug)]
pub struct PushOptions {
    pub progress: bool,
    pub verbosity: u32,
    pub dry_run: bool,
    pub push_options: Vec<String>,
    /// `--force-with-lease`: ref → the value it must still have (`None`: must not exist).
    pub cas: HashMap<String, Option<String>>,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            progress: false,
            verbosity: 1,
            dry_run: false,
            push_options: Vec::new(),
            cas: HashMap::new(),
        }
    }
}

impl PushOptions {
    /// Handles `option NAME VALUE`; the answer for git.
    pub fn set(&mut self, rest: &str) -> &'static str {
        let (name, value) = rest.split_once(' ').unwrap_or((rest, ""));
        let value = unquote(value);
        match name {
            "progress" => self.progress = value == "true",
            "verbosity" => self.verbosity = value.parse().unwrap_or(1),
            "dry-run" => self.dry_run = value == "true",
            "push-option" => self.push_options.push(value),
            "cas" => {
                let (name, expect) = value.split_once(':').unwrap_or((&value, ""));
                let expect = (!expect.is_empty() && expect != ZERO).then(|| expect.to_owned());
                self.cas.insert(name.to_owned(), expect);
            }
            // Fetches go through protocol v2, where git itself sends these to the node; the
            // node's pushes are atomic anyway.
            "depth" | "deepen-since" | "deepen-not" | "deepen-relative" | "atomic"
            | "followtags" | "check-connectivity" | "cloning" | "update-shallow" => {}
            _ => return "unsupported",
        }
        "ok"
    }
}

/// Undoes the C-style quoting git applies to option values that need it.
fn unquote(v: &str) -> String {
    let Some(inner) = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) else {
        return v.to_owned();
    };
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

/// The node's side of a push: its refs, its receive-pack capabilities, or why it refuses.
#[derive(Debug, Default)]
pub struct Remote {
    pub refs: Vec<(String, String)>,
    pub caps: Vec<String>,
    /// Why the node refuses pushes to this repository (hosted elsewhere, no write right).
    pub refusal: Option<String>,
}

/// `list for-push`: the node's receive-pack advertisement.
pub fn remote_refs(node: &mut Node) -> anyhow::Result<Remote> {
    let url = format!("{}/info/refs?service=git-receive-pack", node.repo_url());
    let mut resp = node.get(&url, &[])?;
    match resp.status().as_u16() {
        200 => {
            let body = read_body(&mut resp, 64 << 20)?;
            let (refs, caps) = parse_advertisement(&body)?;
            Ok(Remote {
                refs,
                caps,
                refusal: None,
            })
        }
        401 if node.authorization().is_none() => bail!(
            "pushing to {} needs a token: set HUBMESH_TOKEN or `git config hubmesh.token`, or \
             store one in a git credential helper for {}",
            node.target.path(),
            node.base
        ),
        401 => bail!(
            "the hubmesh node at {} does not accept this token",
            node.base
        ),
        404 => Err(node.not_found()),
        403 => {
            // Refused by name (hosted elsewhere, read-only right): list what can be read,
            // so that git asks, and each ref gets the node's reason.
            let refusal = refusal_message(&mut resp);
            let url = format!("{}/info/refs?service=git-upload-pack", node.repo_url());
            let mut resp = node.get(&url, &[])?;
            let refs = match resp.status().as_u16() {
                200 => parse_advertisement(&read_body(&mut resp, 64 << 20)?)?.0,
                _ => Vec::new(),
            };
            Ok(Remote {
                refs,
                caps: Vec::new(),
                refusal: Some(refusal),
            })
        }
        _ => bail!(
            "the hubmesh node at {} refused to list {}: {}",
            node.base,
            node.target.path(),
            refusal_message(&mut resp)
        ),
    }
}

type Refs = Vec<(String, String)>;

/// A protocol v0 ref advertisement (with or without the smart HTTP `# service=` header):
/// the refs (peeled `^{}` entries and the empty repository's `capabilities^{}` left out)
/// and the capabilities.
fn parse_advertisement(body: &[u8]) -> anyhow::Result<(Refs, Vec<String>)> {
    let mut r = body;
    let mut refs = Vec::new();
    let mut caps = Vec::new();
    let mut first = true;
    while let Some(p) = pkt::read(&mut r)? {
        let Pkt::Data(line) = p else {
            continue;
        };
        if line.starts_with(b"# service=") {
            continue;
        }
        let line = line.strip_suffix(b"\n").unwrap_or(&line);
        let (line, cap_bytes) = match line.iter().position(|&b| b == 0) {
            Some(i) => (&line[..i], Some(&line[i + 1..])),
            None => (line, None),
        };
        if first && let Some(c) = cap_bytes {
            caps = String::from_utf8_lossy(c)
                .split(' ')
                .map(str::to_owned)
                .collect();
        }
        first = false;
        let text = std::str::from_utf8(line).context("a ref line that is not UTF-8")?;
        let Some((oid, name)) = text.split_once(' ') else {
            bail!("bad ref line {text:?}");
        };
        if oid.len() != 40 || !oid.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("bad object id in ref line {text:?}");
        }
        if name.ends_with("^{}") {
            continue;
        }
        refs.push((name.to_owned(), oid.to_owned()));
    }
    Ok((refs, caps))
}

/// One ref update git asked for.
#[derive(Debug)]
struct Update {
    dst: String,
    old: String,
    new: String,
    result: Option<Result<(), String>>,
}

/// Runs `git` in the repository being pushed from; its trimmed stdout when it succeeds.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn has_object(oid: &str) -> bool {
    git(&["cat-file", "-e", oid]).is_some()
}

/// Which of `oids` this repository has: one `git cat-file --batch-check` for all of them
/// (a node may advertise thousands of tags).
fn present<'a>(oids: impl Iterator<Item = &'a str>) -> anyhow::Result<Vec<String>> {
    let mut child = Command::new("git")
        .args(["cat-file", "--batch-check=%(objectname)"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("start git cat-file")?;
    let mut input = String::new();
    for oid in oids {
        input.push_str(oid);
        input.push('\n');
    }
    let mut stdin = child.stdin.take().context("cat-file stdin")?;
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let mut out = String::new();
    child
        .stdout
        .take()
        .context("cat-file stdout")?
        .read_to_string(&mut out)
        .context("read git cat-file")?;
    let _ = writer.join();
    child.wait().context("wait for git cat-file")?;
    // Present objects print their name alone; missing ones "<name> missing".
    Ok(out
        .lines()
        .filter(|l| !l.contains(' '))
        .map(str::to_owned)
        .collect())
}

/// `push` lines → per destination ref, `Ok` or the reason it was refused.
pub fn push(
    node: &mut Node,
    remote: &Remote,
    options: &PushOptions,
    specs: &[String],
) -> anyhow::Result<Vec<(String, Result<(), String>)>> {
    let remote_refs: HashMap<&str, &str> = remote
        .refs
        .iter()
        .map(|(n, o)| (n.as_str(), o.as_str()))
        .collect();
    let mut updates = Vec::new();
    for spec in specs {
        let spec = spec.strip_prefix("push ").unwrap_or(spec);
        let (force, spec) = match spec.strip_prefix('+') {
            Some(s) => (true, s),
            None => (false, spec),
        };
        let Some((src, dst)) = spec.split_once(':') else {
            bail!("bad push line from git: {spec:?}");
        };
        let old = remote_refs.get(dst).copied().unwrap_or(ZERO).to_owned();
        let mut u = Update {
            dst: dst.to_owned(),
            old: old.clone(),
            new: ZERO.to_owned(),
            result: None,
        };
        if let Some(why) = &remote.refusal {
            u.result = Some(Err(why.clone()));
        } else if !src.is_empty() {
            match git(&["rev-parse", "--verify", "--quiet", src]) {
                Some(oid) => u.new = oid,
                None => u.result = Some(Err(format!("cannot resolve {src:?} here"))),
            }
        }
        if u.result.is_none()
            && let Some(expect) = options.cas.get(dst)
            && expect.as_deref().unwrap_or(ZERO) != old
        {
            u.result = Some(Err("stale info".into()));
        }
        if u.result.is_none() {
            if u.old == u.new {
                u.result = Some(Ok(()));
            } else if !force && u.old != ZERO && u.new != ZERO {
                if dst.starts_with("refs/tags/") {
                    u.result = Some(Err("already exists".into()));
                } else if !has_object(&u.old) {
                    u.result = Some(Err(
                        "fetch first: the node has commits this repository does not have".into(),
                    ));
                } else if git(&["merge-base", "--is-ancestor", &u.old, &u.new]).is_none() {
                    u.result = Some(Err(
                        "non-fast-forward: fetch and merge first, or force the push if you may rewrite history"
                            .into(),
                    ));
                }
            }
        }
        updates.push(u);
    }
    if let Some(why) = peer_mismatch(node) {
        for u in updates.iter_mut().filter(|u| u.result.is_none()) {
            u.result = Some(Err(why.clone()));
        }
    }
    let pending = updates.iter().filter(|u| u.result.is_none()).count();
    if pending > 0
        && !options.push_options.is_empty()
        && !remote.caps.iter().any(|c| c == "push-options")
    {
        for u in updates.iter_mut().filter(|u| u.result.is_none()) {
            u.result = Some(Err("the node does not take push options".into()));
        }
    }
    if pending > 0 && options.dry_run {
        for u in updates.iter_mut().filter(|u| u.result.is_none()) {
            u.result = Some(Ok(()));
        }
    }
    if updates.iter().any(|u| u.result.is_none()) {
        send(node, remote, options, &mut updates)?;
    }
    Ok(updates
        .into_iter()
        .map(|u| {
            let result = u
                .result
                .unwrap_or_else(|| Err("the node did not report on this ref".into()));
            (u.dst, result)
        })
        .collect())
}

/// With a `hubmesh://PEER_ID/…` URL: why this node may not take the push (it is not that
/// peer), if so.
fn peer_mismatch(node: &mut Node) -> Option<String> {
    let wanted = node.target.peer.clone()?;
    let url = format!("{}/api/mesh/peers", node.base);
    let mut resp = node.get(&url, &[]).ok()?;
    let body = read_body(&mut resp, 1 << 20).ok()?;
    let here = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()?
        .get("peer_id")?
        .as_str()?
        .to_owned();
    (here != wanted).then(|| {
        format!(
            "the URL names node {wanted} as the host, but the local node is {here}; push \
             through that node (HUBMESH_NODE)"
        )
    })
}

/// Sends the commands still pending and a pack of what the node lacks; records the node's
/// report on each.
fn send(
    node: &mut Node,
    remote: &Remote,
    options: &PushOptions,
    updates: &mut [Update],
) -> anyhow::Result<()> {
    let sideband = remote.caps.iter().any(|c| c == "side-band-64k");
    let mut caps = vec![
        "report-status",
        "ofs-delta",
        concat!("agent=git-remote-hubmesh/", env!("CARGO_PKG_VERSION")),
    ];
    if sideband {
        caps.push("side-band-64k");
    }
    if options.verbosity == 0 && remote.caps.iter().any(|c| c == "quiet") {
        caps.push("quiet");
    }
    if !options.push_options.is_empty() {
        caps.push("push-options");
    }
    let mut head = Vec::new();
    let mut first = true;
    for u in updates.iter().filter(|u| u.result.is_none()) {
        let mut line = format!("{} {} {}", u.old, u.new, u.dst);
        if first {
            line.push('\0');
            line.push_str(&caps.join(" "));
            first = false;
        }
        line.push('\n');
        pkt::write(&mut head, line.as_bytes());
    }
    head.extend_from_slice(b"0000");
    if !options.push_options.is_empty() {
        for o in &options.push_options {
            pkt::write(&mut head, o.as_bytes());
        }
        head.extend_from_slice(b"0000");
    }
    let needs_pack = updates.iter().any(|u| u.result.is_none() && u.new != ZERO);
    let mut child = None;
    let body: Box<dyn Read + Send> = if needs_pack {
        let mut cmd = Command::new("git");
        cmd.args([
            "pack-objects",
            "--stdout",
            "--thin",
            "--revs",
            "--delta-base-offset",
        ])
        .arg(if options.progress { "--progress" } else { "-q" })
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
        let mut c = cmd.spawn().context("start git pack-objects")?;
        let mut revs = String::new();
        for u in updates
            .iter()
            .filter(|u| u.result.is_none() && u.new != ZERO)
        {
            revs.push_str(&u.new);
            revs.push('\n');
        }
        for oid in present(remote.refs.iter().map(|(_, oid)| oid.as_str()))? {
            revs.push('^');
            revs.push_str(&oid);
            revs.push('\n');
        }
        let mut stdin = c.stdin.take().context("pack-objects stdin")?;
        stdin
            .write_all(revs.as_bytes())
            .context("tell pack-objects what to pack")?;
        drop(stdin);
        let stdout = c.stdout.take().context("pack-objects stdout")?;
        child = Some(c);
        Box::new(Cursor::new(head).chain(stdout))
    } else {
        Box::new(Cursor::new(head))
    };
    let url = format!("{}/git-receive-pack", node.repo_url());
    let sent = node
        .request("POST", &url)
        .header("Content-Type", "application/x-git-receive-pack-request")
        .header("Accept", "application/x-git-receive-pack-result")
        .send(ureq::SendBody::from_owned_reader(body));
    let packed = match child {
        Some(mut c) => c.wait().map(|s| s.success()).unwrap_or(false),
        None => true,
    };
    let mut resp = sent.map_err(|e| node.unreachable(e))?;
    if resp.status().as_u16() != 200 {
        let why = refusal_message(&mut resp);
        for u in updates.iter_mut().filter(|u| u.result.is_none()) {
            u.result = Some(Err(why.clone()));
        }
        return Ok(());
    }
    if !packed {
        bail!("git pack-objects failed");
    }
    let mut reader = resp.into_body().into_reader();
    let report = read_report(&mut reader, sideband, options.verbosity > 0)?;
    apply_report(&report, updates)
}

/// The report-status pkt-lines of the answer, unwrapped from side-band 1; side-band 2 goes
/// to stderr as `remote: …`, side-band 3 is the node's fatal error.
fn read_report(r: &mut impl Read, sideband: bool, show: bool) -> anyhow::Result<Vec<u8>> {
    if !sideband {
        let mut all = Vec::new();
        r.take(MAX_REPORT as u64).read_to_end(&mut all)?;
        return Ok(all);
    }
    let mut report = Vec::new();
    let stderr = std::io::stderr();
    while let Some(p) = pkt::read(r)? {
        let Pkt::Data(d) = p else {
            break;
        };
        match d.split_first() {
            Some((1, rest)) => {
                report.extend_from_slice(rest);
                if report.len() > MAX_REPORT {
                    bail!("the node's push report is over {MAX_REPORT} bytes");
                }
            }
            Some((2, rest)) if show => {
                let mut e = stderr.lock();
                let _ = e.write_all(b"remote: ");
                let _ = e.write_all(rest);
            }
            Some((3, rest)) => bail!("the node: {}", String::from_utf8_lossy(rest).trim()),
            _ => {}
        }
    }
    Ok(report)
}

fn apply_report(report: &[u8], updates: &mut [Update]) -> anyhow::Result<()> {
    let mut r = report;
    let mut unpack_error = None;
    let mut by_ref: HashMap<String, Result<(), String>> = HashMap::new();
    while let Some(p) = pkt::read(&mut r)? {
        let Pkt::Data(line) = p else {
            break;
        };
        let line = String::from_utf8_lossy(&line).trim_end().to_owned();
        if let Some(status) = line.strip_prefix("unpack ") {
            if status != "ok" {
                unpack_error = Some(format!("the node could not unpack the pack: {status}"));
            }
        } else if let Some(name) = line.strip_prefix("ok ") {
            by_ref.insert(name.to_owned(), Ok(()));
        } else if let Some(rest) = line.strip_prefix("ng ") {
            let (name, why) = rest.split_once(' ').unwrap_or((rest, "refused"));
            by_ref.insert(name.to_owned(), Err(why.to_owned()));
        }
    }
    for u in updates.iter_mut().filter(|u| u.result.is_none()) {
        u.result = Some(match (&unpack_error, by_ref.remove(&u.dst)) {
            (_, Some(Err(why))) => Err(why),
            (Some(why), _) => Err(why.clone()),
            (None, Some(Ok(()))) => Ok(()),
            (None, None) => Err("the node did not report on this ref".into()),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_nodes_advertisement() {
        let mut body = Vec::new();
        pkt::write(&mut body, b"# service=git-receive-pack\n");
        body.extend_from_slice(b"0000");
        let a = "1111111111111111111111111111111111111111";
        let b = "2222222222222222222222222222222222222222";
        pkt::write(
            &mut body,
            format!("{a} refs/heads/main\0report-status side-band-64k\n").as_bytes(),
        );
        pkt::write(&mut body, format!("{b} refs/tags/v1\n").as_bytes());
        pkt::write(&mut body, format!("{a} refs/tags/v1^{{}}\n").as_bytes());
        body.extend_from_slice(b"0000");
        let (refs, caps) = parse_advertisement(&body).unwrap();
        assert_eq!(
            refs,
            vec![
                ("refs/heads/main".to_owned(), a.to_owned()),
                ("refs/tags/v1".to_owned(), b.to_owned())
            ]
        );
        assert_eq!(caps, vec!["report-status", "side-band-64k"]);
        let mut empty = Vec::new();
        pkt::write(
            &mut empty,
            format!("{ZERO} capabilities^{{}}\0report-status\n").as_bytes(),
        );
        empty.extend_from_slice(b"0000");
        let (refs, caps) = parse_advertisement(&empty).unwrap();
        assert!(refs.is_empty());
        assert_eq!(caps, vec!["report-status"]);
        assert!(parse_advertisement(b"0010nonsense!!!!").is_err());
    }

    #[test]
    fn maps_the_report_onto_the_updates() {
        let mut report = Vec::new();
        pkt::write(&mut report, b"unpack ok\n");
        pkt::write(&mut report, b"ok refs/heads/main\n");
        pkt::write(
            &mut report,
            b"ng refs/heads/x unsafe path \".git/config\"\n",
        );
        report.extend_from_slice(b"0000");
        let update = |dst: &str| Update {
            dst: dst.into(),
            old: ZERO.into(),
            new: ZERO.into(),
            result: None,
        };
        let mut updates = vec![
            update("refs/heads/main"),
            update("refs/heads/x"),
            update("refs/heads/y"),
        ];
        apply_report(&report, &mut updates).unwrap();
        assert_eq!(updates[0].result, Some(Ok(())));
        assert_eq!(
            updates[1].result,
            Some(Err("unsafe path \".git/config\"".into()))
        );
        assert!(updates[2].result.as_ref().unwrap().is_err());
    }

    #[test]
    fn options_answer_ok_only_for_what_they_handle() {
        let mut o = PushOptions::default();
        assert_eq!(o.set("progress true"), "ok");
        assert!(o.progress);
        assert_eq!(o.set("verbosity 0"), "ok");
        assert_eq!(o.verbosity, 0);
        assert_eq!(o.set("push-option \"a b\\n\""), "ok");
        assert_eq!(o.push_options, vec!["a b\n"]);
        assert_eq!(o.set(&format!("cas refs/heads/main:{ZERO}")), "ok");
        assert_eq!(o.cas.get("refs/heads/main"), Some(&None));
        assert_eq!(o.set("force-if-includes true"), "unsupported");
    }
}
