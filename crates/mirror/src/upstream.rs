//! The client side of an upstream Hub, using only what huggingface.co itself offers: repo
//! info (`/api/{type}s/{ns}/{name}`), git smart HTTP (`info/refs` + one `git-upload-pack`
//! POST, protocol v0, so the commits and their shas are the upstream's), and the git-lfs
//! batch API for large files (then the `href` it names, with its headers).
//!
//! Blocking (ureq): every call runs on a blocking thread. Every call is bounded: connecting,
//! waiting for an answer and each read have timeouts, and every body read into memory has a
//! byte limit, so a dead or hostile upstream gives a clear error, never a hang or unbounded
//! growth. The token is sent as `Authorization: Bearer` and never appears in errors or logs.
//!
//! TLS (an `https://` upstream such as huggingface.co): rustls with the *ring* provider (the
//! one the node's p2p stack already builds), trusting the system's root certificates
//! (`rustls-native-certs`) plus the CAs of an optional PEM file (`[mirror] upstream_ca_file`,
//! a site's own CA or a TLS-inspecting proxy's); Mozilla's roots when the system has none. A
//! certificate that no trusted root signed is refused, and the error says where roots come from.

use hub_protocol::repo::RepoId;
use hub_store::Sha256;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

/// The most a repo-info or batch answer may hold.
const MAX_JSON: u64 = 16 << 20;
/// The most a ref advertisement may hold.
const MAX_REFS: u64 = 32 << 20;
/// The most one pack may hold (git metadata; large files come through LFS).
pub const MAX_PACK: u64 = 4 << 30;

/// Why the upstream could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// Not there, or not visible with this mirror's token (401/403/404).
    #[error("upstream {upstream} has no {what}")]
    NotFound { upstream: String, what: String },
    /// A gated repo the upstream does not let this mirror's token (or no token) read: its
    /// `GatedRepo` error.
    #[error("{}", gated_message(upstream, repo, *with_token))]
    Gated {
        upstream: String,
        repo: String,
        with_token: bool,
    },
    /// Connection refused, timeouts, TLS, a broken body.
    #[error("upstream {upstream} unreachable: {reason}")]
    Unreachable { upstream: String, reason: String },
    /// An answer that is not what the protocol says.
    #[error("upstream {upstream} answered badly: {reason}")]
    Protocol { upstream: String, reason: String },
}

fn gated_message(upstream: &str, repo: &str, with_token: bool) -> String {
    if with_token {
        format!(
            "{repo} is gated at upstream {upstream}, and the user of this mirror's upstream token \
             has not been granted access to it"
        )
    } else {
        format!(
            "{repo} is gated at upstream {upstream}; this mirror has no upstream token \
             ([mirror] upstream_token: a token of a user the upstream granted access)"
        )
    }
}

/// Timeouts of upstream calls.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    /// Until the status line and headers of an answer.
    pub response: Duration,
    /// Between two reads of a body.
    pub read: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            response: Duration::from_secs(30),
            read: Duration::from_secs(30),
        }
    }
}

/// An upstream Hub.
#[derive(Clone)]
pub struct Upstream {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// A repo as the upstream describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoInfo {
    pub private: bool,
    pub sha: Option<String>,
}

/// The `download` action of one object of a batch answer.
#[derive(Debug, Clone)]
pub struct Download {
    pub href: String,
    pub headers: Vec<(String, String)>,
}

