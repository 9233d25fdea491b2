//! Webhooks: a user's subscriptions to repo and discussion events of watched repos, users
//! and orgs, the Hub's payloads, and the bounded queue and log of their deliveries.
//!
//! **What fires.** Every write goes through [`Hub::after_write`]; for repos that a webhook
//! watches, it compares the repo's refs and visibility with what it saw last and queues the
//! Hub's events: `repo` create/delete, `repo.content` update (with `updatedRefs`),
//! `repo.config` update (visibility). Discussions add `discussion` create/update and
//! `discussion.comment` create events ([`Hub::discussion_webhook`]). A private repo's events
//! go only to webhooks of its namespace (the user, or members of the org).
//!
//! **Where.** Webhooks are kept on the node where they are made (a JSON file each under
//! `{repos root}/webhooks/`), and fire for the changes that node sees: writes made there
//! (the after-write hook) and signed updates that arrive by replication ([`Hub::replicated`]),
//! once per change (ADR 0013). Discussion events fire on the node that took the write.
//!
//! **Delivery** is the gateway's (an HTTP POST with `X-Webhook-Secret`); this module gives it
//! the queue ([`Hub::take_webhook_deliveries`]), bounded to [`QUEUE`] deliveries (a full queue
//! drops, and logs it), the retry rule ([`retry_delay`]: [`MAX_ATTEMPTS`] attempts, doubling
//! from one second) and the per-webhook delivery log ([`LOG_ENTRIES`] newest entries).

use crate::{Error, Hub, blocking};
use hub_auth::Principal;
use hub_protocol::repo::{RepoId, RepoType};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Deliveries waiting at most; more are dropped (and logged).
pub const QUEUE: usize = 1024;
/// Delivery log entries kept per webhook.
pub const LOG_ENTRIES: usize = 100;
/// Attempts per delivery (the first and its retries).
pub const MAX_ATTEMPTS: u32 = 5;
/// Webhooks per user, and watched items per webhook.
pub const MAX_WEBHOOKS: usize = 100;
pub const MAX_WATCHED: usize = 100;
/// The payload version the Hub sends.
pub const PAYLOAD_VERSION: u32 = 3;

/// How long to wait before attempt `attempt` (2, 3, …): 1 s, 2 s, 4 s, 8 s.
pub fn retry_delay(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.saturating_sub(2).min(6))
}

/// A watched repo, user or org.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watched {
    /// `model`, `dataset`, `space`, `user` or `org`.
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
}

/// A webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    /// 24 hex digits.
    pub id: String,
    /// The user who made it (only they see and change it).
    pub owner: String,
    pub url: String,
    pub watched: Vec<Watched>,
    /// `repo` and/or `discussion`.
    pub domains: Vec<String>,
    pub secret: Option<String>,
    pub disabled: bool,
    /// The node's public endpoint as the owner reached it (`http://host:port`, from the request
    /// that made or last changed the webhook): the base of the payloads' `url` objects.
    #[serde(default)]
    pub endpoint: Option<String>,
}

impl Webhook {
    fn watches(&self, id: &RepoId) -> bool {
        self.watched.iter().any(|w| match w.kind.as_str() {
            "user" | "org" => w.name == id.namespace(),
            kind => kind == id.kind().as_str() && w.name == id.hub_id(),
        })
    }
}

/// What a webhook update changes (`None`: unchanged; an empty `watched` too).
#[derive(Debug, Clone, Default)]
pub struct WebhookUpdate {
    pub url: Option<String>,
    /// The endpoint the update came through (see [`Webhook::endpoint`]).
    pub endpoint: Option<String>,
    pub watched: Option<Vec<Watched>>,
    pub domains: Option<Vec<String>>,
    pub secret: Option<String>,
}

/// One line of a webhook's delivery log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Seconds since the Unix epoch.
    pub at: i64,
    pub scope: String,
    pub action: String,
    pub repo: String,
    pub attempt: u32,
    /// The receiver's HTTP status, when it answered.
    pub status: Option<u16>,
    /// Why the attempt failed (no answer, a non-2xx status, the queue full).
    pub error: Option<String>,
    /// Whether this attempt delivered it.
    pub ok: bool,
}

/// One delivery to send (an event for one webhook).
#[derive(Debug, Clone)]
pub struct Delivery {
    pub webhook: String,
    pub url: String,
    pub secret: Option<String>,
    pub body: Arc<Vec<u8>>,
    pub scope: String,
    pub action: String,
    pub repo: String,
    /// 1 for the first attempt.
    pub attempt: u32,
}

