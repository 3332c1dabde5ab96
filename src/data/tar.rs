//! A small streaming reader of tar archives (POSIX ustar and the GNU and pax extensions for long
//! names), enough to take named regular files out of a downloaded archive. Every header's
//! checksum is verified; a truncated archive (end of data inside a header or a member, or no
//! end-of-archive block) is an error. Nothing here touches the file system.

use std::io::{self, Read};

const BLOCK: usize = 512;

/// One member of the archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The member's path as stored (`/`-separated).
    pub name: String,
    /// Bytes of data.
    pub size: u64,
    /// The type flag: `b'0'` (or 0) a regular file, `b'5'` a directory, ...
    pub kind: u8,
}

impl Entry {
    pub fn is_file(&self) -> bool {
        self.kind == b'0' || self.kind == 0 || self.kind == b'7'
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("truncated archive: {0}")]
    Truncated(String),
    #[error("corrupt tar header at byte {offset}: {reason}")]
    BadHeader { offset: u64, reason: String },
}

/// Reads exactly `buf.len()` bytes; `Ok(false)` if the stream ended before the first byte.
fn read_block<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<bool, TarError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => {
                return Err(TarError::Truncated(format!(
                    "a header block ends after {got} of {} bytes",
                    buf.len()
                )))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

/// An octal (or GNU base-256) numeric header field.
fn number(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        // GNU base-256: the remaining bits, big-endian.
        let mut v: u64 = (field[0] & 0x7f) as u64;
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(b as u64)?;
        }
        return Some(v);
    }
    let text: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|&b| b == b' ')
        .take_while(|&b| b != 0 && b != b' ')
        .collect();
    if text.is_empty() {
        return Some(0);
    }
    let mut v: u64 = 0;
    for b in text {
        if !(b'0'..=b'7').contains(&b) {
            return None;
        }
        v = v.checked_mul(8)?.checked_add((b - b'0') as u64)?;
    }
    Some(v)
}

fn text(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// The `path` record of a pax extended header, if any (`"LEN path=VALUE\n"` records).
fn pax_path(data: &[u8]) -> Option<String> {
    let mut rest = data;
    while !rest.is_empty() {
        let sp = rest.iter().position(|&b| b == b' ')?;
        let len: usize = std::str::from_utf8(&rest[..sp]).ok()?.parse().ok()?;
        if len <= sp || len > rest.len() {
            return None;
        }
        let record = &rest[sp + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Some(v) = record.strip_prefix(b"path=") {
            return Some(String::from_utf8_lossy(v).into_owned());
        }
        rest = &rest[len..];
    }
    None
}

/// Reads `size` bytes of member data into memory (long names and pax headers only), limited.
fn read_small<R: Read>(r: &mut R, size: u64, what: &str) -> Result<Vec<u8>, TarError> {
    const LIMIT: u64 = 1 << 20;
    if size > LIMIT {
        return Err(TarError::BadHeader {
            offset: 0,
            reason: format!("{what} of {size} bytes"),
        });
    }
    let mut v = Vec::with_capacity(size as usize);
    r.take(size).read_to_end(&mut v)?;
    if (v.len() as u64) < size {
        return Err(TarError::Truncated(format!(
            "{what}: {} of {size} bytes",
            v.len()
        )));
    }
    Ok(v)
}

/// Reads and drops `n` bytes; an error if the stream ends first.
fn skip<R: Read>(r: &mut R, n: u64, what: &str) -> Result<(), TarError> {
    let got = io::copy(&mut r.take(n), &mut io::sink())?;
    if got < n {
        return Err(TarError::Truncated(format!("{what}: {got} of {n} bytes")));
    }
    Ok(())
}

/// Calls `f` with every member (regular files, directories, links ...; the pax and GNU long-name
/// headers are consumed here and applied to the member they precede) and a reader of exactly its
/// data; what `f` leaves unread is skipped. An error of `f` stops the walk and is returned as
/// `TarError::Io`.
pub fn for_each<R: Read>(
    mut r: R,
    mut f: impl FnMut(&Entry, &mut dyn Read) -> io::Result<()>,
) -> Result<(), TarError> {
    let mut header = [0u8; BLOCK];
    let mut offset = 0u64;
    let mut long_name: Option<String> = None;
    loop {
        if !read_block(&mut r, &mut header)? {
            return Err(TarError::Truncated(
                "the archive ends without its end-of-archive block".into(),
            ));
        }
        if header.iter().all(|&b| b == 0) {
            // The end-of-archive marker (a second zero block may follow; nothing else matters).
            return Ok(());
        }
        let bad = |reason: String| TarError::BadHeader { offset, reason };
        let stored =
            number(&header[148..156]).ok_or_else(|| bad("unreadable checksum field".into()))?;
        let sum: u64 = header
            .iter()
            .enumerate()
            .map(|(i, &b)| if (148..156).contains(&i) { b' ' } else { b } as u64)
            .sum();
        if sum != stored {
            return Err(bad(format!(
                "checksum {stored} stored, {sum} computed (not a tar archive, or damaged)"
            )));
        }
        let size = number(&header[124..136]).ok_or_else(|| bad("unreadable size field".into()))?;
        let kind = header[156];
        let mut name = text(&header[0..100]);
        if &header[257..262] == b"ustar" {
            let prefix = text(&header[345..500]);
            if !prefix.is_empty() {
                name = format!("{prefix}/{name}");
            }
        }
        let padded = size.div_ceil(BLOCK as u64) * BLOCK as u64;
        match kind {
            b'L' => {
                // GNU long name of the next member.
                let data = read_small(&mut r, size, "GNU long name")?;
                skip(&mut r, padded - size, "GNU long name padding")?;
                long_name = Some(text(&data));
            }
            b'x' => {
                let data = read_small(&mut r, size, "pax header")?;
                skip(&mut r, padded - size, "pax header padding")?;
                if let Some(p) = pax_path(&data) {
                    long_name = Some(p);
                }
            }
            b'g' => skip(&mut r, padded, "pax global header")?,
            _ => {
                let entry = Entry {
                    name: long_name.take().unwrap_or(name),
                    size,
                    kind,
                };
                // Links, directories and devices carry no data whatever their size field says.
                let data_len = if matches!(kind, b'1' | b'2' | b'3' | b'4' | b'5' | b'6') {
                    0
                } else {
                    size
                };
                let mut data = (&mut r).take(data_len);
                f(&entry, &mut data)?;
                let left = data.limit();
                skip(&mut r, left, &format!("member {}", entry.name))?;
                let pad = data_len.div_ceil(BLOCK as u64) * BLOCK as u64 - data_len;
                skip(&mut r, pad, &format!("padding after {}", entry.name))?;
                offset += data_len + pad;
            }
        }
        offset += BLOCK as u64;
        if matches!(kind, b'L' | b'x' | b'g') {
            offset += padded;
        }
    }
}
