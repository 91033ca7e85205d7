//! A tar reader for restores, with every header bounded.
//!
//! Safety assumptions: the stream is hostile (anyone who can write the
//! export's `.nfs-csi/` can plant an archive and fix its manifest). The tar
//! crate's iterator reads GNU long names and PAX headers wholly into memory,
//! so headers are read here, block by block, with the tar crate's `Header`
//! parsing the fields: extension headers are read only up to fixed bounds
//! ([`MAX_PAX`], [`MAX_PATH`]), a GNU sparse map up to [`MAX_SPARSE`]
//! segments, and file data is streamed to the caller, never buffered. What
//! exceeds a bound is refused, whatever is malformed is corrupt; nothing
//! here panics on any input.

use std::io::Read;

use tar::{EntryType, GnuSparseHeader, Header};

use super::Error;
use super::tree::{self, Meta};

/// Longest path or link target (Linux's PATH_MAX).
pub const MAX_PATH: usize = 4096;
/// Largest PAX extended header (path, link target and xattrs of one entry).
pub const MAX_PAX: u64 = 64 << 10;
/// Most data segments of one GNU sparse file (16 bytes each in memory).
pub const MAX_SPARSE: usize = 1 << 16;
/// Most extension headers (PAX, GNU long name or link) before one entry:
/// more is not an archive this driver wrote.
const MAX_EXTENSIONS: u32 = 8;
const BLOCK: u64 = 512;

type Result<T> = std::result::Result<T, Error>;

fn corrupt(reason: impl Into<String>) -> Error {
    Error::Corrupt {
        reason: reason.into(),
    }
}

fn refused(reason: impl Into<String>) -> Error {
    Error::Refused {
        reason: reason.into(),
    }
}

/// A read error: the underlying file's (with an errno) as I/O, the rest
/// (zstd's, a stream ending early) as corruption.
pub fn read_error(e: std::io::Error) -> Error {
    if e.raw_os_error().is_some() {
        Error::Io {
            what: "read archive".into(),
            source: e,
        }
    } else if e.kind() == std::io::ErrorKind::UnexpectedEof {
        corrupt("the archive ends in the middle of an entry")
    } else {
        corrupt(format!(
            "unreadable stream: {}",
            crate::sys::text::short(&e.to_string())
        ))
    }
}

/// One entry of the archive, extension headers applied.
#[derive(Debug)]
pub struct Entry {
    pub kind: EntryType,
    pub path: Vec<u8>,
    pub link: Option<Vec<u8>>,
    pub meta: Meta,
    pub rdev: u64,
    /// Bytes of data stored after the header.
    pub stored: u64,
    /// For a GNU sparse file: its apparent size and its (offset, length)
    /// data segments, in order, whose lengths add up to `stored`.
    pub sparse: Option<(u64, Vec<(u64, u64)>)>,
}

impl Entry {
    /// The file's apparent size (holes included).
    pub fn apparent_size(&self) -> u64 {
        self.sparse.as_ref().map_or(self.stored, |(real, _)| *real)
    }
}

/// What PAX and GNU extension headers set for the next entry.
#[derive(Default)]
struct Pending {
    seen: bool,
    /// A PAX header was read (one per entry: its records are kept).
    pax: bool,
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u32>,
    gid: Option<u32>,
    mtime: Option<(i64, i64)>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

pub struct Reader<R> {
    inner: R,
    /// Data of the current entry not yet read, and its padding.
    left: u64,
    pad: u64,
    done: bool,
}

impl<R: Read> Reader<R> {
    pub fn new(inner: R) -> Reader<R> {
        Reader {
            inner,
            left: 0,
            pad: 0,
            done: false,
        }
    }

    /// Reads a whole block; `false` at a clean end of the stream.
    fn block(&mut self, buf: &mut [u8; BLOCK as usize]) -> Result<bool> {
        let mut got = 0;
        while got < buf.len() {
            match self.inner.read(&mut buf[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => return Err(corrupt("the archive ends inside a header")),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(read_error(e)),
            }
        }
        Ok(true)
    }

    /// Discards the rest of the current entry's data and padding, checking
    /// `cancel` as it goes.
    fn skip(&mut self, cancel: &dyn Fn() -> bool) -> Result<()> {
        let mut todo = self.left.saturating_add(self.pad);
        let mut buf = [0u8; 64 << 10];
        let mut since_check = 0u64;
        while todo > 0 {
            if since_check >= tree::CANCEL_EVERY {
                since_check = 0;
                if cancel() {
                    return Err(tree::Error::Cancelled.into());
                }
            }
            let want = todo.min(buf.len() as u64) as usize;
            let n = match self.inner.read(&mut buf[..want]) {
                Ok(0) => return Err(corrupt("the archive ends in the middle of an entry")),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_error(e)),
            };
            todo -= n as u64;
            since_check += n as u64;
        }
        self.left = 0;
        self.pad = 0;
        Ok(())
    }