/// The roots an `https://` upstream's certificate must chain to: the system's, plus the
/// certificates of `ca_file` (PEM); Mozilla's (`webpki-roots`) when there are none of either.
pub fn root_certs(ca_file: Option<&Path>) -> Result<ureq::tls::RootCerts, String> {
    use ureq::tls::{Certificate, PemItem, RootCerts};
    let system = rustls_native_certs::load_native_certs();
    let mut certs: Vec<Certificate<'static>> = system
        .certs
        .iter()
        .map(|der| Certificate::from_der(der.as_ref()).to_owned())
        .collect();
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| format!("read the upstream CA file {}: {e}", path.display()))?;
        let before = certs.len();
        for item in ureq::tls::parse_pem(&pem) {
            match item {
                Ok(PemItem::Certificate(cert)) => certs.push(cert),
                Ok(_) => {}
                Err(e) => {
                    return Err(format!(
                        "the upstream CA file {} is not PEM: {e}",
                        path.display()
                    ));
                }
            }
        }
        if certs.len() == before {
            return Err(format!(
                "the upstream CA file {} holds no certificate",
                path.display()
            ));
        }
    }
    Ok(if certs.is_empty() {
        RootCerts::WebPki
    } else {
        RootCerts::new_with_certs(&certs)
    })
}

