//! Where a shard's weights come from: only the slices it holds are read.
//!
//! A shard asks for a tensor, optionally narrowed to a row range (column-parallel q/k/v/gate/
//! up: contiguous bytes) or a column range (row-parallel o/down: one short run per row).
//! [`TensorMap`] narrows tensors already in memory (tests, and a single node re-sharding).
//! [`SafetensorsRanges`] reads a safetensors file through any `Read + Seek` — a local file, or
//! a reader over the mesh's chunk store — using the header's offsets, so a shard touches only
//! its own bytes plus the header; [`SafetensorsRanges::bytes_read`] counts them.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;

use candle_core::{DType, Device, Tensor};

/// Failure to read a shard's slice.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    #[error("missing tensor {0}")]
    Missing(String),
    #[error("tensor {name}: shape {actual:?}, expected {expected:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    #[error("tensor {name}: unsupported dtype {dtype}")]
    DType { name: String, dtype: String },
    #[error("bad safetensors header: {0}")]
    Header(String),
    #[error("read")]
    Io(#[from] std::io::Error),
    #[error("tensor op")]
    Tensor(#[from] candle_core::Error),
}

/// A slice request: the whole tensor, a row range, or a column range of a matrix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slice {
    All,
    Rows(Range<usize>),
    Cols(Range<usize>),
}

/// A checkpoint a shard loads slices from (Hugging Face tensor names). Results are f32.
pub trait ShardSource {
    /// Whether `name` exists (optional biases).
    fn contains(&self, name: &str) -> bool;
    /// Tensor `name`, checked to have `shape`, narrowed by `slice`, as f32 on `device`.
    fn load(
        &mut self,
        name: &str,
        shape: &[usize],
        slice: Slice,
        device: &Device,
    ) -> Result<Tensor, SourceError>;
}

fn check_shape(name: &str, actual: &[usize], expected: &[usize]) -> Result<(), SourceError> {
    if actual != expected {
        return Err(SourceError::Shape {
            name: name.into(),
            expected: expected.to_vec(),
            actual: actual.to_vec(),
        });
    }
    Ok(())
}

fn check_slice(name: &str, shape: &[usize], slice: &Slice) -> Result<(), SourceError> {
    let (dim, r) = match slice {
        Slice::All => return Ok(()),
        Slice::Rows(r) => (0, r),
        Slice::Cols(r) => (1, r),
    };
    if shape.len() <= dim || r.start > r.end || r.end > shape[dim] {
        return Err(SourceError::Shape {
            name: name.into(),
            expected: vec![r.end],
            actual: shape.to_vec(),
        });
    }
    Ok(())
}

/// Tensors in memory (the single-node checkpoint), narrowed on request.
#[derive(Debug)]
pub struct TensorMap<'a>(pub &'a HashMap<String, Tensor>);

impl ShardSource for TensorMap<'_> {
    fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    fn load(
        &mut self,
        name: &str,
        shape: &[usize],
        slice: Slice,
        device: &Device,
    ) -> Result<Tensor, SourceError> {
        let t = self
            .0
            .get(name)
            .ok_or_else(|| SourceError::Missing(name.into()))?;
        check_shape(name, t.dims(), shape)?;
        check_slice(name, shape, &slice)?;
        let t = match slice {
            Slice::All => t.clone(),
            Slice::Rows(r) => t.narrow(0, r.start, r.len())?,
            Slice::Cols(r) => t.narrow(1, r.start, r.len())?,
        };
        Ok(t.to_dtype(DType::F32)?.contiguous()?.to_device(device)?)
    }
}

#[derive(Debug, Clone)]
struct Entry {
    dtype: DType,
    shape: Vec<usize>,
    /// Absolute byte range in the file.
    start: u64,
    end: u64,
}

/// Largest safetensors header we parse (the format's own limit is 100 MB).
const MAX_HEADER: u64 = 100 << 20;

/// A safetensors file read by ranges (see the module docs).
#[derive(Debug)]
pub struct SafetensorsRanges<R> {
    reader: R,
    entries: HashMap<String, Entry>,
    bytes_read: u64,
}

