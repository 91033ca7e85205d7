//! The archive writer: a volume's tree as a tar stream (GNU sparse entries
//! for files with holes, PAX records for xattrs) through zstd, hashed on the
//! way, renamed into place and recorded in its manifest only when complete.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::fcntl::{OFlag, openat, renameat};
use nix::sys::stat::Mode;
use sha2::{Digest, Sha256};

use super::tree::{self, Event, Kind, Links};
use super::{
    ARCHIVE, Error, JOB, Job, MANIFEST, Manifest, READ_BUF, Result, Store, incremental, index, ioe,
    reader,
};
use crate::sys::safefs::DirFd;

/// Bytes of input per zstd worker job.
const JOB_SIZE: u32 = 2 << 20;
/// Files with more data segments than a restore accepts are archived whole.
const MAX_SEGMENTS: usize = reader::MAX_SPARSE - 1;

/// A writer that hashes and counts what passes through.
pub(super) struct Hashing<W> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W> Hashing<W> {
    pub(super) fn new(inner: W) -> Hashing<W> {
        Hashing {
            inner,
            hash: Sha256::new(),
            bytes: 0,
        }
    }

    /// The writer, the bytes written and their SHA-256.
    pub(super) fn done(self) -> (W, u64, String) {
        (self.inner, self.bytes, hex::encode(self.hash.finalize()))
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Archive options.
#[derive(Clone, Copy, Debug)]
pub struct ArchiveOptions {
    pub level: i32,
    pub threads: u32,
}

/// What an archive holds: the tree's file data (apparent sizes) and
/// entries, and what this archive itself stores of them (all of it for a
/// full archive; the changed files and the directory listings for an
/// incremental one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub size: u64,
    pub count: u64,
    pub stored_bytes: u64,
    pub stored_entries: u64,
}

/// Writes the tree below `src` as tar into `out`. Returns (data bytes,
/// entries). Blocking.
pub fn write_tar<W: Write>(src: &DirFd, out: W, cancel: &AtomicBool) -> Result<(u64, u64, W)> {
    let mut idx = index::Writer::new(std::io::sink())?;
    let (t, out) = write_tree(src, out, None, &mut idx, cancel)?;
    Ok((t.size, t.count, out))
}

/// Writes the tree below `src` as tar into `out` and its index into `idx`:
/// in full, or, given the parent's index, as an incremental archive (GNU
/// dumpdirs, only what changed). Blocking.
pub(super) fn write_tree<W: Write, I: Write>(
    src: &DirFd,
    out: W,
    mut parent: Option<&mut index::Reader>,
    idx: &mut index::Writer<I>,
    cancel: &AtomicBool,
) -> Result<(Totals, W)> {
    let mut builder = tar::Builder::new(out);
    builder.mode(tar::HeaderMode::Complete);
    builder.follow_symlinks(false);
    let mut links = Links::default();
    let mut t = Totals::default();
    tree::walk_listed::<Error>(
        src,
        &|| cancel.load(Ordering::Relaxed),
        &mut |ev| match ev {
            Event::Dir {
                path,
                dir,
                stat,
                entries,
            } => {
                let err = |e: std::io::Error| tree::Error::Stream {
                    path: format!("archive {}", String::from_utf8_lossy(path)),
                    source: e,
                };
                let dumpdir = match parent.as_deref_mut() {
                    None => None,
                    Some(p) => {
                        let found = p.seek_dir(path)?;
                        let mut peek = None;
                        let mut dd = Vec::new();
                        for e in entries.iter_mut() {
                            let name = e.name.as_bytes();
                            if e.kind == Kind::Dir {
                                incremental::push(&mut dd, b'D', name);
                                continue;
                            }
                            let old = if found {
                                p.find(name, &mut peek)?
                            } else {
                                None
                            };
                            e.store = incremental::changed(old.as_ref(), &e.stat);
                            if e.store {
                                incremental::push(&mut dd, b'Y', name);
                            } else {
                                incremental::push(&mut dd, b'N', name);
                                t.count += 1;
                                if e.kind == Kind::File {
                                    t.size += e.stat.st_size.max(0) as u64;
                                }
                            }
                        }
                        dd.push(0);
                        if dd.len() as u64 > incremental::MAX_DUMPDIR {
                            return Err(tree::Error::OverLimit {
                                what: "directory listing bytes",
                                limit: incremental::MAX_DUMPDIR,
                            }
                            .into());
                        }
                        Some(dd)
                    }
                };
                idx.block(
                    path,
                    entries
                        .iter()
                        .map(|e| index::Rec::from_stat(e.name.as_bytes(), &e.stat)),
                )?;
                pax_xattrs(&mut builder, &tree::read_xattrs(dir.fd())).map_err(err)?;
                let mut name = if path.is_empty() {
                    b".".to_vec()
                } else {
                    path.to_vec()
                };
                name.push(b'/');
                let name = Path::new(OsStr::from_bytes(&name));
                match dumpdir {
                    None => {
                        let mut h = header_for(stat, tar::EntryType::Directory);
                        builder
                            .append_data(&mut h, name, std::io::empty())
                            .map_err(err)?;
                    }
                    Some(dd) => {
                        let mut h = header_for(stat, tar::EntryType::new(incremental::DUMPDIR));
                        h.set_size(dd.len() as u64);
                        t.stored_bytes += dd.len() as u64;
                        builder.append_data(&mut h, name, &dd[..]).map_err(err)?;
                    }
                }
                if !path.is_empty() {
                    t.count += 1;
                }
                t.stored_entries += 1;
                Ok(())
            }
            Event::Entry(v) => {
                append_entry(&mut builder, &v, &mut links, &mut t)?;
                Ok(())
            }
        },
    )?;
    let out = builder.into_inner().map_err(ioe("finish archive"))?;
    Ok((t, out))
}

/// Appends one entry that is not a directory.
fn append_entry<W: Write>(
    builder: &mut tar::Builder<W>,
    v: &tree::Visit<'_>,
    links: &mut Links,
    t: &mut Totals,
) -> Result<()> {
    let path = Path::new(OsStr::from_bytes(v.path));
    let err = |e: std::io::Error| tree::Error::Stream {
        path: format!("archive {}", String::from_utf8_lossy(v.path)),
        source: e,
    };
    match v.kind {
        Kind::Dir | Kind::Socket => return Ok(()),
        Kind::File => {
            if let Some(first) = links.seen(v.stat, v.path) {
                let mut h = header_for(v.stat, tar::EntryType::Link);
                h.set_size(0);
                builder
                    .append_link(&mut h, path, Path::new(OsStr::from_bytes(&first)))
                    .map_err(err)?;
            } else {
                let (f, st) = match tree::open_file(v.parent, v.name, v.path, v.stat) {
                    Ok(x) => x,
                    // deleted since its directory was listed: left out
                    Err(tree::Error::Io {
                        source: nix::errno::Errno::ENOENT,
                        ..
                    }) => return Ok(()),
                    Err(e) => return Err(e.into()),
                };
                pax_xattrs(builder, &tree::read_xattrs(f.as_fd())).map_err(err)?;
                append_regular(builder, path, &f, &st).map_err(err)?;
                t.size += st.st_size.max(0) as u64;
                t.stored_bytes += st.st_size.max(0) as u64;
            }
        }
        Kind::Symlink => {
            let target = tree::read_link(v.parent, v.name, v.path)?;
            let mut h = header_for(v.stat, tar::EntryType::Symlink);
            builder
                .append_link(&mut h, path, Path::new(&target))
                .map_err(err)?;
        }
        Kind::Fifo | Kind::Char | Kind::Block => {
            let t = match v.kind {
                Kind::Fifo => tar::EntryType::Fifo,
                Kind::Char => tar::EntryType::Char,
                _ => tar::EntryType::Block,
            };
            let mut h = header_for(v.stat, t);
            if v.kind != Kind::Fifo {
                let rdev = v.stat.st_rdev;
                h.set_device_major(nix::sys::stat::major(rdev) as u32)
                    .map_err(err)?;
                h.set_device_minor(nix::sys::stat::minor(rdev) as u32)
                    .map_err(err)?;
            }
            builder
                .append_data(&mut h, path, std::io::empty())
                .map_err(err)?;
        }
    }
    t.count += 1;
    t.stored_entries += 1;
    Ok(())
}

/// Appends a regular file whose size is fixed by `st` (the stat of the open
/// descriptor): exactly that many bytes are stored, whatever the file does
/// meanwhile (it may grow or shrink while a pod writes it; the archive must
/// stay well-formed). Holes are kept as a GNU sparse entry.
fn append_regular<W: Write>(
    builder: &mut tar::Builder<W>,
    path: &Path,
    file: &File,
    st: &nix::sys::stat::FileStat,
) -> std::io::Result<()> {
    let size = st.st_size.max(0) as u64;
    let segments = if (st.st_blocks.max(0) as u64) * 512 < size {
        data_segments(file, size)
    } else {
        vec![(0, size)]
    };
    // A restore takes at most MAX_SEGMENTS segments (the end marker too).
    let segments = if segments.len() >= MAX_SEGMENTS {
        vec![(0, size)]
    } else {
        segments
    };
    if segments == [(0, size)] {
        let mut h = header_for(st, tar::EntryType::Regular);
        h.set_size(size);
        let data = std::io::BufReader::with_capacity(READ_BUF, Exact::new(file, vec![(0, size)]));
        return builder.append_data(&mut h, path, data);
    }
    // GNU sparse: up to 4 (offset, length) pairs in the header, 21 more per
    // extension block; a last pair at the real size marks the end.
    let mut pairs = segments;
    if pairs.last().is_none_or(|(o, l)| o + l < size) {
        pairs.push((size, 0));
    }
    let stored: u64 = pairs.iter().map(|(_, l)| l).sum();
    let mut h = header_for(st, tar::EntryType::GNUSparse);
    h.set_size(stored);
    let mut ext_blocks = Vec::new();
    {
        let gnu = h
            .as_gnu_mut()
            .ok_or_else(|| std::io::Error::other("not a GNU header"))?;
        gnu.set_real_size(size);
        for (slot, (o, l)) in gnu.sparse.iter_mut().zip(&pairs) {
            slot.set_offset(*o);
            slot.set_length(*l);
        }
        let rest: Vec<&(u64, u64)> = pairs.iter().skip(gnu.sparse.len()).collect();
        gnu.set_is_extended(!rest.is_empty());
        let chunks: Vec<_> = rest.chunks(21).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let mut ext = tar::GnuExtSparseHeader::new();
            for (slot, (o, l)) in ext.sparse.iter_mut().zip(chunk.iter()) {
                slot.set_offset(*o);
                slot.set_length(*l);
            }
            ext.set_is_extended(i + 1 < chunks.len());
            ext_blocks.extend_from_slice(ext.as_bytes());
        }
    }
    // The extension blocks follow the header, before the data (they are
    // not counted in the entry's size).
    let data = std::io::BufReader::with_capacity(
        READ_BUF,
        std::io::Cursor::new(ext_blocks).chain(Exact::new(file, pairs)),
    );
    builder.append_data(&mut h, path, data)
}

