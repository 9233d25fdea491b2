//! A bounded LRU of whole responses to deterministic inference requests.
//!
//! A request is cacheable when its answer is a function of its input ([`is_deterministic`]):
//! greedy decoding (ties go to the lowest token id in hub-infer) or sampling with a fixed
//! seed (each sequence owns its seeded RNG, so the draw does not depend on the batch). Its key
//! ([`CacheKey::new`]) is the BLAKE3, under its own derive-key context, of:
//!
//! - the endpoint (`/v1/chat/completions`, `/generate`, …): the same body means different
//!   things, and gets differently shaped answers, on different endpoints;
//! - the model repo and the commit the request resolved to, so a new commit never serves an
//!   answer of the old weights;
//! - the request JSON in canonical form: object keys sorted at every level, no whitespace,
//!   numbers as serde_json prints them. `stream` is **included**: a streamed answer is an SSE
//!   byte stream (`text/event-stream`), a plain one a JSON document, and the cache stores the
//!   body as it was sent, so the two must not share an entry.
//!
//! Each field is length-prefixed, so no two inputs hash the same bytes. Values are the full
//! body and its content type; replaying one repeats the original's `id` and `created`
//! fields, which clients accept (OpenAI ids are opaque).
//!
//! The cache is bounded both in entries and in bytes (body plus content type); inserting
//! evicts the least recently used entries until both bounds hold, and a response larger than
//! the byte bound is not stored.

use hub_protocol::repo::RepoId;
use hub_protocol::signed::GitOid;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

/// The BLAKE3 of an endpoint, model, commit and canonical request (see the module docs).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey(pub [u8; 32]);

impl CacheKey {
    pub fn new(endpoint: &str, model: &RepoId, commit: &GitOid, request: &Value) -> Self {
        let mut canonical = Vec::new();
        write_canonical(request, &mut canonical);
        let mut h = blake3::Hasher::new_derive_key("hubmesh response cache v1");
        for field in [
            endpoint.as_bytes(),
            model.to_string().as_bytes(),
            commit,
            &canonical,
        ] {
            h.update(&(field.len() as u64).to_le_bytes());
            h.update(field);
        }
        Self(*h.finalize().as_bytes())
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({})", hex::encode(self.0))
    }
}

/// Writes `value` as JSON with sorted object keys and no whitespace, whatever map type
/// serde_json was built with.
fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend(Value::from(k.as_str()).to_string().as_bytes());
                out.push(b':');
                write_canonical(v, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(v, out);
            }
            out.push(b']');
        }
        scalar => out.extend(scalar.to_string().as_bytes()),
    }
}

/// Whether a request body's answer depends only on the body (module docs), for both request
/// shapes the gateway serves:
///
/// - **OpenAI** (`/v1/completions`, `/v1/chat/completions`): `temperature` defaults to 1, so
///   only an explicit `"temperature": 0` (or `"top_k": 1`) is greedy.
/// - **TGI / HF Inference API** (a body with `inputs`): greedy unless sampling is on, and as
///   in TGI any of `do_sample: true`, a `temperature` other than 1, `top_k` or `top_p` turns
///   it on; `top_k: 1` is greedy again.
///
/// Either way, an integer `seed` (top level or in `parameters`) makes the draw reproducible.
pub fn is_deterministic(request: &Value) -> bool {
    let Some(body) = request.as_object() else {
        return false;
    };
    let params = match body.get("parameters") {
        Some(Value::Object(p)) => Some(p),
        Some(Value::Null) | None => None,
        Some(_) => return false,
    };
    let get = |key: &str| {
        params
            .and_then(|p| p.get(key))
            .or_else(|| body.get(key))
            .filter(|v| !v.is_null())
    };
    if get("seed").is_some_and(Value::is_u64) || get("top_k").and_then(Value::as_u64) == Some(1) {
        return true;
    }
    let temperature = get("temperature").and_then(Value::as_f64);
    if body.contains_key("inputs") {
        let sampling = get("do_sample") == Some(&Value::Bool(true))
            || temperature.is_some_and(|t| t != 1.0)
            || get("top_k").is_some()
            || get("top_p").is_some();
        !sampling
    } else {
        temperature == Some(0.0)
    }
}

