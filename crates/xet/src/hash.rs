//! Xet hashes (Xet protocol specification, "Hashing"): a chunk's hash is BLAKE3 keyed with
//! `DATA_KEY`; a xorb's hash is the root of the aggregated merkle tree of its chunks (nodes
//! keyed with `INTERNAL_NODE_KEY`, a variable branching factor cut where a child hash is
//! `0 mod 4`); a file's hash is that root keyed again with 32 zero bytes.
//!
//! The text form is Xet's: the 32 bytes read as four little-endian `u64`s, each printed as 16
//! hex digits.

use std::fmt;

const DATA_KEY: [u8; 32] = [
    102, 151, 245, 119, 91, 149, 80, 222, 49, 53, 203, 172, 165, 151, 24, 28, 157, 228, 33, 16,
    155, 235, 43, 88, 180, 208, 176, 75, 147, 173, 242, 41,
];

const INTERNAL_NODE_KEY: [u8; 32] = [
    1, 126, 197, 199, 165, 71, 41, 150, 253, 148, 102, 102, 180, 138, 2, 230, 93, 221, 83, 111, 55,
    199, 109, 210, 248, 99, 82, 230, 74, 83, 113, 63,
];

/// Mean branching factor of the aggregated tree.
const BRANCHING: u64 = 4;

/// A 256-bit Xet hash (chunk, xorb, file or shard), as raw bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct XetHash(pub [u8; 32]);

impl XetHash {
    fn word(&self, i: usize) -> u64 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&self.0[i * 8..i * 8 + 8]);
        u64::from_le_bytes(w)
    }

    /// Xet's text form (64 lowercase hex digits).
    pub fn hex(&self) -> String {
        format!(
            "{:016x}{:016x}{:016x}{:016x}",
            self.word(0),
            self.word(1),
            self.word(2),
            self.word(3)
        )
    }

    /// Parses Xet's text form; `None` unless exactly 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut out = [0u8; 32];
        for i in 0..4 {
            let w = u64::from_str_radix(&s[i * 16..i * 16 + 16], 16).ok()?;
            out[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        Some(Self(out))
    }

    /// The hash modulo `m`, as Xet computes it (on the last little-endian word).
    pub fn modulo(&self, m: u64) -> u64 {
        self.word(3) % m
    }
}

impl fmt::Display for XetHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for XetHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "XetHash({})", self.hex())
    }
}

/// The hash of one chunk's (uncompressed) bytes.
pub fn chunk_hash(data: &[u8]) -> XetHash {
    XetHash(*blake3::keyed_hash(&DATA_KEY, data).as_bytes())
}

fn merge(entries: &[(XetHash, u64)]) -> (XetHash, u64) {
    let mut buf = String::with_capacity(entries.len() * 90);
    let mut total = 0u64;
    for (h, size) in entries {
        buf.push_str(&h.hex());
        buf.push_str(" : ");
        buf.push_str(&size.to_string());
        buf.push('\n');
        total += size;
    }
    (
        XetHash(*blake3::keyed_hash(&INTERNAL_NODE_KEY, buf.as_bytes()).as_bytes()),
        total,
    )
}

/// How many of `entries` (from the front) the next node takes.
fn next_cut(entries: &[(XetHash, u64)]) -> usize {
    if entries.len() <= 2 {
        return entries.len();
    }
    let end = (2 * BRANCHING as usize + 1).min(entries.len());
    for (i, (h, _)) in entries.iter().enumerate().take(end).skip(2) {
        if h.modulo(BRANCHING) == 0 {
            return i + 1;
        }
    }
    end
}

fn aggregated_root(chunks: &[(XetHash, u64)]) -> XetHash {
    if chunks.is_empty() {
        return XetHash::default();
    }
    let mut level = chunks.to_vec();
    while level.len() > 1 {
        let mut next = Vec::with_capacity(level.len() / 2 + 1);
        let mut at = 0;
        while at < level.len() {
            let cut = at + next_cut(&level[at..]);
            next.push(merge(&level[at..cut]));
            at = cut;
        }
        level = next;
    }
    level[0].0
}

/// A xorb's hash from its chunks' (hash, uncompressed size).
pub fn xorb_hash(chunks: &[(XetHash, u64)]) -> XetHash {
    aggregated_root(chunks)
}

/// A file's hash from its chunks' (hash, size), in file order.
pub fn file_hash(chunks: &[(XetHash, u64)]) -> XetHash {
    if chunks.is_empty() {
        return XetHash::default();
    }
    let root = aggregated_root(chunks);
    XetHash(*blake3::keyed_hash(&[0u8; 32], &root.0).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_reads_words_little_endian() {
        let mut raw = [0u8; 32];
        raw[0] = 1;
        raw[31] = 0xab;
        let h = XetHash(raw);
        let expected = format!(
            "{}{}{}",
            "0000000000000001",
            "0".repeat(32),
            "ab00000000000000"
        );
        assert_eq!(h.hex(), expected);
        assert_eq!(XetHash::from_hex(&h.hex()), Some(h));
        assert_eq!(XetHash::from_hex("xyz"), None);
    }

    #[test]
    fn a_single_chunk_file_hash_is_the_keyed_chunk_hash() {
        let c = chunk_hash(b"hello");
        assert_eq!(xorb_hash(&[(c, 5)]), c);
        let f = file_hash(&[(c, 5)]);
        assert_eq!(f.0, *blake3::keyed_hash(&[0u8; 32], &c.0).as_bytes());
    }
}
