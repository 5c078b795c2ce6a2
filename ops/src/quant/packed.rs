//! The packed ternary format: 2 bits per weight, four per byte, laid out as bitnet.cpp's x86
//! I2_S so a SIMD kernel unpacks 128 weights from 32 bytes with three shifts and a mask.
//!
//! A `[rows, cols]` matrix (rows = output features, cols = input features: PyTorch's
//! `nn.Linear` layout, the transpose of burn's `[in, out]`) is stored row after row. Each row is
//! padded with zeros to a multiple of [`BLOCK`] = 128 weights and cut into blocks of 128 weights
//! = 32 bytes. Within a block, byte `p` (0 ≤ p < 32) holds the weights `p`, `p + 32`, `p + 64`
//! and `p + 96` of the block in its bits 7–6, 5–4, 3–2 and 1–0. A weight `w ∈ {−1, 0, +1}` is
//! stored as the code `w + 1` (−1 → 0b00, 0 → 0b01, +1 → 0b10; 0b11 never occurs). So weight
//! `(r, c)` is in byte `r·(padded/4) + (c / 128)·32 + (c mod 32)` at shift `6 − 2·((c mod 128) /
//! 32)`, where `padded = ⌈cols / 128⌉·128`. The tensor's scale (γ, an f32) is stored beside it.

/// Weights per block.
pub const BLOCK: usize = 128;
/// Bytes per block.
pub const BLOCK_BYTES: usize = BLOCK / 4;

/// A ternary matrix in the packed format, with its scale.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedTernary {
    pub rows: usize,
    pub cols: usize,
    pub bytes: Vec<u8>,
    /// γ: weight `(r, c)` is `code − 1` times this.
    pub scale: f32,
}

/// Why bytes are not a packed matrix of the given shape.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PackError {
    #[error("{got} bytes, but a packed {rows}×{cols} matrix has {want}")]
    Length {
        rows: usize,
        cols: usize,
        got: usize,
        want: usize,
    },
    #[error("byte {at} holds the code 0b11, which is no ternary weight")]
    BadCode { at: usize },
    #[error("row {row} has a non-zero weight in its padding")]
    Padding { row: usize },
}

/// Columns of a row once padded to whole blocks.
pub fn padded_cols(cols: usize) -> usize {
    cols.div_ceil(BLOCK) * BLOCK
}

/// Bytes of one packed row.
pub fn row_bytes(cols: usize) -> usize {
    padded_cols(cols) / 4
}

impl PackedTernary {
    /// Pack row-major ternary `values` (`rows × cols`, each in {−1, 0, +1}).
    ///
    /// # Panics
    /// When `values` has not `rows · cols` entries or holds a value outside {−1, 0, +1}.
    pub fn pack(values: &[i8], rows: usize, cols: usize, scale: f32) -> Self {
        assert_eq!(values.len(), rows * cols, "{rows}×{cols} values");
        let per_row = row_bytes(cols);
        // Every code starts as 0b01 (zero), so the padding is zeros.
        let mut bytes = vec![0b0101_0101u8; rows * per_row];
        for (r, row) in values.chunks(cols.max(1)).enumerate().take(rows) {
            let out = &mut bytes[r * per_row..(r + 1) * per_row];
            for (c, &v) in row.iter().enumerate() {
                assert!((-1..=1).contains(&v), "{v} is not ternary");
                let (byte, shift) = locate(c);
                let code = (v + 1) as u8;
                out[byte] = (out[byte] & !(0b11 << shift)) | (code << shift);
            }
        }
        Self {
            rows,
            cols,
            bytes,
            scale,
        }
    }

    /// Read packed bytes back, checking their length, codes and padding.
    pub fn from_bytes(
        bytes: Vec<u8>,
        rows: usize,
        cols: usize,
        scale: f32,
    ) -> Result<Self, PackError> {
        let per_row = row_bytes(cols);
        let want = rows * per_row;
        if bytes.len() != want {
            return Err(PackError::Length {
                rows,
                cols,
                got: bytes.len(),
                want,
            });
        }
        for (at, b) in bytes.iter().enumerate() {
            if (0..4).any(|k| (b >> (2 * k)) & 0b11 == 0b11) {
                return Err(PackError::BadCode { at });
            }
        }
        let packed = Self {
            rows,
            cols,
            bytes,
            scale,
        };
        for row in 0..rows {
            if (cols..padded_cols(cols)).any(|c| packed.get(row, c) != 0) {
                return Err(PackError::Padding { row });
            }
        }
        Ok(packed)
    }