/// A stored answer: the body exactly as it was sent, and its `Content-Type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedResponse {
    pub content_type: String,
    pub body: Vec<u8>,
}

impl CachedResponse {
    fn cost(&self) -> usize {
        self.content_type.len() + self.body.len()
    }
}

#[derive(Debug)]
struct Slot {
    response: Arc<CachedResponse>,
    /// Position in `ResponseCache::recency`.
    tick: u64,
}

/// A least-recently-used cache bounded in entries and bytes (see the module docs).
#[derive(Debug)]
pub struct ResponseCache {
    max_entries: usize,
    max_bytes: usize,
    bytes: usize,
    tick: u64,
    slots: HashMap<CacheKey, Slot>,
    /// Ticks of last use, oldest first.
    recency: BTreeMap<u64, CacheKey>,
}

impl ResponseCache {
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        Self {
            max_entries,
            max_bytes,
            bytes: 0,
            tick: 0,
            slots: HashMap::new(),
            recency: BTreeMap::new(),
        }
    }

    /// The stored answer, marked as most recently used.
    pub fn get(&mut self, key: &CacheKey) -> Option<Arc<CachedResponse>> {
        let slot = self.slots.get_mut(key)?;
        self.recency.remove(&slot.tick);
        self.tick += 1;
        slot.tick = self.tick;
        self.recency.insert(self.tick, *key);
        Some(slot.response.clone())
    }

    /// Stores an answer (replacing one under the same key), evicting the least recently used
    /// ones to stay within bounds. Returns false, storing nothing, when it alone exceeds the
    /// byte bound or the cache holds no entries at all.
    pub fn insert(&mut self, key: CacheKey, response: CachedResponse) -> bool {
        let cost = response.cost();
        if cost > self.max_bytes || self.max_entries == 0 {
            return false;
        }
        self.remove(&key);
        while self.slots.len() >= self.max_entries || self.bytes + cost > self.max_bytes {
            let Some((_, oldest)) = self.recency.pop_first() else {
                break;
            };
            if let Some(slot) = self.slots.remove(&oldest) {
                self.bytes -= slot.response.cost();
            }
        }
        self.tick += 1;
        self.recency.insert(self.tick, key);
        self.bytes += cost;
        let response = Arc::new(response);
        self.slots.insert(
            key,
            Slot {
                response,
                tick: self.tick,
            },
        );
        true
    }

    /// Drops an entry; returns whether there was one.
    pub fn remove(&mut self, key: &CacheKey) -> bool {
        let Some(slot) = self.slots.remove(key) else {
            return false;
        };
        self.recency.remove(&slot.tick);
        self.bytes -= slot.response.cost();
        true
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Bytes held (bodies and content types).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hub_protocol::repo::RepoType;
    use serde_json::json;

    fn repo() -> RepoId {
        RepoId::parse(RepoType::Model, "org/tiny").unwrap()
    }

    fn key(request: Value) -> CacheKey {
        CacheKey::new("/v1/chat/completions", &repo(), &[1; 20], &request)
    }

    fn body(n: usize) -> CachedResponse {
        CachedResponse {
            content_type: "application/json".into(),
            body: vec![b'x'; n],
        }
    }

    #[test]
    fn key_is_canonical_and_binds_every_field() {
        let a: Value =
            serde_json::from_str(r#"{"b": {"y": 1, "x": [2, {"q": 0, "p": 1}]}, "a": 0}"#).unwrap();
        let b: Value =
            serde_json::from_str(r#"{"a":0,"b":{"x":[2,{"p":1,"q":0}],"y":1}}"#).unwrap();
        assert_eq!(key(a.clone()), key(b));
        let mut canonical = Vec::new();
        write_canonical(&a, &mut canonical);
        assert_eq!(canonical, br#"{"a":0,"b":{"x":[2,{"p":1,"q":0}],"y":1}}"#);

        let base = key(json!({"temperature": 0}));
        assert_ne!(base, key(json!({"temperature": 0, "stream": true})));
        assert_ne!(base, key(json!({"temperature": 0, "max_tokens": 5})));
        let req = json!({"temperature": 0});
        assert_ne!(
            base,
            CacheKey::new("/v1/completions", &repo(), &[1; 20], &req)
        );
        assert_ne!(
            base,
            CacheKey::new("/v1/chat/completions", &repo(), &[2; 20], &req)
        );
        let other = RepoId::parse(RepoType::Model, "org/tiny2").unwrap();
        assert_ne!(
            base,
            CacheKey::new("/v1/chat/completions", &other, &[1; 20], &req)
        );
    }

    #[test]
    fn determinism_rules() {
        for yes in [
            json!({"messages": [], "temperature": 0}),
            json!({"messages": [], "temperature": 0.0, "top_p": 0.5}),
            json!({"prompt": "x", "temperature": 0.8, "seed": 7}),
            json!({"prompt": "x", "top_k": 1}),
            json!({"inputs": "x"}),
            json!({"inputs": "x", "parameters": {"max_new_tokens": 5, "do_sample": false}}),
            json!({"inputs": "x", "parameters": {"temperature": 1.0}}),
            json!({"inputs": "x", "parameters": {"do_sample": true, "seed": 3}}),
            json!({"inputs": "x", "parameters": {"top_k": 1, "temperature": 0.5}}),
        ] {
            assert!(is_deterministic(&yes), "{yes}");
        }
        for no in [
            json!({"messages": []}),
            json!({"messages": [], "temperature": 0.7}),
            json!({"messages": [], "seed": -1}),
            json!({"messages": [], "seed": null}),
            json!({"inputs": "x", "parameters": {"do_sample": true}}),
            json!({"inputs": "x", "parameters": {"temperature": 0.5}}),
            json!({"inputs": "x", "parameters": {"top_p": 0.9}}),
            json!({"inputs": "x", "parameters": "junk"}),
            json!([1, 2]),
        ] {
            assert!(!is_deterministic(&no), "{no}");
        }
    }

    #[test]
    fn lru_by_entries() {
        let mut c = ResponseCache::new(2, 1 << 20);
        let (k1, k2, k3) = (key(json!(1)), key(json!(2)), key(json!(3)));
        assert!(c.insert(k1, body(1)));
        assert!(c.insert(k2, body(2)));
        assert!(c.get(&k1).is_some()); // k2 is now the least recently used
        assert!(c.insert(k3, body(3)));
        assert!(c.get(&k2).is_none());
        assert_eq!(c.get(&k1).unwrap().body.len(), 1);
        assert_eq!(c.get(&k3).unwrap().body.len(), 3);
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn lru_by_bytes() {
        let ct = "application/json".len();
        let mut c = ResponseCache::new(100, 3 * (ct + 10));
        let keys: Vec<_> = (0..4).map(|i| key(json!(i))).collect();
        for k in &keys[..3] {
            assert!(c.insert(*k, body(10)));
        }
        assert_eq!(c.bytes(), 3 * (ct + 10));
        // A bigger answer evicts the two oldest.
        assert!(c.insert(keys[3], body(20)));
        assert!(c.get(&keys[0]).is_none() && c.get(&keys[1]).is_none());
        assert!(c.get(&keys[2]).is_some() && c.get(&keys[3]).is_some());
        assert_eq!(c.bytes(), 2 * ct + 30);
        // Too large to ever fit: refused, nothing evicted.
        assert!(!c.insert(keys[0], body(4 * (ct + 10))));
        assert_eq!(c.len(), 2);
        // Replacing an entry accounts for the old one.
        assert!(c.insert(keys[3], body(5)));
        assert_eq!(c.bytes(), 2 * ct + 15);
        assert!(c.remove(&keys[3]));
        assert_eq!((c.len(), c.bytes()), (1, ct + 10));
        assert!(!ResponseCache::new(0, 100).insert(keys[0], body(1)));
    }
}
