//! The per-file index a snapshot writes beside its archive (`index.zst`),
//! which the next snapshot of the same volume compares the live tree with.
//!
//! Format (zstd-compressed): a magic line, then one block per directory in
//! the walk's order (parents first, names sorted bytewise): `B`, the
//! directory's path, the count of its entries, then each entry (name,
//! kind, inode, size, mtime, ctime, mode, owner, link count) in name
//! order; `E` ends it. The next snapshot merges these blocks against its
//! own walk, so only one block's current entry is in memory.
//!
//! Safety assumptions: the index lives on the export and is hostile input
//! like the archive: its SHA-256 is in the manifest and checked before it
//! is read, and every length read from it is bounded ([`reader::MAX_PATH`],
//! 255-byte names). A bad index only costs the next snapshot its
//! incremental: it is then written in full.

use std::cmp::Ordering;
use std::fs::File;
use std::io::{BufReader, Read, Write};

use nix::sys::stat::FileStat;
use sha2::{Digest, Sha256};

use super::tree::{self, Kind};
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;

use super::{Error, Job, Result, Store, reader};

pub const INDEX: &str = "index.zst";
const MAGIC: &[u8; 8] = b"NCSIIDX1";
const NAME_MAX: usize = 255;

/// What the index records of one entry: what tells a changed file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rec {
    pub name: Vec<u8>,
    pub kind: u8,
    pub ino: u64,
    pub size: i64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u64,
}

pub fn kind_byte(k: Kind) -> u8 {
    match k {
        Kind::Dir => b'd',
        Kind::File => b'f',
        Kind::Symlink => b'l',
        Kind::Fifo => b'p',
        Kind::Char => b'c',
        Kind::Block => b'b',
        Kind::Socket => b's',
    }
}

impl Rec {
    /// The same entry, unchanged, by what tells a change (everything but
    /// the name and the link count; a link count changes the ctime).
    pub fn same(&self, other: &Rec) -> bool {
        self.kind == other.kind
            && self.ino == other.ino
            && self.size == other.size
            && self.mtime == other.mtime
            && self.ctime == other.ctime
            && self.mode == other.mode
            && self.uid == other.uid
            && self.gid == other.gid
    }

    pub fn from_stat(name: &[u8], st: &FileStat) -> Rec {
        Rec {
            name: name.to_vec(),
            kind: kind_byte(tree::kind(st)),
            ino: st.st_ino,
            size: st.st_size,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            nlink: st.st_nlink,
        }
    }
}

/// The walk's order of two paths (`/`-separated, relative): component by
/// component, a directory before what it holds.
pub fn walk_order(a: &[u8], b: &[u8]) -> Ordering {
    fn key(p: &[u8]) -> impl Iterator<Item = u8> + '_ {
        p.iter().map(|c| if *c == b'/' { 0 } else { *c })
    }
    key(a).cmp(key(b))
}

fn corrupt(why: &str) -> Error {
    Error::Corrupt {
        reason: format!("snapshot index: {why}"),
    }
}

