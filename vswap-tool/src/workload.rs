//! The synthetic workload: what each page holds, and which pages are hot.
//!
//! Every page has a fixed *kind* (from a hash of its index) and a *version*
//! that its owner thread bumps on each write; its content is a pure function
//! of `(seed, page, version)`, so any reader can check it byte for byte.

/// Bytes per page.
pub const PAGE: usize = 4096;

/// What a page holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// All zeroes (the zero backend).
    Zero,
    /// One repeated 64-bit word (the same-filled backend).
    Same,
    /// Text-like, compressible (the zswap pool).
    Text,
    /// Random, incompressible (the swap device).
    Random,
}

/// The page-content mix, in percent (the rest is random).
#[derive(Clone, Copy, Debug)]
pub struct Mix {
    /// All-zero pages.
    pub zero: u32,
    /// Same-filled pages.
    pub same: u32,
    /// Text pages.
    pub text: u32,
}

impl Default for Mix {
    fn default() -> Self {
        Self {
            zero: 20,
            same: 10,
            text: 50,
        }
    }
}

/// SplitMix64: a fast, well-mixed hash / PRNG step.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A small xorshift PRNG for the workload threads.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator (any seed).
    pub fn new(seed: u64) -> Self {
        Self(mix64(seed) | 1)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
    /// True with probability `pct` percent.
    pub fn pct(&mut self, pct: u32) -> bool {
        self.below(100) < u64::from(pct)
    }
}

const WORDS: [&str; 64] = [
    "the",
    "swap",
    "page",
    "memory",
    "kernel",
    "slot",
    "virtual",
    "device",
    "cluster",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "zswap",
    "writeback",
    "folio",
    "cache",
    "table",
    "entry",
    "count",
    "lock",
    "free",
    "alloc",
    "backend",
    "zero",
    "same",
    "filled",
    "offset",
    "reverse",
    "map",
    "flash",
    "segment",
    "garbage",
    "collector",
    "policy",
    "clock",
    "hand",
    "resident",
    "budget",
    "fault",
    "user",
    "handler",
    "thread",
    "region",
    "compressed",
    "pool",
    "limit",
    "file",
    "system",
    "write",
    "read",
    "data",
    "with",
    "from",
    "this",
    "when",
    "each",
    "one",
    "word",
    "bytes",
    "Linux",
];

/// The workload's pages: kinds by index, contents by version, hot set.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    /// Seed of every hash.
    pub seed: u64,
    /// Content mix.
    pub mix: Mix,
    /// Percent of pages in the hot set.
    pub hot_pct: u32,
}

impl Workload {
    /// The kind of page `page`.
    pub fn kind(&self, page: u64) -> Kind {
        let h = (mix64(self.seed ^ page.wrapping_mul(0x2545_f491_4f6c_dd1d)) % 100) as u32;
        let m = self.mix;
        if h < m.zero {
            Kind::Zero
        } else if h < m.zero + m.same {
            Kind::Same
        } else if h < m.zero + m.same + m.text {
            Kind::Text
        } else {
            Kind::Random
        }
    }

    /// Whether `page` is in the hot set.
    pub fn hot(&self, page: u64) -> bool {
        (mix64(self.seed.rotate_left(17) ^ page) % 100) < u64::from(self.hot_pct)
    }

    /// Write the content of `page` at `version` into `out` (one page).
    pub fn fill(&self, page: u64, version: u32, out: &mut [u8]) {
        let h = mix64(self.seed ^ (page << 20) ^ u64::from(version) ^ 0x5eed);
        match self.kind(page) {
            Kind::Zero => out.fill(0),
            Kind::Same => {
                // Small values and all-ones patterns both fit the descriptor.
                let w: u64 = if h % 4 == 0 {
                    !u64::from(version & 0xff)
                } else {
                    (1 << 40) | (page & 0xff_ffff) << 8 | u64::from(version & 0xff)
                };
                for c in out.chunks_exact_mut(8) {
                    c.copy_from_slice(&w.to_ne_bytes());
                }
            }
            Kind::Text => {
                let mut r = Rng::new(h);
                let (mut i, mut col) = (0, 0);
                let n = out.len();
                'page: loop {
                    let bits = r.next_u64();
                    for k in 0..4 {
                        let w = WORDS[((bits >> (k * 16)) & 63) as usize].as_bytes();
                        let sep = if col > 60 { b'\n' } else { b' ' };
                        col = if col > 60 { 0 } else { col + w.len() + 1 };
                        match out.get_mut(i..i + w.len() + 1) {
                            Some(dst) => {
                                let (a, b) = dst.split_at_mut(w.len());
                                a.copy_from_slice(w);
                                b.fill(sep);
                                i += w.len() + 1;
                            }
                            None => {
                                if let Some(dst) = out.get_mut(i..) {
                                    let m = dst.len();
                                    dst.copy_from_slice(w.get(..m).unwrap_or(&[]));
                                }
                                break 'page;
                            }
                        }
                        if i == n {
                            break 'page;
                        }
                    }
                }
            }
            Kind::Random => {
                let mut r = Rng::new(h);
                for c in out.chunks_exact_mut(8) {
                    c.copy_from_slice(&r.next_u64().to_ne_bytes());
                }
            }
        }
    }

    /// Pick a page index in `0..n` with the hot/cold skew: `hot_share`
    /// percent of picks go to the hot set, the rest are uniform.
    pub fn pick(&self, r: &mut Rng, n: u64, hot_share: u32) -> u64 {
        if r.pct(hot_share) {
            for _ in 0..64 {
                let p = r.below(n);
                if self.hot(p) {
                    return p;
                }
            }
        }
        r.below(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_contents() {
        let w = Workload {
            seed: 1,
            mix: Mix::default(),
            hot_pct: 20,
        };
        let mut a = vec![0u8; PAGE];
        let mut b = vec![0u8; PAGE];
        let mut seen = [0; 4];
        for p in 0..1000 {
            w.fill(p, 3, &mut a);
            w.fill(p, 3, &mut b);
            assert_eq!(a, b);
            seen[w.kind(p) as usize] += 1;
            if w.kind(p) == Kind::Text {
                let c = lz4_flex::block::compress(&a);
                assert!(c.len() < PAGE * 3 / 5, "text compresses: {}", c.len());
            }
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
    }
}