    /// Reads an extension header's data (at most `max` bytes, else refused).
    fn small(&mut self, size: u64, max: u64, what: &str) -> Result<Vec<u8>> {
        if size > max {
            return Err(refused(format!(
                "{what} of {size} bytes (at most {max} are accepted)"
            )));
        }
        let mut data = vec![0u8; size as usize];
        self.inner.read_exact(&mut data).map_err(read_error)?;
        self.left = 0;
        self.pad = padding(size);
        Ok(data)
    }

    /// The next entry, or `None` at the end of the archive. The data of the
    /// previous entry, unread, is skipped.
    pub fn next_entry(&mut self, cancel: &dyn Fn() -> bool) -> Result<Option<Entry>> {
        if self.done {
            return Ok(None);
        }
        self.skip(cancel)?;
        let mut pending = Pending::default();
        let mut block = [0u8; BLOCK as usize];
        let mut extensions = 0u32;
        loop {
            if !self.block(&mut block)? || block.iter().all(|b| *b == 0) {
                self.done = true;
                if pending.seen {
                    return Err(corrupt("extension headers with no entry after them"));
                }
                return Ok(None);
            }
            let header = Header::from_byte_slice(&block);
            check_sum(header)?;
            let size = header
                .entry_size()
                .map_err(|_| corrupt("a header has an unreadable size"))?;
            let kind = header.entry_type();
            if matches!(
                kind,
                EntryType::XHeader
                    | EntryType::XGlobalHeader
                    | EntryType::GNULongName
                    | EntryType::GNULongLink
            ) {
                extensions += 1;
                if extensions > MAX_EXTENSIONS {
                    return Err(corrupt(format!(
                        "more than {MAX_EXTENSIONS} extension headers for one entry"
                    )));
                }
            }
            match kind {
                EntryType::XHeader => {
                    if pending.pax {
                        return Err(corrupt("two PAX headers for one entry"));
                    }
                    let data = self.small(size, MAX_PAX, "a PAX header")?;
                    self.skip(cancel)?;
                    pending.seen = true;
                    pending.pax = true;
                    parse_pax(&data, &mut pending)?;
                }
                EntryType::XGlobalHeader => {
                    self.small(size, MAX_PAX, "a PAX global header")?;
                    self.skip(cancel)?;
                }
                EntryType::GNULongName | EntryType::GNULongLink => {
                    let what = if kind == EntryType::GNULongName {
                        "a GNU long name"
                    } else {
                        "a GNU long link target"
                    };
                    let mut data = self.small(size, MAX_PATH as u64 + 1, what)?;
                    self.skip(cancel)?;
                    while data.last() == Some(&0) {
                        data.pop();
                    }
                    pending.seen = true;
                    if kind == EntryType::GNULongName {
                        pending.path.get_or_insert(data);
                    } else {
                        pending.link.get_or_insert(data);
                    }
                }
                _ => return self.entry(header, size, kind, pending).map(Some),
            }
        }
    }

    fn entry(
        &mut self,
        header: &Header,
        size: u64,
        kind: EntryType,
        pending: Pending,
    ) -> Result<Entry> {
        let path = match pending.path {
            Some(p) => p,
            None => header.path_bytes().into_owned(),
        };
        if path.len() > MAX_PATH {
            return Err(refused(format!(
                "a path of {} bytes (at most {MAX_PATH})",
                path.len()
            )));
        }
        let link = match pending.link {
            Some(l) => Some(l),
            None => header.link_name_bytes().map(|l| l.into_owned()),
        };
        if link.as_ref().is_some_and(|l| l.len() > MAX_PATH) {
            return Err(refused(format!(
                "a link target of more than {MAX_PATH} bytes at {}",
                tree::show(&path)
            )));
        }
        let (mtime, mtime_nsec) = pending
            .mtime
            .unwrap_or((header.mtime().unwrap_or(0).min(i64::MAX as u64) as i64, 0));
        let meta = Meta {
            mode: header.mode().unwrap_or(0o644) & 0o7777,
            uid: pending
                .uid
                .unwrap_or_else(|| header.uid().unwrap_or(0).min(u32::MAX as u64) as u32),
            gid: pending
                .gid
                .unwrap_or_else(|| header.gid().unwrap_or(0).min(u32::MAX as u64) as u32),
            mtime,
            mtime_nsec,
            xattrs: pending.xattrs,
        };
        let rdev = match (header.device_major(), header.device_minor()) {
            (Ok(Some(ma)), Ok(Some(mi))) => nix::sys::stat::makedev(ma as u64, mi as u64),
            _ => 0,
        };
        let stored = pending.size.unwrap_or(size);
        let sparse = if kind == EntryType::GNUSparse {
            Some(self.sparse_map(header, stored, &path)?)
        } else {
            None
        };
        self.left = stored;
        self.pad = padding(stored);
        Ok(Entry {
            kind,
            path,
            link,
            meta,
            rdev,
            stored,
            sparse,
        })
    }