    /// Weight `(r, c)` ∈ {−1, 0, +1} (columns up to the padded width).
    pub fn get(&self, r: usize, c: usize) -> i8 {
        let (byte, shift) = locate(c);
        ((self.bytes[r * row_bytes(self.cols) + byte] >> shift) & 0b11) as i8 - 1
    }

    /// The ternary values, row-major `rows × cols` (the exact inverse of [`Self::pack`]).
    pub fn unpack(&self) -> Vec<i8> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for r in 0..self.rows {
            out.extend((0..self.cols).map(|c| self.get(r, c)));
        }
        out
    }

    /// Row `r`'s weights as `i8`, padded to whole blocks (what a kernel multiplies).
    pub fn row_values(&self, r: usize, out: &mut [i8]) {
        let per_row = row_bytes(self.cols);
        let row = &self.bytes[r * per_row..(r + 1) * per_row];
        for (b, block) in row.chunks_exact(BLOCK_BYTES).enumerate() {
            let dst = &mut out[b * BLOCK..(b + 1) * BLOCK];
            for (p, &byte) in block.iter().enumerate() {
                for g in 0..4 {
                    dst[p + 32 * g] = ((byte >> (6 - 2 * g)) & 0b11) as i8 - 1;
                }
            }
        }
    }

    /// Bytes this matrix takes as stored (packed weights and its f32 scale).
    pub fn stored_bytes(&self) -> usize {
        self.bytes.len() + 4
    }
}

/// Byte within a row and bit shift of column `c`.
fn locate(c: usize) -> (usize, u32) {
    let block = c / BLOCK;
    let within = c % BLOCK;
    (
        block * BLOCK_BYTES + within % 32,
        6 - 2 * (within / 32) as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random(rows: usize, cols: usize, seed: u64) -> Vec<i8> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..rows * cols).map(|_| rng.random_range(-1..=1)).collect()
    }

    #[test]
    fn the_layout_is_the_documented_one() {
        // One row of 130 weights: two blocks (the second padded with 126 zeros), 64 bytes.
        let mut v = vec![0i8; 130];
        v[0] = 1; // byte 0, bits 7–6
        v[32] = -1; // byte 0, bits 5–4
        v[97] = 1; // byte 1, bits 1–0
        v[129] = -1; // block 1: byte 32 + 1, bits 7–6
        let p = PackedTernary::pack(&v, 1, 130, 0.5);
        assert_eq!(p.bytes.len(), 64);
        assert_eq!(p.bytes[0], 0b10_00_01_01);
        assert_eq!(p.bytes[1], 0b01_01_01_10);
        assert_eq!(p.bytes[33], 0b00_01_01_01);
        assert_eq!(p.bytes[2], 0b0101_0101, "zeros are 0b01");
        assert_eq!(p.stored_bytes(), 68);
    }

    #[test]
    fn pack_then_unpack_is_exact_on_odd_shapes() {
        for (i, &(rows, cols)) in [
            (1, 1),
            (3, 5),
            (2, 127),
            (4, 128),
            (3, 129),
            (7, 300),
            (1, 1000),
        ]
        .iter()
        .enumerate()
        {
            let v = random(rows, cols, i as u64);
            let p = PackedTernary::pack(&v, rows, cols, 1.0);
            assert_eq!(p.bytes.len(), rows * padded_cols(cols) / 4);
            assert_eq!(p.unpack(), v, "{rows}×{cols}");
            let back = PackedTernary::from_bytes(p.bytes.clone(), rows, cols, 1.0).unwrap();
            assert_eq!(back, p);
            let mut row = vec![9i8; padded_cols(cols)];
            p.row_values(rows - 1, &mut row);
            assert_eq!(&row[..cols], &v[(rows - 1) * cols..]);
            assert!(
                row[cols..].iter().all(|&x| x == 0),
                "padding unpacks to zeros"
            );
        }
    }

    #[test]
    fn malformed_bytes_are_refused() {
        let p = PackedTernary::pack(&random(2, 10, 1), 2, 10, 1.0);
        let short = PackedTernary::from_bytes(p.bytes[..10].to_vec(), 2, 10, 1.0);
        assert!(matches!(short, Err(PackError::Length { want: 64, .. })));
        let mut bad = p.bytes.clone();
        bad[3] = 0b1111_0101;
        assert_eq!(
            PackedTernary::from_bytes(bad, 2, 10, 1.0),
            Err(PackError::BadCode { at: 3 })
        );
        let mut padded = p.bytes.clone();
        padded[32 + 20] = 0b1001_0101; // row 1, column 20: in range; column 52 is padding
        assert_eq!(
            PackedTernary::from_bytes(padded, 2, 10, 1.0),
            Err(PackError::Padding { row: 1 })
        );
    }
}
