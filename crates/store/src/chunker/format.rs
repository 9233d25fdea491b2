//! Recognising safetensors and GGUF headers to place forced cut points.
//!
//! Cutting at the end of the header and at every tensor boundary makes an unchanged tensor
//! chunk identically whatever surrounds it: renamed keys, re-sharding, other tensors changed.
//!
//! Headers come from untrusted files, so the parsers are defensive: a header longer than
//! [`MAX_HEADER`] (100 MB), one that claims more bytes than the file has, or tensors whose
//! offsets overlap or fall outside the file are not errors, they simply yield
//! [`Probe::Plain`] and the file is chunked with plain CDC. Nothing here panics or allocates
//! more than the prefix the caller already holds.

use std::collections::BTreeMap;

/// Largest header we are willing to buffer and parse.
pub const MAX_HEADER: u64 = 100 * 1000 * 1000;

/// What the first bytes of a file say about its cut points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// A recognised format: forced cut offsets (absolute, unsorted).
    Cuts(Vec<u64>),
    /// Call again with at least this many bytes of prefix (unless the file ends first).
    NeedMore(usize),
    /// Not a recognised format, or a malformed one: plain CDC.
    Plain,
}

/// Looks at `prefix`, the first bytes of a file. `eof` says the prefix is the whole file;
/// `file_size` is the total size when known.
pub fn probe(prefix: &[u8], eof: bool, file_size: Option<u64>) -> Probe {
    if prefix.len() < 8 {
        return if eof {
            Probe::Plain
        } else {
            Probe::NeedMore(8)
        };
    }
    let probe = if prefix.starts_with(b"GGUF") {
        gguf(prefix, eof, file_size)
    } else {
        safetensors(prefix, eof, file_size)
    };
    match probe {
        Probe::NeedMore(_) if eof => Probe::Plain,
        p => p,
    }
}

/// safetensors: `u64 LE n | n bytes of JSON header | data`, the header mapping tensor names to
/// `{"dtype", "shape", "data_offsets": [begin, end]}` relative to the data start.
pub fn safetensors(prefix: &[u8], eof: bool, file_size: Option<u64>) -> Probe {
    let Some(len) = prefix.first_chunk::<8>().map(|b| u64::from_le_bytes(*b)) else {
        return Probe::NeedMore(8);
    };
    if !(2..=MAX_HEADER).contains(&len) {
        return Probe::Plain;
    }
    let data_start = 8 + len;
    if file_size.is_some_and(|size| data_start > size) {
        return Probe::Plain;
    }
    // Cheap rejection before buffering a large header of a file that is not safetensors.
    if prefix.get(8).is_some_and(|&b| b != b'{') {
        return Probe::Plain;
    }
    if (prefix.len() as u64) < data_start {
        return if eof {
            Probe::Plain
        } else {
            Probe::NeedMore(data_start as usize)
        };
    }
    let header = &prefix[8..data_start as usize];
    let Ok(map) = serde_json::from_slice::<BTreeMap<String, serde_json::Value>>(header) else {
        return Probe::Plain;
    };
    let mut ranges = Vec::with_capacity(map.len());
    for (name, value) in &map {
        if name == "__metadata__" {
            continue;
        }
        let Some(offsets) = value.get("data_offsets").and_then(|v| v.as_array()) else {
            return Probe::Plain;
        };
        let (Some(begin), Some(end)) = (
            offsets.first().and_then(|v| v.as_u64()),
            offsets.get(1).and_then(|v| v.as_u64()),
        ) else {
            return Probe::Plain;
        };
        if offsets.len() != 2 || begin > end {
            return Probe::Plain;
        }
        ranges.push((begin, end));
    }
    ranges.sort_unstable();
    if ranges.windows(2).any(|w| w[0].1 > w[1].0) {
        return Probe::Plain;
    }
    let data_end = ranges.last().map_or(0, |r| r.1);
    let Some(abs_end) = data_start.checked_add(data_end) else {
        return Probe::Plain;
    };
    if file_size.is_some_and(|size| abs_end > size) {
        return Probe::Plain;
    }
    let mut cuts = Vec::with_capacity(1 + 2 * ranges.len());
    cuts.push(data_start);
    for (b, e) in ranges {
        cuts.push(data_start + b);
        cuts.push(data_start + e);
    }
    Probe::Cuts(cuts)
}

/// Why the GGUF parser stopped.
enum Stop {
    /// The prefix ended inside the header: read more.
    Truncated,
    /// Not a GGUF file we understand.
    Invalid,
}

