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

use super::tree::{self, Kind, Links};
use super::{ARCHIVE, Error, JOB, Job, MANIFEST, Manifest, READ_BUF, Result, Store, ioe, reader};
use crate::sys::safefs::DirFd;

/// Bytes of input per zstd worker job.
const JOB_SIZE: u32 = 2 << 20;
/// Files with more data segments than a restore accepts are archived whole.
const MAX_SEGMENTS: usize = reader::MAX_SPARSE - 1;

/// A writer that hashes and counts what passes through.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    bytes: u64,
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

/// Writes the tree below `src` as tar into `out`. Returns (data bytes,
/// entries). Blocking.
pub fn write_tar<W: Write>(src: &DirFd, out: W, cancel: &AtomicBool) -> Result<(u64, u64, W)> {
    let mut builder = tar::Builder::new(out);
    builder.mode(tar::HeaderMode::Complete);
    builder.follow_symlinks(false);
    let mut links = Links::default();
    let mut size = 0u64;
    let mut count = 0u64;
    // The root directory's own metadata, as "./".
    {
        let st = src.stat()?;
        let mut h = header_for(&st, tar::EntryType::Directory);
        builder
            .append_data(&mut h, "./", std::io::empty())
            .map_err(ioe("write archive"))?;
    }
    tree::walk(src, &|| cancel.load(Ordering::Relaxed), &mut |v| {
        let path = Path::new(OsStr::from_bytes(v.path));
        let err = |e: std::io::Error| tree::Error::Stream {
            path: format!("archive {}", String::from_utf8_lossy(v.path)),
            source: e,
        };
        match v.kind {
            Kind::Dir => {
                let dir = v.parent.child(v.name)?;
                let xattrs = dir
                    .as_ref()
                    .map(|d| tree::read_xattrs(d.fd()))
                    .unwrap_or_default();
                pax_xattrs(&mut builder, &xattrs).map_err(err)?;
                let mut h = header_for(v.stat, tar::EntryType::Directory);
                let mut name = v.path.to_vec();
                name.push(b'/');
                builder
                    .append_data(
                        &mut h,
                        Path::new(OsStr::from_bytes(&name)),
                        std::io::empty(),
                    )
                    .map_err(err)?;
            }
            Kind::File => {
                if let Some(first) = links.seen(v.stat, v.path) {
                    let mut h = header_for(v.stat, tar::EntryType::Link);
                    h.set_size(0);
                    builder
                        .append_link(&mut h, path, Path::new(OsStr::from_bytes(&first)))
                        .map_err(err)?;
                } else {
                    let (f, st) = tree::open_file(v.parent, v.name, v.path, v.stat)?;
                    pax_xattrs(&mut builder, &tree::read_xattrs(f.as_fd())).map_err(err)?;
                    append_regular(&mut builder, path, &f, &st).map_err(err)?;
                    size += st.st_size as u64;
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
            Kind::Socket => return Ok(()),
        }
        count += 1;
        Ok(())
    })?;
    let out = builder.into_inner().map_err(ioe("finish archive"))?;
    Ok((size, count, out))
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

/// Writes the archive of `src` into `store` atomically and records its
/// manifest. Blocking.
pub fn create_archive(
    src: &DirFd,
    store: &Store,
    job: &Job,
    opts: ArchiveOptions,
    cancel: &AtomicBool,
) -> Result<Manifest> {
    let tmp = format!(".{ARCHIVE}.tmp");
    store.dir.remove_file(&tmp)?;
    let fd = openat(
        store.dir.fd(),
        tmp.as_str(),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(|e| Error::Io {
        what: format!("create {}", store.dir.path().join(&tmp).display()),
        source: e.into(),
    })?;
    let file = std::io::BufWriter::with_capacity(1 << 20, File::from(fd));
    let hashing = Hashing {
        inner: file,
        hash: Sha256::new(),
        bytes: 0,
    };
    let result = (|| {
        let mut enc =
            zstd::stream::write::Encoder::new(hashing, opts.level).map_err(ioe("zstd"))?;
        if opts.threads > 1 {
            enc.multithread(opts.threads).map_err(ioe("zstd threads"))?;
            // Bounded jobs keep memory flat whatever the level's window.
            enc.set_parameter(zstd::stream::raw::CParameter::JobSize(JOB_SIZE))
                .map_err(ioe("zstd job size"))?;
        }
        let (size, count, enc) = write_tar(src, enc, cancel)?;
        let hashing = enc.finish().map_err(ioe("zstd finish"))?;
        let file = hashing.inner.into_inner().map_err(|e| Error::Io {
            what: "flush archive".into(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(ioe("fsync archive"))?;
        Ok::<_, Error>(Manifest {
            name: job.name.clone(),
            source_volume_id: job.source_volume_id.clone(),
            created_unix: job.created_unix,
            created_nanos: job.created_nanos,
            size_bytes: size,
            file_count: count,
            archive_bytes: hashing.bytes,
            sha256: hex::encode(hashing.hash.finalize()),
            compression: "zstd".into(),
            level: opts.level,
            group_snapshot_id: job.group_snapshot_id.clone(),
        })
    })();
    let manifest = match result {
        Ok(m) => m,
        Err(e) => {
            let _ = store.dir.remove_file(&tmp);
            return Err(e);
        }
    };
    renameat(store.dir.fd(), tmp.as_str(), store.dir.fd(), ARCHIVE).map_err(|e| Error::Io {
        what: "rename archive".into(),
        source: e.into(),
    })?;
    let bytes =
        serde_json::to_vec_pretty(&manifest).map_err(|e| Error::BadJson(MANIFEST.into(), e))?;
    store.dir.write_atomic(MANIFEST, &bytes)?;
    store.dir.remove_file(JOB)?;
    Ok(manifest)
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
