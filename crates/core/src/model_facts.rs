//! What `model_info` tells about a model's files, read from the files themselves as the Hub
//! does: `safetensors` (parameter counts by dtype, from the headers of the root
//! `*.safetensors` files), `gguf` (architecture, context length, parameter count, from the
//! header of the root `*.gguf` file) and `config` (the root `config.json`).
//!
//! Only headers are read, each bounded ([`MAX_HEADER`]); a file that is malformed, too big to
//! be a header, or whose content this node does not hold is left out of the answer (a partial
//! count would be wrong), never an error of the request.

use crate::{Error, Hub, blocking};
use hub_protocol::repo::RepoId;
use hub_repo::{EntryKind, Repos, TreeEntry};
use hub_store::{Sha256, Store};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::io::Read;

/// Largest header read from a safetensors or GGUF file, and largest `config.json`.
pub const MAX_HEADER: u64 = 16 * 1024 * 1024;
/// Most tensors or metadata entries a GGUF header may declare before it is taken as bogus.
const MAX_GGUF_ITEMS: u64 = 1 << 20;

/// The facts of one revision of a model (all optional).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelFacts {
    /// `{"parameters": {dtype: count}, "total": n}`.
    pub safetensors: Option<Value>,
    /// `{"total", "architecture", "context_length"}`.
    pub gguf: Option<Value>,
    /// The root `config.json`, when it is a JSON object.
    pub config: Option<Map<String, Value>>,
}

/// Reads the facts of `commit` of `id` (blocking).
pub fn model_facts(
    repos: &Repos,
    store: &Store,
    id: &RepoId,
    commit: &str,
) -> Result<ModelFacts, Error> {
    let entries = repos.list_tree(id, commit, "", false)?;
    let files: Vec<&TreeEntry> = entries
        .iter()
        .filter(|e| e.kind == EntryKind::File)
        .collect();
    let mut facts = ModelFacts::default();

    let safetensors: Vec<&&TreeEntry> = files
        .iter()
        .filter(|e| e.path.ends_with(".safetensors"))
        .collect();
    if !safetensors.is_empty() {
        let mut by_dtype: BTreeMap<String, u64> = BTreeMap::new();
        let mut complete = true;
        for entry in safetensors {
            match open(repos, store, id, commit, entry)?
                .and_then(|r| safetensors_params(r).ok().flatten())
            {
                Some(counts) => {
                    for (dtype, n) in counts {
                        *by_dtype.entry(dtype).or_default() += n;
                    }
                }
                None => complete = false,
            }
        }
        if complete {
            let total: u64 = by_dtype.values().sum();
            facts.safetensors = Some(json!({ "parameters": by_dtype, "total": total }));
        }
    }

    if let Some(entry) = files.iter().find(|e| e.path.ends_with(".gguf"))
        && let Some(reader) = open(repos, store, id, commit, entry)?
    {
        facts.gguf = gguf_facts(reader).ok().flatten();
    }

    if let Some(entry) = files.iter().find(|e| e.path == "config.json")
        && entry.lfs.is_none()
        && entry.size <= MAX_HEADER
    {
        let (_, bytes) = repos.file(id, commit, &entry.path)?;
        if let Ok(Value::Object(map)) = serde_json::from_slice(&bytes) {
            facts.config = Some(map);
        }
    }
    Ok(facts)
}

/// A reader of the file's content: the git blob, or the LFS object when this repo holds it.
fn open(
    repos: &Repos,
    store: &Store,
    id: &RepoId,
    commit: &str,
    entry: &TreeEntry,
) -> Result<Option<Box<dyn Read>>, Error> {
    match &entry.lfs {
        None => {
            let (_, bytes) = repos.file(id, commit, &entry.path)?;
            Ok(Some(Box::new(std::io::Cursor::new(bytes))))
        }
        Some(pointer) => {
            let Ok(sha) = pointer.sha256.parse::<Sha256>() else {
                return Ok(None);
            };
            if !crate::lfs_objects::belongs(repos, store, id, &sha)? {
                return Ok(None);
            }
            Ok(Some(Box::new(store.open_file(&sha)?)))
        }
    }
}