impl Upstream {
    /// An upstream at `base`; `ca_file` adds CAs to the system's roots for an `https://` one
    /// (see [`root_certs`]). Fails only on an unreadable CA file.
    pub fn new(
        base: &str,
        token: Option<String>,
        timeouts: Timeouts,
        ca_file: Option<&Path>,
    ) -> Result<Self, String> {
        let tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .root_certs(root_certs(ca_file)?)
            .build();
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_connect(Some(timeouts.connect))
            .timeout_recv_response(Some(timeouts.response))
            .timeout_per_read(Some(timeouts.read))
            .max_redirects(5)
            .build()
            .into();
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            token: token.filter(|t| !t.trim().is_empty()),
            agent,
        })
    }

    /// The base URL (what messages name).
    pub fn base(&self) -> &str {
        &self.base
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> UpstreamError {
        let mut reason = e.to_string();
        if reason.contains("certificate") {
            reason.push_str(
                " (the upstream's certificate must chain to a system root or to a CA in [mirror] upstream_ca_file)",
            );
        }
        UpstreamError::Unreachable {
            upstream: self.base.clone(),
            reason,
        }
    }

    fn protocol(&self, reason: impl Into<String>) -> UpstreamError {
        UpstreamError::Protocol {
            upstream: self.base.clone(),
            reason: reason.into(),
        }
    }

    fn not_found(&self, what: String) -> UpstreamError {
        UpstreamError::NotFound {
            upstream: self.base.clone(),
            what,
        }
    }

    fn auth<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(t) => req.header("authorization", format!("Bearer {t}")),
            None => req,
        }
    }

    /// Maps a status to an error: 401/403/404 are "not there"; other non-2xx are protocol
    /// errors (a 5xx upstream counts as unreachable: try again later).
    fn check(&self, status: u16, what: impl FnOnce() -> String) -> Result<(), UpstreamError> {
        match status {
            200..=299 => Ok(()),
            401 | 403 | 404 | 410 => Err(self.not_found(what())),
            500..=599 => Err(self.unreachable(format!("HTTP {status} for {}", what()))),
            other => Err(self.protocol(format!("HTTP {other} for {}", what()))),
        }
    }

    /// A 401/403 that the upstream marks as its `GatedRepo` error (`X-Error-Code`).
    fn check_gate<B>(
        &self,
        resp: &ureq::http::Response<B>,
        id: &RepoId,
    ) -> Result<(), UpstreamError> {
        let gated = matches!(resp.status().as_u16(), 401 | 403)
            && resp
                .headers()
                .get("x-error-code")
                .is_some_and(|v| v.as_bytes() == b"GatedRepo");
        if gated {
            return Err(UpstreamError::Gated {
                upstream: self.base.clone(),
                repo: id.hub_id(),
                with_token: self.token.is_some(),
            });
        }
        Ok(())
    }

    fn repo_url(&self, id: &RepoId) -> String {
        format!(
            "{}/{}{}/{}",
            self.base,
            id.kind().url_prefix(),
            id.namespace(),
            id.name()
        )
    }

    /// `GET /api/{type}s/{ns}/{name}`.
    pub fn repo_info(&self, id: &RepoId) -> Result<RepoInfo, UpstreamError> {
        let url = format!(
            "{}/api/{}/{}/{}",
            self.base,
            id.kind().plural(),
            id.namespace(),
            id.name()
        );
        let resp = self
            .auth(self.agent.get(&url))
            .call()
            .map_err(|e| self.unreachable(e))?;
        self.check(resp.status().as_u16(), || id.hub_id())?;
        let body = resp
            .into_body()
            .with_config()
            .limit(MAX_JSON)
            .read_to_vec()
            .map_err(|e| self.unreachable(e))?;
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| self.protocol(format!("repo info is not JSON: {e}")))?;
        Ok(RepoInfo {
            private: v["private"].as_bool().unwrap_or(false),
            sha: v["sha"].as_str().map(str::to_owned),
        })
    }

    /// The repo's refs from `info/refs?service=git-upload-pack` (v0), as
    /// [`parse_advertisement`] keeps them.
    pub fn refs(&self, id: &RepoId) -> Result<BTreeMap<String, [u8; 20]>, UpstreamError> {
        self.advertisement(id).map(|(refs, _)| refs)
    }

    /// The repo's refs and the commits its annotated tags point at
    /// ([`parse_advertisement_peeled`]).
    pub fn advertisement(&self, id: &RepoId) -> Result<(Refs, Refs), UpstreamError> {
        let url = format!(
            "{}.git/info/refs?service=git-upload-pack",
            self.repo_url(id)
        );
        let resp = self
            .auth(self.agent.get(&url))
            .call()
            .map_err(|e| self.unreachable(e))?;
        self.check_gate(&resp, id)?;
        self.check(resp.status().as_u16(), || {
            format!("git repository {}", id.hub_id())
        })?;
        let body = resp
            .into_body()
            .with_config()
            .limit(MAX_REFS)
            .read_to_vec()
            .map_err(|e| self.unreachable(e))?;
        parse_advertisement_peeled(&body).map_err(|e| self.protocol(e))
    }

    /// One `git-upload-pack` exchange: `wants`, with `haves` we hold already; the pack
    /// (empty when there is nothing to want). `limit` bounds the pack.
    pub fn fetch_pack(
        &self,
        id: &RepoId,
        wants: &[[u8; 20]],
        haves: &[[u8; 20]],
        limit: u64,
    ) -> Result<Vec<u8>, UpstreamError> {
        if wants.is_empty() {
            return Ok(Vec::new());
        }
        let url = format!("{}.git/git-upload-pack", self.repo_url(id));
        let request = upload_request(wants, haves);
        let resp = self
            .auth(self.agent.post(&url))
            .header("content-type", "application/x-git-upload-pack-request")
            .header("accept", "application/x-git-upload-pack-result")
            .send(&request[..])
            .map_err(|e| self.unreachable(e))?;
        self.check_gate(&resp, id)?;
        self.check(resp.status().as_u16(), || {
            format!("git repository {}", id.hub_id())
        })?;
        let mut reader = resp.into_body().into_with_config().limit(limit).reader();
        // One ACK or NAK line (no multi_ack), then the raw pack (no side-band).
        let line = read_pkt(&mut reader).map_err(|e| self.protocol(e))?;
        match line.as_deref() {
            Some(l) if l.starts_with(b"NAK") || l.starts_with(b"ACK ") => {}
            Some(l) if l.starts_with(b"ERR ") => {
                return Err(self.protocol(String::from_utf8_lossy(&l[4..]).trim().to_owned()));
            }
            _ => return Err(self.protocol("upload-pack answer does not start with ACK/NAK")),
        }
        let mut pack = Vec::new();
        reader
            .read_to_end(&mut pack)
            .map_err(|e| self.unreachable(format!("read pack: {e}")))?;
        if !pack.starts_with(b"PACK") {
            return Err(self.protocol("upload-pack answer holds no pack"));
        }
        Ok(pack)
    }

    /// The git-lfs batch API's download action for one object.
    pub fn lfs_download(
        &self,
        id: &RepoId,
        sha256: &Sha256,
        size: u64,
    ) -> Result<Download, UpstreamError> {
        let url = format!("{}.git/info/lfs/objects/batch", self.repo_url(id));
        let body = json!({
            "operation": "download",
            "transfers": ["basic"],
            "objects": [{"oid": sha256.to_string(), "size": size}],
            "hash_algo": "sha256",
        });
        let resp = self
            .auth(self.agent.post(&url))
            .header("accept", "application/vnd.git-lfs+json")
            .header("content-type", "application/vnd.git-lfs+json")
            .send(serde_json::to_vec(&body).unwrap_or_default().as_slice())
            .map_err(|e| self.unreachable(e))?;
        self.check_gate(&resp, id)?;
        self.check(resp.status().as_u16(), || {
            format!("LFS objects for {}", id.hub_id())
        })?;
        let body = resp
            .into_body()
            .with_config()
            .limit(MAX_JSON)
            .read_to_vec()
            .map_err(|e| self.unreachable(e))?;
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| self.protocol(format!("LFS batch answer is not JSON: {e}")))?;
        let object = v["objects"]
            .as_array()
            .and_then(|o| o.iter().find(|o| o["oid"] == sha256.to_string()))
            .ok_or_else(|| self.protocol("LFS batch answer lacks the object"))?;
        if let Some(error) = object.get("error") {
            return Err(self.not_found(format!(
                "LFS object {sha256} in {} ({})",
                id.hub_id(),
                error["message"].as_str().unwrap_or("refused")
            )));
        }
        let action = &object["actions"]["download"];
        let href = action["href"]
            .as_str()
            .ok_or_else(|| self.protocol("LFS batch answer has no download href"))?
            .to_owned();
        let headers = action["header"]
            .as_object()
            .map(|h| {
                h.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Download { href, headers })
    }

    /// Opens the body of a download action. The token goes only to the upstream's own host
    /// (an `href` elsewhere, such as a CDN, carries its own signature).
    pub fn open(&self, download: &Download) -> Result<impl Read + Send + use<>, UpstreamError> {
        let mut req = self.agent.get(&download.href);
        let same_host = download.href.starts_with(&format!("{}/", self.base));
        let mut has_auth = false;
        for (k, v) in &download.headers {
            has_auth |= k.eq_ignore_ascii_case("authorization");
            req = req.header(k.as_str(), v.as_str());
        }
        if same_host && !has_auth {
            req = self.auth(req);
        }
        let resp = req.call().map_err(|e| self.unreachable(e))?;
        self.check(resp.status().as_u16(), || "LFS content".to_owned())?;
        Ok(resp.into_body().into_reader())
    }
}