    /// The segments of a GNU sparse file: up to 4 in its header, 21 more in
    /// each extension block that follows it.
    fn sparse_map(
        &mut self,
        header: &Header,
        stored: u64,
        path: &[u8],
    ) -> Result<(u64, Vec<(u64, u64)>)> {
        let bad = |why: &str| corrupt(format!("sparse file {}: {why}", tree::show(path)));
        let gnu = header.as_gnu().ok_or_else(|| bad("not in a GNU header"))?;
        let real = gnu.real_size().map_err(|_| bad("unreadable size"))?;
        let mut segs: Vec<(u64, u64)> = Vec::new();
        let mut end = 0u64;
        let mut total = 0u64;
        let mut add = |s: &GnuSparseHeader| -> Result<()> {
            if s.is_empty() {
                return Ok(());
            }
            let off = s.offset().map_err(|_| bad("unreadable offset"))?;
            let len = s.length().map_err(|_| bad("unreadable length"))?;
            let stop = off
                .checked_add(len)
                .ok_or_else(|| bad("segment overflows"))?;
            if off < end || stop > real {
                return Err(bad("segments out of order or past the end"));
            }
            if segs.len() >= MAX_SPARSE {
                return Err(refused(format!(
                    "sparse file {} has more than {MAX_SPARSE} data segments",
                    tree::show(path)
                )));
            }
            end = stop;
            total = total.saturating_add(len);
            segs.push((off, len));
            Ok(())
        };
        for s in &gnu.sparse {
            add(s)?;
        }
        let mut extended = gnu.is_extended();
        let mut block = [0u8; BLOCK as usize];
        let mut blocks = 0usize;
        while extended {
            blocks += 1;
            if blocks > MAX_SPARSE / 21 + 1 {
                return Err(refused(format!(
                    "sparse file {} has more than {MAX_SPARSE} data segments",
                    tree::show(path)
                )));
            }
            if !self.block(&mut block)? {
                return Err(bad("the archive ends in its sparse map"));
            }
            let ext = ext_header(&block);
            for s in &ext.sparse {
                add(s)?;
            }
            extended = ext.is_extended();
        }
        if total != stored {
            return Err(bad("segments do not add up to the stored data"));
        }
        Ok((real, segs))
    }

    /// The current entry's data (at most what is left of it).
    pub fn data(&mut self) -> Data<'_, R> {
        Data { reader: self }
    }
}

/// An extension sparse block (21 segments and a flag) from raw bytes.
fn ext_header(block: &[u8; BLOCK as usize]) -> tar::GnuExtSparseHeader {
    let mut ext = tar::GnuExtSparseHeader::new();
    *ext.as_mut_bytes() = *block;
    ext
}

/// The data of one entry, as a reader; ends early with `UnexpectedEof`
/// when the archive does.
pub struct Data<'a, R> {
    reader: &'a mut Reader<R>,
}

impl<R: Read> Read for Data<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let r = &mut *self.reader;
        if r.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = r.left.min(buf.len() as u64) as usize;
        let n = r.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        r.left -= n as u64;
        Ok(n)
    }
}

fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

/// Verifies a header's checksum (the unsigned sum, as POSIX defines it).
fn check_sum(h: &Header) -> Result<()> {
    let b = h.as_bytes();
    let sum: u32 = b[..148]
        .iter()
        .chain(&b[156..])
        .map(|x| *x as u32)
        .sum::<u32>()
        + 8 * 32;
    match h.cksum() {
        Ok(c) if c == sum => Ok(()),
        _ => Err(corrupt("a header's checksum does not match")),
    }
}