/// Writes an index through zstd, hashing and counting the bytes written.
pub struct Writer<W: Write> {
    enc: zstd::stream::write::Encoder<'static, super::write::Hashing<W>>,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Result<Writer<W>> {
        let hashing = super::write::Hashing::new(out);
        // A small window: the index is small, and the archive's own
        // encoder runs at the same time.
        let mut enc = zstd::stream::write::Encoder::new(hashing, 3).map_err(super::ioe("zstd"))?;
        enc.set_parameter(zstd::stream::raw::CParameter::WindowLog(18))
            .map_err(super::ioe("zstd window"))?;
        enc.write_all(MAGIC).map_err(super::ioe("write index"))?;
        Ok(Writer { enc })
    }

    /// One directory's block: its path and its entries, in name order.
    pub fn block(&mut self, path: &[u8], recs: impl ExactSizeIterator<Item = Rec>) -> Result<()> {
        let mut buf = Vec::with_capacity(64 << 10);
        buf.push(b'B');
        buf.extend_from_slice(&(path.len() as u32).to_le_bytes());
        buf.extend_from_slice(path);
        buf.extend_from_slice(&(recs.len() as u32).to_le_bytes());
        for r in recs {
            buf.extend_from_slice(&(r.name.len() as u16).to_le_bytes());
            buf.extend_from_slice(&r.name);
            buf.push(r.kind);
            for v in [r.ino, r.size as u64, r.mtime.0 as u64, r.mtime.1 as u64] {
                buf.extend_from_slice(&v.to_le_bytes());
            }
            for v in [r.ctime.0 as u64, r.ctime.1 as u64, r.nlink] {
                buf.extend_from_slice(&v.to_le_bytes());
            }
            for v in [r.mode, r.uid, r.gid] {
                buf.extend_from_slice(&v.to_le_bytes());
            }
            if buf.len() >= 60 << 10 {
                self.enc
                    .write_all(&buf)
                    .map_err(super::ioe("write index"))?;
                buf.clear();
            }
        }
        self.enc
            .write_all(&buf)
            .map_err(super::ioe("write index"))?;
        Ok(())
    }

    /// Ends the index; returns the output, its bytes and SHA-256.
    pub fn finish(mut self) -> Result<(W, u64, String)> {
        self.enc
            .write_all(b"E")
            .map_err(super::ioe("write index"))?;
        let h = self.enc.finish().map_err(super::ioe("zstd finish"))?;
        let (inner, bytes, sha) = h.done();
        Ok((inner, bytes, sha))
    }
}

/// Reads an index written by [`Writer`], block by block, entry by entry.
pub struct Reader {
    inner: zstd::stream::read::Decoder<'static, BufReader<File>>,
    /// The path of the block whose entries are being read, and how many
    /// are left; `None` at the end.
    block: Option<Vec<u8>>,
    left: u32,
}

impl Reader {
    /// Checks `file` against its length and SHA-256, then opens it.
    pub fn open(mut file: File, bytes: u64, sha256: &str) -> Result<Reader> {
        use std::io::{Seek, SeekFrom};
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 256 << 10];
        let mut total = 0u64;
        loop {
            let n = file.read(&mut buf).map_err(super::ioe("read index"))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if total > bytes {
                break;
            }
            hash.update(&buf[..n]);
        }
        if total != bytes || hex::encode(hash.finalize()) != sha256 {
            return Err(corrupt("does not match its manifest"));
        }
        file.seek(SeekFrom::Start(0))
            .map_err(super::ioe("seek index"))?;
        let mut inner = zstd::stream::read::Decoder::with_buffer(BufReader::new(file))
            .map_err(super::ioe("zstd"))?;
        inner
            .window_log_max(super::restore::WINDOW_LOG_MAX)
            .map_err(super::ioe("zstd window"))?;
        let mut magic = [0u8; 8];
        read_exact(&mut inner, &mut magic)?;
        if &magic != MAGIC {
            return Err(corrupt("not an index"));
        }
        let mut r = Reader {
            inner,
            block: None,
            left: 0,
        };
        r.next_block()?;
        Ok(r)
    }

    fn next_block(&mut self) -> Result<()> {
        let mut tag = [0u8; 1];
        read_exact(&mut self.inner, &mut tag)?;
        match tag[0] {
            b'E' => {
                self.block = None;
                self.left = 0;
            }
            b'B' => {
                let len = u32_le(&mut self.inner)? as usize;
                if len > reader::MAX_PATH {
                    return Err(corrupt("a path too long"));
                }
                let mut path = vec![0u8; len];
                read_exact(&mut self.inner, &mut path)?;
                self.left = u32_le(&mut self.inner)?;
                self.block = Some(path);
            }
            _ => return Err(corrupt("unknown record")),
        }
        Ok(())
    }

    pub fn next_rec(&mut self) -> Result<Option<Rec>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        let mut l = [0u8; 2];
        read_exact(&mut self.inner, &mut l)?;
        let len = u16::from_le_bytes(l) as usize;
        if len == 0 || len > NAME_MAX {
            return Err(corrupt("a bad name"));
        }
        let mut name = vec![0u8; len];
        read_exact(&mut self.inner, &mut name)?;
        let mut fixed = [0u8; 1 + 7 * 8 + 3 * 4];
        read_exact(&mut self.inner, &mut fixed)?;
        let u = |i: usize| {
            let at = 1 + i * 8;
            u64::from_le_bytes(fixed[at..at + 8].try_into().unwrap_or([0; 8]))
        };
        let w = |i: usize| {
            let at = 1 + 7 * 8 + i * 4;
            u32::from_le_bytes(fixed[at..at + 4].try_into().unwrap_or([0; 4]))
        };
        Ok(Some(Rec {
            name,
            kind: fixed[0],
            ino: u(0),
            size: u(1) as i64,
            mtime: (u(2) as i64, u(3) as i64),
            ctime: (u(4) as i64, u(5) as i64),
            nlink: u(6),
            mode: w(0),
            uid: w(1),
            gid: w(2),
        }))
    }

    /// The entries the parent recorded for the directory at `path` (the
    /// walk's directories come in order: blocks before it are skipped), or
    /// `None` when it had no such directory. The returned cursor must be
    /// read in name order.
    pub fn seek_dir(&mut self, path: &[u8]) -> Result<bool> {
        loop {
            let ord = match &self.block {
                None => return Ok(false),
                Some(b) => walk_order(b, path),
            };
            match ord {
                Ordering::Less => {
                    while self.next_rec()?.is_some() {}
                    self.next_block()?;
                }
                Ordering::Equal => return Ok(true),
                Ordering::Greater => return Ok(false),
            }
        }
    }

    /// The parent's record of `name` in the block found by [`seek_dir`]
    /// (names asked in increasing order), if any.
    ///
    /// [`seek_dir`]: Reader::seek_dir
    pub fn find(&mut self, name: &[u8], peeked: &mut Option<Rec>) -> Result<Option<Rec>> {
        loop {
            if peeked.is_none() {
                *peeked = self.next_rec()?;
            }
            let Some(r) = peeked.as_ref() else {
                return Ok(None);
            };
            match r.name.as_slice().cmp(name) {
                Ordering::Less => *peeked = None,
                Ordering::Equal => return Ok(peeked.take()),
                Ordering::Greater => return Ok(None),
            }
        }
    }
}