/// The pkt-lines of an upload-pack request.
fn upload_request(wants: &[[u8; 20]], haves: &[[u8; 20]]) -> Vec<u8> {
    fn pkt(out: &mut Vec<u8>, line: &str) {
        out.extend_from_slice(format!("{:04x}", line.len() + 4).as_bytes());
        out.extend_from_slice(line.as_bytes());
    }
    let mut out = Vec::new();
    for (i, want) in wants.iter().enumerate() {
        let caps = if i == 0 { " ofs-delta no-progress" } else { "" };
        pkt(&mut out, &format!("want {}{caps}\n", hex(want)));
    }
    out.extend_from_slice(b"0000");
    for have in haves {
        pkt(&mut out, &format!("have {}\n", hex(have)));
    }
    pkt(&mut out, "done\n");
    out
}

fn hex(oid: &[u8; 20]) -> String {
    oid.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_oid(s: &[u8]) -> Option<[u8; 20]> {
    if s.len() != 40 {
        return None;
    }
    let mut out = [0u8; 20];
    for (i, pair) in s.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

/// Reads one pkt-line; `None` for a flush packet.
fn read_pkt(r: &mut impl Read) -> Result<Option<Vec<u8>>, String> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)
        .map_err(|e| format!("read pkt-line: {e}"))?;
    let len = std::str::from_utf8(&len)
        .ok()
        .and_then(|s| usize::from_str_radix(s, 16).ok())
        .ok_or("malformed pkt-line length")?;
    match len {
        0 => Ok(None),
        1..=3 => Err("malformed pkt-line length".into()),
        _ => {
            let mut data = vec![0u8; len - 4];
            r.read_exact(&mut data)
                .map_err(|e| format!("read pkt-line: {e}"))?;
            Ok(Some(data))
        }
    }
}

