//! Shannon entropy of data, in bits per byte (0–8). Encrypted or compressed
//! data sits near 8; text near 4–5. Used to skip compressing data that will
//! not shrink and to describe how changed data looks.

use serde::{Deserialize, Serialize};

pub fn shannon_entropy(data: &[u8]) -> f32 {
    if data.is_empty() {
        return 0.0;
    }
    // Four interleaved tables break the store-to-load dependency on
    // repeated bytes, which makes the count about twice as fast.
    let mut counts = [[0u32; 256]; 4];
    let mut quads = data.chunks_exact(4);
    for q in &mut quads {
        counts[0][q[0] as usize] += 1;
        counts[1][q[1] as usize] += 1;
        counts[2][q[2] as usize] += 1;
        counts[3][q[3] as usize] += 1;
    }
    for &b in quads.remainder() {
        counts[0][b as usize] += 1;
    }
    let n = data.len() as f64;
    let mut h = 0.0f64;
    for (((a, b), c), d) in counts[0]
        .iter()
        .zip(&counts[1])
        .zip(&counts[2])
        .zip(&counts[3])
    {
        let c = a + b + c + d;
        if c > 0 {
            let p = c as f64 / n;
            h -= p * p.log2();
        }
    }
    h as f32
}

/// Bytes of changed data by entropy: bucket `i` holds blocks whose entropy
/// was in `[i, i+1)` bits per byte (bucket 7 includes 8.0).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EntropyHistogram(pub [u64; 8]);

impl EntropyHistogram {
    pub fn add(&mut self, entropy: f32, bytes: u64) {
        let i = (entropy.max(0.0) as usize).min(7);
        self.0[i] += bytes;
    }

    pub fn merge(&mut self, other: &EntropyHistogram) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a += b;
        }
    }

    /// Share of the counted bytes at 7 bits per byte or more.
    pub fn high_entropy_share(&self) -> f64 {
        let total: u64 = self.0.iter().sum();
        if total == 0 {
            0.0
        } else {
            self.0[7] as f64 / total as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_of_known_distributions() {
        assert_eq!(shannon_entropy(&[0u8; 1000]), 0.0);
        let two: Vec<u8> = (0..1000).map(|i| (i % 2) as u8).collect();
        assert!((shannon_entropy(&two) - 1.0).abs() < 1e-6);
        let all: Vec<u8> = (0..256 * 16).map(|i| (i % 256) as u8).collect();
        assert!((shannon_entropy(&all) - 8.0).abs() < 1e-6);
    }

    #[test]
    fn histogram_buckets() {
        let mut h = EntropyHistogram::default();
        h.add(8.0, 10);
        h.add(7.2, 10);
        h.add(4.5, 20);
        assert_eq!(h.0[7], 20);
        assert_eq!(h.0[4], 20);
        assert!((h.high_entropy_share() - 0.5).abs() < 1e-9);
    }
}
