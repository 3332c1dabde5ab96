//! IDX file parser (the format of the MNIST distribution), raw or gzip-compressed.
//!
//! Layout: two zero bytes, an element-type byte (only 0x08, unsigned byte, is accepted),
//! the number of dimensions `n`, then `n` big-endian u32 sizes, then the payload, whose
//! length must equal the product of the sizes exactly.

use std::io::Read;
use std::path::Path;

use super::DataError;

/// The gzip magic number.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Largest decompressed size accepted (full MNIST train images are 47 MB).
pub const MAX_DECOMPRESSED: u64 = 1 << 30;

/// A parsed IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Whether `bytes` start with the gzip magic number.
pub fn is_gzip(bytes: &[u8]) -> bool {
    bytes.len() >= 2 && bytes[..2] == GZIP_MAGIC
}

/// Decompresses a whole gzip stream (all members). A corrupt or truncated stream, trailing
/// garbage, or output above [`MAX_DECOMPRESSED`] is an error naming `name`.
pub fn gunzip(bytes: &[u8], name: &str) -> Result<Vec<u8>, DataError> {
    let mut out = Vec::new();
    let gzip_error = |reason: String| DataError::Gzip {
        file: name.to_string(),
        reason,
    };
    // Member after member (a multi-member file is one stream); bytes after a whole member that
    // begin no other are said as such (`gzip -t` calls them trailing garbage), not as a damaged
    // stream.
    let mut rest = bytes;
    loop {
        let mut member = flate2::bufread::GzDecoder::new(rest);
        (&mut member)
            .take(MAX_DECOMPRESSED + 1 - out.len().min(MAX_DECOMPRESSED as usize) as u64)
            .read_to_end(&mut out)
            .map_err(|e| gzip_error(e.to_string()))?;
        rest = member.into_inner();
        if rest.is_empty() || out.len() as u64 > MAX_DECOMPRESSED {
            break;
        }
        if !rest.starts_with(&[0x1f, 0x8b]) {
            return Err(gzip_error(format!(
                "its gzip data is followed by {} that {} not gzip (trailing data)",
                crate::report::plural(rest.len(), "byte"),
                if rest.len() == 1 { "is" } else { "are" }
            )));
        }
    }
    if out.len() as u64 > MAX_DECOMPRESSED {
        return Err(DataError::TooLarge {
            file: name.to_string(),
            limit: MAX_DECOMPRESSED,
        });
    }
    Ok(out)
}

/// What an IDX file must hold: images (3 dimensions) or labels (1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdxKind {
    Images,
    Labels,
}

impl IdxKind {
    /// The kind of a standard MNIST file name (`*-idx3-ubyte`: images, `*-idx1-ubyte`: labels).
    pub fn of_name(name: &str) -> Option<IdxKind> {
        if name.contains("idx3") {
            Some(IdxKind::Images)
        } else if name.contains("idx1") {
            Some(IdxKind::Labels)
        } else {
            None
        }
    }

    fn ndim(self) -> (usize, &'static str, &'static str) {
        match self {
            IdxKind::Images => (3, "3", "images"),
            IdxKind::Labels => (1, "1", "labels"),
        }
    }
}

/// Parses an IDX array from `bytes`, decompressing first if they are gzip.
/// `name` (usually the path) is used in error messages.
pub fn parse_idx(bytes: &[u8], name: &str) -> Result<IdxArray, DataError> {
    parse_idx_as(bytes, name, None)
}

/// `parse_idx`, where the header must also give `kind`'s number of dimensions: a labels file
/// with an images header is named as such, not as a payload too short for its dimensions.
pub fn parse_idx_as(
    bytes: &[u8],
    name: &str,
    kind: Option<IdxKind>,
) -> Result<IdxArray, DataError> {
    if is_gzip(bytes) {
        let raw = gunzip(bytes, name)?;
        parse_raw(&raw, name, kind)
    } else {
        parse_raw(bytes, name, kind)
    }
}

/// Reads and parses an IDX file (raw or gzip).
pub fn read_idx(path: &Path) -> Result<IdxArray, DataError> {
    read_idx_as(path, None)
}

/// `read_idx` with the header checked for `kind` (`parse_idx_as`).
pub fn read_idx_as(path: &Path, kind: Option<IdxKind>) -> Result<IdxArray, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        file: path.display().to_string(),
        source,
    })?;
    parse_idx_as(&bytes, &path.display().to_string(), kind)
}

fn parse_raw(bytes: &[u8], name: &str, kind: Option<IdxKind>) -> Result<IdxArray, DataError> {
    let file = || name.to_string();
    if bytes.len() < 4 {
        return Err(DataError::HeaderTruncated {
            file: file(),
            need: 4,
            got: bytes.len(),
        });
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(DataError::BadMagic {
            file: file(),
            found: [bytes[0], bytes[1], bytes[2], bytes[3]],
        });
    }
    if bytes[2] != 0x08 {
        return Err(DataError::UnsupportedType {
            file: file(),
            code: bytes[2],
        });
    }
    let ndim = bytes[3] as usize;
    if ndim == 0 {
        return Err(DataError::WrongNdim {
            file: file(),
            what: "IDX array",
            expected: "at least 1",
            got: 0,
        });
    }
    if let Some((want, expected, what)) = kind.map(IdxKind::ndim) {
        if ndim != want {
            return Err(DataError::WrongNdim {
                file: file(),
                what,
                expected,
                got: ndim,
            });
        }
    }
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(DataError::HeaderTruncated {
            file: file(),
            need: header,
            got: bytes.len(),
        });
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| DataError::Overflow {
            file: file(),
            dims: dims.clone(),
        })?;
    let got = bytes.len() - header;
    if got < expected {
        return Err(DataError::Truncated {
            file: file(),
            dims,
            expected,
            got,
        });
    }
    if got > expected {
        return Err(DataError::TrailingBytes {
            file: file(),
            dims,
            expected,
            got,
        });
    }
    Ok(IdxArray {
        dims,
        data: bytes[header..].to_vec(),
    })
}