/// The index in a snapshot's directory, checked against `info` (its
/// manifest's record of it).
pub(super) fn open_index(
    dir: &crate::sys::safefs::DirFd,
    info: &super::IndexInfo,
) -> Result<Reader> {
    let fd = openat(
        dir.fd(),
        INDEX,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        Mode::empty(),
    )
    .map_err(|e| Error::Io {
        what: format!("open {}", dir.path().join(INDEX).display()),
        source: e.into(),
    })?;
    Reader::open(File::from(fd), info.bytes, &info.sha256)
}

/// The parent's index, checked against its manifest; `None` (logged) when
/// it cannot be used, and the archive is then written in full.
pub(super) fn parent_index(store: &Store, job: &Job) -> Option<Reader> {
    let key = job.parent.as_deref()?;
    let open = || -> Result<Option<Reader>> {
        let Some(snaps) = &store.snaps else {
            return Ok(None);
        };
        let Some(dir) = super::chain::open_snapshot(snaps, key)? else {
            return Ok(None);
        };
        let parent = Store { dir, snaps: None };
        let Some(m) = parent.manifest()? else {
            return Ok(None);
        };
        let Some(info) = &m.index else {
            return Ok(None);
        };
        if m.source_volume_id != job.source_volume_id {
            return Ok(None);
        }
        open_index(&parent.dir, info).map(Some)
    };
    match open() {
        Ok(Some(r)) => Some(r),
        Ok(None) => {
            tracing::warn!(snapshot = %job.name, parent = %key, "parent snapshot has no usable index; archiving in full");
            None
        }
        Err(e) => {
            tracing::warn!(snapshot = %job.name, parent = %key, error = %e, "parent snapshot's index unusable; archiving in full");
            None
        }
    }
}

/// Most records a [`Lookup`] holds (the open directories' together); past
/// it, the lookup gives up (and the restore writes every entry, as
/// without it).
const LOOKUP_MAX: usize = 1 << 16;

/// What an index says of a path.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen<'a> {
    Found(&'a Rec),
    /// Its directory was looked up: the path is not there.
    Absent,
    /// Not known (its directory was not entered, or the lookup gave up).
    Unknown,
}

/// An index read alongside an archive: the records of the directories
/// enclosing the current entry (a stack, like the walk's).
pub struct Lookup {
    reader: Reader,
    /// (directory path, its records if the index has it), outermost first.
    stack: Vec<(Vec<u8>, Option<Vec<Rec>>)>,
    failed: bool,
}

