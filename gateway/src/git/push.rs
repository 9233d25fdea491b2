//! Pushes (`git push`): receive-pack is ours. We advertise refs, parse the commands
//! ([`super::pkt`]), stream the pack into a quarantine where `git index-pack` indexes it,
//! check it with gix (`hub_repo::Quarantine::check`), and only then move objects in and update
//! refs with compare-and-swap under the per-repo lock. Pushes are atomic.

use super::pkt::{self, PushRequest, flush, write_pkt};
use super::process::ChannelReader;
use super::{Allowed, allow, git_response, git_slot};
use crate::AppState;
use crate::error::AppError;
use crate::util::blocking;
use axum::body::Body;
use axum::response::Response;
use http::{HeaderMap, header};
use hub_auth::Access;
use hub_protocol::repo::{RepoId, RepoType};
use hub_repo::{Quarantine, ReceiveError, RefCommand, Rejection};
use std::io::Read;
use std::net::IpAddr;

/// Largest pack one push may send (5 GiB); LFS content goes to the store, not into git.
const MAX_PACK_BYTES: u64 = 5 << 30;

/// Capabilities our receive-pack advertises.
const RECEIVE_CAPS: &str =
    "report-status delete-refs side-band-64k quiet ofs-delta object-format=sha1 agent=hubmesh";

/// The receive-pack advertisement: our refs and [`RECEIVE_CAPS`] (a capabilities line when
/// the repository has no ref yet).
pub(super) async fn advertise(state: &AppState, id: &RepoId) -> Result<Response, AppError> {
    let repos = state.repos().clone();
    let id = id.clone();
    let refs = blocking(move || Ok(repos.advertised_refs(&id)?)).await?;
    let mut body = Vec::new();
    write_pkt(&mut body, b"# service=git-receive-pack\n");
    flush(&mut body);
    if refs.is_empty() {
        let line = format!("{} capabilities^{{}}\0{RECEIVE_CAPS}\n", hub_repo::ZERO_ID);
        write_pkt(&mut body, line.as_bytes());
    }
    for (i, (name, target)) in refs.iter().enumerate() {
        let line = if i == 0 {
            format!("{target} {name}\0{RECEIVE_CAPS}\n")
        } else {
            format!("{target} {name}\n")
        };
        write_pkt(&mut body, line.as_bytes());
    }
    flush(&mut body);
    Ok(git_response(
        "application/x-git-receive-pack-advertisement",
        Body::from(body),
    ))
}

/// What one push came to, for the report.
struct PushOutcome {
    unpack: Result<(), String>,
    refs: Vec<(String, Result<(), String>)>,
}

