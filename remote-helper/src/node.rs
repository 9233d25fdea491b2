//! The local node: where it is, the caller's token, and HTTP requests to it.
//!
//! The node comes from `HUBMESH_NODE`, else `git config hubmesh.node`, else
//! `127.0.0.1:8080`. The token comes from `HUBMESH_TOKEN`, else `git config hubmesh.token`,
//! else — only once the node asked for one (401) — from `git credential fill` for the node's
//! address (approved or rejected afterwards, as git's own HTTP transport does). It travels as
//! `Authorization: Bearer`, never in a URL, and is never printed.

use crate::target::Target;
use anyhow::{Context, anyhow, bail};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The node a helper talks to when nothing names one.
pub const DEFAULT_NODE: &str = "127.0.0.1:8080";

/// How long to wait for a TCP connection to the node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long to wait for the node's answer to start (a repo fetched on demand from the mesh
/// can take the node up to 30 s).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(300);

/// Most bytes of an error answer read for its message.
const MAX_ERROR_BODY: u64 = 16 * 1024;

/// `git config --get KEY`, `None` when unset (or git is unusable).
pub fn git_config(key: &str) -> Option<String> {
    let out = Command::new("git")
        .args(["config", "--get", key])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let value = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !value.is_empty()).then_some(value)
}

/// Where the token came from, so a credential can be approved or rejected afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Configured,
    Credential,
}

/// A token, kept out of `Debug` output.
#[derive(Clone)]
struct Token {
    secret: String,
    source: Source,
    /// The `git credential` answer it came from (to approve or reject).
    credential: Option<String>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// A connection to the local node for one repository.
#[derive(Debug)]
pub struct Node {
    /// `http://host:port`, no trailing slash.
    pub base: String,
    pub target: Target,
    agent: ureq::Agent,
    token: Option<Token>,
    asked_credential: bool,
}

/// An answer from the node.
pub type Response = ureq::http::Response<ureq::Body>;

impl Node {
    /// The node from the environment and git config, for `target`.
    pub fn new(target: Target) -> anyhow::Result<Node> {
        let addr = std::env::var("HUBMESH_NODE")
            .ok()
            .filter(|v| !v.trim().is_empty())
            .or_else(|| git_config("hubmesh.node"))
            .unwrap_or_else(|| DEFAULT_NODE.to_owned());
        let addr = addr.trim().trim_end_matches('/');
        let base = if addr.starts_with("http://") {
            addr.to_owned()
        } else if addr.starts_with("https://") {
            bail!("the hubmesh node is local: use an http:// address, not {addr:?}");
        } else {
            format!("http://{addr}")
        };
        let token = std::env::var("HUBMESH_TOKEN")
            .ok()
            .filter(|v| !v.trim().is_empty())
            .or_else(|| git_config("hubmesh.token"))
            .map(|secret| Token {
                secret: secret.trim().to_owned(),
                source: Source::Configured,
                credential: None,
            });
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_recv_response(Some(RESPONSE_TIMEOUT))
            .user_agent(concat!("git-remote-hubmesh/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Ok(Node {
            base,
            target,
            agent,
            token,
            asked_credential: false,
        })
    }

    /// The repository's URL on the node, `{base}/{prefix}{ns}/{name}`.
    pub fn repo_url(&self) -> String {
        format!("{}/{}", self.base, self.target.path())
    }

    /// The `Authorization` header value, when there is a token.
    pub fn authorization(&self) -> Option<String> {
        self.token.as_ref().map(|t| format!("Bearer {}", t.secret))
    }

    /// The error for a node that cannot be reached.
    pub fn unreachable(&self, e: impl std::fmt::Display) -> anyhow::Error {
        anyhow!(
            "cannot reach the hubmesh node at {} ({e}); start one with `hubmesh up`, or point \
             HUBMESH_NODE or `git config hubmesh.node` at a running one",
            self.base
        )
    }