/// The refs a mirror follows in a v0 advertisement: `refs/heads/*`, `refs/tags/*`,
/// `refs/pr/*` and the Hub's records `refs/hub/*` (peeled `^{}` lines and everything else
/// skipped), as replication does.
pub fn parse_advertisement(body: &[u8]) -> Result<BTreeMap<String, [u8; 20]>, String> {
    parse_advertisement_peeled(body).map(|(refs, _)| refs)
}

/// [`parse_advertisement`], and the commits annotated tags point at (`refs/tags/v1` for the
/// `refs/tags/v1^{}` line).
pub fn parse_advertisement_peeled(body: &[u8]) -> Result<(Refs, Refs), String> {
    let mut r = body;
    let mut refs = BTreeMap::new();
    let mut peeled = BTreeMap::new();
    let mut seen_service = false;
    loop {
        if r.is_empty() {
            break;
        }
        let Some(line) = read_pkt(&mut r)? else {
            if seen_service {
                // The flush after `# service=…`; the refs follow.
                seen_service = false;
                continue;
            }
            break;
        };
        if line.starts_with(b"# service=") {
            seen_service = true;
            continue;
        }
        let line = line.strip_suffix(b"\n").unwrap_or(&line);
        let line = line.split(|b| *b == 0).next().unwrap_or_default();
        let (oid, name) = match line.iter().position(|b| *b == b' ') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => return Err("malformed ref line".into()),
        };
        let name = std::str::from_utf8(name).map_err(|_| "ref name is not UTF-8")?;
        let oid = parse_oid(oid).ok_or("malformed object id in ref line")?;
        let followed = ["refs/heads/", "refs/tags/", "refs/pr/", "refs/hub/"]
            .iter()
            .any(|p| name.starts_with(p));
        match name.strip_suffix("^{}") {
            Some(tag) if followed => {
                peeled.insert(tag.to_owned(), oid);
            }
            None if followed => {
                refs.insert(name.to_owned(), oid);
            }
            _ => {}
        }
    }
    Ok((refs, peeled))
}

/// Refs by name.
pub type Refs = BTreeMap<String, [u8; 20]>;

/// What a pin's revision resolves to: the commit, and the tag ref kept beside it.
pub type Resolved = ([u8; 20], Option<(String, [u8; 20])>);