/// The (offset, length) data segments of a file, from SEEK_DATA/SEEK_HOLE;
/// the whole file where the filesystem cannot say.
fn data_segments(file: &File, size: u64) -> Vec<(u64, u64)> {
    use nix::unistd::{Whence, lseek};
    let mut out = Vec::new();
    let mut off: i64 = 0;
    let end = size as i64;
    while off < end {
        let data = match lseek(file.as_fd(), off, Whence::SeekData) {
            Ok(d) if d < end => d,
            Ok(_) | Err(nix::errno::Errno::ENXIO) => break,
            Err(_) => return vec![(0, size)],
        };
        let hole = match lseek(file.as_fd(), data, Whence::SeekHole) {
            Ok(h) => h.min(end),
            Err(_) => end,
        };
        out.push((data as u64, (hole - data) as u64));
        if out.len() >= MAX_SEGMENTS {
            return vec![(0, size)];
        }
        off = hole;
    }
    out
}

/// Reads exactly the given (offset, length) ranges of a file, with zeros
/// where the file has become shorter.
struct Exact<'a> {
    file: &'a File,
    ranges: std::vec::IntoIter<(u64, u64)>,
    cur: Option<(u64, u64)>,
}

impl<'a> Exact<'a> {
    fn new(file: &'a File, ranges: Vec<(u64, u64)>) -> Exact<'a> {
        Exact {
            file,
            ranges: ranges.into_iter(),
            cur: None,
        }
    }
}

impl Read for Exact<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        loop {
            let (off, left) = match self.cur {
                Some((o, l)) if l > 0 => (o, l),
                _ => match self.ranges.next() {
                    Some(r) => {
                        self.cur = Some(r);
                        continue;
                    }
                    None => return Ok(0),
                },
            };
            let want = (left.min(buf.len() as u64)) as usize;
            let mut n = self.file.read_at(&mut buf[..want], off)?;
            if n == 0 {
                // Shrunk since the stat: pad with zeros to the stated size.
                buf[..want].fill(0);
                n = want;
            }
            self.cur = Some((off + n as u64, left - n as u64));
            return Ok(n);
        }
    }
}

