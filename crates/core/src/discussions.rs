//! Discussions and pull requests, stored in the repository they belong to.
//!
//! **Storage.** Every discussion of a repo lives in the repo itself, under one ref,
//! `refs/hub/discussions` (`hub_repo`'s records: folder `N/` per discussion, one JSON file
//! per event, one commit per append). A pull request is a discussion whose first event says
//! so, plus its head branch `refs/pr/N`. Both are part of the refs the hosting node signs and
//! gossips
//! ([`hub_repo::REPLICATED_REF_PREFIXES`]), so a discussion replicates with its repo through
//! the existing machinery (signed update → pack of the difference → replica refs), and every
//! node shows the same thread: the signed tip pins every event by hash. Writes go to the
//! hosting node ([`Hub::hosted_here`]), which signs, as for commits. See ADR 0008.
//!
//! **Rights**, as on the Hub: anyone who may read the repo (with a token) opens discussions
//! and pull requests and comments; the author of a discussion or comment, or whoever may
//! write to the repo, changes its title or status and edits or hides a comment; merging needs
//! write access. A merge is a fast-forward of the target branch when it has not moved since the
//! pull request started, else a merge commit, refused when both sides changed a path.

use crate::{AccessError, Error, Hub, Need, blocking};
use hub_auth::Principal;
use hub_protocol::repo::RepoId;
use hub_repo::{Merged, RepoError};
use serde::{Deserialize, Serialize};

/// The ref holding every discussion of a repo.
pub const DISCUSSIONS_REF: &str = "refs/hub/discussions";
/// Longest title and comment accepted.
pub const MAX_TITLE: usize = 300;
pub const MAX_COMMENT: usize = 64 * 1024;

/// One stored event (the JSON of a log entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub id: String,
    pub author: String,
    /// Seconds since the Unix epoch.
    pub created_at: i64,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum EventKind {
    /// The first event: a discussion (or pull request into `target` from `base`) opens.
    Open {
        title: String,
        pull_request: bool,
        #[serde(default)]
        target: Option<String>,
        #[serde(default)]
        base: Option<String>,
    },
    Comment {
        content: String,
    },
    CommentEdit {
        target: String,
        content: String,
    },
    CommentHide {
        target: String,
    },
    StatusChange {
        status: Status,
        #[serde(default)]
        merge_commit: Option<String>,
    },
    TitleChange {
        from: String,
        to: String,
    },
    Commit {
        oid: String,
        subject: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Open,
    Closed,
    Merged,
    Draft,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Closed => "closed",
            Status::Merged => "merged",
            Status::Draft => "draft",
        }
    }
}

/// An event as clients see it: comments with their edits and hides folded in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: String,
    pub author: String,
    pub created_at: i64,
    pub view: EventView,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventView {
    Comment {
        content: String,
        edited: bool,
        hidden: bool,
    },
    StatusChange {
        status: Status,
    },
    TitleChange {
        from: String,
        to: String,
    },
    Commit {
        oid: String,
        subject: String,
    },
}

/// A discussion or pull request, folded from its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discussion {
    pub num: u64,
    pub title: String,
    pub status: Status,
    pub author: String,
    pub created_at: i64,
    pub pull_request: bool,
    /// Pull requests: the branch they merge into (`refs/heads/main`).
    pub target: Option<String>,
    pub merge_commit: Option<String>,
    pub events: Vec<Event>,
}

