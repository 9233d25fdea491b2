//! Weight-file headers for the file view: safetensors and GGUF, read from the start of the
//! file only (a safetensors header is at most [`MAX_HEADER`] bytes; a GGUF header is read
//! field by field and its metadata arrays skipped), with every length bounded.

use crate::ViewerError;
use crate::source::{RangeSource, SourceReader};
use serde_json::Value;
use std::io::Read;
use std::sync::Arc;

/// The largest header either format may have.
pub const MAX_HEADER: u64 = 100 * 1024 * 1024;
/// The most tensors listed.
const MAX_TENSORS: u64 = 1_000_000;

/// One tensor of a weight file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tensor {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
}

/// What a weight file's header says.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    /// `safetensors` or `gguf`.
    pub format: &'static str,
    /// Scalar metadata (`__metadata__`, GGUF key/values; arrays as `[N items]`).
    pub metadata: Vec<(String, String)>,
    pub tensors: Vec<Tensor>,
}

impl Header {
    /// The number of parameters: the sum of the tensors' element counts.
    pub fn parameters(&self) -> u64 {
        self.tensors
            .iter()
            .map(|t| {
                t.shape
                    .iter()
                    .try_fold(1u64, |a, d| a.checked_mul(*d))
                    .unwrap_or(0)
            })
            .fold(0u64, u64::saturating_add)
    }
}

/// The header of `source`, when `path` names a safetensors or GGUF file; `Ok(None)` for other
/// files.
pub fn read(path: &str, source: Arc<dyn RangeSource>) -> Result<Option<Header>, ViewerError> {
    let lower = path.to_ascii_lowercase();
    if lower.ends_with(".safetensors") {
        safetensors(source.as_ref()).map(Some)
    } else if lower.ends_with(".gguf") {
        gguf(source).map(Some)
    } else {
        Ok(None)
    }
}

fn bad(format: &'static str, message: impl Into<String>) -> ViewerError {
    ViewerError::Header {
        format,
        message: message.into(),
    }
}