    /// The one message for a repository that is missing or that the caller may not see.
    pub fn not_found(&self) -> anyhow::Error {
        anyhow!(
            "repository {} not found on the hubmesh node at {} (it does not exist, or it is \
             private and your token may not read it)",
            self.target.path(),
            self.base
        )
    }

    /// The error for an answer of 401: a token the node does not accept, or (without a
    /// token) the one message for a repository that is missing or private.
    pub fn unauthorized(&self) -> anyhow::Error {
        match &self.token {
            Some(t) => anyhow!(
                "the hubmesh node at {} does not accept the token from {} (revoked, or of \
                 another node?)",
                self.base,
                match t.source {
                    Source::Configured => "HUBMESH_TOKEN or `git config hubmesh.token`",
                    Source::Credential => "your git credential helper",
                }
            ),
            None => self.not_found(),
        }
    }

    /// A GET with the caller's token; on 401 without a token, asks `git credential fill`
    /// once and retries; on a 503 with `Retry-After` (the node is still fetching the repo
    /// from the mesh, or is busy) waits and retries, a bounded number of times (see
    /// [`retry_delay`]). `headers` are added to the request.
    pub fn get(&mut self, url: &str, headers: &[(&str, &str)]) -> anyhow::Result<Response> {
        let mut retries = 0;
        loop {
            let mut req = self.agent.get(url);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            if let Some(auth) = self.authorization() {
                req = req.header("Authorization", auth);
            }
            let resp = req.call().map_err(|e| self.unreachable(e))?;
            if resp.status().as_u16() == 401 && self.token.is_none() && !self.asked_credential {
                self.asked_credential = true;
                if let Some(token) = self.credential_fill() {
                    self.token = Some(token);
                    continue;
                }
            }
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok());
            if let Some(wait) = retry_delay(resp.status().as_u16(), retry_after, retries) {
                retries += 1;
                eprintln!(
                    "hubmesh: the node at {} is not ready to serve {} yet (still fetching it \
                     from the mesh, or busy); retrying in {} s",
                    self.base,
                    self.target.path(),
                    wait.as_secs()
                );
                std::thread::sleep(wait);
                continue;
            }
            self.settle_credential(resp.status().as_u16());
            return Ok(resp);
        }
    }

    /// A POST or PUT without retry (bodies are streamed once), with the caller's token.
    pub fn request(
        &self,
        method: &str,
        url: &str,
    ) -> ureq::RequestBuilder<ureq::typestate::WithBody> {
        self.send_action(method, url, &[])
    }