impl Discussion {
    /// Folds a log; `None` when it does not start with an `Open` event.
    pub fn fold(num: u64, log: &[StoredEvent]) -> Option<Self> {
        let (first, rest) = log.split_first()?;
        let EventKind::Open {
            title,
            pull_request,
            target,
            ..
        } = &first.kind
        else {
            return None;
        };
        let mut d = Discussion {
            num,
            title: title.clone(),
            status: Status::Open,
            author: first.author.clone(),
            created_at: first.created_at,
            pull_request: *pull_request,
            target: target.clone(),
            merge_commit: None,
            events: Vec::new(),
        };
        for e in rest {
            let view = match &e.kind {
                EventKind::Open { .. } => continue,
                EventKind::Comment { content } => EventView::Comment {
                    content: content.clone(),
                    edited: false,
                    hidden: false,
                },
                EventKind::CommentEdit { target, content } => {
                    if let Some(EventView::Comment {
                        content: c, edited, ..
                    }) = d.comment_mut(target)
                    {
                        *c = content.clone();
                        *edited = true;
                    }
                    continue;
                }
                EventKind::CommentHide { target } => {
                    if let Some(EventView::Comment {
                        content, hidden, ..
                    }) = d.comment_mut(target)
                    {
                        content.clear();
                        *hidden = true;
                    }
                    continue;
                }
                EventKind::StatusChange {
                    status,
                    merge_commit,
                } => {
                    d.status = *status;
                    if merge_commit.is_some() {
                        d.merge_commit = merge_commit.clone();
                    }
                    EventView::StatusChange { status: *status }
                }
                EventKind::TitleChange { from, to } => {
                    d.title = to.clone();
                    EventView::TitleChange {
                        from: from.clone(),
                        to: to.clone(),
                    }
                }
                EventKind::Commit { oid, subject } => EventView::Commit {
                    oid: oid.clone(),
                    subject: subject.clone(),
                },
            };
            d.events.push(Event {
                id: e.id.clone(),
                author: e.author.clone(),
                created_at: e.created_at,
                view,
            });
        }
        Some(d)
    }

    fn comment_mut(&mut self, id: &str) -> Option<&mut EventView> {
        self.events
            .iter_mut()
            .find(|e| e.id == id && matches!(e.view, EventView::Comment { .. }))
            .map(|e| &mut e.view)
    }

    /// The event with id `id`.
    pub fn event(&self, id: &str) -> Option<&Event> {
        self.events.iter().find(|e| e.id == id)
    }
}

/// Why a discussion operation was refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscussionError {
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error("Discussion #{num} not found")]
    NotFound { num: u64 },
    #[error("Comment {id} not found")]
    CommentNotFound { id: String },
    #[error("Discussion #{num} is not a pull request")]
    NotPullRequest { num: u64 },
    #[error("Pull request #{num} is {}", status.as_str())]
    NotOpen { num: u64, status: Status },
    #[error("Merge conflict in {}", paths.join(", "))]
    Conflicts { paths: Vec<String> },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Storage(#[from] Error),
}