fn header_for(st: &nix::sys::stat::FileStat, t: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(t);
    h.set_mode(st.st_mode & 0o7777);
    h.set_uid(st.st_uid as u64);
    h.set_gid(st.st_gid as u64);
    h.set_mtime(st.st_mtime.max(0) as u64);
    h.set_size(0);
    h
}

/// A PAX extended header carrying `SCHILY.xattr.*` records (GNU tar's and
/// the tar crate's convention) for the next entry.
fn pax_xattrs<W: Write>(
    builder: &mut tar::Builder<W>,
    xattrs: &[(Vec<u8>, Vec<u8>)],
) -> std::io::Result<()> {
    if xattrs.is_empty() {
        return Ok(());
    }
    let mut data = Vec::new();
    for (name, value) in xattrs {
        let mut key = b"SCHILY.xattr.".to_vec();
        key.extend_from_slice(name);
        // "<len> <key>=<value>\n", where len counts the whole record.
        let body = key.len() + value.len() + 3;
        let mut len = body + body.to_string().len();
        if len.to_string().len() + body != len {
            len += 1;
        }
        data.extend_from_slice(len.to_string().as_bytes());
        data.push(b' ');
        data.extend_from_slice(&key);
        data.push(b'=');
        data.extend_from_slice(value);
        data.push(b'\n');
    }
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_path("PaxHeaders/xattrs")?;
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_cksum();
    builder.append(&h, &data[..])
}

