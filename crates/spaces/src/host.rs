//! A Space by its host name: `NS-NAME.<node host>`, as the Hub serves `ns-name.hf.space`.
//!
//! A `Host` names a Space when its first label is the Space's `ns-name` and the rest is one
//! of this node's Space domains ([`crate::SpacesConfig::domains`], `localhost` by default).
//! The label is compared the Hub's way: lower case, with `_` and `.` written as `-`. Since a
//! `-` may sit in the namespace, the name or between them, every split is tried against the
//! Space repos that exist (at most [`MAX_LABEL`] bytes, so a few dozen lookups at most).

use hub_protocol::repo::{RepoId, RepoType};

/// Longest DNS label.
pub const MAX_LABEL: usize = 63;

/// The Space label of `host` (its port removed) when the rest of it is one of `domains`.
pub fn space_label<'a>(host: &'a str, domains: &[String]) -> Option<&'a str> {
    let host = strip_port(host);
    let (label, rest) = host.split_once('.')?;
    if label.is_empty() || label.len() > MAX_LABEL || !label.contains('-') {
        return None;
    }
    let rest = rest.trim_end_matches('.');
    domains
        .iter()
        .any(|d| d.eq_ignore_ascii_case(rest))
        .then_some(label)
}

/// The Spaces `label` may stand for, in the order they are tried (shortest namespace first).
pub fn candidates(label: &str) -> impl Iterator<Item = RepoId> + '_ {
    label
        .match_indices('-')
        .filter_map(move |(i, _)| RepoId::new(RepoType::Space, &label[..i], &label[i + 1..]).ok())
}

/// Whether `id` is the Space `label` names (the Hub's normalisation).
pub fn matches(label: &str, id: &RepoId) -> bool {
    let norm = |s: &str| s.to_ascii_lowercase().replace(['_', '.'], "-");
    norm(&format!("{}-{}", id.namespace(), id.name())) == label.to_ascii_lowercase()
}

fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_space_host_is_its_label_on_a_node_domain() {
        let domains = vec!["localhost".to_owned(), "hub.example".to_owned()];
        assert_eq!(
            space_label("admin-reverse.localhost:8080", &domains),
            Some("admin-reverse")
        );
        assert_eq!(
            space_label("Admin-Reverse.HUB.example", &domains),
            Some("Admin-Reverse")
        );
        assert_eq!(space_label("localhost:8080", &domains), None);
        assert_eq!(space_label("admin-reverse.other.example", &domains), None);
        assert_eq!(space_label("nodash.localhost", &domains), None);
        assert_eq!(space_label("127.0.0.1:8080", &domains), None);
        assert_eq!(space_label("[::1]:8080", &domains), None);
    }

    #[test]
    fn every_split_is_a_candidate() {
        let ids: Vec<String> = candidates("my-org-cool-app").map(|i| i.hub_id()).collect();
        assert_eq!(
            ids,
            ["my/org-cool-app", "my-org/cool-app", "my-org-cool/app"]
        );
        let id = RepoId::new(RepoType::Space, "my_org", "Cool.App").expect("id");
        assert!(matches("my-org-cool-app", &id));
        assert!(!matches("my-org-cool-apps", &id));
    }
}