/// Parameter counts by dtype from a safetensors header; `None` when it is not one.
pub fn safetensors_params(mut r: impl Read) -> std::io::Result<Option<BTreeMap<String, u64>>> {
    let mut len = [0u8; 8];
    r.read_exact(&mut len)?;
    let len = u64::from_le_bytes(len);
    if len > MAX_HEADER {
        return Ok(None);
    }
    let mut header = Vec::with_capacity(len as usize);
    r.take(len).read_to_end(&mut header)?;
    if header.len() as u64 != len {
        return Ok(None);
    }
    let Ok(Value::Object(tensors)) = serde_json::from_slice::<Value>(&header) else {
        return Ok(None);
    };
    let mut out = BTreeMap::new();
    for (name, tensor) in tensors {
        if name == "__metadata__" {
            continue;
        }
        let (Some(dtype), Some(shape)) = (
            tensor.get("dtype").and_then(Value::as_str),
            tensor.get("shape").and_then(Value::as_array),
        ) else {
            return Ok(None);
        };
        let mut n: u64 = 1;
        for dim in shape {
            let Some(d) = dim.as_u64() else {
                return Ok(None);
            };
            let Some(m) = n.checked_mul(d) else {
                return Ok(None);
            };
            n = m;
        }
        let slot: &mut u64 = out.entry(dtype.to_owned()).or_default();
        *slot = slot.saturating_add(n);
    }
    Ok(Some(out))
}

/// A GGUF header's facts: `general.architecture`, `{arch}.context_length` and the parameter
/// count (the tensors' elements); `None` when it is not a GGUF v2/v3 file.
pub fn gguf_facts(r: impl Read) -> std::io::Result<Option<Value>> {
    let mut r = r.take(MAX_HEADER);
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic)?;
    if &magic != b"GGUF" {
        return Ok(None);
    }
    let version = read_u32(&mut r)?;
    if !(2..=3).contains(&version) {
        return Ok(None);
    }
    let tensors = read_u64(&mut r)?;
    let kvs = read_u64(&mut r)?;
    if tensors > MAX_GGUF_ITEMS || kvs > MAX_GGUF_ITEMS {
        return Ok(None);
    }
    let mut meta: BTreeMap<String, Value> = BTreeMap::new();
    for _ in 0..kvs {
        let key = read_string(&mut r)?;
        let kind = read_u32(&mut r)?;
        let Some(value) = gguf_value(&mut r, kind, 0)? else {
            return Ok(None);
        };
        meta.insert(key, value);
    }
    let mut total: u64 = 0;
    for _ in 0..tensors {
        let _name = read_string(&mut r)?;
        let dims = read_u32(&mut r)?;
        if dims > 8 {
            return Ok(None);
        }
        let mut n: u64 = 1;
        for _ in 0..dims {
            n = n.saturating_mul(read_u64(&mut r)?);
        }
        let _kind = read_u32(&mut r)?;
        let _offset = read_u64(&mut r)?;
        total = total.saturating_add(n);
    }
    let architecture = meta
        .get("general.architecture")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let mut out = json!({ "total": total });
    if let Some(arch) = architecture {
        if let Some(ctx) = meta.get(&format!("{arch}.context_length")) {
            out["context_length"] = ctx.clone();
        }
        out["architecture"] = json!(arch);
    }
    Ok(Some(out))
}

fn read_u32(r: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_u64(r: &mut impl Read) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn read_string(r: &mut impl Read) -> std::io::Result<String> {
    let len = read_u64(r)?;
    if len > 1 << 20 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "gguf string too long",
        ));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    r.take(len).read_to_end(&mut bytes)?;
    if bytes.len() as u64 != len {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// One GGUF metadata value of type `kind`; arrays are read and dropped (kept as `null`).
fn gguf_value(r: &mut impl Read, kind: u32, depth: u8) -> std::io::Result<Option<Value>> {
    Ok(Some(match kind {
        0 | 1 | 7 => {
            let mut b = [0u8; 1];
            r.read_exact(&mut b)?;
            match kind {
                0 => json!(b[0]),
                1 => json!(b[0] as i8),
                _ => json!(b[0] != 0),
            }
        }
        2 | 3 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b)?;
            if kind == 2 {
                json!(u16::from_le_bytes(b))
            } else {
                json!(i16::from_le_bytes(b))
            }
        }
        4 => json!(read_u32(r)?),
        5 => json!(read_u32(r)? as i32),
        6 => json!(f32::from_bits(read_u32(r)?)),
        10 => json!(read_u64(r)?),
        11 => json!(read_u64(r)? as i64),
        12 => json!(f64::from_bits(read_u64(r)?)),
        8 => json!(read_string(r)?),
        9 => {
            if depth > 2 {
                return Ok(None);
            }
            let inner = read_u32(r)?;
            let n = read_u64(r)?;
            if n > MAX_GGUF_ITEMS * 4 {
                return Ok(None);
            }
            for _ in 0..n {
                if gguf_value(r, inner, depth + 1)?.is_none() {
                    return Ok(None);
                }
            }
            Value::Null
        }
        _ => return Ok(None),
    }))
}

