//! Commands that talk to a running node over HTTP: `user`, `org`, `token`, `peers`, `seed`,
//! `mirror` and `audit`, and `bundle export|import` when the node runs.
//!
//! They find the node through its data directory (`node.json` gives the HTTP address,
//! `admin.token` the site admin's token), or take `--node URL --token TOKEN`, and call the
//! gateway's `/api/admin/` routes. Results go to stdout (`--json`: the node's JSON answer),
//! progress and errors to stderr. A token secret is printed once, by `token create`, and
//! nowhere else.

use crate::cli::{
    ClientFlags, MemberCommand, MirrorCommand, OrgCommand, SeedCommand, TokenCommand, UserCommand,
};
use crate::datadir::ADMIN_TOKEN_FILE;
use crate::store_cmd::human_bytes as human;
use anyhow::{Context, bail};
use hub_protocol::node_info::{NODE_INFO_FILE, NodeInfo};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// An authenticated connection to a node's admin API.
struct Client {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Client {
    fn new(flags: &ClientFlags) -> anyhow::Result<Self> {
        Self::connect(flags, true)
    }

    /// Connects; without `need_token`, a missing token is no error (read-only routes).
    fn connect(flags: &ClientFlags, need_token: bool) -> anyhow::Result<Self> {
        let data = flags
            .data
            .clone()
            .unwrap_or_else(|| PathBuf::from("./hubmesh-data"));
        let base = match &flags.node {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("http://{}", read_node_info(&data)?.http),
        };
        let token = match &flags.token {
            Some(t) => t.trim().to_owned(),
            None if need_token => read_admin_token(&data)?,
            None => read_admin_token(&data).unwrap_or_default(),
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(TIMEOUT))
            .build()
            .into();
        Ok(Self { base, token, agent })
    }

    /// Sends `method path` with an optional JSON body; the JSON answer on 2xx, else an error
    /// carrying the node's message.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {}", self.token);
        let sent = match (method, body) {
            ("POST", Some(body)) => self
                .agent
                .post(&url)
                .header("authorization", &auth)
                .send_json(body),
            ("GET", None) if self.token.is_empty() => self.agent.get(&url).call(),
            ("GET", None) => self.agent.get(&url).header("authorization", &auth).call(),
            ("DELETE", None) => self
                .agent
                .delete(&url)
                .header("authorization", &auth)
                .call(),
            _ => bail!("unsupported request {method} {path}"),
        };
        let mut response = sent.map_err(|e| {
            anyhow::anyhow!(e).context(format!(
                "cannot reach the node at {}: is it running? (a node.json left by a killed \
                 node names an address nobody serves)",
                self.base
            ))
        })?;
        let status = response.status();
        let text = response
            .body_mut()
            .read_to_string()
            .with_context(|| format!("read the answer to {method} {path}"))?;
        let value: Option<Value> = serde_json::from_str(&text).ok();
        if !status.is_success() {
            let message = value
                .as_ref()
                .and_then(|v| v["error"].as_str())
                .map_or_else(|| text.chars().take(200).collect(), str::to_owned);
            let hint = match status.as_u16() {
                401 => " (the token is not valid: pass a site admin's write token)",
                403 => " (this needs a site admin's write token)",
                _ => "",
            };
            bail!("{method} {path}: the node answered {status}: {message}{hint}");
        }
        value.with_context(|| format!("{method} {path}: the node's answer is not JSON"))
    }
}

/// The node's error answer as an error; `Ok` for 2xx.
fn check_answer(what: &str, response: &mut ureq::http::Response<ureq::Body>) -> anyhow::Result<()> {
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let text = response
        .body_mut()
        .with_config()
        .limit(1 << 20)
        .read_to_string()
        .unwrap_or_default();
    let message = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| text.chars().take(300).collect());
    bail!("{what}: the node answered {status}: {message}")
}

impl Client {
    /// An agent without the overall timeout (a bundle may take minutes), still bounded
    /// while connecting.
    fn long_agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(TIMEOUT))
            .build()
            .into()
    }
}

