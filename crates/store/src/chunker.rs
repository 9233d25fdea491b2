//! Content-defined chunking with a gear hash, plus forced cut points.
//!
//! Parameters follow Xet: 64 KiB target, 8 KiB minimum, 128 KiB maximum, and the boundary
//! mask in the *high* 16 bits of the 64-bit gear hash, because the low bits depend on only the
//! last few bytes. The gear table is generated at compile time from a fixed seed with
//! splitmix64, so boundaries are identical on every platform and every build.
//!
//! Since each byte shifts the hash left by one, the hash at a position depends only on the 64
//! bytes before it. The chunker therefore skips the first `MIN_CHUNK - 64` bytes of every chunk
//! without hashing them: the result is exactly what hashing them would give, about 11% cheaper.
//!
//! **Forced cuts.** The caller may pass sorted absolute offsets (tensor boundaries, the end of
//! a safetensors header, see [`format`](mod@format)). A chunk always ends at a forced cut and
//! the hash state restarts there, so the chunks inside a tensor depend only on the tensor's
//! bytes: an unchanged tensor yields the same chunks whatever surrounds it.
//!
//! The [`Chunker`] is streaming: feed it buffers of any size with [`Chunker::next_cut`]; the
//! cuts it reports do not depend on how the input was split into buffers.

pub mod format;

/// Smallest chunk the gear boundary may produce (forced cuts and end of file may be smaller).
pub const MIN_CHUNK: usize = 8 * 1024;
/// Average distance between gear boundaries once past the minimum.
pub const TARGET_CHUNK: usize = 64 * 1024;
/// Largest chunk: a cut is forced here when no boundary was found.
pub const MAX_CHUNK: usize = 128 * 1024;

/// A boundary is where the top 16 bits of the hash are zero (probability 1/65536).
const MASK: u64 = ((TARGET_CHUNK as u64) - 1) << (64 - TARGET_CHUNK.trailing_zeros());

/// Bytes of history that determine the gear hash.
const WINDOW: usize = 64;

const fn gear_table() -> [u64; 256] {
    let mut table = [0u64; 256];
    let mut state: u64 = 0x6875_626d_6573_6821; // "hubmesh!"
    let mut i = 0;
    while i < 256 {
        // splitmix64
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        table[i] = z ^ (z >> 31);
        i += 1;
    }
    table
}

static GEAR: [u64; 256] = gear_table();

/// A streaming content-defined chunker. See the module docs.
#[derive(Debug, Clone)]
pub struct Chunker {
    /// Absolute offset of the next byte to be fed.
    pos: u64,
    /// Absolute offset where the current chunk started.
    chunk_start: u64,
    hash: u64,
    /// Forced cut offsets, ascending, all > 0; `next_forced` indexes the first not yet passed.
    forced: Vec<u64>,
    next_forced: usize,
}

impl Default for Chunker {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

impl Chunker {
    /// A chunker that also cuts at each offset of `forced` (sorted and deduplicated here).
    pub fn new(mut forced: Vec<u64>) -> Self {
        forced.sort_unstable();
        forced.dedup();
        forced.retain(|&c| c > 0);
        Self {
            pos: 0,
            chunk_start: 0,
            hash: 0,
            forced,
            next_forced: 0,
        }
    }

    /// Feeds `data`, the bytes following everything fed so far. Returns `Some(n)` when a chunk
    /// ends after `data[..n]` (call again with `&data[n..]`), or `None` when all of `data` was
    /// consumed without completing a chunk.
    pub fn next_cut(&mut self, data: &[u8]) -> Option<usize> {
        let mut i = 0;
        loop {
            let len = (self.pos - self.chunk_start) as usize;
            let forced = self
                .forced
                .get(self.next_forced)
                .copied()
                .unwrap_or(u64::MAX);
            // Bytes we may still take before a hard cut (max size or forced offset).
            let hard = (MAX_CHUNK - len).min((forced - self.pos).min(MAX_CHUNK as u64) as usize);
            if hard == 0 {
                self.cut();
                return Some(i);
            }
            let avail = data.len() - i;
            if avail == 0 {
                return None;
            }
            let take = avail.min(hard);
            if len + WINDOW < MIN_CHUNK {
                // Bytes that cannot influence any hash tested in this chunk.
                let skip = take.min(MIN_CHUNK - WINDOW - len);
                i += skip;
                self.pos += skip as u64;
                continue;
            }
            if len < MIN_CHUNK {
                // Warm the hash up to the minimum size without testing.
                let n = take.min(MIN_CHUNK - len);
                let mut h = self.hash;
                for &b in &data[i..i + n] {
                    h = (h << 1).wrapping_add(GEAR[b as usize]);
                }
                self.hash = h;
                i += n;
                self.pos += n as u64;
                continue;
            }
            // Hash and test; a boundary ends the chunk after the matching byte.
            let (found, h) = scan(self.hash, &data[i..i + take]);
            match found {
                Some(n) => {
                    i += n;
                    self.pos += n as u64;
                    self.cut();
                    return Some(i);
                }
                None => {
                    self.hash = h;
                    i += take;
                    self.pos += take as u64;
                }
            }
        }
    }