/// Creates a temporary file (`O_EXCL`, replacing a stale one) in `store`.
fn create_tmp(store: &Store, tmp: &str) -> Result<File> {
    store.dir.remove_file(tmp)?;
    let fd = openat(
        store.dir.fd(),
        tmp,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(|e| Error::Io {
        what: format!("create {}", store.dir.path().join(tmp).display()),
        source: e.into(),
    })?;
    Ok(File::from(fd))
}

/// Writes the archive of `src` into `store` atomically and records its
/// manifest: incremental against `job.parent` when that snapshot's index
/// is usable, else in full. Blocking.
pub fn create_archive(
    src: &DirFd,
    store: &Store,
    job: &Job,
    opts: ArchiveOptions,
    cancel: &AtomicBool,
) -> Result<Manifest> {
    let parent = index::parent_index(store, job);
    let incremental = parent.is_some();
    let manifest = match write_once(src, store, job, opts, parent, cancel) {
        Err(Error::Tree(tree::Error::OverLimit { what, .. }))
            if incremental && what == "directory listing bytes" =>
        {
            tracing::warn!(snapshot = %job.name, "a directory too large for an incremental listing; archiving in full");
            write_once(src, store, job, opts, None, cancel)?
        }
        r => r?,
    };
    for (tmp, name) in [(TMP_INDEX, index::INDEX), (TMP_ARCHIVE, ARCHIVE)] {
        renameat(store.dir.fd(), tmp, store.dir.fd(), name).map_err(|e| Error::Io {
            what: format!("rename {name}"),
            source: e.into(),
        })?;
    }
    let bytes =
        serde_json::to_vec_pretty(&manifest).map_err(|e| Error::BadJson(MANIFEST.into(), e))?;
    store.dir.write_atomic(MANIFEST, &bytes)?;
    store.dir.remove_file(JOB)?;
    Ok(manifest)
}

const TMP_ARCHIVE: &str = ".archive.tar.zst.tmp";
const TMP_INDEX: &str = ".index.zst.tmp";

/// Writes the archive and its index into their temporary files, fsynced;
/// returns the manifest to record once they are renamed into place.
fn write_once(
    src: &DirFd,
    store: &Store,
    job: &Job,
    opts: ArchiveOptions,
    mut parent: Option<index::Reader>,
    cancel: &AtomicBool,
) -> Result<Manifest> {
    let file = create_tmp(store, TMP_ARCHIVE)?;
    let result = (|| {
        let ifile = create_tmp(store, TMP_INDEX)?;
        let mut idx = index::Writer::new(std::io::BufWriter::with_capacity(256 << 10, ifile))?;
        let file = std::io::BufWriter::with_capacity(1 << 20, file);
        let mut enc = zstd::stream::write::Encoder::new(Hashing::new(file), opts.level)
            .map_err(ioe("zstd"))?;
        if opts.threads > 1 {
            enc.multithread(opts.threads).map_err(ioe("zstd threads"))?;
            // Bounded jobs keep memory flat whatever the level's window.
            enc.set_parameter(zstd::stream::raw::CParameter::JobSize(JOB_SIZE))
                .map_err(ioe("zstd job size"))?;
        }
        let (t, enc) = write_tree(src, enc, parent.as_mut(), &mut idx, cancel)?;
        let (file, archive_bytes, sha256) = enc.finish().map_err(ioe("zstd finish"))?.done();
        let file = file.into_inner().map_err(|e| Error::Io {
            what: "flush archive".into(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(ioe("fsync archive"))?;
        let (ifile, index_bytes, index_sha) = idx.finish()?;
        let ifile = ifile.into_inner().map_err(|e| Error::Io {
            what: "flush index".into(),
            source: e.into_error(),
        })?;
        ifile.sync_all().map_err(ioe("fsync index"))?;
        let incremental = parent.is_some();
        Ok::<_, Error>(Manifest {
            name: job.name.clone(),
            source_volume_id: job.source_volume_id.clone(),
            created_unix: job.created_unix,
            created_nanos: job.created_nanos,
            size_bytes: t.size,
            file_count: t.count,
            archive_bytes,
            sha256,
            compression: "zstd".into(),
            level: opts.level,
            group_snapshot_id: job.group_snapshot_id.clone(),
            parent: job.parent.clone().filter(|_| incremental),
            chain: if incremental { job.chain } else { 0 },
            added_bytes: archive_bytes + index_bytes,
            stored: incremental.then_some(super::Stored {
                bytes: t.stored_bytes,
                entries: t.stored_entries,
            }),
            index: Some(super::IndexInfo {
                bytes: index_bytes,
                sha256: index_sha,
            }),
        })
    })();
    if result.is_err() {
        let _ = store.dir.remove_file(TMP_ARCHIVE);
        let _ = store.dir.remove_file(TMP_INDEX);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::tests::sample_tree;

    #[test]
    fn a_file_that_changes_size_keeps_the_archive_well_formed() {
        let t = tempfile::tempdir().unwrap();
        let grow = t.path().join("grow");
        let shrink = t.path().join("shrink");
        std::fs::write(&grow, vec![1u8; 1000]).unwrap();
        std::fs::write(&shrink, vec![2u8; 5000]).unwrap();
        let fg = File::open(&grow).unwrap();
        let fs = File::open(&shrink).unwrap();
        let sg = nix::sys::stat::fstat(&fg).unwrap();
        let ss = nix::sys::stat::fstat(&fs).unwrap();
        // after the stat: one grows (a pod appends), the other is truncated
        std::fs::OpenOptions::new()
            .append(true)
            .open(&grow)
            .unwrap()
            .write_all(&[9u8; 7000])
            .unwrap();
        File::options()
            .write(true)
            .open(&shrink)
            .unwrap()
            .set_len(10)
            .unwrap();
        let mut b = tar::Builder::new(Vec::new());
        append_regular(&mut b, Path::new("grow"), &fg, &sg).unwrap();
        append_regular(&mut b, Path::new("shrink"), &fs, &ss).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        b.append_data(&mut h, "last", &b"end"[..]).unwrap();
        let bytes = b.into_inner().unwrap();
        let mut a = tar::Archive::new(&bytes[..]);
        let mut seen = Vec::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            seen.push((e.path().unwrap().display().to_string(), data));
        }
        assert_eq!(seen.len(), 3, "every header in step");
        assert_eq!(
            seen[0].1,
            vec![1u8; 1000],
            "the size at the stat, not the appended bytes"
        );
        let mut want = vec![2u8; 10];
        want.resize(5000, 0);
        assert_eq!(
            seen[1].1, want,
            "a shrunk file is padded to its stated size"
        );
        assert_eq!(seen[2], ("last".to_string(), b"end".to_vec()));
    }

    #[test]
    fn cancel_stops_archiving_and_leaves_no_archive() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        sample_tree(&src);
        std::fs::create_dir_all(t.path().join("store")).unwrap();
        let store = Store {
            dir: DirFd::open_root(&t.path().join("store")).unwrap(),
            snaps: None,
        };
        let err = create_archive(
            &DirFd::open_root(&src).unwrap(),
            &store,
            &Job::new("s", "v", 1),
            ArchiveOptions {
                level: 1,
                threads: 1,
            },
            &AtomicBool::new(true),
        )
        .unwrap_err();
        assert!(matches!(err, Error::Tree(tree::Error::Cancelled)), "{err}");
        assert!(store.dir.list().unwrap().is_empty());
    }
}