impl<R: Read + Seek> SafetensorsRanges<R> {
    /// Reads and checks the header: 8-byte length, JSON, every tensor's offsets inside the
    /// file and consistent with its dtype and shape.
    pub fn new(mut reader: R) -> Result<Self, SourceError> {
        let file_len = reader.seek(SeekFrom::End(0))?;
        reader.seek(SeekFrom::Start(0))?;
        let mut len = [0u8; 8];
        reader.read_exact(&mut len)?;
        let len = u64::from_le_bytes(len);
        if len > MAX_HEADER || 8 + len > file_len {
            return Err(SourceError::Header(format!("header length {len}")));
        }
        let mut header = vec![0u8; len as usize];
        reader.read_exact(&mut header)?;
        let json: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header)
            .map_err(|e| SourceError::Header(format!("json: {e}")))?;
        let data_start = 8 + len;
        let mut entries = HashMap::new();
        for (name, v) in json {
            if name == "__metadata__" {
                continue;
            }
            let bad = |what: &str| SourceError::Header(format!("{name}: {what}"));
            let dtype = match v.get("dtype").and_then(|d| d.as_str()) {
                Some("F32") => DType::F32,
                Some("F16") => DType::F16,
                Some("BF16") => DType::BF16,
                Some(other) => {
                    return Err(SourceError::DType {
                        name,
                        dtype: other.into(),
                    });
                }
                None => return Err(bad("no dtype")),
            };
            let shape: Vec<usize> = v
                .get("shape")
                .and_then(|s| s.as_array())
                .ok_or_else(|| bad("no shape"))?
                .iter()
                .map(|d| d.as_u64().map(|d| d as usize))
                .collect::<Option<_>>()
                .ok_or_else(|| bad("shape"))?;
            let offsets = v
                .get("data_offsets")
                .and_then(|o| o.as_array())
                .filter(|o| o.len() == 2)
                .and_then(|o| Some((o[0].as_u64()?, o[1].as_u64()?)))
                .ok_or_else(|| bad("data_offsets"))?;
            let elems = shape
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
                .ok_or_else(|| bad("shape overflows"))?;
            let bytes = elems
                .checked_mul(dtype.size_in_bytes() as u64)
                .ok_or_else(|| bad("shape overflows"))?;
            let (start, end) = (
                data_start.saturating_add(offsets.0),
                data_start.saturating_add(offsets.1),
            );
            if offsets.1 < offsets.0 || end - start != bytes || end > file_len {
                return Err(bad(
                    "data_offsets outside the file or not matching the shape",
                ));
            }
            entries.insert(
                name,
                Entry {
                    dtype,
                    shape,
                    start,
                    end,
                },
            );
        }
        Ok(Self {
            reader,
            entries,
            bytes_read: 8 + len,
        })
    }

    /// Bytes read so far (header included).
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    fn read_at(&mut self, at: u64, out: &mut [u8]) -> Result<(), SourceError> {
        self.reader.seek(SeekFrom::Start(at))?;
        self.reader.read_exact(out)?;
        self.bytes_read += out.len() as u64;
        Ok(())
    }
}

impl<R: Read + Seek> ShardSource for SafetensorsRanges<R> {
    fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    fn load(
        &mut self,
        name: &str,
        shape: &[usize],
        slice: Slice,
        device: &Device,
    ) -> Result<Tensor, SourceError> {
        let e = self
            .entries
            .get(name)
            .cloned()
            .ok_or_else(|| SourceError::Missing(name.into()))?;
        check_shape(name, &e.shape, shape)?;
        check_slice(name, shape, &slice)?;
        let es = e.dtype.size_in_bytes();
        let (bytes, out_shape) = match &slice {
            Slice::All => {
                let mut buf = vec![0u8; (e.end - e.start) as usize];
                self.read_at(e.start, &mut buf)?;
                (buf, shape.to_vec())
            }
            Slice::Rows(r) => {
                let row: usize = shape[1..].iter().product::<usize>() * es;
                let mut buf = vec![0u8; r.len() * row];
                self.read_at(e.start + (r.start * row) as u64, &mut buf)?;
                let mut s = shape.to_vec();
                s[0] = r.len();
                (buf, s)
            }
            Slice::Cols(r) => {
                let (rows, cols) = (shape[0], shape[1]);
                let mut buf = vec![0u8; rows * r.len() * es];
                for (i, chunk) in buf.chunks_mut(r.len() * es).enumerate() {
                    let at = e.start + ((i * cols + r.start) * es) as u64;
                    self.read_at(at, chunk)?;
                }
                (buf, vec![rows, r.len()])
            }
        };
        let t = Tensor::from_raw_buffer(&bytes, e.dtype, &out_shape, &Device::Cpu)?;
        Ok(t.to_dtype(DType::F32)?.to_device(device)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranged_reads_equal_narrowed_tensors_and_read_only_the_slice() {
        let a = Tensor::arange(0f32, 48.0, &Device::Cpu)
            .unwrap()
            .reshape((6, 8))
            .unwrap();
        let b = Tensor::arange(0f32, 1000.0, &Device::Cpu).unwrap();
        let map: HashMap<String, Tensor> = [("a".to_string(), a), ("big".to_string(), b)].into();
        let path = std::env::temp_dir().join(format!("hub-shard-src-{}.st", std::process::id()));
        candle_core::safetensors::save(&map, &path).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let total = file.metadata().unwrap().len();
        let mut ranged = SafetensorsRanges::new(file).unwrap();
        let mut mem = TensorMap(&map);
        for slice in [Slice::All, Slice::Rows(2..5), Slice::Cols(3..7)] {
            let x = ranged
                .load("a", &[6, 8], slice.clone(), &Device::Cpu)
                .unwrap();
            let y = mem.load("a", &[6, 8], slice, &Device::Cpu).unwrap();
            assert_eq!(x.to_vec2::<f32>().unwrap(), y.to_vec2::<f32>().unwrap());
        }
        // Header, then `a` whole (192 bytes), 3 of its rows (96) and 4 of its columns (96);
        // never the 4000-byte tensor nobody asked for.
        let header = total - 192 - 4000;
        assert_eq!(ranged.bytes_read(), header + 192 + 96 + 96);
        assert!(ranged.load("a", &[8, 6], Slice::All, &Device::Cpu).is_err());
        assert!(
            ranged
                .load("a", &[6, 8], Slice::Rows(4..7), &Device::Cpu)
                .is_err()
        );
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn corrupt_headers_are_errors() {
        for bytes in [
            vec![],
            255u64.to_le_bytes().to_vec(),
            [&8u64.to_le_bytes()[..], b"not json"].concat(),
            [
                &40u64.to_le_bytes()[..],
                br#"{"t":{"dtype":"F32","shape":[4],"data_offsets":[0,99]}}"#,
            ]
            .concat(),
        ] {
            assert!(SafetensorsRanges::new(std::io::Cursor::new(bytes)).is_err());
        }
    }
}