impl Lookup {
    pub fn new(reader: Reader) -> Lookup {
        Lookup {
            reader,
            stack: Vec::new(),
            failed: false,
        }
    }

    /// The archive reached the directory `dir` (a normalized path; the
    /// root is empty): its records are read, the directories that do not
    /// hold it are left.
    pub fn enter(&mut self, dir: &[u8]) {
        if self.failed {
            return;
        }
        while let Some((top, _)) = self.stack.last() {
            let inside = top.is_empty()
                || (dir.len() > top.len() && dir.starts_with(top) && dir[top.len()] == b'/');
            if inside {
                break;
            }
            self.stack.pop();
        }
        // What the open directories hold already counts against the bound.
        let held: usize = self
            .stack
            .iter()
            .map(|(_, r)| r.as_ref().map_or(0, Vec::len))
            .sum();
        let recs = (|| -> Result<Option<Vec<Rec>>> {
            if !self.reader.seek_dir(dir)? {
                return Ok(None);
            }
            let mut out = Vec::new();
            while let Some(r) = self.reader.next_rec()? {
                if held + out.len() >= LOOKUP_MAX {
                    return Err(corrupt("a directory too large to look up"));
                }
                out.push(r);
            }
            Ok(Some(out))
        })();
        match recs {
            Ok(recs) => self.stack.push((dir.to_vec(), recs)),
            Err(e) => {
                tracing::debug!(error = %e, "index lookup given up");
                self.failed = true;
                self.stack.clear();
            }
        }
    }

    /// What the index says of `path` (normalized), if its directory is
    /// one of those entered and still open.
    pub fn get(&self, path: &[u8]) -> Seen<'_> {
        let (dir, name) = match path.iter().rposition(|b| *b == b'/') {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => (&b""[..], path),
        };
        // The archive may come back to a directory after a subdirectory:
        // any open one (they are the path's ancestors) may hold it.
        match self
            .stack
            .iter()
            .rev()
            .find(|(top, _)| top.as_slice() == dir)
        {
            Some((_, recs)) => match recs {
                None => Seen::Absent,
                Some(recs) => match recs.binary_search_by(|r| r.name.as_slice().cmp(name)) {
                    Ok(i) => Seen::Found(&recs[i]),
                    Err(_) => Seen::Absent,
                },
            },
            _ => Seen::Unknown,
        }
    }
}

/// For the earlier archives of a chain: whether an entry is superseded,
/// that is, not the version the restored snapshot holds (a later archive
/// stores it again, or it is gone by then), so its write can be skipped.
/// Only when both indexes are sure: the entry's own snapshot recorded it
/// (one link, not a directory), and the restored snapshot recorded it
/// otherwise, or its directory without it.
pub struct Superseded {
    pub own: Lookup,
    pub last: Lookup,
}

impl Superseded {
    pub fn enter(&mut self, dir: &[u8]) {
        self.own.enter(dir);
        self.last.enter(dir);
    }

    pub fn skip(&self, path: &[u8]) -> bool {
        let Seen::Found(own) = self.own.get(path) else {
            return false;
        };
        if own.kind == b'd' || own.nlink > 1 {
            return false;
        }
        match self.last.get(path) {
            Seen::Found(last) => !last.same(own),
            Seen::Absent => true,
            Seen::Unknown => false,
        }
    }
}

fn read_exact(r: &mut dyn Read, buf: &mut [u8]) -> Result<()> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            corrupt("ends early")
        } else {
            reader::read_error(e)
        }
    })
}