/// `hubmesh bundle import FILE` against the running node of `data`: the bundle is sent to
/// `POST /api/bundles/import`; the node's report.
pub fn bundle_import(data: &Path, file: &Path, trust: Option<&str>) -> anyhow::Result<Value> {
    let flags = ClientFlags {
        data: Some(data.to_owned()),
        node: None,
        token: None,
        json: true,
    };
    let client = Client::new(&flags)?;
    let mut url = format!("{}/api/bundles/import", client.base);
    if let Some(t) = trust {
        url.push_str(&format!("?trust={}", query_value(t)));
    }
    let body = std::fs::File::open(file).with_context(|| format!("open {}", file.display()))?;
    let mut response = Client::long_agent()
        .post(&url)
        .header("authorization", format!("Bearer {}", client.token))
        .header("content-type", "application/octet-stream")
        .send(body)
        .with_context(|| format!("send the bundle to the node at {}", client.base))?;
    check_answer("import", &mut response)?;
    response
        .body_mut()
        .read_json()
        .context("the node's import report is not JSON")
}

/// `hubmesh bundle export` from the running node of `data` into `output` (written whole,
/// then renamed into place); the node's report.
pub fn bundle_export(
    data: &Path,
    repo: &str,
    kind: &str,
    since: Option<&str>,
    output: &Path,
) -> anyhow::Result<Value> {
    use std::io::Write;
    let flags = ClientFlags {
        data: Some(data.to_owned()),
        node: None,
        token: None,
        json: true,
    };
    let client = Client::new(&flags)?;
    let mut url = format!(
        "{}/api/bundles/export?repo={}&type={}",
        client.base,
        query_value(repo),
        query_value(kind)
    );
    if let Some(commit) = since {
        url.push_str(&format!("&since={}", query_value(commit)));
    }
    let mut response = Client::long_agent()
        .get(&url)
        .header("authorization", format!("Bearer {}", client.token))
        .call()
        .with_context(|| format!("ask the node at {} for the bundle", client.base))?;
    check_answer("export", &mut response)?;
    let report: Value = response
        .headers()
        .get("x-bundle-report")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| serde_json::from_str(v).ok())
        .context("the node's answer has no bundle report")?;
    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("create a file in {}", dir.display()))?;
    let copied = std::io::copy(&mut response.body_mut().as_reader(), &mut tmp)
        .context("receive the bundle")?;
    if Some(copied) != report["bundle_bytes"].as_u64() {
        bail!("the bundle arrived short ({copied} bytes)");
    }
    tmp.flush()?;
    tmp.persist(output)
        .with_context(|| format!("write {}", output.display()))?;
    Ok(report)
}

fn read_node_info(data: &Path) -> anyhow::Result<NodeInfo> {
    let path = data.join(NODE_INFO_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "no running node found: {} does not exist (start one with `hubmesh up --data {}`, \
             or pass --node URL --token TOKEN)",
            path.display(),
            data.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    serde_json::from_slice(&bytes).with_context(|| format!("parse {}", path.display()))
}

fn read_admin_token(data: &Path) -> anyhow::Result<String> {
    let path = data.join(ADMIN_TOKEN_FILE);
    let token = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "read the admin token from {} (pass --token TOKEN to use another)",
            path.display()
        )
    })?;
    Ok(token.trim().to_owned())
}

/// Path segments are names the gateway validates; still, never let one add a segment.
fn segment(s: &str) -> anyhow::Result<&str> {
    if s.is_empty() || s.contains(['/', '?', '#', '%']) || s.chars().any(char::is_whitespace) {
        bail!("{s:?} is not a valid name or id");
    }
    Ok(s)
}

/// Prints `value` as JSON when asked to, else `text`.
fn output(flags: &ClientFlags, value: &Value, text: impl FnOnce() -> String) -> anyhow::Result<()> {
    if flags.json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        println!("{}", text());
    }
    Ok(())
}

/// `hubmesh peers`: the node's peer id, counters and connected peers.
pub fn peers(flags: ClientFlags) -> anyhow::Result<()> {
    let v = Client::connect(&flags, false)?.call("GET", "/api/mesh/peers", None)?;
    output(&flags, &v, || {
        let mut out = format!(
            "{} ({} connected)",
            v["peer_id"].as_str().unwrap_or("?"),
            v["counters"]["connected_peers"]
        );
        for p in v["peers"].as_array().into_iter().flatten() {
            let addrs: Vec<&str> = p["addrs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            out.push_str(&format!(
                "\n{}  received {} B  sent {} B  bad chunks {}  {}",
                p["peer_id"].as_str().unwrap_or("?"),
                p["chunk_bytes_received"],
                p["chunk_bytes_sent"],
                p["bad_chunks"],
                addrs.join(" ")
            ));
        }
        out
    })
}