/// Why a webhook operation was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    #[error("Webhook {0} not found")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Storage(#[from] Error),
}

impl From<std::io::Error> for WebhookError {
    fn from(e: std::io::Error) -> Self {
        WebhookError::Storage(e.into())
    }
}

impl From<tokio::task::JoinError> for WebhookError {
    fn from(e: tokio::task::JoinError) -> Self {
        WebhookError::Storage(e.into())
    }
}

/// What a repo looked like at the last write a webhook saw.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Snapshot {
    refs: BTreeMap<String, [u8; 20]>,
    private: bool,
}

/// The node's webhooks, their logs, the delivery queue, and the repo snapshots events are
/// computed from.
#[derive(Debug)]
pub struct Webhooks {
    dir: PathBuf,
    hooks: Mutex<Option<BTreeMap<String, Webhook>>>,
    logs: Mutex<HashMap<String, VecDeque<LogEntry>>>,
    snapshots: Mutex<HashMap<RepoId, Snapshot>>,
    /// Whether receivers on loopback and private networks are allowed ([`target_allowed`]).
    allow_local: std::sync::atomic::AtomicBool,
    queue: mpsc::Sender<Delivery>,
    receiver: Mutex<Option<mpsc::Receiver<Delivery>>>,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn hex20(b: &[u8; 20]) -> String {
    hex::encode(b)
}

impl Webhooks {
    pub fn new(dir: impl AsRef<Path>) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE);
        Self {
            dir: dir.as_ref().to_owned(),
            hooks: Mutex::new(None),
            logs: Mutex::new(HashMap::new()),
            snapshots: Mutex::new(HashMap::new()),
            allow_local: std::sync::atomic::AtomicBool::new(false),
            queue,
            receiver: Mutex::new(Some(receiver)),
        }
    }

    /// Runs `f` on the webhooks (loaded from disk the first time; files that do not parse
    /// are skipped).
    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<String, Webhook>) -> T) -> T {
        let mut guard = self.hooks.lock().unwrap_or_else(|e| e.into_inner());
        let hooks = guard.get_or_insert_with(|| {
            let mut out = BTreeMap::new();
            if let Ok(entries) = std::fs::read_dir(&self.dir) {
                for entry in entries.flatten() {
                    if let Ok(bytes) = std::fs::read(entry.path())
                        && let Ok(hook) = serde_json::from_slice::<Webhook>(&bytes)
                    {
                        out.insert(hook.id.clone(), hook);
                    }
                }
            }
            out
        });
        f(hooks)
    }

    fn save(&self, hook: &Webhook) -> Result<(), WebhookError> {
        std::fs::create_dir_all(&self.dir)?;
        let tmp = self.dir.join(format!(".{}.tmp", hook.id));
        std::fs::write(
            &tmp,
            serde_json::to_vec(hook).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(&tmp, self.dir.join(format!("{}.json", hook.id)))?;
        Ok(())
    }

    /// Allows (or refuses, the default) receivers on loopback and private networks: the
    /// node's `[gateway] webhooks_allow_local` setting. Link-local (cloud metadata),
    /// unspecified, multicast and broadcast addresses are always refused.
    pub fn set_allow_local(&self, allow: bool) {
        self.allow_local
            .store(allow, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether a receiver at `ip` may be sent to under this node's setting.
    pub fn allows(&self, ip: std::net::IpAddr) -> bool {
        target_allowed(
            ip,
            self.allow_local.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// The file of a webhook's delivery log (one JSON array, at most [`LOG_ENTRIES`]).
    fn log_path(&self, webhook: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{webhook}.json"))
    }

    /// Runs `f` on a webhook's log, loaded from its file the first time.
    fn with_log<T>(&self, webhook: &str, f: impl FnOnce(&mut VecDeque<LogEntry>) -> T) -> T {
        let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        let log = logs.entry(webhook.to_owned()).or_insert_with(|| {
            std::fs::read(self.log_path(webhook))
                .ok()
                .and_then(|b| serde_json::from_slice::<VecDeque<LogEntry>>(&b).ok())
                .map(|mut l| {
                    while l.len() > LOG_ENTRIES {
                        l.pop_front();
                    }
                    l
                })
                .unwrap_or_default()
        });
        f(log)
    }

    /// Appends to a webhook's log, keeping the newest [`LOG_ENTRIES`], and saves it (so the
    /// log outlives a restart). Called from the delivery worker, off the request path.
    pub fn log(&self, webhook: &str, entry: LogEntry) {
        if !webhook.bytes().all(|b| b.is_ascii_hexdigit()) {
            return;
        }
        let saved = self.with_log(webhook, |log| {
            if log.len() >= LOG_ENTRIES {
                log.pop_front();
            }
            log.push_back(entry);
            serde_json::to_vec(&*log)
        });
        let path = self.log_path(webhook);
        let write = || -> std::io::Result<()> {
            let bytes = saved.map_err(std::io::Error::other)?;
            std::fs::create_dir_all(self.dir.join("logs"))?;
            let tmp = path.with_extension("json.tmp");
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            tracing::warn!(%webhook, error = %e, "webhook log not saved");
        }
    }

    /// Queues a delivery; a full queue drops it and logs that.
    pub fn enqueue(&self, d: Delivery) {
        if let Err(mpsc::error::TrySendError::Full(d) | mpsc::error::TrySendError::Closed(d)) =
            self.queue.try_send(d)
        {
            tracing::warn!(webhook = %d.webhook, "webhook queue full: delivery dropped");
            self.log(
                &d.webhook,
                entry_of(&d, None, Some("queue full: dropped".into()), false),
            );
        }
    }

    /// Whether the webhook still exists and is enabled (a retry checks it again).
    pub fn active(&self, webhook: &str) -> bool {
        self.with(|h| h.get(webhook).is_some_and(|w| !w.disabled))
    }
}

/// A log entry for an attempt of `d`.
pub fn entry_of(d: &Delivery, status: Option<u16>, error: Option<String>, ok: bool) -> LogEntry {
    LogEntry {
        at: now(),
        scope: d.scope.clone(),
        action: d.action.clone(),
        repo: d.repo.clone(),
        attempt: d.attempt,
        status,
        error,
        ok,
    }
}

fn new_id() -> Result<String, WebhookError> {
    let mut buf = [0u8; 12];
    getrandom::fill(&mut buf).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(hex::encode(buf))
}

/// Whether a webhook receiver at `ip` may be sent to (the SSRF filter). Never: unspecified,
/// link-local (169.254.0.0/16 holds the clouds' metadata service; fe80::/10), multicast,
/// broadcast, and `fd00:ec2::254` (AWS's IPv6 metadata). Loopback, private networks
/// (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7) only with `allow_local`.
pub fn target_allowed(ip: std::net::IpAddr, allow_local: bool) -> bool {
    use std::net::IpAddr;
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_unspecified() || v4.is_link_local() || v4.is_multicast() || v4.is_broadcast() {
                return false;
            }
            let local = v4.is_loopback()
                || v4.is_private()
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || o[0] == 0;
            !local || allow_local
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let metadata = v6 == std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
            if v6.is_unspecified() || v6.is_multicast() || (s[0] & 0xffc0) == 0xfe80 || metadata {
                return false;
            }
            let local = v6.is_loopback() || (s[0] & 0xfe00) == 0xfc00;
            !local || allow_local
        }
    }
}

fn check_url(url: &str, allow_local: bool) -> Result<(), WebhookError> {
    let bad = |why: &str| WebhookError::BadRequest(format!("invalid webhook url {url:?}: {why}"));
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() > 2048 {
        return Err(bad("an http(s) URL is needed"));
    }
    // A literal address is checked now; a host name when each delivery resolves it.
    let host = url
        .split_once("://")
        .map(|(_, rest)| rest.split(['/', '?', '#']).next().unwrap_or(""))
        .unwrap_or("");
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let host = if let Some(v6) = host.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host.split(':').next().unwrap_or("")
    };
    if let Ok(ip) = host.parse::<std::net::IpAddr>()
        && !target_allowed(ip, allow_local)
    {
        return Err(bad(
            "receivers on this address are not allowed by this node",
        ));
    }
    if host.eq_ignore_ascii_case("localhost") && !allow_local {
        return Err(bad(
            "receivers on this address are not allowed by this node",
        ));
    }
    Ok(())
}

fn check_watched(watched: &[Watched]) -> Result<(), WebhookError> {
    if watched.is_empty() || watched.len() > MAX_WATCHED {
        return Err(WebhookError::BadRequest(format!(
            "a webhook watches 1 to {MAX_WATCHED} items"
        )));
    }
    for w in watched {
        let ok = match w.kind.as_str() {
            "user" | "org" => !w.name.is_empty() && !w.name.contains('/'),
            "model" | "dataset" | "space" => w.name.split('/').count() == 2,
            _ => false,
        };
        if !ok {
            return Err(WebhookError::BadRequest(format!(
                "invalid watched item {} {:?}",
                w.kind, w.name
            )));
        }
    }
    Ok(())
}

fn check_domains(domains: &[String]) -> Result<(), WebhookError> {
    if domains.is_empty() || domains.iter().any(|d| d != "repo" && d != "discussion") {
        return Err(WebhookError::BadRequest(
            "domains must be \"repo\" and/or \"discussion\"".into(),
        ));
    }
    Ok(())
}

/// The `url` object of a repo (`web`, `api`), under the node's public `endpoint`.
fn repo_urls(endpoint: &str, id: &RepoId) -> (String, String) {
    (
        format!("{endpoint}/{}{}", id.kind().url_prefix(), id.hub_id()),
        format!("{endpoint}/api/{}/{}", id.kind().plural(), id.hub_id()),
    )
}

/// The repo part of a payload.
fn repo_json(id: &RepoId, private: bool, head: Option<String>) -> Value {
    let mut repo = json!({
        "type": id.kind().as_str(),
        "name": id.hub_id(),
        "id": id.hub_id(),
        "private": private,
        "owner": { "id": id.namespace() },
    });
    if let Some(head) = head {
        repo["headSha"] = json!(head);
    }
    repo
}

/// A discussion event for [`Hub::discussion_webhook`].
#[derive(Debug, Clone)]
pub struct DiscussionEvent {
    /// `create` or `update`.
    pub action: &'static str,
    pub num: u64,
    pub title: String,
    pub status: String,
    pub author: String,
    pub is_pull_request: bool,
    /// A new comment: its id, author and text.
    pub comment: Option<(String, String, String)>,
}

impl Hub {
    /// The node's webhooks.
    pub fn webhooks(&self) -> &Webhooks {
        &self.inner.webhooks
    }

    /// The delivery queue's receiving end, once (the gateway's delivery worker takes it).
    pub fn take_webhook_deliveries(&self) -> Option<mpsc::Receiver<Delivery>> {
        self.webhooks()
            .receiver
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// At start-up (the gateway's delivery worker): remembers the state of every watched
    /// repo, so the first write after a restart is compared with it.
    pub async fn prime_webhooks(&self) {
        let hooks: Vec<Webhook> = self.webhooks().with(|all| all.values().cloned().collect());
        for hook in &hooks {
            self.snapshot_watched(hook).await;
        }
    }

    /// Remembers the state of the repos `hook` watches, so the next write to each is compared
    /// with it (a repo unseen later counts as created).
    async fn snapshot_watched(&self, hook: &Webhook) {
        let (hub, hook) = (self.clone(), hook.clone());
        let _ = blocking(move || -> Result<(), Error> {
            let mut ids = Vec::new();
            for kind in RepoType::ALL {
                for id in hub.repos().list(kind)? {
                    if hook.watches(&id) {
                        ids.push(id);
                    }
                }
            }
            for id in ids {
                let snapshot = Snapshot {
                    refs: hub.repos().public_refs(&id)?,
                    private: hub.repos().meta(&id)?.private,
                };
                hub.webhooks()
                    .snapshots
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(id)
                    .or_insert(snapshot);
            }
            Ok(())
        })
        .await;
    }

    /// Makes a webhook owned by `principal`.
    pub async fn create_webhook(
        &self,
        principal: &Principal,
        url: String,
        watched: Vec<Watched>,
        domains: Vec<String>,
        secret: Option<String>,
        endpoint: Option<String>,
    ) -> Result<Webhook, WebhookError> {
        check_url(
            &url,
            self.webhooks()
                .allow_local
                .load(std::sync::atomic::Ordering::Relaxed),
        )?;
        check_watched(&watched)?;
        check_domains(&domains)?;
        let hook = Webhook {
            id: new_id()?,
            owner: principal.user.name.clone(),
            url,
            watched,
            domains,
            secret,
            disabled: false,
            endpoint,
        };
        let (hub, h) = (self.clone(), hook.clone());
        blocking(move || {
            let webhooks = hub.webhooks();
            let count = webhooks.with(|all| all.values().filter(|w| w.owner == h.owner).count());
            if count >= MAX_WEBHOOKS {
                return Err(WebhookError::BadRequest(format!(
                    "a user has at most {MAX_WEBHOOKS} webhooks"
                )));
            }
            webhooks.save(&h)?;
            webhooks.with(|all| all.insert(h.id.clone(), h.clone()));
            Ok(())
        })
        .await?;
        self.snapshot_watched(&hook).await;
        Ok(hook)
    }

    /// `principal`'s webhooks.
    pub fn list_webhooks(&self, principal: &Principal) -> Vec<Webhook> {
        let me = principal.user.name.clone();
        self.webhooks()
            .with(|all| all.values().filter(|w| w.owner == me).cloned().collect())
    }

    /// One of `principal`'s webhooks.
    pub fn webhook(&self, principal: &Principal, id: &str) -> Result<Webhook, WebhookError> {
        self.webhooks()
            .with(|all| {
                all.get(id)
                    .filter(|w| w.owner == principal.user.name)
                    .cloned()
            })
            .ok_or_else(|| WebhookError::NotFound(id.to_owned()))
    }

    /// Changes one of `principal`'s webhooks with `f`, saving it.
    async fn change_webhook(
        &self,
        principal: &Principal,
        id: &str,
        f: impl FnOnce(&mut Webhook) + Send + 'static,
    ) -> Result<Webhook, WebhookError> {
        let mut hook = self.webhook(principal, id)?;
        f(&mut hook);
        let (hub, h) = (self.clone(), hook.clone());
        blocking(move || {
            hub.webhooks().save(&h)?;
            hub.webhooks()
                .with(|all| all.insert(h.id.clone(), h.clone()));
            Ok::<_, WebhookError>(())
        })
        .await?;
        self.snapshot_watched(&hook).await;
        Ok(hook)
    }

    pub async fn update_webhook(
        &self,
        principal: &Principal,
        id: &str,
        update: WebhookUpdate,
    ) -> Result<Webhook, WebhookError> {
        if let Some(url) = &update.url {
            check_url(
                url,
                self.webhooks()
                    .allow_local
                    .load(std::sync::atomic::Ordering::Relaxed),
            )?;
        }
        let watched = update.watched.filter(|w| !w.is_empty());
        if let Some(w) = &watched {
            check_watched(w)?;
        }
        if let Some(d) = &update.domains {
            check_domains(d)?;
        }
        self.change_webhook(principal, id, move |h| {
            if let Some(url) = update.url {
                h.url = url;
            }
            if let Some(w) = watched {
                h.watched = w;
            }
            if let Some(d) = update.domains {
                h.domains = d;
            }
            if let Some(s) = update.secret {
                h.secret = Some(s);
            }
            if let Some(e) = update.endpoint {
                h.endpoint = Some(e);
            }
        })
        .await
    }

    pub async fn set_webhook_disabled(
        &self,
        principal: &Principal,
        id: &str,
        disabled: bool,
    ) -> Result<Webhook, WebhookError> {
        self.change_webhook(principal, id, move |h| h.disabled = disabled)
            .await
    }

    pub async fn delete_webhook(
        &self,
        principal: &Principal,
        id: &str,
    ) -> Result<(), WebhookError> {
        let hook = self.webhook(principal, id)?;
        let hub = self.clone();
        blocking(move || {
            let webhooks = hub.webhooks();
            match std::fs::remove_file(webhooks.dir.join(format!("{}.json", hook.id))) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(WebhookError::from(e)),
            }
            webhooks.with(|all| all.remove(&hook.id));
            let _ = std::fs::remove_file(webhooks.log_path(&hook.id));
            webhooks
                .logs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&hook.id);
            Ok(())
        })
        .await
    }

    /// The delivery log of one of `principal`'s webhooks, oldest first.
    pub fn webhook_log(
        &self,
        principal: &Principal,
        id: &str,
    ) -> Result<Vec<LogEntry>, WebhookError> {
        let hook = self.webhook(principal, id)?;
        Ok(self
            .webhooks()
            .with_log(&hook.id, |l| l.iter().cloned().collect()))
    }

    /// The enabled webhooks that watch `id` in `domain` and may see it.
    async fn subscribers(&self, id: &RepoId, domain: &str, private: bool) -> Vec<Webhook> {
        let hooks: Vec<Webhook> = self.webhooks().with(|all| {
            all.values()
                .filter(|w| !w.disabled && w.domains.iter().any(|d| d == domain) && w.watches(id))
                .cloned()
                .collect()
        });
        if !private {
            return hooks;
        }
        let mut out = Vec::new();
        for hook in hooks {
            let (auth, owner, ns) = (
                self.auth().clone(),
                hook.owner.clone(),
                id.namespace().to_owned(),
            );
            let member = owner == ns
                || blocking(move || Ok::<_, Error>(auth.orgs_of(&owner)?))
                    .await
                    .is_ok_and(|orgs| orgs.iter().any(|(org, _)| *org == ns));
            if member {
                out.push(hook);
            }
        }
        out
    }

    fn send(&self, hooks: &[Webhook], id: &RepoId, scope: &str, action: &str, payload: Value) {
        for hook in hooks {
            let mut body = payload.clone();
            body["webhook"] = json!({ "id": hook.id, "version": PAYLOAD_VERSION });
            let endpoint = hook.endpoint.as_deref().unwrap_or("");
            let (web, api) = repo_urls(endpoint, id);
            body["repo"]["url"] = json!({ "web": web, "api": api });
            if let Some(num) = body["discussion"]["num"].as_u64() {
                let (dweb, dapi) = (
                    format!("{web}/discussions/{num}"),
                    format!("{api}/discussions/{num}"),
                );
                body["discussion"]["url"] = json!({ "web": dweb, "api": dapi });
                if let Some(cid) = body["comment"]["id"].as_str().map(str::to_owned) {
                    body["comment"]["url"] = json!({ "web": format!("{dweb}#{cid}") });
                }
            }
            if let Some(to) = body["movedTo"]["name"].as_str().map(str::to_owned)
                && let Ok(moved) = RepoId::parse(id.kind(), &to)
            {
                body["movedTo"]["url"] = json!({ "web": repo_urls(endpoint, &moved).0 });
            }
            let Ok(bytes) = serde_json::to_vec(&body) else {
                continue;
            };
            self.webhooks().enqueue(Delivery {
                webhook: hook.id.clone(),
                url: hook.url.clone(),
                secret: hook.secret.clone(),
                body: Arc::new(bytes),
                scope: scope.to_owned(),
                action: action.to_owned(),
                repo: id.hub_id(),
                attempt: 1,
            });
        }
    }

    /// A signed update of `id` from its hosting node was applied here (the mesh's replication
    /// hook, on a blocking thread): queues its repo events for this node's webhooks, as the
    /// after-write hook does for local writes. Each node fires its own webhooks once per
    /// change, whether the change was written here or arrived by replication.
    pub fn replicated(&self, id: &RepoId) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (hub, id) = (self.clone(), id.clone());
            runtime.spawn(async move { hub.repo_webhooks(&id).await });
        }
    }

    /// A repo was moved from `from` to `to` (on this node): the webhooks watching `from` get
    /// the Hub's `repo` `move` event, with `movedTo`; the snapshot follows the repo, so the
    /// after-write hooks of the move fire no delete or create.
    pub(crate) async fn move_webhooks(&self, from: &RepoId, to: &RepoId) {
        let before = self
            .webhooks()
            .snapshots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(from);
        let Some(before) = before else {
            return;
        };
        self.webhooks()
            .snapshots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(to.clone(), before.clone());
        let hooks = self.subscribers(from, "repo", before.private).await;
        if hooks.is_empty() {
            return;
        }
        let head = before.refs.get("refs/heads/main").map(hex20);
        let payload = json!({
            "event": { "action": "move", "scope": "repo" },
            "repo": repo_json(from, before.private, head),
            "movedTo": { "name": to.hub_id(), "owner": { "id": to.namespace() } },
        });
        self.send(&hooks, from, "repo", "move", payload);
    }

    /// From the after-write hook: the repo events of this write, for the webhooks watching
    /// `id` (nothing to do, and nothing read, when none does).
    pub(crate) async fn repo_webhooks(&self, id: &RepoId) {
        // Disabled webhooks keep the snapshot current too, so `oldSha` is right once enabled.
        let any = self
            .webhooks()
            .with(|all| all.values().any(|w| w.watches(id)));
        if !any {
            return;
        }
        let (hub, repo) = (self.clone(), id.clone());
        let now = blocking(move || -> Result<Option<Snapshot>, Error> {
            match hub.repos().meta(&repo) {
                Ok(meta) => Ok(Some(Snapshot {
                    refs: hub.repos().public_refs(&repo)?,
                    private: meta.private,
                })),
                Err(hub_repo::RepoError::NotFound { .. }) => Ok(None),
                Err(e) => Err(e.into()),
            }
        })
        .await;
        let Ok(now) = now else {
            return;
        };
        let before = {
            let mut snapshots = self
                .webhooks()
                .snapshots
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match &now {
                Some(s) => snapshots.insert(id.clone(), s.clone()),
                None => snapshots.remove(id),
            }
        };
        let head = |s: &Snapshot| s.refs.get("refs/heads/main").map(hex20);
        let mut events: Vec<(&str, &str, bool, Value)> = Vec::new();
        match (&before, &now) {
            (None, None) => {}
            (Some(b), None) => events.push(("repo", "delete", b.private, json!({}))),
            (None, Some(n)) => events.push(("repo", "create", n.private, json!({}))),
            (Some(b), Some(n)) => {
                let content = |name: &str| !name.starts_with("refs/hub/");
                let mut updated = Vec::new();
                for (name, new) in n.refs.iter().filter(|(k, _)| content(k)) {
                    if b.refs.get(name) != Some(new) {
                        updated.push(json!({
                            "ref": name,
                            "oldSha": b.refs.get(name).map(hex20),
                            "newSha": hex20(new),
                        }));
                    }
                }
                for name in b.refs.keys().filter(|k| content(k)) {
                    if !n.refs.contains_key(name) {
                        updated.push(json!({
                            "ref": name,
                            "oldSha": b.refs.get(name).map(hex20),
                            "newSha": null,
                        }));
                    }
                }
                if !updated.is_empty() {
                    events.push((
                        "repo.content",
                        "update",
                        n.private,
                        json!({ "updatedRefs": updated }),
                    ));
                }
                if b.private != n.private {
                    events.push((
                        "repo.config",
                        "update",
                        n.private || b.private,
                        json!({ "updatedConfig": { "private": n.private } }),
                    ));
                }
            }
        }
        for (scope, action, private, extra) in events {
            let hooks = self.subscribers(id, "repo", private).await;
            if hooks.is_empty() {
                continue;
            }
            let mut payload = json!({
                "event": { "action": action, "scope": scope },
                "repo": repo_json(id, private, now.as_ref().and_then(head)),
            });
            if let (Value::Object(p), Value::Object(e)) = (&mut payload, extra) {
                p.extend(e);
            }
            self.send(&hooks, id, scope, action, payload);
        }
    }

    /// A discussion event of `id` for the webhooks watching it in the `discussion` domain.
    pub async fn discussion_webhook(&self, id: &RepoId, event: DiscussionEvent) {
        let any = self.webhooks().with(|all| {
            all.values().any(|w| {
                !w.disabled && w.watches(id) && w.domains.iter().any(|d| d == "discussion")
            })
        });
        if !any {
            return;
        }
        let (repos, repo) = (self.repos().clone(), id.clone());
        let Ok(Ok(meta)) = tokio::task::spawn_blocking(move || repos.meta(&repo)).await else {
            return;
        };
        let hooks = self.subscribers(id, "discussion", meta.private).await;
        if hooks.is_empty() {
            return;
        }
        let scope = if event.comment.is_some() {
            "discussion.comment"
        } else {
            "discussion"
        };
        let mut payload = json!({
            "event": { "action": event.action, "scope": scope },
            "repo": repo_json(id, meta.private, None),
            "discussion": {
                // The Hub's discussions have an object id; here the repo and number name one.
                "id": format!("{}#{}", id, event.num),
                "num": event.num,
                "title": event.title,
                "status": event.status,
                "author": { "id": event.author },
                "isPullRequest": event.is_pull_request,
            },
        });
        if let Some((cid, author, content)) = event.comment {
            payload["comment"] = json!({
                "id": cid,
                "author": { "id": author },
                "content": content,
                "hidden": false,
            });
        }
        self.send(&hooks, id, scope, event.action, payload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::hub;

    fn watch(kind: &str, name: &str) -> Vec<Watched> {
        vec![Watched {
            kind: kind.into(),
            name: name.into(),
        }]
    }

    #[tokio::test]
    async fn writes_queue_the_hubs_events_for_watchers() {
        let (_dir, hub, admin) = hub();
        let mut rx = hub.take_webhook_deliveries().unwrap();
        assert!(hub.take_webhook_deliveries().is_none());
        let create = |url: &str| {
            hub.create_webhook(
                &admin,
                url.into(),
                watch("user", "admin"),
                vec!["repo".into()],
                Some("s".into()),
                Some("http://hub.example".into()),
            )
        };
        // Loopback receivers need the node's explicit setting; metadata addresses never pass.
        assert!(matches!(
            create("http://127.0.0.1:9/h").await,
            Err(WebhookError::BadRequest(_))
        ));
        hub.webhooks().set_allow_local(true);
        for refused in [
            "ftp://x",
            "http://169.254.169.254/latest/meta-data",
            "http://[fe80::1]:80/",
            "http://0.0.0.0:80/",
            "http://[::ffff:169.254.169.254]/",
        ] {
            assert!(
                matches!(create(refused).await, Err(WebhookError::BadRequest(_))),
                "{refused}"
            );
        }
        let hook = create("http://127.0.0.1:9/h").await.unwrap();
        let id = RepoId::parse(RepoType::Model, "admin/w").unwrap();
        let grant = hub.access_create(&admin, &id).await.unwrap();
        hub.create_repo(grant, false).await.unwrap();
        let d = rx.try_recv().unwrap();
        let body: Value = serde_json::from_slice(&d.body).unwrap();
        assert_eq!(body["event"], json!({"action": "create", "scope": "repo"}));
        assert_eq!(body["repo"]["name"], "admin/w");
        assert_eq!(
            body["repo"]["url"],
            json!({"web": "http://hub.example/admin/w", "api": "http://hub.example/api/models/admin/w"})
        );
        assert_eq!(body["webhook"]["id"], hook.id.as_str());
        assert_eq!(d.secret.as_deref(), Some("s"));
        // A branch is a content update with its refs.
        let granted = hub
            .access(Some(&admin), &id, crate::Need::Write)
            .await
            .unwrap();
        hub.create_branch(&granted, "dev", None).await.unwrap();
        let body: Value = serde_json::from_slice(&rx.try_recv().unwrap().body).unwrap();
        assert_eq!(body["event"]["scope"], "repo.content");
        assert_eq!(body["updatedRefs"][0]["ref"], "refs/heads/dev");
        assert!(body["updatedRefs"][0]["oldSha"].is_null());
        // A move is one `move` event with `movedTo`, not a delete and a create.
        let to = RepoId::parse(RepoType::Model, "admin/w2").unwrap();
        hub.move_repo(&admin, &id, &to).await.unwrap();
        let body: Value = serde_json::from_slice(&rx.try_recv().unwrap().body).unwrap();
        assert_eq!(body["event"], json!({"action": "move", "scope": "repo"}));
        assert_eq!(body["repo"]["name"], "admin/w");
        assert_eq!(body["movedTo"]["name"], "admin/w2");
        assert!(rx.try_recv().is_err());
        let id = to;
        // The delivery log is saved, bounded, and read back after a restart.
        let d = Delivery {
            webhook: hook.id.clone(),
            url: hook.url.clone(),
            secret: None,
            body: Arc::new(Vec::new()),
            scope: "repo".into(),
            action: "update".into(),
            repo: "admin/w2".into(),
            attempt: 1,
        };
        for i in 0..LOG_ENTRIES + 5 {
            hub.webhooks()
                .log(&hook.id, entry_of(&d, Some(200 + i as u16), None, true));
        }
        let reopened = Webhooks::new(hub.repos().root().join("webhooks"));
        let log = reopened.with_log(&hook.id, |l| l.clone());
        assert_eq!(log.len(), LOG_ENTRIES);
        assert_eq!(
            log.back().unwrap().status,
            Some(200 + LOG_ENTRIES as u16 + 4)
        );
        // Disabled: nothing.
        hub.set_webhook_disabled(&admin, &hook.id, true)
            .await
            .unwrap();
        hub.delete_repo(&admin, &id).await.unwrap();
        assert!(rx.try_recv().is_err());
        // Retries double from a second.
        assert_eq!(retry_delay(2), Duration::from_secs(1));
        assert_eq!(retry_delay(5), Duration::from_secs(8));
    }

    #[test]
    fn the_ssrf_filter_keeps_metadata_and_local_addresses_out() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        for never in [
            "169.254.169.254",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "fe80::1",
            "::",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
        ] {
            assert!(!target_allowed(ip(never), true), "{never}");
        }
        for local in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.1.1",
            "172.16.0.1",
            "100.64.0.1",
            "::1",
            "fd12::1",
        ] {
            assert!(!target_allowed(ip(local), false), "{local}");
            assert!(target_allowed(ip(local), true), "{local}");
        }
        for public in ["93.184.216.34", "2606:4700::1111"] {
            assert!(target_allowed(ip(public), false), "{public}");
        }
    }
}
