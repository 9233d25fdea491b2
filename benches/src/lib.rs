//! What the benchmark binaries share.

pub mod node;

/// Fast deterministic pseudo-random bytes (xorshift64*), incompressible like real weights.
#[derive(Debug, Clone)]
pub struct Noise(pub u64);

impl Noise {
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }
}

/// Writes a results file (creating its directory), echoes it to stdout and says where it went.
pub fn write_results(out: &std::path::Path, md: &str) -> std::io::Result<()> {
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out, md)?;
    print!("{md}");
    eprintln!("wrote {}", out.display());
    Ok(())
}