pub(super) async fn receive_pack(
    state: AppState,
    kind: RepoType,
    ns: String,
    name: String,
    client: Option<IpAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, AppError> {
    let allowed = allow(&state, kind, &ns, &name, &headers, Access::Write).await?;
    if headers.contains_key(header::CONTENT_ENCODING) {
        return Err(AppError::BadRequest(
            "compressed receive-pack requests are not supported".into(),
        ));
    }
    // Held by the work below (which runs `git index-pack`), not by this future.
    let slot = git_slot(&state, client)?;
    let mut reader = ChannelReader::new(body, state.git_limiter().limits().idle_timeout);
    let worker_state = state.clone();
    let id = allowed.id.clone();
    // The work does not depend on this future: it runs to completion (or to the end of the
    // request body) on the blocking pool even if the client goes away.
    let (request, outcome) = blocking(move || {
        let _slot = slot;
        let request = pkt::read_push_request(&mut reader)
            .map_err(|e| AppError::BadRequest(format!("receive-pack request: {e}")))?;
        if request.is_probe() {
            return Ok((request, None));
        }
        let outcome = receive(&worker_state, &allowed, &request, &mut reader);
        Ok((request, Some(outcome)))
    })
    .await?;
    // git's probe before a large push (credentials checked above): `git http-backend`
    // answers it with an empty result, and so do we.
    let Some(outcome) = outcome else {
        return Ok(git_response(
            "application/x-git-receive-pack-result",
            Body::empty(),
        ));
    };
    let moved = outcome.unpack.is_ok() && outcome.refs.iter().all(|(_, r)| r.is_ok());
    if moved {
        state.hub().after_write(&id).await;
    }
    Ok(git_response(
        "application/x-git-receive-pack-result",
        Body::from(report(&request, &outcome)),
    ))
}

/// Receives the pack, checks it and moves refs; never panics, and on any refusal leaves the
/// repository as it was.
fn receive(
    state: &AppState,
    allowed: &Allowed,
    request: &PushRequest,
    pack: &mut dyn Read,
) -> PushOutcome {
    let commands = &request.commands;
    let fail_all = |reason: &str| PushOutcome {
        unpack: Ok(()),
        refs: commands
            .iter()
            .map(|c| (c.name.clone(), Err(reason.to_owned())))
            .collect(),
    };
    let unpack_error = |e: &dyn std::fmt::Display| {
        tracing::info!(repo = %allowed.id, error = %e, "push: unpack failed");
        PushOutcome {
            unpack: Err(e.to_string()),
            refs: commands
                .iter()
                .map(|c| (c.name.clone(), Err("unpacker error".to_owned())))
                .collect(),
        }
    };
    let quarantine: Quarantine = match state.repos().quarantine(&allowed.id) {
        Ok(q) => q,
        Err(e) => return unpack_error(&e),
    };
    if commands.iter().any(|c| !c.is_delete())
        && let Err(e) = quarantine.index_pack(pack, MAX_PACK_BYTES)
    {
        return match e {
            ReceiveError::TooLarge { .. } | ReceiveError::IndexPack { .. } => unpack_error(&e),
            other => unpack_error(&other),
        };
    }
    // An LFS pointer may only name an object uploaded to this repository (the store is
    // shared; a hash alone is no proof of having the content).
    let hub = state.hub();
    let mut has_lfs = |hex: &str| hub.pointer_allowed(&allowed.id, hex);
    let checks = match quarantine.check(commands, &mut has_lfs) {
        Ok(c) => c,
        Err(e) => return unpack_error(&e),
    };
    // The Hub's rights and atomicity on top of the checks (hub-core).
    let may_rewrite = hub_core::push::needs_rewrite(commands, &checks)
        && hub.may_rewrite_history(allowed.principal.as_ref(), &allowed.id, allowed.private);
    if let Err(rejections) = hub_core::push::verdict(commands, checks, may_rewrite) {
        tracing::info!(repo = %allowed.id, "push refused");
        return PushOutcome {
            unpack: Ok(()),
            refs: commands
                .iter()
                .zip(rejections)
                .map(|(c, reason)| (c.name.clone(), Err(reason.to_string())))
                .collect(),
        };
    }
    match state.repos().apply_push(quarantine, commands) {
        Ok(Ok(())) => {
            tracing::info!(repo = %allowed.id, refs = commands.len(), "push accepted");
            PushOutcome {
                unpack: Ok(()),
                refs: commands.iter().map(|c| (c.name.clone(), Ok(()))).collect(),
            }
        }
        Ok(Err(rejections)) => PushOutcome {
            unpack: Ok(()),
            refs: commands
                .iter()
                .zip(rejections)
                .map(|(c, r): (&RefCommand, Option<Rejection>)| {
                    (
                        c.name.clone(),
                        Err(r.unwrap_or(Rejection::Atomic).to_string()),
                    )
                })
                .collect(),
        },
        Err(e) => {
            tracing::error!(repo = %allowed.id, error = %e, "push: apply failed");
            fail_all("internal error")
        }
    }
}

/// The `report-status` answer, wrapped in side-band 1 when the client asked for it.
fn report(request: &PushRequest, outcome: &PushOutcome) -> Vec<u8> {
    if !request.has("report-status") {
        return if request.has("side-band-64k") {
            b"0000".to_vec()
        } else {
            Vec::new()
        };
    }
    let mut status = Vec::new();
    let unpack = match &outcome.unpack {
        Ok(()) => "unpack ok\n".to_owned(),
        Err(e) => format!("unpack {}\n", one_line(e)),
    };
    write_pkt(&mut status, unpack.as_bytes());
    for (name, result) in &outcome.refs {
        // The parser refused control characters in names already; never echo raw ones.
        let name = one_line(name);
        let line = match result {
            Ok(()) => format!("ok {name}\n"),
            Err(reason) => format!("ng {name} {}\n", one_line(reason)),
        };
        write_pkt(&mut status, line.as_bytes());
    }
    flush(&mut status);
    if !request.has("side-band-64k") {
        return status;
    }
    let mut out = Vec::new();
    for chunk in status.chunks(pkt::MAX_PKT_LEN - 5) {
        let mut data = Vec::with_capacity(chunk.len() + 1);
        data.push(1);
        data.extend_from_slice(chunk);
        write_pkt(&mut out, &data);
    }
    flush(&mut out);
    out
}

/// A reason fit for one pkt-line: no newlines, bounded.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(1000)
        .collect()
}