/// `hubmesh compute`: this node's capacity and the adverts it holds, one node per line.
pub fn compute(flags: ClientFlags) -> anyhow::Result<()> {
    let v = Client::connect(&flags, false)?.call("GET", "/api/mesh/compute", None)?;
    output(&flags, &v, || {
        let line = |who: &str, n: &Value| {
            let models: Vec<String> = n["models"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| {
                    format!(
                        "{}@{:.7} {:.1} tok/s",
                        m["repo"].as_str().unwrap_or("?"),
                        m["commit"].as_str().unwrap_or("?"),
                        m["decode_tokens_per_s"].as_f64().unwrap_or(0.0)
                    )
                })
                .collect();
            format!(
                "{who}  {}{}  queue {}/{}  running {}  free {} MiB  {}  {}",
                n["mode"].as_str().unwrap_or("?"),
                if n["accepts_remote"] == Value::Bool(true) {
                    " (accepts jobs)"
                } else {
                    ""
                },
                n["queue_depth"],
                n["queue_limit"],
                n["running"],
                n["memory_free_bytes"].as_u64().unwrap_or(0) >> 20,
                n["device_name"].as_str().unwrap_or("?"),
                if models.is_empty() {
                    "no models loaded".to_owned()
                } else {
                    models.join(", ")
                },
            )
        };
        let mut out = line(
            &format!("{} (this node)", v["peer_id"].as_str().unwrap_or("?")),
            &v["local"],
        );
        let nodes = v["table"]["nodes"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        if nodes.is_empty() {
            out.push_str("\nno capacity adverts from peers");
        }
        for n in nodes {
            out.push('\n');
            out.push_str(&line(n["peer_id"].as_str().unwrap_or("?"), n));
        }
        out
    })
}

/// Percent-encodes a query value (all but unreserved characters).
fn query_value(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `PATTERN  SOURCE` lines of a `{"seeds": […]}` answer.
fn describe_seeds(v: &Value) -> String {
    let seeds = v["seeds"].as_array().map(Vec::as_slice).unwrap_or_default();
    if seeds.is_empty() {
        return "this node seeds nothing".to_owned();
    }
    seeds
        .iter()
        .map(|s| {
            let pattern = s["pattern"].as_str().unwrap_or("?");
            let source = s["source"].as_str().unwrap_or("?");
            match s["type"].as_str() {
                Some(kind) => format!("{pattern}\t{source}\t{kind}"),
                None => format!("{pattern}\t{source}"),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `hubmesh seed add|rm|list`: the node's seeding policy (`/api/mesh/seeds`).
pub fn seed(command: SeedCommand) -> anyhow::Result<()> {
    match command {
        SeedCommand::Add {
            pattern,
            client: flags,
        } => {
            let v = Client::new(&flags)?.call(
                "POST",
                "/api/mesh/seeds",
                Some(&json!({ "pattern": pattern })),
            )?;
            output(&flags, &v, || {
                if v["added"].as_bool() == Some(true) {
                    format!("now seeding {pattern}")
                } else {
                    format!("already seeding {pattern}")
                }
            })
        }
        SeedCommand::Rm {
            pattern,
            client: flags,
        } => {
            let path = format!("/api/mesh/seeds?pattern={}", query_value(&pattern));
            let v = Client::new(&flags)?.call("DELETE", &path, None)?;
            output(&flags, &v, || format!("no longer seeding {pattern}"))
        }
        SeedCommand::List(flags) => {
            let v = Client::connect(&flags, false)?.call("GET", "/api/mesh/seeds", None)?;
            output(&flags, &v, || describe_seeds(&v))
        }
    }
}

pub fn user(command: UserCommand) -> anyhow::Result<()> {
    match command {
        UserCommand::Add {
            name,
            fullname,
            client: flags,
        } => {
            let v = Client::new(&flags)?.call(
                "POST",
                "/api/admin/users",
                Some(&json!({ "name": name, "fullname": fullname })),
            )?;
            output(&flags, &v, || {
                format!("created user {}", v["name"].as_str().unwrap_or(&name))
            })
        }
    }
}

pub fn org(command: OrgCommand) -> anyhow::Result<()> {
    match command {
        OrgCommand::Add {
            name,
            fullname,
            client: flags,
        } => {
            let v = Client::new(&flags)?.call(
                "POST",
                "/api/admin/orgs",
                Some(&json!({ "name": name, "fullname": fullname })),
            )?;
            output(&flags, &v, || {
                format!(
                    "created organisation {}",
                    v["name"].as_str().unwrap_or(&name)
                )
            })
        }
        OrgCommand::Member(MemberCommand::Add {
            org,
            user,
            role,
            client: flags,
        }) => {
            let path = format!("/api/admin/orgs/{}/members", segment(&org)?);
            let v = Client::new(&flags)?.call(
                "POST",
                &path,
                Some(&json!({ "user": user, "role": role })),
            )?;
            output(&flags, &v, || format!("{user} is now {role} in {org}"))
        }
    }
}

pub fn token(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create {
            user,
            scope,
            repos,
            namespaces,
            display_name,
            client: flags,
        } => {
            let v = Client::new(&flags)?.call(
                "POST",
                "/api/admin/tokens",
                Some(&json!({
                    "user": user,
                    "scope": scope,
                    "repos": repos,
                    "namespaces": namespaces,
                    "displayName": display_name,
                })),
            )?;
            let secret = v["token"]
                .as_str()
                .context("the node's answer carries no token")?;
            if flags.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                eprintln!(
                    "created {} token {} for {user}; it is shown only now:",
                    v["role"].as_str().unwrap_or("a"),
                    v["id"].as_str().unwrap_or("?"),
                );
                println!("{secret}");
            }
            Ok(())
        }
        TokenCommand::List {
            user,
            client: flags,
        } => {
            let path = format!("/api/admin/users/{}/tokens", segment(&user)?);
            let v = Client::new(&flags)?.call("GET", &path, None)?;
            output(&flags, &v, || {
                let tokens = v.as_array().map(Vec::as_slice).unwrap_or_default();
                let mut lines: Vec<String> = tokens.iter().map(describe_token).collect();
                if lines.is_empty() {
                    lines.push(format!("{user} has no tokens"));
                }
                lines.join("\n")
            })
        }
        TokenCommand::Revoke { id, client: flags } => {
            let path = format!("/api/admin/tokens/{}", segment(&id)?);
            let v = Client::new(&flags)?
                .call("DELETE", &path, None)
                .with_context(|| format!("revoke token {id}"))?;
            output(&flags, &v, || {
                format!(
                    "revoked token {id} of {}",
                    v["user"].as_str().unwrap_or("?")
                )
            })
        }
    }
}

/// `ID  ROLE  NAME  [grants]`: one line per token.
fn describe_token(t: &Value) -> String {
    let grants: Vec<String> = t["grants"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|g| {
            format!(
                "{}:{}",
                g["target"].as_str().unwrap_or("?"),
                g["access"].as_str().unwrap_or("?")
            )
        })
        .collect();
    let mut line = format!(
        "{}\t{}\t{}",
        t["id"].as_str().unwrap_or("?"),
        t["role"].as_str().unwrap_or("?"),
        t["displayName"].as_str().unwrap_or(""),
    );
    if !grants.is_empty() {
        line.push('\t');
        line.push_str(&grants.join(","));
    }
    line
}

/// The rules and mirrored repos of a `GET /api/mirror` answer, one per line.
fn describe_mirror(v: &Value) -> String {
    let mut lines = vec![format!(
        "upstream\t{}{}",
        v["upstream"].as_str().unwrap_or("(none)"),
        if v["offline"].as_bool() == Some(true) {
            "\toffline"
        } else {
            ""
        }
    )];
    for r in v["rules"].as_array().map(Vec::as_slice).unwrap_or_default() {
        lines.push(format!(
            "{}\t{}\t{}",
            r["rule"].as_str().unwrap_or("?"),
            r["pattern"].as_str().unwrap_or("?"),
            r["source"].as_str().unwrap_or("?")
        ));
    }
    if let Some(repos) = v["repos"].as_object() {
        for (id, r) in repos {
            lines.push(format!(
                "mirrored\t{id}\t{}",
                r["main"].as_str().unwrap_or("-")
            ));
        }
    }
    let usage = &v["usage"];
    if usage.is_object() {
        let quota = usage["quota"]
            .as_u64()
            .map_or("no quota".to_owned(), |q| format!("quota {}", human(q)));
        lines.push(format!(
            "usage\t{} in {} object(s) ({} pinned)\t{quota}",
            human(usage["bytes"].as_u64().unwrap_or(0)),
            usage["objects"].as_array().map_or(0, Vec::len),
            human(usage["pinned_bytes"].as_u64().unwrap_or(0)),
        ));
    }
    lines.join("\n")
}

/// `hubmesh mirror add|rm|list|refresh`: the node's mirror policy (`/api/mirror`).
pub fn mirror(command: MirrorCommand) -> anyhow::Result<()> {
    match command {
        MirrorCommand::Add {
            pattern,
            rule,
            client: flags,
        } => {
            let body = json!({ "pattern": pattern, "rule": rule });
            let v = Client::new(&flags)?.call("POST", "/api/mirror/rules", Some(&body))?;
            output(&flags, &v, || {
                if v["added"].as_bool() == Some(true) {
                    format!("added {rule} {pattern}")
                } else {
                    format!("{rule} {pattern} was there already")
                }
            })
        }
        MirrorCommand::Rm {
            pattern,
            client: flags,
        } => {
            let path = format!("/api/mirror/rules?pattern={}", query_value(&pattern));
            let v = Client::new(&flags)?.call("DELETE", &path, None)?;
            output(&flags, &v, || {
                format!("removed {} rule(s) for {pattern}", v["removed"])
            })
        }
        MirrorCommand::Evict {
            quota,
            client: flags,
        } => {
            let v = Client::new(&flags)?.call(
                "POST",
                "/api/mirror/evict",
                Some(&json!({ "quota": quota })),
            )?;
            output(&flags, &v, || {
                let count = |k: &str| v[k].as_array().map_or(0, Vec::len);
                format!(
                    "evicted {} object(s), {} ({} freed on disk); {} in use kept; usage {} of {}",
                    count("evicted"),
                    human(v["evicted_bytes"].as_u64().unwrap_or(0)),
                    human(v["freed_bytes"].as_u64().unwrap_or(0)),
                    count("in_use"),
                    human(v["usage"].as_u64().unwrap_or(0)),
                    human(v["quota"].as_u64().unwrap_or(0)),
                )
            })
        }
        MirrorCommand::List(flags) => {
            let v = Client::new(&flags)?.call("GET", "/api/mirror", None)?;
            output(&flags, &v, || describe_mirror(&v))
        }
        MirrorCommand::Refresh {
            repo,
            client: flags,
        } => {
            let v = Client::new(&flags)?.call(
                "POST",
                "/api/mirror/refresh",
                Some(&json!({ "repo": repo })),
            )?;
            let failed = v["results"]
                .as_object()
                .is_some_and(|r| r.values().any(|r| r.get("error").is_some()));
            output(&flags, &v, || {
                v["results"]
                    .as_object()
                    .map(|r| {
                        r.iter()
                            .map(|(id, r)| match r.get("error") {
                                Some(e) => format!("{id}\terror\t{}", e.as_str().unwrap_or("?")),
                                None => format!(
                                    "{id}\t{} ref(s) changed\t{}",
                                    r["refs"],
                                    r["main"].as_str().unwrap_or("-")
                                ),
                            })
                            .collect::<Vec<_>>()
                            .join("\n")
                    })
                    .unwrap_or_default()
            })?;
            if failed {
                bail!("some repos could not be refreshed");
            }
            Ok(())
        }
    }
}

/// `hubmesh audit`: the node's audit log as JSON lines on stdout.
pub fn audit(flags: ClientFlags) -> anyhow::Result<()> {
    let v = Client::new(&flags)?.call("GET", "/api/mirror/audit", None)?;
    for event in v["events"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        println!("{event}");
    }
    Ok(())
}