/// A safetensors header: `u64` length (little-endian), then that much JSON.
pub fn safetensors(source: &dyn RangeSource) -> Result<Header, ViewerError> {
    const F: &str = "safetensors";
    let head = source.read_at(0, 8)?;
    let len = u64::from_le_bytes(
        head.as_slice()
            .try_into()
            .map_err(|_| bad(F, "file shorter than 8 bytes"))?,
    );
    if len > MAX_HEADER || len > source.len().saturating_sub(8) {
        return Err(bad(F, format!("header length {len} out of bounds")));
    }
    let json = source.read_at(8, len as usize)?;
    let value: serde_json::Map<String, Value> =
        serde_json::from_slice(&json).map_err(|e| bad(F, e.to_string()))?;
    let mut header = Header {
        format: F,
        metadata: Vec::new(),
        tensors: Vec::new(),
    };
    for (name, v) in value {
        if name == "__metadata__" {
            if let Value::Object(m) = v {
                for (k, v) in m {
                    header
                        .metadata
                        .push((k, v.as_str().map_or_else(|| v.to_string(), str::to_owned)));
                }
            }
            continue;
        }
        let dtype = v["dtype"]
            .as_str()
            .ok_or_else(|| bad(F, format!("tensor {name} has no dtype")))?
            .to_owned();
        let shape = v["shape"]
            .as_array()
            .ok_or_else(|| bad(F, format!("tensor {name} has no shape")))?
            .iter()
            .map(|d| {
                d.as_u64()
                    .ok_or_else(|| bad(F, format!("tensor {name}: bad shape")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        header.tensors.push(Tensor { name, dtype, shape });
    }
    Ok(header)
}

/// A GGUF header (versions 2 and 3): metadata key/values, then tensor infos.
pub fn gguf(source: Arc<dyn RangeSource>) -> Result<Header, ViewerError> {
    let mut r = Gguf {
        inner: SourceReader::new(source, 0).take(MAX_HEADER),
    };
    const F: &str = "gguf";
    if r.bytes(4)? != b"GGUF" {
        return Err(bad(F, "no GGUF magic"));
    }
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        return Err(bad(F, format!("unsupported version {version}")));
    }
    let tensors = r.u64()?;
    let kvs = r.u64()?;
    if tensors > MAX_TENSORS || kvs > MAX_TENSORS {
        return Err(bad(F, "too many tensors or metadata keys"));
    }
    let mut header = Header {
        format: F,
        metadata: Vec::new(),
        tensors: Vec::new(),
    };
    for _ in 0..kvs {
        let key = r.string()?;
        let kind = r.u32()?;
        let value = r.value(kind, 0)?;
        header.metadata.push((key, value));
    }
    for _ in 0..tensors {
        let name = r.string()?;
        let dims = r.u32()?;
        if dims > 8 {
            return Err(bad(F, format!("tensor {name} has {dims} dimensions")));
        }
        // GGUF lists dimensions fastest-first; show them as PyTorch does.
        let mut shape = (0..dims).map(|_| r.u64()).collect::<Result<Vec<_>, _>>()?;
        shape.reverse();
        let dtype = ggml_type(r.u32()?);
        let _offset = r.u64()?;
        header.tensors.push(Tensor { name, dtype, shape });
    }
    Ok(header)
}

struct Gguf {
    inner: std::io::Take<SourceReader>,
}

impl Gguf {
    fn bytes(&mut self, n: usize) -> Result<Vec<u8>, ViewerError> {
        let mut b = vec![0; n];
        self.inner
            .read_exact(&mut b)
            .map_err(|_| bad("gguf", "header ends early"))?;
        Ok(b)
    }

    fn u32(&mut self) -> Result<u32, ViewerError> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, ViewerError> {
        let b = self.bytes(8)?;
        let mut a = [0; 8];
        a.copy_from_slice(&b);
        Ok(u64::from_le_bytes(a))
    }

    fn string(&mut self) -> Result<String, ViewerError> {
        let len = self.u64()?;
        if len > 16 * 1024 * 1024 {
            return Err(bad("gguf", format!("string of {len} bytes")));
        }
        Ok(String::from_utf8_lossy(&self.bytes(len as usize)?).into_owned())
    }

    /// A metadata value as text; arrays are skipped and shown by their length.
    fn value(&mut self, kind: u32, depth: u32) -> Result<String, ViewerError> {
        Ok(match kind {
            0 => self.bytes(1)?[0].to_string(),
            1 => (self.bytes(1)?[0] as i8).to_string(),
            2 => {
                let b = self.bytes(2)?;
                u16::from_le_bytes([b[0], b[1]]).to_string()
            }
            3 => {
                let b = self.bytes(2)?;
                i16::from_le_bytes([b[0], b[1]]).to_string()
            }
            4 => self.u32()?.to_string(),
            5 => (self.u32()? as i32).to_string(),
            6 => f32::from_bits(self.u32()?).to_string(),
            7 => (self.bytes(1)?[0] != 0).to_string(),
            8 => self.string()?,
            9 => {
                if depth > 2 {
                    return Err(bad("gguf", "arrays nested too deeply"));
                }
                let item = self.u32()?;
                let n = self.u64()?;
                if n > 100_000_000 {
                    return Err(bad("gguf", format!("array of {n} items")));
                }
                for _ in 0..n {
                    self.value(item, depth + 1)?;
                }
                format!("[{n} items]")
            }
            10 => self.u64()?.to_string(),
            11 => (self.u64()? as i64).to_string(),
            12 => f64::from_bits(self.u64()?).to_string(),
            other => return Err(bad("gguf", format!("unknown value type {other}"))),
        })
    }
}

fn ggml_type(t: u32) -> String {
    let name = match t {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        30 => "BF16",
        other => return format!("type {other}"),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemSource;

    fn safetensors_file(header: &str) -> Vec<u8> {
        let mut f = (header.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(header.as_bytes());
        f.extend_from_slice(&[0; 64]);
        f
    }

    #[test]
    fn safetensors_tensors_and_parameters() {
        let f = safetensors_file(
            r#"{"__metadata__":{"format":"pt"},"a.weight":{"dtype":"F32","shape":[4,3],"data_offsets":[0,48]},"b":{"dtype":"BF16","shape":[8],"data_offsets":[48,64]}}"#,
        );
        let h = read("m.safetensors", Arc::new(MemSource::new(f)))
            .unwrap()
            .unwrap();
        assert_eq!(h.tensors.len(), 2);
        assert_eq!(h.tensors[0].shape, [4, 3]);
        assert_eq!(h.parameters(), 20);
        assert_eq!(h.metadata, [("format".to_owned(), "pt".to_owned())]);
    }

    #[test]
    fn bad_headers_are_errors() {
        for f in [
            vec![1, 2],
            u64::MAX.to_le_bytes().to_vec(),
            safetensors_file("{not json"),
            safetensors_file(r#"{"a":{"dtype":"F32","shape":[-1]}}"#),
        ] {
            assert!(safetensors(&MemSource::new(f)).is_err());
        }
        assert!(gguf(Arc::new(MemSource::new(b"GGUF\x03\0\0\0".to_vec()))).is_err());
        assert!(gguf(Arc::new(MemSource::new(b"NOPE".to_vec()))).is_err());
    }

    #[test]
    fn gguf_tensors_and_metadata() {
        let mut f = b"GGUF".to_vec();
        f.extend_from_slice(&3u32.to_le_bytes());
        f.extend_from_slice(&1u64.to_le_bytes()); // tensors
        f.extend_from_slice(&2u64.to_le_bytes()); // kvs
        let s = |f: &mut Vec<u8>, t: &str| {
            f.extend_from_slice(&(t.len() as u64).to_le_bytes());
            f.extend_from_slice(t.as_bytes());
        };
        s(&mut f, "general.architecture");
        f.extend_from_slice(&8u32.to_le_bytes());
        s(&mut f, "llama");
        s(&mut f, "tokenizer.ggml.tokens");
        f.extend_from_slice(&9u32.to_le_bytes());
        f.extend_from_slice(&8u32.to_le_bytes());
        f.extend_from_slice(&2u64.to_le_bytes());
        s(&mut f, "a");
        s(&mut f, "b");
        s(&mut f, "token_embd.weight");
        f.extend_from_slice(&2u32.to_le_bytes());
        f.extend_from_slice(&64u64.to_le_bytes());
        f.extend_from_slice(&100u64.to_le_bytes());
        f.extend_from_slice(&12u32.to_le_bytes());
        f.extend_from_slice(&0u64.to_le_bytes());
        let h = read("x.gguf", Arc::new(MemSource::new(f)))
            .unwrap()
            .unwrap();
        assert_eq!(
            h.metadata[0],
            ("general.architecture".into(), "llama".into())
        );
        assert_eq!(h.metadata[1].1, "[2 items]");
        assert_eq!(h.tensors[0].shape, [100, 64]);
        assert_eq!(h.tensors[0].dtype, "Q4_K");
        assert_eq!(h.parameters(), 6400);
    }
}
