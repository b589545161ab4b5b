//! Deterministic byte streams: position `i` of stream `seed` is always the same byte, so a
//! receiver verifies what it got without the sender's copy, at any chunking.

use std::io::{self, Read, Write};

/// A stream of pseudo-random bytes identified by a seed.
#[derive(Debug, Clone, Copy)]
pub struct Pattern {
    seed: u64,
}

impl Pattern {
    /// The stream for `seed`.
    pub const fn new(seed: u64) -> Self {
        Self { seed }
    }

    /// Fills `buf` with the bytes at `offset..offset + buf.len()`.
    pub fn fill(&self, offset: u64, buf: &mut [u8]) {
        for (i, byte) in buf.iter_mut().enumerate() {
            let position = offset + i as u64;
            let word = splitmix64(self.seed ^ (position / 8).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            *byte = word.to_le_bytes()[(position % 8) as usize];
        }
    }

    /// Writes `len` bytes of the stream.
    pub fn write_to(&self, out: &mut impl Write, len: u64) -> io::Result<()> {
        let mut buf = vec![0u8; CHUNK];
        let mut sent = 0u64;
        while sent < len {
            let n = CHUNK.min((len - sent) as usize);
            self.fill(sent, &mut buf[..n]);
            out.write_all(&buf[..n])?;
            sent += n as u64;
        }
        Ok(())
    }

    /// Reads to EOF and checks every byte. Returns how many bytes matched before the first
    /// mismatch or EOF; `Err` on an I/O error (e.g. a reset).
    pub fn verify_from(&self, input: &mut impl Read) -> io::Result<Verified> {
        let mut buf = vec![0u8; CHUNK];
        let mut want = vec![0u8; CHUNK];
        let mut offset = 0u64;
        loop {
            let n = input.read(&mut buf)?;
            if n == 0 {
                return Ok(Verified {
                    bytes: offset,
                    mismatch_at: None,
                });
            }
            self.fill(offset, &mut want[..n]);
            if let Some(i) = (0..n).find(|&i| buf[i] != want[i]) {
                return Ok(Verified {
                    bytes: offset + i as u64,
                    mismatch_at: Some(offset + i as u64),
                });
            }
            offset += n as u64;
        }
    }
}

/// The result of `verify_from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// Bytes that matched (all of them when `mismatch_at` is `None`).
    pub bytes: u64,
    /// Where the first wrong byte was.
    pub mismatch_at: Option<u64>,
}

impl Verified {
    /// What a complete, intact stream of `bytes` verifies as.
    pub const fn intact(bytes: u64) -> Self {
        Self {
            bytes,
            mismatch_at: None,
        }
    }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

const CHUNK: usize = 256 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_chunking_verifies_and_a_flipped_byte_is_found() {
        let pattern = Pattern::new(7);
        let mut data = Vec::new();
        pattern.write_to(&mut data, 100_003).unwrap();
        let got = pattern.verify_from(&mut data.as_slice()).unwrap();
        assert_eq!(
            got,
            Verified {
                bytes: 100_003,
                mismatch_at: None
            }
        );
        data[77_777] ^= 1;
        let got = pattern.verify_from(&mut data.as_slice()).unwrap();
        assert_eq!(got.mismatch_at, Some(77_777));
        let other = Pattern::new(8).verify_from(&mut data.as_slice()).unwrap();
        assert_eq!(other.mismatch_at, Some(0), "another seed is another stream");
    }
}