    fn cut(&mut self) {
        self.chunk_start = self.pos;
        self.hash = 0;
        while self
            .forced
            .get(self.next_forced)
            .is_some_and(|&f| f <= self.pos)
        {
            self.next_forced += 1;
        }
    }
}

#[inline(always)]
fn step(h: u64, b: u8) -> u64 {
    (h << 1).wrapping_add(GEAR[b as usize])
}

/// Single-lane scan: the first `j` such that the hash after `s[..j]` matches, and the hash
/// state after the last byte scanned.
fn scan_one(mut h: u64, s: &[u8]) -> (Option<usize>, u64) {
    for (j, &b) in s.iter().enumerate() {
        h = step(h, b);
        if h & MASK == 0 {
            return (Some(j + 1), h);
        }
    }
    (None, h)
}

/// Same result as [`scan_one`], about twice as fast: the gear hash is a serial dependency
/// chain (shift, add) per byte, so the slice is split in two halves hashed in lockstep, which
/// gives the CPU two independent chains. The second lane starts from the 64 bytes before its
/// half, which determine the hash exactly. A match in the first lane always wins.
fn scan(h: u64, s: &[u8]) -> (Option<usize>, u64) {
    if s.len() < 4 * WINDOW {
        return scan_one(h, s);
    }
    let half = s.len() / 2;
    let mut b = s[half - WINDOW..half].iter().fold(0u64, |h, &x| step(h, x));
    let mut a = h;
    let mut b_found = None;
    let mut k = 0;
    for (&x, &y) in s[..half].iter().zip(&s[half..2 * half]) {
        a = step(a, x);
        if a & MASK == 0 {
            return (Some(k + 1), a);
        }
        b = step(b, y);
        k += 1;
        if b & MASK == 0 {
            b_found = Some(half + k);
            break;
        }
    }
    if let Some(found) = b_found {
        // Lane A must still rule out an earlier match.
        if let (Some(j), h) = scan_one(a, &s[k..half]) {
            return (Some(k + j), h);
        }
        return (Some(found), b);
    }
    match scan_one(b, &s[2 * half..]) {
        (Some(j), h) => (Some(2 * half + j), h),
        (None, h) => (None, h),
    }
}

/// Chunk lengths of a whole in-memory buffer (tests and tools; imports stream instead).
pub fn chunk_lengths(data: &[u8], forced: Vec<u64>) -> Vec<usize> {
    let mut chunker = Chunker::new(forced);
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(n) = chunker.next_cut(rest) {
        out.push(n);
        rest = &rest[n..];
    }
    if !rest.is_empty() {
        out.push(rest.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Deterministic pseudo-random bytes (xorshift), cheap in debug builds.
    pub(crate) fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
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

    fn offsets(lens: &[usize]) -> Vec<usize> {
        lens.iter()
            .scan(0, |acc, &l| {
                *acc += l;
                Some(*acc)
            })
            .collect()
    }

    #[test]
    fn gear_table_is_pinned() {
        // Changing the table or the cut rule changes every chunk id ever stored: pin both.
        let sum = GEAR
            .iter()
            .fold(0u64, |a, &g| a.wrapping_mul(31).wrapping_add(g));
        assert_eq!(sum, 16990475319814267591);
        let lens = chunk_lengths(&noise(42, 1 << 20), Vec::new());
        assert_eq!(lens, PINNED_LENS);
    }

    const PINNED_LENS: &[usize] = &[
        20001, 118940, 33166, 131072, 70425, 131072, 10793, 12864, 54028, 46365, 45937, 34167,
        59666, 17331, 35196, 131072, 13708, 55194, 27579,
    ];

    #[test]
    fn sizes_within_bounds_and_average_near_target() {
        let data = noise(1, 8 << 20);
        let lens = chunk_lengths(&data, Vec::new());
        assert_eq!(lens.iter().sum::<usize>(), data.len());
        for &l in &lens[..lens.len() - 1] {
            assert!((MIN_CHUNK..=MAX_CHUNK).contains(&l), "{l}");
        }
        let avg = data.len() / lens.len();
        assert!((40 * 1024..=90 * 1024).contains(&avg), "average {avg}");
    }

    #[test]
    fn two_lane_scan_matches_one_lane() {
        let data = noise(7, 1 << 20);
        for (start, len) in [
            (0, 300),
            (5, 1000),
            (1000, 70_000),
            (3, 200_000),
            (0, 1 << 20),
        ] {
            let len = len.min(data.len() - start);
            let s = &data[start..start + len];
            for h in [0u64, 1, u64::MAX, 0x1234_5678_9abc_def0] {
                assert_eq!(scan(h, s), scan_one(h, s), "start {start} len {len}");
            }
        }
        // A match in both lanes: the first lane wins.
        let mut s = vec![0u8; 4096];
        for (i, b) in s.iter_mut().enumerate() {
            *b = (i * 7 % 251) as u8;
        }
        assert_eq!(scan(0, &s), scan_one(0, &s));
    }

    #[test]
    fn zeros_cut_at_max() {
        let lens = chunk_lengths(&vec![0u8; 300 * 1024], Vec::new());
        assert_eq!(lens, vec![MAX_CHUNK, MAX_CHUNK, 300 * 1024 - 2 * MAX_CHUNK]);
    }

    #[test]
    fn forced_cuts_are_honoured() {
        let data = noise(2, 1 << 20);
        let forced = vec![5, 100_000, 100_001, 700_000, 5 << 20];
        let ends = offsets(&chunk_lengths(&data, forced));
        for f in [5usize, 100_000, 100_001, 700_000] {
            assert!(ends.contains(&f), "{f} not a cut");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Reassembling the chunks gives back the input, and buffer splits do not matter.
        #[test]
        fn split_invariant(seed in any::<u64>(), len in 0usize..600_000, split in 1usize..70_000) {
            let data = noise(seed, len);
            let whole = chunk_lengths(&data, Vec::new());
            prop_assert_eq!(whole.iter().sum::<usize>(), len);
            let mut chunker = Chunker::default();
            let mut lens = Vec::new();
            let mut current = 0;
            for piece in data.chunks(split) {
                let mut rest = piece;
                while let Some(n) = chunker.next_cut(rest) {
                    lens.push(current + n);
                    current = 0;
                    rest = &rest[n..];
                }
                current += rest.len();
            }
            if current > 0 {
                lens.push(current);
            }
            prop_assert_eq!(lens, whole);
        }

        /// CDC property: editing a prefix and a suffix leaves the chunks of the middle alone.
        #[test]
        fn boundaries_stable_under_edits(
            seed in any::<u64>(),
            prefix in proptest::collection::vec(any::<u8>(), 0..5000),
            cut_front in 0usize..5000,
            suffix in proptest::collection::vec(any::<u8>(), 0..5000),
        ) {
            let data = noise(seed, 3 << 20);
            let mut edited = prefix.clone();
            edited.extend_from_slice(&data[cut_front..data.len() - 4096]);
            edited.extend_from_slice(&suffix);
            let a = offsets(&chunk_lengths(&data, Vec::new()));
            let b = offsets(&chunk_lengths(&edited, Vec::new()));
            // Map edited boundaries back to original coordinates.
            let shift = prefix.len() as i64 - cut_front as i64;
            let b: std::collections::HashSet<i64> = b.iter().map(|&o| o as i64 - shift).collect();
            // Original boundaries from 1 MiB to 1 MiB before the end must all reappear.
            let lo = 1 << 20;
            let hi = data.len() - (1 << 20);
            for &o in a.iter().filter(|&&o| o >= lo && o <= hi) {
                prop_assert!(b.contains(&(o as i64)), "boundary {} lost", o);
            }
        }
    }
}