/// Byte size of a fixed-width GGUF metadata value type.
fn fixed_size(ty: u32) -> Option<u64> {
    match ty {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: u64) -> Result<&[u8], Stop> {
        let n = usize::try_from(n).map_err(|_| Stop::Invalid)?;
        if n as u64 > MAX_HEADER {
            return Err(Stop::Invalid);
        }
        let end = self.pos.checked_add(n).ok_or(Stop::Invalid)?;
        let s = self.buf.get(self.pos..end).ok_or(Stop::Truncated)?;
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, Stop> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, Stop> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn string(&mut self) -> Result<&[u8], Stop> {
        let n = self.u64()?;
        self.take(n)
    }
    /// Skips one value of GGUF type `ty`; returns it as a u64 when it is a small integer.
    fn value(&mut self, ty: u32, depth: u32) -> Result<Option<u64>, Stop> {
        if ty == 8 {
            self.string()?;
            return Ok(None);
        }
        if ty == 9 && depth == 0 {
            let elem = self.u32()?;
            let count = self.u64()?;
            match fixed_size(elem) {
                Some(size) => {
                    self.take(count.checked_mul(size).ok_or(Stop::Invalid)?)?;
                }
                None => {
                    // Strings or nested arrays: each element takes at least 8 bytes, so the
                    // loop ends when the prefix does.
                    for _ in 0..count {
                        self.value(elem, depth + 1)?;
                    }
                }
            }
            return Ok(None);
        }
        let fixed = fixed_size(ty).ok_or(Stop::Invalid)?;
        let b = self.take(fixed)?;
        Ok(match ty {
            4 => Some(u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
            _ => None,
        })
    }
}

/// GGUF (v2, v3): header, metadata key/values, tensor infos, then aligned tensor data.
/// Cuts go at the data start and at each tensor's start.
pub fn gguf(prefix: &[u8], eof: bool, file_size: Option<u64>) -> Probe {
    match gguf_inner(prefix, file_size) {
        Ok(cuts) => Probe::Cuts(cuts),
        Err(Stop::Invalid) => Probe::Plain,
        Err(Stop::Truncated) => {
            let have = prefix.len() as u64;
            if eof || have >= MAX_HEADER || file_size.is_some_and(|s| have >= s) {
                Probe::Plain
            } else {
                Probe::NeedMore((have * 2).clamp(64 * 1024, MAX_HEADER) as usize)
            }
        }
    }
}

fn gguf_inner(prefix: &[u8], file_size: Option<u64>) -> Result<Vec<u64>, Stop> {
    let mut c = Cursor {
        buf: prefix,
        pos: 4,
    };
    let version = c.u32()?;
    if !(2..=3).contains(&version) {
        return Err(Stop::Invalid);
    }
    let tensors = c.u64()?;
    let kvs = c.u64()?;
    if tensors > 1 << 24 || kvs > 1 << 24 {
        return Err(Stop::Invalid);
    }
    let mut alignment = 32u64;
    for _ in 0..kvs {
        let key = c.string()?;
        let is_alignment = key == b"general.alignment";
        let ty = c.u32()?;
        if let Some(v) = c.value(ty, 0)?
            && is_alignment
        {
            alignment = v;
        }
    }
    if alignment == 0 || alignment > 1 << 20 {
        return Err(Stop::Invalid);
    }
    let mut offsets = Vec::new();
    for _ in 0..tensors {
        c.string()?;
        let dims = c.u32()?;
        if dims > 8 {
            return Err(Stop::Invalid);
        }
        c.take(8 * u64::from(dims))?;
        c.u32()?;
        offsets.push(c.u64()?);
    }
    let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
    if file_size.is_some_and(|s| data_start > s) {
        return Err(Stop::Invalid);
    }
    let mut cuts = Vec::with_capacity(offsets.len() + 1);
    cuts.push(data_start);
    for off in offsets {
        let abs = data_start.checked_add(off).ok_or(Stop::Invalid)?;
        if file_size.is_some_and(|s| abs > s) {
            return Err(Stop::Invalid);
        }
        cuts.push(abs);
    }
    Ok(cuts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// GGUF headers built to hit the parser's limits: any version, tensor and key counts
    /// (small or huge), keys of any declared length, values of any type id (arrays of any
    /// element type and count), then random bytes.
    fn hostile_gguf() -> impl Strategy<Value = Vec<u8>> {
        let count = || prop_oneof![0u64..4, Just(1 << 24), Just(1 << 40), Just(u64::MAX)];
        let kv = (
            prop_oneof![0u64..24, Just(1 << 33), Just(u64::MAX)],
            0u32..14,
            0u32..14,
            count(),
            proptest::collection::vec(any::<u8>(), 0..48),
        );
        (
            1u32..5,
            count(),
            count(),
            proptest::collection::vec(kv, 0..4),
            proptest::collection::vec(any::<u8>(), 0..96),
        )
            .prop_map(|(version, tensors, kvs, entries, tail)| {
                let mut v = b"GGUF".to_vec();
                v.extend(version.to_le_bytes());
                v.extend(tensors.to_le_bytes());
                v.extend(kvs.min(entries.len() as u64 + kvs % 2).to_le_bytes());
                for (key_len, ty, elem, n, payload) in entries {
                    v.extend(key_len.to_le_bytes());
                    v.extend(std::iter::repeat_n(b'k', key_len.min(24) as usize));
                    v.extend(ty.to_le_bytes());
                    if ty == 9 {
                        v.extend(elem.to_le_bytes());
                        v.extend(n.to_le_bytes());
                    }
                    v.extend(payload);
                }
                v.extend(tail);
                v
            })
    }

    fn st(header: &str, data_len: usize) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.resize(v.len() + data_len, 7);
        v
    }

    #[test]
    fn safetensors_cuts() {
        let h = r#"{"__metadata__":{"a":"b"},"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"y":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#;
        let f = st(h, 12);
        let ds = 8 + h.len() as u64;
        assert_eq!(
            probe(&f, true, Some(f.len() as u64)),
            Probe::Cuts(vec![ds, ds, ds + 8, ds + 8, ds + 12])
        );
        assert_eq!(probe(&f[..20], false, None), Probe::NeedMore(ds as usize));
    }

    #[test]
    fn hostile_safetensors_fall_back() {
        let mut huge = (1u64 << 63).to_le_bytes().to_vec();
        huge.push(b'{');
        assert_eq!(probe(&huge, false, None), Probe::Plain);
        let big = (MAX_HEADER + 1).to_le_bytes();
        assert_eq!(probe(&big, false, None), Probe::Plain);
        // Header larger than the file.
        let f = st("{}", 0);
        assert_eq!(probe(&f[..9], false, Some(9)), Probe::Plain);
        // Overlapping and out-of-range offsets.
        let overlap = r#"{"x":{"data_offsets":[0,8]},"y":{"data_offsets":[4,12]}}"#;
        assert_eq!(probe(&st(overlap, 12), true, None), Probe::Plain);
        let out = r#"{"x":{"data_offsets":[0,80]}}"#;
        let f = st(out, 12);
        assert_eq!(probe(&f, true, Some(f.len() as u64)), Probe::Plain);
        let neg = r#"{"x":{"data_offsets":[8,4]}}"#;
        assert_eq!(probe(&st(neg, 12), true, None), Probe::Plain);
        let wrap = r#"{"x":{"data_offsets":[0,18446744073709551615]}}"#;
        assert_eq!(probe(&st(wrap, 12), true, None), Probe::Plain);
        assert_eq!(probe(b"not a model at all", true, None), Probe::Plain);
    }

    fn gguf_file(tensors: &[(&str, u64)], data: usize) -> Vec<u8> {
        let mut v = b"GGUF".to_vec();
        v.extend_from_slice(&3u32.to_le_bytes());
        v.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        v.extend_from_slice(&2u64.to_le_bytes());
        let key = |v: &mut Vec<u8>, k: &str| {
            v.extend_from_slice(&(k.len() as u64).to_le_bytes());
            v.extend_from_slice(k.as_bytes());
        };
        key(&mut v, "general.alignment");
        v.extend_from_slice(&4u32.to_le_bytes());
        v.extend_from_slice(&64u32.to_le_bytes());
        key(&mut v, "tokenizer.ggml.tokens");
        v.extend_from_slice(&9u32.to_le_bytes());
        v.extend_from_slice(&8u32.to_le_bytes());
        v.extend_from_slice(&2u64.to_le_bytes());
        key(&mut v, "a");
        key(&mut v, "bc");
        for (name, off) in tensors {
            key(&mut v, name);
            v.extend_from_slice(&1u32.to_le_bytes());
            v.extend_from_slice(&16u64.to_le_bytes());
            v.extend_from_slice(&0u32.to_le_bytes());
            v.extend_from_slice(&off.to_le_bytes());
        }
        let start = v.len().div_ceil(64) * 64;
        v.resize(start + data, 1);
        v
    }

    #[test]
    fn gguf_cuts() {
        let f = gguf_file(&[("a", 0), ("b", 64)], 128);
        let start = (f.len() - 128) as u64;
        assert_eq!(
            probe(&f, true, Some(f.len() as u64)),
            Probe::Cuts(vec![start, start, start + 64])
        );
        assert!(matches!(probe(&f[..40], false, None), Probe::NeedMore(_)));
        assert_eq!(probe(&f[..40], true, None), Probe::Plain);
        let bad = gguf_file(&[("a", 1 << 40)], 8);
        assert_eq!(probe(&bad, true, Some(bad.len() as u64)), Probe::Plain);
        // No tensors and no padding: the aligned data start (32) is past the 24-byte file.
        // Found by `hostile_gguf_headers`; it used to cut at 32.
        let mut empty = b"GGUF".to_vec();
        empty.extend(2u32.to_le_bytes());
        empty.extend([0; 16]);
        assert_eq!(probe(&empty, true, Some(24)), Probe::Plain);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Fuzz-style: arbitrary prefixes never panic and never ask for more than the cap.
        #[test]
        fn probe_never_panics(
            mut bytes in proptest::collection::vec(any::<u8>(), 0..300),
            kind in 0u8..3,
            eof in any::<bool>(),
        ) {
            match kind {
                0 if bytes.len() >= 9 => {
                    let n = (bytes.len() - 8) as u64;
                    bytes[..8].copy_from_slice(&n.to_le_bytes());
                    bytes[8] = b'{';
                }
                1 if bytes.len() >= 4 => bytes[..4].copy_from_slice(b"GGUF"),
                _ => {}
            }
            if let Probe::NeedMore(n) = probe(&bytes, eof, None) {
                prop_assert!(!eof);
                prop_assert!(n as u64 <= MAX_HEADER + 8);
            }
        }

        /// Structured hostile GGUF headers (huge counts, huge string and array lengths, any
        /// value type) never panic, never ask for more than the cap, and cut only inside
        /// the file.
        #[test]
        fn hostile_gguf_headers(
            bytes in hostile_gguf(),
            eof in any::<bool>(),
            sized in any::<bool>(),
        ) {
            let size = sized.then_some(bytes.len() as u64);
            match probe(&bytes, eof, size) {
                Probe::NeedMore(n) => {
                    prop_assert!(!eof);
                    prop_assert!(n as u64 <= MAX_HEADER);
                }
                Probe::Cuts(cuts) => {
                    if let Some(size) = size {
                        prop_assert!(cuts.iter().all(|&c| c <= size), "{:?}", cuts);
                    }
                }
                Probe::Plain => {}
            }
        }

        /// Structured hostile safetensors headers: any declared length, any offsets.
        #[test]
        fn hostile_safetensors_headers(
            declared in prop_oneof![Just(None), any::<u64>().prop_map(Some)],
            offsets in proptest::collection::vec((any::<u64>(), any::<u64>()), 0..4),
            data_len in 0usize..64,
            eof in any::<bool>(),
        ) {
            let mut header = String::from("{");
            for (i, (b, e)) in offsets.iter().enumerate() {
                if i > 0 {
                    header.push(',');
                }
                header.push_str(&format!(r#""t{i}":{{"dtype":"U8","shape":[1],"data_offsets":[{b},{e}]}}"#));
            }
            header.push('}');
            let mut f = st(&header, data_len);
            if let Some(len) = declared {
                f[..8].copy_from_slice(&len.to_le_bytes());
            }
            let size = f.len() as u64;
            match probe(&f, eof, Some(size)) {
                Probe::NeedMore(n) => prop_assert!(n as u64 <= MAX_HEADER + 8),
                Probe::Cuts(cuts) => prop_assert!(cuts.iter().all(|&c| c <= size), "{:?}", cuts),
                Probe::Plain => {}
            }
            let _ = probe(&f, eof, None);
        }

        /// Mutated valid headers never panic either.
        #[test]
        fn mutated_headers(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6)) {
            let h = r#"{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"y":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#;
            for mut f in [st(h, 12), gguf_file(&[("a", 0), ("b", 64)], 128)] {
                for &(pos, val) in &flips {
                    let n = f.len();
                    f[pos % n] = val;
                }
                let _ = probe(&f, true, Some(f.len() as u64));
                let _ = probe(&f, false, None);
            }
        }
    }
}