/// Parses PAX records (`"<len> <key>=<value>\n"`, where `len` counts the
/// whole record, so values may hold any byte, newlines included).
fn parse_pax(mut data: &[u8], p: &mut Pending) -> Result<()> {
    let bad = || corrupt("a malformed PAX record");
    while !data.is_empty() {
        let sp = data.iter().position(|b| *b == b' ').ok_or_else(bad)?;
        let len: usize = std::str::from_utf8(&data[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        if len <= sp + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(bad());
        }
        let record = &data[sp + 1..len - 1];
        data = &data[len..];
        let eq = record.iter().position(|b| *b == b'=').ok_or_else(bad)?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        let num = || -> Result<u64> {
            std::str::from_utf8(value)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(bad)
        };
        let id = || -> Result<u32> { u32::try_from(num()?).map_err(|_| bad()) };
        match key {
            b"path" => p.path = Some(value.to_vec()),
            b"linkpath" => p.link = Some(value.to_vec()),
            b"size" => p.size = Some(num()?),
            b"uid" => p.uid = Some(id()?),
            b"gid" => p.gid = Some(id()?),
            b"mtime" => p.mtime = Some(parse_time(value).ok_or_else(bad)?),
            k if k.starts_with(b"GNU.sparse.") => {
                return Err(refused("PAX-format sparse files are not supported"));
            }
            k => {
                if let Some(name) = k.strip_prefix(b"SCHILY.xattr.")
                    && !name.is_empty()
                {
                    p.xattrs.push((name.to_vec(), value.to_vec()));
                }
            }
        }
    }
    Ok(())
}

/// A PAX time, `[-]seconds[.fraction]`.
fn parse_time(v: &[u8]) -> Option<(i64, i64)> {
    let s = std::str::from_utf8(v).ok()?;
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = &frac[..frac.len().min(9)];
    let mut nsec: i64 = if digits.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    for _ in digits.len()..9 {
        nsec *= 10;
    }
    if s.starts_with('-') && nsec > 0 {
        // -1.25 is 1.25 s before the epoch: -2 s + 0.75 s
        return Some((secs.checked_sub(1)?, 1_000_000_000 - nsec));
    }
    Some((secs, nsec))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: EntryType, size: u64) -> Vec<u8> {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    fn pax(records: &[u8]) -> Vec<u8> {
        let mut out = header(EntryType::XHeader, records.len() as u64);
        out.extend_from_slice(records);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out
    }

    #[test]
    fn extension_headers_and_sizes_are_bounded() {
        // a PAX size near u64::MAX on a directory: the skip after it ends
        // with the data, no overflow
        let mut data = pax(b"29 size=18446744073709551615\n");
        data.extend(header(EntryType::Directory, 0));
        let mut r = Reader::new(&data[..]);
        let e = r.next_entry(&|| false).unwrap().unwrap();
        assert_eq!(e.stored, u64::MAX);
        assert!(matches!(
            r.next_entry(&|| false),
            Err(Error::Corrupt { .. })
        ));
        // long names piling up before one entry
        let mut data = Vec::new();
        for _ in 0..=MAX_EXTENSIONS {
            data.extend(header(EntryType::GNULongName, 2));
            data.extend_from_slice(b"a\0");
            data.resize(data.len().div_ceil(512) * 512, 0);
        }
        data.extend(header(EntryType::Regular, 0));
        let err = Reader::new(&data[..]).next_entry(&|| false).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        // a sparse map that goes on and on
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::GNUSparse);
        h.set_size(0);
        h.as_gnu_mut().unwrap().set_is_extended(true);
        h.as_gnu_mut().unwrap().set_real_size(0);
        h.set_cksum();
        let mut data = h.as_bytes().to_vec();
        let mut ext = tar::GnuExtSparseHeader::new();
        ext.set_is_extended(true);
        for _ in 0..(MAX_SPARSE / 21 + 4) {
            data.extend_from_slice(ext.as_bytes());
        }
        let err = Reader::new(&data[..]).next_entry(&|| false).unwrap_err();
        assert!(matches!(err, Error::Refused { .. }), "{err}");
    }

    #[test]
    fn pax_records_may_hold_newlines_and_bad_ones_are_corrupt() {
        let mut p = Pending::default();
        let value = b"a\nb=c";
        let key = b"SCHILY.xattr.user.x";
        let body = key.len() + value.len() + 3;
        let len = body + 2; // two digits
        let mut rec = format!("{len} ").into_bytes();
        rec.extend_from_slice(key);
        rec.push(b'=');
        rec.extend_from_slice(value);
        rec.push(b'\n');
        rec.extend_from_slice(b"15 mtime=1.500\n");
        parse_pax(&rec, &mut p).unwrap();
        assert_eq!(p.xattrs, vec![(b"user.x".to_vec(), value.to_vec())]);
        assert_eq!(p.mtime, Some((1, 500_000_000)));
        for bad in [&b"5 a=b"[..], b"99 a=b\n", b"x a=b\n", b"7 ab\nc\n"] {
            let mut p = Pending::default();
            assert!(parse_pax(bad, &mut p).is_err(), "{bad:?}");
        }
        assert_eq!(parse_time(b"-1.25"), Some((-2, 750_000_000)));
        assert_eq!(parse_time(b"-0.5"), Some((-1, 500_000_000)));
        assert_eq!(parse_time(b"-9223372036854775808.5"), None);
        assert_eq!(parse_time(b"x"), None);
    }
}