fn u32_le(r: &mut dyn Read) -> Result<u32> {
    let mut b = [0u8; 4];
    read_exact(r, &mut b)?;
    Ok(u32::from_le_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_walk_order_puts_a_directory_before_what_it_holds() {
        let mut paths: Vec<&[u8]> = vec![b"a-c", b"a/b", b"", b"a", b"a/b/c", b"a.b", b"b"];
        paths.sort_by(|x, y| walk_order(x, y));
        let want: Vec<&[u8]> = vec![b"", b"a", b"a/b", b"a/b/c", b"a-c", b"a.b", b"b"];
        assert_eq!(paths, want);
    }

    #[test]
    fn an_index_reads_back_by_directory_and_a_changed_one_is_refused() {
        let rec = |n: &str, ino| Rec {
            name: n.as_bytes().to_vec(),
            kind: b'f',
            ino,
            size: 1,
            mtime: (2, 3),
            ctime: (4, 5),
            mode: 0o100644,
            uid: 6,
            gid: 7,
            nlink: 1,
        };
        let mut w = Writer::new(Vec::new()).unwrap();
        w.block(b"", [rec("a", 1), rec("c", 2)].into_iter())
            .unwrap();
        w.block(b"a", [rec("x", 3)].into_iter()).unwrap();
        w.block(b"c", [rec("y", 4), rec("z", 5)].into_iter())
            .unwrap();
        let (bytes, len, sha) = w.finish().unwrap();
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("i"), &bytes).unwrap();
        let open = || File::open(t.path().join("i")).unwrap();
        let mut r = Reader::open(open(), len, &sha).unwrap();
        let mut peek = None;
        assert!(r.seek_dir(b"").unwrap());
        assert_eq!(r.find(b"c", &mut peek).unwrap(), Some(rec("c", 2)));
        // "a" was skipped; "b" is not a directory of the parent
        assert!(!r.seek_dir(b"b").unwrap());
        assert!(r.seek_dir(b"c").unwrap());
        let mut peek = None;
        assert_eq!(r.find(b"b", &mut peek).unwrap(), None);
        assert_eq!(r.find(b"z", &mut peek).unwrap(), Some(rec("z", 5)));
        assert!(!r.seek_dir(b"d").unwrap());
        // one byte changed: refused before it is read
        let mut bad = bytes.clone();
        bad[10] ^= 1;
        std::fs::write(t.path().join("i"), &bad).unwrap();
        assert!(matches!(
            Reader::open(open(), len, &sha),
            Err(Error::Corrupt { .. })
        ));
    }

    #[test]
    fn superseded_entries_are_skipped_only_when_both_indexes_are_sure() {
        let rec = |n: &str, ino, nlink| Rec {
            name: n.as_bytes().to_vec(),
            kind: b'f',
            ino,
            size: 1,
            mtime: (2, 3),
            ctime: (4, 5),
            mode: 0o100644,
            uid: 6,
            gid: 7,
            nlink,
        };
        let t = tempfile::tempdir().unwrap();
        let write = |name: &str, blocks: &[(&[u8], Vec<Rec>)]| {
            let mut w = Writer::new(Vec::new()).unwrap();
            for (path, recs) in blocks {
                w.block(path, recs.clone().into_iter()).unwrap();
            }
            let (bytes, len, sha) = w.finish().unwrap();
            std::fs::write(t.path().join(name), &bytes).unwrap();
            let f = File::open(t.path().join(name)).unwrap();
            Lookup::new(Reader::open(f, len, &sha).unwrap())
        };
        // then: kept, changed, gone, linked; a/x in a directory gone later
        let own = write(
            "own",
            &[
                (
                    b"",
                    vec![
                        rec("a", 9, 1),
                        rec("changed", 2, 1),
                        rec("gone", 3, 1),
                        rec("kept", 1, 1),
                        rec("linked", 4, 2),
                    ],
                ),
                (b"a", vec![rec("x", 5, 1)]),
            ],
        );
        let last = write(
            "last",
            &[(
                b"",
                vec![
                    rec("changed", 22, 1),
                    rec("kept", 1, 1),
                    rec("linked", 44, 2),
                ],
            )],
        );
        let mut s = Superseded { own, last };
        // before any directory is entered: unknown, nothing skipped
        assert!(!s.skip(b"changed"));
        s.enter(b"");
        assert!(!s.skip(b"kept"));
        assert!(s.skip(b"changed"));
        assert!(s.skip(b"gone"));
        assert!(!s.skip(b"linked"), "hard-linked files are always written");
        assert!(!s.skip(b"new"), "not in its own index");
        s.enter(b"a");
        assert!(s.skip(b"a/x"), "its directory is gone at the end");
        // back in the root after the subdirectory
        assert!(s.skip(b"gone"));
        assert!(!s.skip(b"b/y"), "a directory never entered: unknown");
    }
}
