//! Shared helpers for the CheckSync benchmarks.
//!
//! `benches/page_runs.rs`: encode and decode throughput of page runs against a memcpy
//! baseline, 4 KiB pages, 1 % / 50 % / 100 % of a 256 MiB region dirty.
//! `benches/checkpoint.rs`: the pause `cs-driver dump --leave-running` imposes on the
//! kvstore fixture (16 MiB to 1 GiB preloaded), its image size against RSS, and the
//! time from `cs-driver restore` to the program serving again.

pub mod harness;

/// A deterministic xorshift64 generator (benchmarks need reproducible data, not quality).
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator from a non-zero seed.
    pub fn new(seed: u64) -> Self {
        XorShift(seed | 1)
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// `len` bytes of non-zero pseudo-random memory (every page non-zero).
pub fn random_memory(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = XorShift::new(seed);
    let mut mem = vec![0u8; len];
    for w in mem.chunks_exact_mut(8) {
        w.copy_from_slice(&(rng.next_u64() | 1).to_le_bytes());
    }
    mem
}

/// Addresses of `percent` % of the `npages` pages starting at `base`, chosen at random
/// (all of them at 100 %), in increasing order.
pub fn dirty_pages(base: u64, npages: usize, percent: u32, seed: u64) -> Vec<u64> {
    let mut rng = XorShift::new(seed);
    (0..npages)
        .filter(|_| percent >= 100 || (rng.next_u64() % 100) < u64::from(percent))
        .map(|p| base + p as u64 * 4096)
        .collect()
}

/// The median point estimate (ns) of a criterion benchmark, read from its
/// `estimates.json` under `criterion_dir/<group>/<function>/<param>/new/`.
pub fn criterion_median_ns(criterion_dir: &std::path::Path, id: &str) -> Option<f64> {
    let text = std::fs::read_to_string(criterion_dir.join(id).join("new/estimates.json")).ok()?;
    let median = &text[text.find("\"median\"")?..];
    let pe = &median[median.find("\"point_estimate\":")? + "\"point_estimate\":".len()..];
    let end = pe.find([',', '}'])?;
    pe[..end].trim().parse().ok()
}
