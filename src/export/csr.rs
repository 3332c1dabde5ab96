//! Compressed sparse row matrices: the layout of `torch.sparse_csr_tensor(crow_indices,
//! col_indices, values, size)` and `scipy.sparse.csr_matrix((data, indices, indptr), shape)`.

use safetensors::Dtype;

/// A `rows x cols` matrix in CSR form: the kept entries of row `r` are
/// `col[crow[r]..crow[r + 1]]` (strictly increasing) with values `val[crow[r]..crow[r + 1]]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Csr {
    pub rows: usize,
    pub cols: usize,
    pub crow: Vec<u32>,
    pub col: Vec<u32>,
    pub val: Vec<f32>,
}

/// Why a CSR triplet is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CsrError {
    #[error("crow_indices has {found} entries, expected rows + 1 = {expected}")]
    CrowLength { found: usize, expected: usize },
    #[error("crow_indices[0] is {0}, expected 0")]
    CrowStart(u64),
    #[error("crow_indices decreases at row {row} ({from} -> {to})")]
    CrowDecreasing { row: usize, from: u64, to: u64 },
    #[error(
        "crow_indices ends at {end} but col_indices has {cols} and values {vals} entries (all three must agree)"
    )]
    Nnz { end: u64, cols: usize, vals: usize },
    #[error(
        "col_indices[{at}] = {col} in row {row} is out of range (the matrix has {cols} columns)"
    )]
    ColRange {
        at: usize,
        row: usize,
        col: u64,
        cols: usize,
    },
    #[error(
        "col_indices of row {row} are not strictly increasing at position {at} ({prev} then {col})"
    )]
    ColOrder {
        at: usize,
        row: usize,
        prev: u64,
        col: u64,
    },
    #[error("values[{at}] is not finite ({value})")]
    NonFinite { at: usize, value: f32 },
    #[error("a {rows} x {cols} matrix is too large for 32-bit indices")]
    TooLarge { rows: usize, cols: usize },
}

impl Csr {
    /// The entries of `dense` (`rows x cols`, row-major) where `keep` is true, in row order.
    pub fn from_dense_where(
        rows: usize,
        cols: usize,
        dense: &[f32],
        keep: impl Fn(usize, usize) -> bool,
    ) -> Csr {
        assert_eq!(dense.len(), rows * cols, "from_dense_where: dense length");
        let mut crow = Vec::with_capacity(rows + 1);
        let (mut col, mut val) = (Vec::new(), Vec::new());
        crow.push(0u32);
        for r in 0..rows {
            for c in 0..cols {
                if keep(r, c) {
                    col.push(c as u32);
                    val.push(dense[r * cols + c]);
                }
            }
            crow.push(col.len() as u32);
        }
        Csr {
            rows,
            cols,
            crow,
            col,
            val,
        }
    }

    /// The non-zero entries of `dense`.
    pub fn from_dense(rows: usize, cols: usize, dense: &[f32]) -> Csr {
        Csr::from_dense_where(rows, cols, dense, |r, c| dense[r * cols + c] != 0.0)
    }

    pub fn nnz(&self) -> usize {
        self.val.len()
    }

    /// The dense `rows x cols` matrix (zeros where nothing is stored).
    pub fn to_dense(&self) -> Vec<f32> {
        let mut d = vec![0.0f32; self.rows * self.cols];
        for r in 0..self.rows {
            for j in self.crow[r] as usize..self.crow[r + 1] as usize {
                d[r * self.cols + self.col[j] as usize] = self.val[j];
            }
        }
        d
    }

    /// Checks a triplet as read from a file (indices widened to u64) and builds the matrix:
    /// `crow` has rows + 1 entries, starts at 0, never decreases and ends at nnz; every column is
    /// below `cols` and strictly increasing within its row; values are finite.
    pub fn from_parts(
        rows: usize,
        cols: usize,
        crow: &[u64],
        col: &[u64],
        val: Vec<f32>,
    ) -> Result<Csr, CsrError> {
        if (rows as u64 + 1) * cols as u64 > u32::MAX as u64 {
            return Err(CsrError::TooLarge { rows, cols });
        }
        if crow.len() != rows + 1 {
            return Err(CsrError::CrowLength {
                found: crow.len(),
                expected: rows + 1,
            });
        }
        if crow[0] != 0 {
            return Err(CsrError::CrowStart(crow[0]));
        }
        for r in 0..rows {
            if crow[r + 1] < crow[r] {
                return Err(CsrError::CrowDecreasing {
                    row: r,
                    from: crow[r],
                    to: crow[r + 1],
                });
            }
        }
        let end = crow[rows];
        if end != col.len() as u64 || end != val.len() as u64 {
            return Err(CsrError::Nnz {
                end,
                cols: col.len(),
                vals: val.len(),
            });
        }
        for r in 0..rows {
            let (a, b) = (crow[r] as usize, crow[r + 1] as usize);
            for at in a..b {
                if col[at] >= cols as u64 {
                    return Err(CsrError::ColRange {
                        at,
                        row: r,
                        col: col[at],
                        cols,
                    });
                }
                if at > a && col[at] <= col[at - 1] {
                    return Err(CsrError::ColOrder {
                        at,
                        row: r,
                        prev: col[at - 1],
                        col: col[at],
                    });
                }
            }
        }
        if let Some((at, &value)) = val.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(CsrError::NonFinite { at, value });
        }
        Ok(Csr {
            rows,
            cols,
            crow: crow.iter().map(|&v| v as u32).collect(),
            col: col.iter().map(|&v| v as u32).collect(),
            val,
        })
    }
}

/// The narrowest unsigned safetensors type that holds every value up to `max`.
pub fn index_dtype(max: u64) -> Dtype {
    if max < 1 << 8 {
        Dtype::U8
    } else if max < 1 << 16 {
        Dtype::U16
    } else {
        Dtype::U32
    }
}

/// `values` as little-endian bytes of `dtype` (U8, U16 or U32; every value must fit).
pub fn encode_indices(values: &[u32], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::U8 => values.iter().map(|&v| v as u8).collect(),
        Dtype::U16 => values
            .iter()
            .flat_map(|&v| (v as u16).to_le_bytes())
            .collect(),
        Dtype::U32 => values.iter().flat_map(|&v| v.to_le_bytes()).collect(),
        other => panic!("encode_indices: {other:?} is not an index type"),
    }
}

/// Widens index bytes of `dtype` to u64; `None` for a type that is not an unsigned index type.
pub fn decode_indices(bytes: &[u8], dtype: Dtype) -> Option<Vec<u64>> {
    match dtype {
        Dtype::U8 => Some(bytes.iter().map(|&v| v as u64).collect()),
        Dtype::U16 => Some(
            bytes
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]) as u64)
                .collect(),
        ),
        Dtype::U32 => Some(
            bytes
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u64)
                .collect(),
        ),
        _ => None,
    }
}
