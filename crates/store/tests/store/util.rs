//! Generated test data.

use hub_store::Sha256;
use sha2::Digest;

/// Deterministic pseudo-random bytes (xorshift64), fast in debug builds.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn sha256(data: &[u8]) -> Sha256 {
    Sha256(sha2::Sha256::digest(data).into())
}

/// A safetensors file: header listing `tensors` (name, bytes) laid out in the given order.
pub fn safetensors(tensors: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut offset = 0;
    for (name, data) in tensors {
        header.insert(
            name.clone(),
            serde_json::json!({
                "dtype": "U8",
                "shape": [data.len()],
                "data_offsets": [offset, offset + data.len()],
            }),
        );
        offset += data.len();
    }
    let header = serde_json::to_vec(&header).unwrap();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    for (_, data) in tensors {
        out.extend_from_slice(data);
    }
    out
}

/// A GGUF v3 file: one metadata string, then `tensors` (name, bytes) at 32-byte alignment.
pub fn gguf(tensors: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut v = b"GGUF".to_vec();
    v.extend_from_slice(&3u32.to_le_bytes());
    v.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    v.extend_from_slice(&1u64.to_le_bytes());
    let string = |v: &mut Vec<u8>, s: &str| {
        v.extend_from_slice(&(s.len() as u64).to_le_bytes());
        v.extend_from_slice(s.as_bytes());
    };
    string(&mut v, "general.name");
    v.extend_from_slice(&8u32.to_le_bytes());
    string(&mut v, "test model");
    let mut offset = 0u64;
    for (name, data) in tensors {
        string(&mut v, name);
        v.extend_from_slice(&1u32.to_le_bytes());
        v.extend_from_slice(&(data.len() as u64).to_le_bytes());
        v.extend_from_slice(&24u32.to_le_bytes()); // I8
        v.extend_from_slice(&offset.to_le_bytes());
        offset += (data.len() as u64).div_ceil(32) * 32;
    }
    for (_, data) in tensors {
        v.resize(v.len().div_ceil(32) * 32, 0);
        v.extend_from_slice(data);
    }
    v
}