/// What a pin's revision names at the upstream: the commit `main` is set to, and the tag
/// ref kept beside it (`refs/tags/REV` and its object) when it names a tag. `None` when the
/// upstream advertises no such ref (a full sha is taken as it is: the fetch checks it).
pub fn resolve_revision(rev: &str, refs: &Refs, peeled: &Refs) -> Option<Resolved> {
    if let Some(oid) = parse_oid(rev.as_bytes()) {
        return Some((oid, None));
    }
    let (name, tag) = [
        (format!("refs/tags/{rev}"), true),
        (format!("refs/heads/{rev}"), false),
        (rev.to_owned(), rev.starts_with("refs/tags/")),
    ]
    .into_iter()
    .find(|(name, _)| refs.contains_key(name))?;
    let oid = refs[&name];
    let commit = peeled.get(&name).copied().unwrap_or(oid);
    Some((commit, tag.then_some((name, oid))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(s: &str) -> String {
        format!("{:04x}{s}", s.len() + 4)
    }

    #[test]
    fn advertisement_is_parsed() {
        let a = "1".repeat(40);
        let b = "2".repeat(40);
        let body = format!(
            "{}0000{}{}{}{}{}{}0000",
            pkt("# service=git-upload-pack\n"),
            pkt(&format!("{a} HEAD\0multi_ack ofs-delta\n")),
            pkt(&format!("{a} refs/heads/main\n")),
            pkt(&format!("{b} refs/tags/v1\n")),
            pkt(&format!("{a} refs/tags/v1^{{}}\n")),
            pkt(&format!("{b} refs/hub/discussions\n")),
            pkt(&format!("{b} refs/remotes/x\n")),
        );
        let refs = parse_advertisement(body.as_bytes()).unwrap();
        assert_eq!(refs.len(), 3);
        assert_eq!(refs["refs/hub/discussions"], [0x22; 20]);
        assert_eq!(refs["refs/heads/main"], [0x11; 20]);
        assert_eq!(refs["refs/tags/v1"], [0x22; 20]);
        let (_, peeled) = parse_advertisement_peeled(body.as_bytes()).unwrap();
        assert_eq!(peeled["refs/tags/v1"], [0x11; 20]);
        // A pin's revision: a tag gives its commit and keeps the tag; a branch its tip; a sha
        // itself; an unknown name nothing.
        let (refs, peeled) = parse_advertisement_peeled(body.as_bytes()).unwrap();
        assert_eq!(
            resolve_revision("v1", &refs, &peeled),
            Some(([0x11; 20], Some(("refs/tags/v1".to_owned(), [0x22; 20]))))
        );
        assert_eq!(
            resolve_revision("main", &refs, &peeled),
            Some(([0x11; 20], None))
        );
        assert_eq!(
            resolve_revision(&"3".repeat(40), &refs, &peeled),
            Some(([0x33; 20], None))
        );
        assert_eq!(resolve_revision("v2", &refs, &peeled), None);
    }

    #[test]
    fn bad_advertisements_are_errors() {
        for body in [
            "00",
            "zzzz",
            "0003",
            "0010short",
            &pkt("nonsense\n"),
            &pkt(&format!("{} refs/heads/main\n", "g".repeat(40))),
        ] {
            assert!(parse_advertisement(body.as_bytes()).is_err(), "{body}");
        }
        // An empty repository advertises nothing.
        assert!(parse_advertisement(b"").unwrap().is_empty());
    }

    #[test]
    fn upload_request_lists_wants_then_haves() {
        let req = upload_request(&[[0xab; 20]], &[[0xcd; 20]]);
        let text = String::from_utf8(req).unwrap();
        assert!(text.starts_with(&pkt(&format!(
            "want {} ofs-delta no-progress\n",
            "ab".repeat(20)
        ))));
        assert!(text.contains("0000"));
        assert!(text.ends_with(&format!(
            "{}{}",
            pkt(&format!("have {}\n", "cd".repeat(20))),
            pkt("done\n")
        )));
    }

    #[test]
    fn unreachable_upstream_fails_fast() {
        // A port nothing listens on: connection refused at once, never a hang.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let up = Upstream::new(
            &format!("http://127.0.0.1:{port}"),
            Some("secret".into()),
            Timeouts::default(),
            None,
        )
        .unwrap();
        let id = RepoId::parse(hub_protocol::repo::RepoType::Model, "a/b").unwrap();
        let started = std::time::Instant::now();
        let err = up.repo_info(&id).unwrap_err();
        assert!(matches!(err, UpstreamError::Unreachable { .. }), "{err}");
        assert!(err.to_string().contains(&format!("127.0.0.1:{port}")));
        assert!(!err.to_string().contains("secret"));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
}