    /// A GET of a URL the node gave (an LFS download), with the action's `headers`, and our
    /// token only when they carry no `Authorization` of their own.
    pub fn get_action(
        &self,
        url: &str,
        headers: &[(String, String)],
    ) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
        let mut req = self.agent.get(url);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        match self.authorization() {
            Some(auth) if !has_authorization(headers) => req.header("Authorization", auth),
            _ => req,
        }
    }

    /// A PUT or POST to a URL the node gave (an LFS upload or verify), as [`Node::get_action`].
    pub fn send_action(
        &self,
        method: &str,
        url: &str,
        headers: &[(String, String)],
    ) -> ureq::RequestBuilder<ureq::typestate::WithBody> {
        let mut req = match method {
            "PUT" => self.agent.put(url),
            _ => self.agent.post(url),
        };
        for (k, v) in headers {
            req = req.header(k, v);
        }
        match self.authorization() {
            Some(auth) if !has_authorization(headers) => req.header("Authorization", auth),
            _ => req,
        }
    }

    /// `git credential fill` for the node's address; `None` when git has nothing (or the
    /// user gave nothing).
    fn credential_fill(&self) -> Option<Token> {
        let host = self.base.strip_prefix("http://")?;
        let query = format!(
            "protocol=http\nhost={host}\npath={}\n\n",
            self.target.path()
        );
        let mut child = Command::new("git")
            .args(["credential", "fill"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // "could not read Username" when nothing answers: the error below says more.
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        child.stdin.take()?.write_all(query.as_bytes()).ok()?;
        let mut answer = String::new();
        child.stdout.take()?.read_to_string(&mut answer).ok()?;
        if !child.wait().ok()?.success() {
            return None;
        }
        let secret = answer
            .lines()
            .find_map(|l| l.strip_prefix("password="))?
            .trim()
            .to_owned();
        (!secret.is_empty()).then_some(Token {
            secret,
            source: Source::Credential,
            credential: Some(answer),
        })
    }

    /// Tells git's credential helpers whether the token they gave worked.
    fn settle_credential(&mut self, status: u16) {
        let Some(Token {
            source: Source::Credential,
            credential: Some(answer),
            ..
        }) = &self.token
        else {
            return;
        };
        let verb = match status {
            401 => "reject",
            200..=299 => "approve",
            _ => return,
        };
        let answer = answer.clone();
        if let Ok(mut child) = Command::new("git")
            .args(["credential", verb])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
        {
            if let Some(mut stdin) = child.stdin.take() {
                let _ = stdin.write_all(answer.as_bytes());
                let _ = stdin.write_all(b"\n");
            }
            let _ = child.wait();
        }
        if let Some(token) = &mut self.token {
            // Settled once.
            token.credential = None;
        }
    }
}

/// How many times a GET answered 503 is tried again.
const MAX_RETRIES: u32 = 5;

/// Longest wait between two tries, whatever `Retry-After` says.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(15);

/// How long to wait before trying again an answer of `status` with `retry_after` (seconds),
/// after `retries` retries: only a 503 or 429 that says when, at most [`MAX_RETRIES`]
/// times, each wait capped at [`MAX_RETRY_WAIT`]. `None`: do not retry.
fn retry_delay(status: u16, retry_after: Option<&str>, retries: u32) -> Option<Duration> {
    if !matches!(status, 503 | 429) || retries >= MAX_RETRIES {
        return None;
    }
    let secs: u64 = retry_after?.trim().parse().ok()?;
    Some(Duration::from_secs(secs.max(1)).min(MAX_RETRY_WAIT))
}

fn has_authorization(headers: &[(String, String)]) -> bool {
    headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
}

/// The node's message for a refused request: its `X-Error-Message`, else the start of the
/// body, else the status.
pub fn refusal_message(resp: &mut Response) -> String {
    let status = resp.status();
    if let Some(m) = resp
        .headers()
        .get("x-error-message")
        .and_then(|v| v.to_str().ok())
        .filter(|m| !m.is_empty())
    {
        return m.to_owned();
    }
    let body = resp
        .body_mut()
        .with_config()
        .limit(MAX_ERROR_BODY)
        .read_to_vec()
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body);
    let text = text.trim();
    let from_json = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| {
            ["error", "message"]
                .iter()
                .find_map(|k| v.get(k).and_then(|m| m.as_str()).map(str::to_owned))
        });
    match from_json {
        Some(m) => m,
        None if !text.is_empty() && !text.starts_with('{') => text.to_owned(),
        None => format!("the node answered {status}"),
    }
}

/// Reads the whole (bounded) body of a successful answer.
pub fn read_body(resp: &mut Response, limit: u64) -> anyhow::Result<Vec<u8>> {
    resp.body_mut()
        .with_config()
        .limit(limit)
        .read_to_vec()
        .context("read the node's answer")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_only_what_the_node_says_to_retry_and_not_forever() {
        assert_eq!(retry_delay(503, Some("5"), 0), Some(Duration::from_secs(5)));
        assert_eq!(retry_delay(429, Some("0"), 1), Some(Duration::from_secs(1)));
        assert_eq!(retry_delay(503, Some("3600"), 0), Some(MAX_RETRY_WAIT));
        assert_eq!(retry_delay(503, Some("5"), MAX_RETRIES), None);
        assert_eq!(retry_delay(503, None, 0), None);
        assert_eq!(
            retry_delay(503, Some("Wed, 21 Oct 2015 07:28:00 GMT"), 0),
            None
        );
        assert_eq!(retry_delay(500, Some("5"), 0), None);
        assert_eq!(retry_delay(404, Some("5"), 0), None);
    }
}