impl From<tokio::task::JoinError> for DiscussionError {
    fn from(e: tokio::task::JoinError) -> Self {
        DiscussionError::Storage(e.into())
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A new event id: 24 hex digits (the Hub's ids are that long), derived from where and when
/// it is written, so two events never share one.
fn event_id(id: &RepoId, num: Option<u64>, seq: usize, author: &str, entry: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let seed = format!("{id}\0{num:?}\0{seq}\0{author}\0{nanos}\0{entry}");
    hub_protocol::manifest::Hash::of(seed.as_bytes()).to_string()[..24].to_owned()
}

/// The stored events of discussion `num` of `id` (blocking).
fn read(hub: &Hub, id: &RepoId, num: u64) -> Result<Vec<StoredEvent>, DiscussionError> {
    let entries = match hub.repos().read_records(id, DISCUSSIONS_REF, num) {
        Ok(entries) => entries,
        Err(RepoError::RevisionNotFound { .. }) => return Err(DiscussionError::NotFound { num }),
        Err(e) => return Err(e.into()),
    };
    // An entry that does not parse (written by a newer node) is left out, not fatal.
    Ok(entries
        .iter()
        .filter_map(|e| serde_json::from_slice(e).ok())
        .collect())
}

fn load(hub: &Hub, id: &RepoId, num: u64) -> Result<Discussion, DiscussionError> {
    Discussion::fold(num, &read(hub, id, num)?).ok_or(DiscussionError::NotFound { num })
}

/// Appends `kind` by `author` to discussion `num`, or to a new one (`None`); returns the
/// discussion's number and the event (blocking).
fn append(
    hub: &Hub,
    id: &RepoId,
    num: Option<u64>,
    seq: usize,
    author: &Principal,
    kind: EventKind,
) -> Result<(u64, StoredEvent), DiscussionError> {
    let entry_kind = serde_json::to_string(&kind)
        .map_err(|e| DiscussionError::Invalid(format!("encode event: {e}")))?;
    let event = StoredEvent {
        id: event_id(id, num, seq, &author.user.name, &entry_kind),
        author: author.user.name.clone(),
        created_at: now(),
        kind,
    };
    let bytes = serde_json::to_vec(&event)
        .map_err(|e| DiscussionError::Invalid(format!("encode event: {e}")))?;
    let message = match num {
        Some(num) => format!("discussion #{num}"),
        None => "new discussion".to_owned(),
    };
    match hub.repos().append_record(
        id,
        DISCUSSIONS_REF,
        num,
        &bytes,
        &message,
        &crate::author_of(author),
    ) {
        Ok((num, _)) => Ok((num, event)),
        Err(RepoError::RevisionNotFound { .. }) => Err(DiscussionError::NotFound {
            num: num.unwrap_or_default(),
        }),
        Err(e) => Err(e.into()),
    }
}

fn check_text(what: &str, text: &str, max: usize) -> Result<(), DiscussionError> {
    if text.trim().is_empty() {
        return Err(DiscussionError::Invalid(format!(
            "{what} must not be empty"
        )));
    }
    if text.len() > max {
        return Err(DiscussionError::Invalid(format!(
            "{what} is longer than {max} bytes"
        )));
    }
    Ok(())
}

/// A new pull request's head: `refs/pr/N`.
pub fn pr_ref(num: u64) -> String {
    format!("refs/pr/{num}")
}

impl Hub {
    /// May `principal` take part in discussions of `id` here: read access, with a token, and
    /// the repo hosted here (writes are the hosting node's, which signs them).
    async fn participant(
        &self,
        principal: &Principal,
        id: &RepoId,
    ) -> Result<crate::Granted, DiscussionError> {
        let granted = self.access(Some(principal), id, Need::Read).await?;
        self.hosted_here(id).await?;
        Ok(granted)
    }

    /// Whether `principal` may write to `id` (moderates its discussions).
    async fn is_writer(&self, principal: &Principal, id: &RepoId, private: bool) -> bool {
        self.decide(Some(principal), id, private, Need::Write)
            .await
            .is_ok()
    }

    /// The discussions of `id`, newest first (the caller checked read access).
    pub async fn discussions(&self, id: &RepoId) -> Result<Vec<Discussion>, DiscussionError> {
        let (hub, id) = (self.clone(), id.clone());
        blocking(move || {
            let mut nums = hub.repos().record_threads(&id, DISCUSSIONS_REF)?;
            nums.sort_unstable_by(|a, b| b.cmp(a));
            let mut out = Vec::with_capacity(nums.len());
            for num in nums {
                if let Ok(d) = load(&hub, &id, num) {
                    out.push(d);
                }
            }
            Ok::<_, DiscussionError>(out)
        })
        .await
    }

    /// Discussion `num` of `id` (the caller checked read access).
    pub async fn discussion(&self, id: &RepoId, num: u64) -> Result<Discussion, DiscussionError> {
        let (hub, id) = (self.clone(), id.clone());
        blocking(move || load(&hub, &id, num)).await
    }

    /// Opens a discussion, or with `pr_target` a pull request into that branch (its head
    /// `refs/pr/N` starts at the branch's tip), with `description` as its first comment;
    /// runs the after-write hook.
    pub async fn open_discussion(
        &self,
        principal: &Principal,
        id: &RepoId,
        title: &str,
        description: &str,
        pr_target: Option<&str>,
    ) -> Result<Discussion, DiscussionError> {
        let pull_request = pr_target.is_some();
        let pr_target = pr_target.map(|t| t.strip_prefix("refs/heads/").unwrap_or(t).to_owned());
        self.participant(principal, id).await?;
        check_text("title", title, MAX_TITLE)?;
        if description.len() > MAX_COMMENT {
            return Err(DiscussionError::Invalid("description too long".into()));
        }
        let (hub, repo, who) = (self.clone(), id.clone(), principal.clone());
        let (title, description) = (title.trim().to_owned(), description.to_owned());
        let num = blocking(move || {
            let base = match &pr_target {
                Some(branch) => Some(hub.repos().resolve(&repo, branch)?),
                None => None,
            };
            let open = EventKind::Open {
                title: title.clone(),
                pull_request,
                target: pr_target.as_ref().map(|b| format!("refs/heads/{b}")),
                base: base.clone(),
            };
            // The number is allocated under the repo's lock, by the append.
            let (num, _) = append(&hub, &repo, None, 0, &who, open)?;
            if let Some(base) = &base {
                hub.repos().create_branch(&repo, &pr_ref(num), Some(base))?;
            }
            if !description.trim().is_empty() {
                let comment = EventKind::Comment {
                    content: description.clone(),
                };
                append(&hub, &repo, Some(num), 1, &who, comment)?;
            }
            Ok::<_, DiscussionError>(num)
        })
        .await?;
        self.after_write(id).await;
        let opened = self.discussion(id, num).await?;
        self.notify_discussion(id, &opened, "create", None).await;
        Ok(opened)
    }

    /// Queues the webhook event of a change to discussion `d` (with `comment`: a new one).
    async fn notify_discussion(
        &self,
        id: &RepoId,
        d: &Discussion,
        action: &'static str,
        comment: Option<&Event>,
    ) {
        let comment = comment.and_then(|e| match &e.view {
            EventView::Comment { content, .. } => {
                Some((e.id.clone(), e.author.clone(), content.clone()))
            }
            _ => None,
        });
        let event = crate::webhooks::DiscussionEvent {
            action,
            num: d.num,
            title: d.title.clone(),
            status: d.status.as_str().to_owned(),
            author: d.author.clone(),
            is_pull_request: d.pull_request,
            comment,
        };
        self.discussion_webhook(id, event).await;
    }

    /// Adds an event to discussion `num` after checking who may: comments by any
    /// participant; title and status by the discussion's author or a writer; edits and hides
    /// by the comment's author or a writer. Returns the folded event.
    pub async fn discussion_event(
        &self,
        principal: &Principal,
        id: &RepoId,
        num: u64,
        kind: EventKind,
    ) -> Result<Event, DiscussionError> {
        let granted = self.participant(principal, id).await?;
        let current = self.discussion(id, num).await?;
        let me = principal.user.name.as_str();
        let writer = || self.is_writer(principal, id, granted.meta.private);
        let target_id = match &kind {
            EventKind::Comment { content } => {
                check_text("comment", content, MAX_COMMENT)?;
                None
            }
            EventKind::TitleChange { to, .. } => {
                check_text("title", to, MAX_TITLE)?;
                if current.author != me && !writer().await {
                    return Err(forbidden(id));
                }
                None
            }
            EventKind::StatusChange { status, .. } => {
                if !matches!(status, Status::Open | Status::Closed) {
                    return Err(DiscussionError::Invalid(
                        "status must be open or closed".into(),
                    ));
                }
                if current.status == Status::Merged {
                    return Err(DiscussionError::NotOpen {
                        num,
                        status: current.status,
                    });
                }
                if current.author != me && !writer().await {
                    return Err(forbidden(id));
                }
                None
            }
            EventKind::CommentEdit { target, content } => {
                check_text("comment", content, MAX_COMMENT)?;
                Some(target.clone())
            }
            EventKind::CommentHide { target } => Some(target.clone()),
            EventKind::Open { .. } | EventKind::Commit { .. } => {
                return Err(DiscussionError::Invalid("not an event clients add".into()));
            }
        };
        if let Some(target) = &target_id {
            let Some(comment) = current
                .event(target)
                .filter(|e| matches!(e.view, EventView::Comment { .. }))
            else {
                return Err(DiscussionError::CommentNotFound { id: target.clone() });
            };
            if comment.author != me && !writer().await {
                return Err(forbidden(id));
            }
        }
        let kind = match kind {
            EventKind::TitleChange { to, .. } => EventKind::TitleChange {
                from: current.title.clone(),
                to: to.trim().to_owned(),
            },
            other => other,
        };
        let (hub, repo, who) = (self.clone(), id.clone(), principal.clone());
        let seq = current.events.len() + 1;
        let (_, stored) = blocking(move || append(&hub, &repo, Some(num), seq, &who, kind)).await?;
        self.after_write(id).await;
        let folded = self.discussion(id, num).await?;
        let new_comment = target_id.is_none() && matches!(stored.kind, EventKind::Comment { .. });
        let id_of = target_id.unwrap_or(stored.id);
        let event = folded
            .event(&id_of)
            .cloned()
            .ok_or(DiscussionError::CommentNotFound { id: id_of })?;
        if new_comment {
            self.notify_discussion(id, &folded, "create", Some(&event))
                .await;
        } else {
            self.notify_discussion(id, &folded, "update", None).await;
        }
        Ok(event)
    }

    /// Records `commit` (made on `refs/pr/N`) in pull request `num`'s thread.
    pub async fn record_pr_commit(
        &self,
        principal: &Principal,
        id: &RepoId,
        num: u64,
        oid: &str,
        subject: &str,
    ) -> Result<(), DiscussionError> {
        let (hub, repo, who) = (self.clone(), id.clone(), principal.clone());
        let kind = EventKind::Commit {
            oid: oid.to_owned(),
            subject: subject.to_owned(),
        };
        let recorded = blocking(move || {
            let seq = read(&hub, &repo, num)?.len();
            append(&hub, &repo, Some(num), seq, &who, kind)
        })
        .await;
        match recorded {
            Ok(_) => {}
            // A head with no thread (none can be opened without one): nothing to record.
            Err(DiscussionError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        }
        self.after_write(id).await;
        Ok(())
    }

    /// Merges pull request `num` into its target (write access needed), with an optional
    /// comment first; its status becomes `merged`.
    pub async fn merge_pull_request(
        &self,
        principal: &Principal,
        id: &RepoId,
        num: u64,
        comment: Option<&str>,
    ) -> Result<Discussion, DiscussionError> {
        self.access(Some(principal), id, Need::Write).await?;
        self.hosted_here(id).await?;
        let current = self.discussion(id, num).await?;
        if !current.pull_request {
            return Err(DiscussionError::NotPullRequest { num });
        }
        if current.status != Status::Open {
            return Err(DiscussionError::NotOpen {
                num,
                status: current.status,
            });
        }
        if let Some(c) = comment.filter(|c| !c.trim().is_empty()) {
            self.discussion_event(
                principal,
                id,
                num,
                EventKind::Comment {
                    content: c.to_owned(),
                },
            )
            .await?;
        }
        let (hub, repo, who) = (self.clone(), id.clone(), principal.clone());
        let title = current.title.clone();
        blocking(move || {
            let log = read(&hub, &repo, num)?;
            let Some(StoredEvent {
                kind:
                    EventKind::Open {
                        target: Some(target),
                        base: Some(base),
                        ..
                    },
                ..
            }) = log.first()
            else {
                return Err(DiscussionError::NotPullRequest { num });
            };
            let branch = target.strip_prefix("refs/heads/").unwrap_or(target);
            let message = format!("Merge pull request #{num}: {title}");
            let merged = hub.repos().merge_branch(
                &repo,
                branch,
                &pr_ref(num),
                base,
                &message,
                &crate::author_of(&who),
            )?;
            let commit = match merged {
                Merged::FastForward(c) | Merged::Commit(c) => c,
                Merged::Conflicts(paths) => return Err(DiscussionError::Conflicts { paths }),
            };
            let kind = EventKind::StatusChange {
                status: Status::Merged,
                merge_commit: Some(commit.id),
            };
            append(&hub, &repo, Some(num), log.len(), &who, kind)
        })
        .await?;
        self.after_write(id).await;
        let merged = self.discussion(id, num).await?;
        self.notify_discussion(id, &merged, "update", None).await;
        Ok(merged)
    }
}

fn forbidden(id: &RepoId) -> DiscussionError {
    DiscussionError::Access(AccessError::Forbidden {
        repo: id.clone(),
        need: Need::Write,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::hub;
    use hub_protocol::repo::RepoType;
    use hub_repo::{CommitRequest, FileContent, Operation};

    fn commit(hub: &Hub, id: &RepoId, branch: &str, who: &Principal, path: &str, body: &[u8]) {
        hub.repos()
            .commit(
                id,
                CommitRequest {
                    branch: branch.into(),
                    message: format!("edit {path}"),
                    author: crate::author_of(who),
                    parent: None,
                    operations: vec![Operation::Add {
                        path: path.into(),
                        content: FileContent::Regular(body.to_vec()),
                    }],
                },
            )
            .unwrap();
    }

    #[tokio::test]
    async fn a_thread_folds_its_events() {
        let (_dir, hub, admin) = hub();
        let id = RepoId::parse(RepoType::Model, "admin/d").unwrap();
        let grant = hub.access_create(&admin, &id).await.unwrap();
        hub.create_repo(grant, false).await.unwrap();
        let d = hub
            .open_discussion(&admin, &id, " Question ", "hello", None)
            .await
            .unwrap();
        assert_eq!(
            (d.num, d.title.as_str(), d.status),
            (1, "Question", Status::Open)
        );
        let first = d.events[0].id.clone();
        assert_eq!(first.len(), 24);
        let edit = EventKind::CommentEdit {
            target: first.clone(),
            content: "hello again".into(),
        };
        let edited = hub.discussion_event(&admin, &id, 1, edit).await.unwrap();
        assert_eq!(
            edited.view,
            EventView::Comment {
                content: "hello again".into(),
                edited: true,
                hidden: false
            }
        );
        let rename = EventKind::TitleChange {
            from: String::new(),
            to: "Renamed".into(),
        };
        hub.discussion_event(&admin, &id, 1, rename).await.unwrap();
        let close = EventKind::StatusChange {
            status: Status::Closed,
            merge_commit: None,
        };
        hub.discussion_event(&admin, &id, 1, close).await.unwrap();
        hub.discussion_event(&admin, &id, 1, EventKind::CommentHide { target: first })
            .await
            .unwrap();
        let d = hub.discussion(&id, 1).await.unwrap();
        assert_eq!((d.title.as_str(), d.status), ("Renamed", Status::Closed));
        assert!(matches!(
            &d.events[0].view,
            EventView::Comment { hidden: true, content, .. } if content.is_empty()
        ));
        assert_eq!(d.events.len(), 3);
        assert!(matches!(
            hub.discussion(&id, 9).await,
            Err(DiscussionError::NotFound { num: 9 })
        ));
        let second = hub
            .open_discussion(&admin, &id, "Two", "", None)
            .await
            .unwrap();
        assert_eq!(second.num, 2);
        assert_eq!(
            hub.discussions(&id)
                .await
                .unwrap()
                .iter()
                .map(|d| d.num)
                .collect::<Vec<_>>(),
            [2, 1]
        );
        assert!(matches!(
            hub.open_discussion(&admin, &id, "  ", "", None).await,
            Err(DiscussionError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn pull_requests_merge_fast_forward_or_by_commit_and_refuse_conflicts() {
        let (_dir, hub, admin) = hub();
        let id = RepoId::parse(RepoType::Model, "admin/pr").unwrap();
        let grant = hub.access_create(&admin, &id).await.unwrap();
        hub.create_repo(grant, false).await.unwrap();
        // Fast-forward: main has not moved.
        let pr = hub
            .open_discussion(&admin, &id, "ff", "", Some("main"))
            .await
            .unwrap();
        commit(&hub, &id, &pr_ref(pr.num), &admin, "a.txt", b"a");
        let merged = hub
            .merge_pull_request(&admin, &id, pr.num, None)
            .await
            .unwrap();
        assert_eq!(merged.status, Status::Merged);
        assert_eq!(
            hub.repos().resolve(&id, "main").unwrap(),
            hub.repos().resolve(&id, &pr_ref(pr.num)).unwrap()
        );
        assert!(matches!(
            hub.merge_pull_request(&admin, &id, pr.num, None).await,
            Err(DiscussionError::NotOpen { .. })
        ));
        // A merge commit: main moved, on other paths.
        let pr = hub
            .open_discussion(&admin, &id, "mc", "", Some("main"))
            .await
            .unwrap();
        commit(&hub, &id, &pr_ref(pr.num), &admin, "b.txt", b"b");
        commit(&hub, &id, "main", &admin, "c.txt", b"c");
        let merged = hub
            .merge_pull_request(&admin, &id, pr.num, Some("lgtm"))
            .await
            .unwrap();
        let main = hub.repos().history(&id, "main", 1).unwrap();
        assert_eq!(main[0].parents.len(), 2);
        assert_eq!(merged.merge_commit.as_deref(), Some(main[0].id.as_str()));
        let files: Vec<String> = hub
            .repos()
            .list_tree(&id, "main", "", true)
            .unwrap()
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert!(
            ["a.txt", "b.txt", "c.txt"]
                .iter()
                .all(|p| files.contains(&p.to_string()))
        );
        // A conflict: both sides changed a.txt.
        let pr = hub
            .open_discussion(&admin, &id, "cf", "", Some("main"))
            .await
            .unwrap();
        commit(&hub, &id, &pr_ref(pr.num), &admin, "a.txt", b"theirs");
        commit(&hub, &id, "main", &admin, "a.txt", b"ours");
        let head = hub.repos().resolve(&id, "main").unwrap();
        assert!(matches!(
            hub.merge_pull_request(&admin, &id, pr.num, None).await,
            Err(DiscussionError::Conflicts { paths }) if paths == ["a.txt"]
        ));
        assert_eq!(hub.repos().resolve(&id, "main").unwrap(), head);
        // A discussion is not a pull request.
        let d = hub
            .open_discussion(&admin, &id, "q", "", None)
            .await
            .unwrap();
        assert!(matches!(
            hub.merge_pull_request(&admin, &id, d.num, None).await,
            Err(DiscussionError::NotPullRequest { .. })
        ));
    }
}