impl Hub {
    /// [`model_facts`] on a blocking thread.
    pub async fn model_facts(&self, id: &RepoId, commit: &str) -> Result<ModelFacts, Error> {
        let (repos, store, id, commit) = (
            self.repos().clone(),
            self.store().clone(),
            id.clone(),
            commit.to_owned(),
        );
        blocking(move || model_facts(&repos, &store, &id, &commit)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn safetensors(header: &str) -> Vec<u8> {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out
    }

    #[test]
    fn safetensors_counts_by_dtype() {
        let file = safetensors(
            r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"b":{"dtype":"BF16","shape":[4],"data_offsets":[24,32]},"c":{"dtype":"F32","shape":[],"data_offsets":[32,36]}}"#,
        );
        let counts = safetensors_params(file.as_slice()).unwrap().unwrap();
        assert_eq!(counts["F32"], 7);
        assert_eq!(counts["BF16"], 4);
    }

    #[test]
    fn bad_safetensors_headers_are_none_or_errors_never_panics() {
        assert!(safetensors_params(&b"\x05"[..]).is_err());
        let huge = u64::MAX.to_le_bytes();
        assert_eq!(safetensors_params(&huge[..]).unwrap(), None);
        assert_eq!(
            safetensors_params(safetensors("[1,2]").as_slice()).unwrap(),
            None
        );
        let overflow = safetensors(
            r#"{"a":{"dtype":"F32","shape":[18446744073709551615,4],"data_offsets":[0,0]}}"#,
        );
        assert_eq!(safetensors_params(overflow.as_slice()).unwrap(), None);
        let short = safetensors(r#"{"a":1}"#);
        assert!(
            safetensors_params(&short[..short.len() - 2])
                .unwrap()
                .is_none()
        );
    }

    fn gguf_string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    #[test]
    fn gguf_header_facts() {
        let mut f = b"GGUF".to_vec();
        f.extend_from_slice(&3u32.to_le_bytes());
        f.extend_from_slice(&2u64.to_le_bytes()); // tensors
        f.extend_from_slice(&3u64.to_le_bytes()); // kvs
        gguf_string(&mut f, "general.architecture");
        f.extend_from_slice(&8u32.to_le_bytes());
        gguf_string(&mut f, "llama");
        gguf_string(&mut f, "llama.context_length");
        f.extend_from_slice(&4u32.to_le_bytes());
        f.extend_from_slice(&2048u32.to_le_bytes());
        gguf_string(&mut f, "tokenizer.ggml.tokens");
        f.extend_from_slice(&9u32.to_le_bytes());
        f.extend_from_slice(&8u32.to_le_bytes());
        f.extend_from_slice(&2u64.to_le_bytes());
        gguf_string(&mut f, "a");
        gguf_string(&mut f, "b");
        for (name, dims) in [("t0", vec![4u64, 8]), ("t1", vec![16u64])] {
            gguf_string(&mut f, name);
            f.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                f.extend_from_slice(&d.to_le_bytes());
            }
            f.extend_from_slice(&0u32.to_le_bytes());
            f.extend_from_slice(&0u64.to_le_bytes());
        }
        let facts = gguf_facts(f.as_slice()).unwrap().unwrap();
        assert_eq!(
            facts,
            json!({"total": 48, "architecture": "llama", "context_length": 2048})
        );
        // Truncated anywhere: an error, never a panic.
        for cut in 0..f.len() {
            assert!(gguf_facts(&f[..cut]).map(|v| v.is_none()).unwrap_or(true));
        }
        assert_eq!(gguf_facts(&b"GGML...."[..]).unwrap(), None);
    }
}
