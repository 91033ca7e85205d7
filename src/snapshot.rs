//! Snapshots: a volume's directory as a streaming tar + zstd archive on an
//! export, restored into a new volume; and clones, a volume's directory
//! copied into a new one.
//!
//! Layout on the export holding the archives:
//! `.nfs-csi/snapshots/<name>/{archive.tar.zst, manifest.json, job.json}`.
//! `job.json` exists while the archive is being written; `manifest.json`
//! (source, time, size, file count, SHA-256 of the archive) is written only
//! after the archive is complete, fsynced and renamed into place, so a
//! snapshot is ready exactly when its manifest exists. The archive is a
//! standard `.tar.zst` (`tar --zstd -xf` restores it by hand).
//!
//! Safety assumptions: memory stays flat (files stream through fixed
//! buffers; zstd's window is bounded by its level). Reading the source never
//! follows symlinks. Restoring treats the archive as hostile: it is opened
//! once, by descriptor, and its size and SHA-256 are checked against the
//! manifest before anything is written (then extracted from the same
//! descriptor); headers are read with fixed bounds (`reader`), the zstd
//! window is capped, the data written is bounded by the manifest's size and
//! the volume's capacity, paths are rebuilt by `tree::Dest`, and whatever
//! was written is removed when the restore fails.

mod reader;

use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::{OFlag, openat, renameat};
use nix::sys::stat::Mode;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::safefs::{self, DirFd};
use crate::tree::{self, Dest, Kind, Links, Meta};
use crate::volume::RESERVED_DIR;

pub const ARCHIVE: &str = "archive.tar.zst";
pub const MANIFEST: &str = "manifest.json";
pub const JOB: &str = "job.json";
/// Read size for file data (large reads: fewer syscalls, better readahead).
const READ_BUF: usize = 256 << 10;
/// Bytes of input per zstd worker job.
const JOB_SIZE: u32 = 2 << 20;
/// Largest zstd window a restore accepts (2^24 = 16 MiB; level 19, the
/// highest the driver writes, uses 2^23): a hostile frame header cannot make
/// the decoder allocate more.
const WINDOW_LOG_MAX: u32 = 24;
/// Files with more data segments than a restore accepts are archived whole.
const MAX_SEGMENTS: usize = reader::MAX_SPARSE - 1;
/// Slack over the manifest's data size a restore may write (1 MiB + 1%).
const SLACK_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Tree(#[from] tree::Error),
    #[error(transparent)]
    Fs(#[from] safefs::Error),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "archive {path} does not match its manifest (SHA-256 {got}, manifest says {want}); the snapshot is corrupt"
    )]
    Checksum {
        path: String,
        got: String,
        want: String,
    },
    #[error("archive {path} is {got} bytes, its manifest says {want}; the snapshot is corrupt")]
    Length { path: String, got: u64, want: u64 },
    #[error("the archive is corrupt: {reason}")]
    Corrupt { reason: String },
    #[error("the archive is refused: it holds {reason}")]
    Refused { reason: String },
    #[error("{0} is unreadable: {1}")]
    BadJson(String, serde_json::Error),
}

type Result<T> = std::result::Result<T, Error>;

fn ioe(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// Written when the snapshot is started; fixes its name, source and time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub name: String,
    pub source_volume_id: String,
    pub created_unix: i64,
    pub created_nanos: i32,
    pub level: i32,
}

/// Written once the archive is complete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub source_volume_id: String,
    pub created_unix: i64,
    pub created_nanos: i32,
    /// Bytes of file data the archive restores (the restore size).
    pub size_bytes: u64,
    pub file_count: u64,
    pub archive_bytes: u64,
    pub sha256: String,
    pub compression: String,
    pub level: i32,
}

impl Job {
    pub fn new(name: &str, source: &str, level: i32) -> Job {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Job {
            name: name.to_string(),
            source_volume_id: source.to_string(),
            created_unix: now.as_secs() as i64,
            created_nanos: now.subsec_nanos() as i32,
            level,
        }
    }
}

/// A snapshot's directory on its export.
pub struct Store {
    pub dir: DirFd,
}

/// What is found in a snapshot's directory.
pub enum State {
    Absent,
    Pending(Job),
    Ready(Manifest),
}

impl Store {
    /// The snapshots directory of an export root (created when `create`).
    pub fn snapshots_dir(root: &Path, create: bool) -> Result<Option<DirFd>> {
        let root = DirFd::open_root(root)?;
        let Some(meta) = root.subdir(RESERVED_DIR, create)? else {
            return Ok(None);
        };
        Ok(meta.subdir("snapshots", create)?)
    }

    pub fn open(root: &Path, key: &str, create: bool) -> Result<Option<Store>> {
        let Some(snaps) = Self::snapshots_dir(root, create)? else {
            return Ok(None);
        };
        Ok(snaps.subdir(key, create)?.map(|dir| Store { dir }))
    }

    fn read_json<T: for<'de> Deserialize<'de>>(&self, name: &str) -> Result<Option<T>> {
        match self.dir.read_small(name)? {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| Error::BadJson(self.dir.path().join(name).display().to_string(), e)),
        }
    }

    pub fn state(&self) -> Result<State> {
        if let Some(m) = self.read_json::<Manifest>(MANIFEST)? {
            return Ok(State::Ready(m));
        }
        if let Some(j) = self.read_json::<Job>(JOB)? {
            return Ok(State::Pending(j));
        }
        Ok(State::Absent)
    }

    pub fn start(&self, job: &Job) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(job).map_err(|e| Error::BadJson(JOB.into(), e))?;
        self.dir.write_atomic(JOB, &bytes)?;
        Ok(())
    }

    pub fn manifest(&self) -> Result<Option<Manifest>> {
        self.read_json(MANIFEST)
    }
}

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

/// A reader that hashes what passes through.
struct HashingReader<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
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

/// What a restore may write.
#[derive(Clone, Copy, Debug, Default)]
pub struct RestoreOptions {
    pub policy: tree::Policy,
    /// The new volume's capacity in bytes (0: none); file data beyond it is
    /// refused.
    pub capacity: u64,
}

/// The most file data (apparent sizes, holes included) a restore of
/// `manifest` may write, and the most entries it may make: what the
/// manifest records plus a little slack, and never more data than the
/// volume's capacity.
pub fn restore_limits(manifest: &Manifest, capacity: u64) -> (u64, u64) {
    let slack = manifest.size_bytes / 100 + SLACK_BYTES;
    let mut bytes = manifest.size_bytes.saturating_add(slack);
    if capacity > 0 {
        bytes = bytes.min(capacity);
    }
    let entries = manifest
        .file_count
        .saturating_add(manifest.file_count / 100 + 16);
    (bytes, entries)
}

/// The SHA-256 of the first `len` bytes of `file`, read through a fixed
/// buffer.
fn hash_file(file: &File, len: u64, path: &str, cancel: &AtomicBool) -> Result<String> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; READ_BUF];
    let mut hash = Sha256::new();
    let mut pos = 0u64;
    while pos < len {
        if cancel.load(Ordering::Relaxed) {
            return Err(tree::Error::Cancelled.into());
        }
        let want = (len - pos).min(buf.len() as u64) as usize;
        let n = file
            .read_at(&mut buf[..want], pos)
            .map_err(ioe("read archive"))?;
        if n == 0 {
            return Err(Error::Length {
                path: path.to_string(),
                got: pos,
                want: len,
            });
        }
        hash.update(&buf[..n]);
        pos += n as u64;
    }
    Ok(hex::encode(hash.finalize()))
}

/// Restores the archive of `store` into `dest` (an empty directory). The
/// archive is opened once; its size and SHA-256 are checked against
/// `manifest` before anything is written, then it is extracted from the
/// same descriptor (and hashed again on the way: a file changed meanwhile
/// fails too). On failure, whatever was written is removed. Blocking.
pub fn restore(
    store: &Store,
    manifest: &Manifest,
    dest: DirFd,
    opts: RestoreOptions,
    cancel: &AtomicBool,
) -> Result<(u64, u64)> {
    use std::io::{Seek, SeekFrom};
    let path = store.dir.path().join(ARCHIVE).display().to_string();
    let fd = openat(
        store.dir.fd(),
        ARCHIVE,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        Mode::empty(),
    )
    .map_err(|e| Error::Io {
        what: format!("open {path}"),
        source: e.into(),
    })?;
    let mut file = File::from(fd);
    let st = nix::sys::stat::fstat(&file).map_err(|e| Error::Io {
        what: format!("stat {path}"),
        source: e.into(),
    })?;
    if tree::kind(&st) != Kind::File {
        return Err(Error::Corrupt {
            reason: format!("{path} is not a regular file"),
        });
    }
    let want = manifest.archive_bytes;
    if st.st_size.max(0) as u64 != want {
        return Err(Error::Length {
            path,
            got: st.st_size.max(0) as u64,
            want,
        });
    }
    let got = hash_file(&file, want, &path, cancel)?;
    if got != manifest.sha256 {
        return Err(Error::Checksum {
            path,
            got,
            want: tree::show(manifest.sha256.as_bytes()),
        });
    }
    let root = dest.try_clone()?;
    let res = (|| {
        file.seek(SeekFrom::Start(0)).map_err(ioe("seek archive"))?;
        let hashing = HashingReader {
            inner: (&file).take(want),
            hash: Sha256::new(),
        };
        let mut decoder =
            zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(1 << 20, hashing))
                .map_err(ioe("zstd"))?;
        decoder
            .window_log_max(WINDOW_LOG_MAX)
            .map_err(ioe("zstd window"))?;
        let (bytes, entries) = restore_limits(manifest, opts.capacity);
        let out = extract(
            &mut decoder,
            Dest::new(dest, opts.policy).limits(bytes, entries),
            cancel,
        )?;
        // The rest of the file, raw (whatever follows the tar stream is not
        // decompressed), completes the second hash.
        let mut rest = decoder.finish();
        std::io::copy(&mut rest, &mut std::io::sink()).map_err(ioe("read archive"))?;
        let again = hex::encode(rest.into_inner().hash.finalize());
        if again != manifest.sha256 {
            return Err(Error::Checksum {
                path: path.clone(),
                got: again,
                want: tree::show(manifest.sha256.as_bytes()),
            });
        }
        Ok(out)
    })();
    if res.is_err()
        && let Err(e) = empty_dir(&root)
    {
        tracing::error!(error = %e, "cannot remove what a failed restore wrote");
    }
    res
}

/// Removes everything inside `dir`.
pub fn empty_dir(dir: &DirFd) -> Result<()> {
    for name in dir.list()? {
        dir.remove_tree(&name)?;
    }
    Ok(())
}

/// Extracts a tar stream into `dest`, treating it as hostile: headers are
/// bounded (see `reader`), file data and entries are bounded by `dest`'s
/// limits (stored data too, so skipped entries cannot stream unbounded
/// data), and `cancel` is checked between entries and every few MiB inside
/// them. Blocking.
pub fn extract(src: &mut dyn Read, mut dest: Dest, cancel: &AtomicBool) -> Result<(u64, u64)> {
    use std::io::{Seek, SeekFrom};
    let cancelled = || cancel.load(Ordering::Relaxed);
    let mut archive = reader::Reader::new(src);
    let mut stored = 0u64;
    while let Some(e) = archive.next_entry(&cancelled)? {
        if cancelled() {
            return Err(tree::Error::Cancelled.into());
        }
        stored = stored.saturating_add(e.stored);
        if stored > dest.max_bytes() {
            return Err(tree::Error::OverLimit {
                what: "bytes of file data",
                limit: dest.max_bytes(),
            }
            .into());
        }
        let path = &e.path;
        let copy_err = |err: std::io::Error| -> Error {
            if cancelled() {
                tree::Error::Cancelled.into()
            } else if err.raw_os_error().is_some() {
                tree::Error::Stream {
                    path: format!("extract {}", tree::show(path)),
                    source: err,
                }
                .into()
            } else {
                reader::read_error(err)
            }
        };
        let target = || {
            e.link.clone().ok_or_else(|| Error::Corrupt {
                reason: format!("link {} has no target", tree::show(path)),
            })
        };
        use tar::EntryType as T;
        match e.kind {
            T::Directory => dest.dir(path, e.meta.clone())?,
            T::Regular | T::Continuous | T::GNUSparse => {
                let size = e.apparent_size();
                let mut f = dest.file(path, size)?;
                match &e.sparse {
                    None => {
                        tree::copy_sparse(&mut archive.data(), &mut f, &cancelled)
                            .map_err(copy_err)?;
                    }
                    Some((_, segments)) => {
                        for (off, len) in segments {
                            f.seek(SeekFrom::Start(*off)).map_err(copy_err)?;
                            tree::copy_sparse(&mut archive.data().take(*len), &mut f, &cancelled)
                                .map_err(copy_err)?;
                        }
                    }
                }
                dest.finish_file(&f, size, &e.meta, path)?;
            }
            T::Symlink => dest.symlink(path, &target()?, &e.meta)?,
            T::Link => dest.hardlink(path, &target()?)?,
            T::Fifo => dest.special(path, Kind::Fifo, 0, &e.meta)?,
            T::Char => dest.special(path, Kind::Char, e.rdev, &e.meta)?,
            T::Block => dest.special(path, Kind::Block, e.rdev, &e.meta)?,
            other => {
                return Err(Error::Refused {
                    reason: format!(
                        "an entry of unsupported type {other:?} at {}",
                        tree::show(path)
                    ),
                });
            }
        }
    }
    Ok(dest.finish()?)
}

/// Copies the tree below `src` into `dest` with the same fidelity as an
/// archive round trip: file data through `workers` threads (reflink, else
/// copy_file_range of the data segments, keeping holes). Blocking.
pub fn clone_tree(
    src: &DirFd,
    dest: Dest,
    workers: usize,
    cancel: &AtomicBool,
) -> Result<(u64, u64)> {
    let dest = std::sync::Mutex::new(dest);
    let (tx, rx) = std::sync::mpsc::sync_channel::<(File, File, u64, Meta, Vec<u8>)>(64);
    let rx = std::sync::Mutex::new(rx);
    let failed: std::sync::Mutex<Option<Error>> = std::sync::Mutex::new(None);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..workers.max(1) {
            s.spawn(|| {
                loop {
                    let job = match rx.lock() {
                        Ok(r) => r.recv(),
                        Err(_) => return,
                    };
                    let Ok((src, dst, size, meta, path)) = job else {
                        return;
                    };
                    let halt = || cancel.load(Ordering::Relaxed) || stop.load(Ordering::Relaxed);
                    let res = copy_data(&src, &dst, size, &halt).map_err(|e| {
                        if halt() {
                            Error::Tree(tree::Error::Cancelled)
                        } else {
                            Error::Io {
                                what: format!("copy {}", tree::show(&path)),
                                source: e,
                            }
                        }
                    });
                    let res = res.and_then(|()| {
                        dest.lock()
                            .map_err(|_| Error::Tree(tree::Error::Cancelled))?
                            .finish_file(&dst, size, &meta, &path)
                            .map_err(Error::from)
                    });
                    if let Err(e) = res {
                        stop.store(true, Ordering::Relaxed);
                        if let Ok(mut f) = failed.lock() {
                            f.get_or_insert(e);
                        }
                    }
                }
            });
        }
        let mut links = Links::default();
        let walked = tree::walk(
            src,
            &|| cancel.load(Ordering::Relaxed) || stop.load(Ordering::Relaxed),
            &mut |v| {
                let mut meta = Meta::from_stat(v.stat);
                let mut d = dest.lock().map_err(|_| tree::Error::Cancelled)?;
                match v.kind {
                    Kind::Dir => {
                        if let Some(dir) = v.parent.child(v.name)? {
                            meta.xattrs = tree::read_xattrs(dir.fd());
                        }
                        d.dir(v.path, meta)?;
                    }
                    Kind::File => {
                        if let Some(first) = links.seen(v.stat, v.path) {
                            d.hardlink(v.path, &first)?;
                        } else {
                            let (f, st) = tree::open_file(v.parent, v.name, v.path, v.stat)?;
                            meta.xattrs = tree::read_xattrs(f.as_fd());
                            let out = d.file(v.path, st.st_size.max(0) as u64)?;
                            drop(d);
                            tx.send((f, out, st.st_size as u64, meta, v.path.to_vec()))
                                .map_err(|_| tree::Error::Cancelled)?;
                        }
                    }
                    Kind::Symlink => {
                        let target = tree::read_link(v.parent, v.name, v.path)?;
                        d.symlink(v.path, target.as_bytes(), &meta)?;
                    }
                    Kind::Fifo | Kind::Char | Kind::Block => {
                        d.special(v.path, v.kind, v.stat.st_rdev, &meta)?;
                    }
                    Kind::Socket => {}
                }
                Ok(())
            },
        );
        drop(tx);
        if let Err(e) = walked
            && let Ok(mut f) = failed.lock()
        {
            f.get_or_insert(e.into());
        }
    });
    if let Some(e) = failed.into_inner().ok().flatten() {
        return Err(e);
    }
    let dest = dest
        .into_inner()
        .map_err(|_| Error::Tree(tree::Error::Cancelled))?;
    Ok(dest.finish()?)
}

/// Copies a file's data: a reflink where the filesystem shares extents,
/// else copy_file_range over the data segments only (holes stay holes).
fn copy_data(src: &File, dst: &File, size: u64, cancel: &dyn Fn() -> bool) -> std::io::Result<()> {
    use nix::unistd::{Whence, lseek};
    // FICLONE: _IOW(0x94, 9, int)
    const FICLONE: nix::libc::c_ulong = 0x4004_9409;
    // SAFETY: both descriptors are open files owned by the caller.
    let r = unsafe {
        nix::libc::ioctl(
            dst.as_fd().as_raw_fd_i32(),
            FICLONE as _,
            src.as_fd().as_raw_fd_i32(),
        )
    };
    if r == 0 {
        return Ok(());
    }
    let mut off: i64 = 0;
    let size = size as i64;
    while off < size {
        let data = match lseek(src.as_fd(), off, Whence::SeekData) {
            Ok(d) => d,
            Err(nix::errno::Errno::ENXIO) => break, // only a hole remains
            Err(nix::errno::Errno::EINVAL) => off,  // no SEEK_DATA: copy all
            Err(e) => return Err(e.into()),
        };
        let hole = match lseek(src.as_fd(), data, Whence::SeekHole) {
            Ok(h) => h.min(size),
            Err(_) => size,
        };
        let mut pos_in = data;
        let mut pos_out = data;
        while pos_in < hole {
            // in steps, so that a cancel stops a large file too
            if cancel() {
                return Err(tree::cancelled());
            }
            let want = ((hole - pos_in) as u64).min(tree::CANCEL_EVERY * 16) as usize;
            let n = match nix::fcntl::copy_file_range(
                src.as_fd(),
                Some(&mut pos_in),
                dst.as_fd(),
                Some(&mut pos_out),
                want,
            ) {
                Ok(0) => break, // file shrank under us
                Ok(n) => n,
                Err(
                    nix::errno::Errno::EXDEV
                    | nix::errno::Errno::ENOSYS
                    | nix::errno::Errno::EOPNOTSUPP
                    | nix::errno::Errno::EINVAL,
                ) => {
                    copy_range_rw(src, dst, pos_in, hole, cancel)?;
                    pos_in = hole;
                    break;
                }
                Err(e) => return Err(e.into()),
            };
            let _ = n;
        }
        off = hole.max(pos_in);
    }
    Ok(())
}

trait RawFdI32 {
    fn as_raw_fd_i32(&self) -> i32;
}

impl RawFdI32 for std::os::fd::BorrowedFd<'_> {
    fn as_raw_fd_i32(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.as_raw_fd()
    }
}

fn copy_range_rw(
    src: &File,
    dst: &File,
    from: i64,
    to: i64,
    cancel: &dyn Fn() -> bool,
) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = from as u64;
    while (pos as i64) < to {
        if cancel() {
            return Err(tree::cancelled());
        }
        let want = ((to as u64 - pos) as usize).min(buf.len());
        let n = src.read_at(&mut buf[..want], pos)?;
        if n == 0 {
            break;
        }
        dst.write_all_at(&buf[..n], pos)?;
        pos += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

    /// A tree with every kind of entry the archive must keep.
    pub(crate) fn sample_tree(root: &Path) {
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/text"), "hello ".repeat(10000)).unwrap();
        std::fs::write(root.join("top"), b"top").unwrap();
        std::fs::set_permissions(root.join("top"), std::fs::Permissions::from_mode(0o640)).unwrap();
        std::fs::hard_link(root.join("top"), root.join("a/hard")).unwrap();
        symlink("/etc/passwd", root.join("abs-link")).unwrap();
        symlink("../top", root.join("a/rel-link")).unwrap();
        let f = File::create(root.join("sparse")).unwrap();
        f.set_len(64 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"end", (64 << 20) - 3).unwrap();
        f.write_all_at(b"start", 0).unwrap();
        nix::unistd::mkfifo(&root.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        let long = "x".repeat(120);
        std::fs::create_dir_all(root.join(&long).join(&long)).unwrap();
        std::fs::write(root.join(&long).join(&long).join("deep"), b"long path").unwrap();
        let ts = TimeSpecPair::at(1_600_000_000);
        ts.apply(&root.join("a/b/text"));
        // a user xattr where the filesystem has them
        let _ = xattr_set(&root.join("top"), "user.nfs-csi-test", b"v1");
    }

    struct TimeSpecPair(nix::sys::time::TimeSpec);
    impl TimeSpecPair {
        fn at(secs: i64) -> Self {
            TimeSpecPair(nix::sys::time::TimeSpec::new(secs, 0))
        }
        fn apply(&self, p: &Path) {
            nix::sys::stat::utimensat(
                nix::fcntl::AT_FDCWD,
                p,
                &self.0,
                &self.0,
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            )
            .unwrap();
        }
    }

    fn xattr_set(p: &Path, name: &str, value: &[u8]) -> bool {
        let cp = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
        let cn = std::ffi::CString::new(name).unwrap();
        // SAFETY: valid C strings and buffer.
        unsafe {
            nix::libc::setxattr(
                cp.as_ptr(),
                cn.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            ) == 0
        }
    }

    fn xattr_get(p: &Path, name: &str) -> Option<Vec<u8>> {
        let cp = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
        let cn = std::ffi::CString::new(name).unwrap();
        let mut buf = vec![0u8; 256];
        // SAFETY: valid C strings and buffer.
        let n = unsafe {
            nix::libc::getxattr(cp.as_ptr(), cn.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        };
        (n >= 0).then(|| {
            buf.truncate(n as usize);
            buf
        })
    }

    /// Compares two trees field by field.
    pub(crate) fn assert_same_tree(a: &Path, b: &Path) {
        let mut count = 0;
        for entry in walk_paths(a) {
            let rel = entry.strip_prefix(a).unwrap();
            let (ma, mb) = (
                std::fs::symlink_metadata(&entry).unwrap(),
                std::fs::symlink_metadata(b.join(rel))
                    .unwrap_or_else(|e| panic!("{} missing: {e}", rel.display())),
            );
            let r = rel.display();
            assert_eq!(ma.file_type(), mb.file_type(), "{r}");
            assert_eq!(ma.mode(), mb.mode(), "{r} mode");
            assert_eq!(ma.uid(), mb.uid(), "{r} uid");
            assert_eq!(ma.gid(), mb.gid(), "{r} gid");
            if !ma.is_dir() {
                assert_eq!(ma.mtime(), mb.mtime(), "{r} mtime");
            }
            if ma.file_type().is_symlink() {
                assert_eq!(
                    std::fs::read_link(&entry).unwrap(),
                    std::fs::read_link(b.join(rel)).unwrap()
                );
            } else if ma.is_file() {
                assert_eq!(ma.len(), mb.len(), "{r} size");
                assert_eq!(
                    std::fs::read(&entry).unwrap(),
                    std::fs::read(b.join(rel)).unwrap(),
                    "{r}"
                );
                // holes kept: not much more allocated than the source
                assert!(
                    mb.blocks() <= ma.blocks() + 64,
                    "{r}: {} blocks vs {}",
                    mb.blocks(),
                    ma.blocks()
                );
            }
            count += 1;
        }
        assert!(count > 5);
        // hard link kept as a link
        let (h1, h2) = (
            std::fs::metadata(b.join("top")).unwrap(),
            std::fs::metadata(b.join("a/hard")).unwrap(),
        );
        assert_eq!(h1.ino(), h2.ino(), "hard link restored as a copy");
        if let Some(v) = xattr_get(&a.join("top"), "user.nfs-csi-test") {
            assert_eq!(xattr_get(&b.join("top"), "user.nfs-csi-test"), Some(v));
        }
    }

    fn walk_paths(root: &Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if e.file_type().unwrap().is_dir() {
                    stack.push(p.clone());
                }
                out.push(p);
            }
        }
        out
    }

    #[test]
    fn archive_round_trip_keeps_every_kind_of_entry() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        sample_tree(&src);
        std::fs::create_dir_all(t.path().join("store")).unwrap();
        let store = Store {
            dir: DirFd::open_root(&t.path().join("store")).unwrap(),
        };
        let job = Job::new("snap-1", "vol-1", 3);
        let m = create_archive(
            &DirFd::open_root(&src).unwrap(),
            &store,
            &job,
            ArchiveOptions {
                level: 3,
                threads: 2,
            },
            &AtomicBool::new(false),
        )
        .unwrap();
        assert!(
            m.archive_bytes < 2 << 20,
            "sparse data inflated: {}",
            m.archive_bytes
        );
        assert_eq!(m.size_bytes, 60000 + 3 + (64 << 20) + 9);
        assert!(store.manifest().unwrap().is_some());
        assert!(store.dir.read_small(JOB).unwrap().is_none());
        // restore
        let dst = t.path().join("dst");
        std::fs::create_dir_all(&dst).unwrap();
        restore(
            &store,
            &m,
            DirFd::open_root(&dst).unwrap(),
            RestoreOptions::default(),
            &AtomicBool::new(false),
        )
        .unwrap();
        assert_same_tree(&src, &dst);
        // a standard archive: GNU tar lists it
        let out = std::process::Command::new("tar")
            .args(["--zstd", "-tvf"])
            .arg(t.path().join("store").join(ARCHIVE))
            .output();
        if let Ok(out) = out
            && out.status.success()
        {
            let s = String::from_utf8_lossy(&out.stdout);
            assert!(
                s.contains("a/b/text") && s.contains("abs-link -> /etc/passwd"),
                "{s}"
            );
        }
    }

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
    fn corrupt_archive_restores_nothing() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("f"), b"data").unwrap();
        std::fs::create_dir_all(t.path().join("store")).unwrap();
        let store = Store {
            dir: DirFd::open_root(&t.path().join("store")).unwrap(),
        };
        let mut m = create_archive(
            &DirFd::open_root(&src).unwrap(),
            &store,
            &Job::new("s", "v", 1),
            ArchiveOptions {
                level: 1,
                threads: 1,
            },
            &AtomicBool::new(false),
        )
        .unwrap();
        m.sha256 = "00".repeat(32);
        let dst = t.path().join("dst");
        std::fs::create_dir_all(&dst).unwrap();
        let err = restore(
            &store,
            &m,
            DirFd::open_root(&dst).unwrap(),
            RestoreOptions::default(),
            &AtomicBool::new(false),
        )
        .unwrap_err();
        assert!(matches!(err, Error::Checksum { .. }), "{err}");
        assert_eq!(std::fs::read_dir(&dst).unwrap().count(), 0);
    }

    #[test]
    fn clone_keeps_every_kind_of_entry() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        sample_tree(&src);
        let dst = t.path().join("dst");
        std::fs::create_dir_all(&dst).unwrap();
        let (files, _) = clone_tree(
            &DirFd::open_root(&src).unwrap(),
            Dest::new(DirFd::open_root(&dst).unwrap(), tree::Policy::default()),
            4,
            &AtomicBool::new(false),
        )
        .unwrap();
        assert!(files >= 8, "{files}");
        assert_same_tree(&src, &dst);
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

    /// A store holding the archive of `src`, in `t`.
    fn archived(t: &Path, src: &Path) -> (Store, Manifest) {
        std::fs::create_dir_all(t.join("store")).unwrap();
        let store = Store {
            dir: DirFd::open_root(&t.join("store")).unwrap(),
        };
        let m = create_archive(
            &DirFd::open_root(src).unwrap(),
            &store,
            &Job::new("s", "v", 1),
            ArchiveOptions {
                level: 1,
                threads: 1,
            },
            &AtomicBool::new(false),
        )
        .unwrap();
        (store, m)
    }

    fn fresh(t: &Path, name: &str) -> (std::path::PathBuf, DirFd) {
        let p = t.join(name);
        std::fs::create_dir_all(&p).unwrap();
        let d = DirFd::open_root(&p).unwrap();
        (p, d)
    }

    #[test]
    fn restore_is_bounded_by_the_capacity_and_removes_what_it_wrote() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("a"), vec![1u8; 4096]).unwrap();
        std::fs::write(src.join("b"), vec![2u8; 4096]).unwrap();
        let (store, m) = archived(t.path(), &src);
        let (dst, d) = fresh(t.path(), "dst");
        let opts = RestoreOptions {
            capacity: 6000,
            ..Default::default()
        };
        let err = restore(&store, &m, d, opts, &AtomicBool::new(false)).unwrap_err();
        assert!(
            matches!(err, Error::Tree(tree::Error::OverLimit { limit: 6000, .. })),
            "{err}"
        );
        assert_eq!(
            std::fs::read_dir(&dst).unwrap().count(),
            0,
            "first file kept"
        );
        // the capacity that holds it
        let (dst, d) = fresh(t.path(), "dst2");
        let opts = RestoreOptions {
            capacity: 8192,
            ..Default::default()
        };
        restore(&store, &m, d, opts, &AtomicBool::new(false)).unwrap();
        assert_eq!(std::fs::read(dst.join("b")).unwrap(), vec![2u8; 4096]);
        // a manifest that understates the data: bounded by it plus slack
        let mut small = m.clone();
        small.size_bytes = 10;
        small.file_count = 2;
        assert_eq!(restore_limits(&small, 0), (10 + SLACK_BYTES, 2 + 16));
        assert_eq!(restore_limits(&small, 5).0, 5);
    }

    /// A tar stream of one `size`-byte file of non-zero data.
    fn one_big_file(size: u64) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(size);
        h.set_mode(0o644);
        b.append_data(&mut h, "big", std::io::repeat(7).take(size))
            .unwrap();
        b.into_inner().unwrap()
    }

    /// Reads `inner`, raising `cancel` once `after` bytes were read.
    struct CancelAfter<'a> {
        inner: &'a [u8],
        read: u64,
        after: u64,
        cancel: &'a AtomicBool,
    }

    impl Read for CancelAfter<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.read += n as u64;
            if self.read >= self.after {
                self.cancel.store(true, Ordering::Relaxed);
            }
            Ok(n)
        }
    }

    #[test]
    fn cancel_stops_a_restore_inside_a_large_entry() {
        let t = tempfile::tempdir().unwrap();
        let tar = one_big_file(64 << 20);
        let cancel = AtomicBool::new(false);
        let mut src = CancelAfter {
            inner: &tar,
            read: 0,
            after: 8 << 20,
            cancel: &cancel,
        };
        let (_, d) = fresh(t.path(), "dst");
        let err = extract(&mut src, Dest::new(d, tree::Policy::default()), &cancel).unwrap_err();
        assert!(matches!(err, Error::Tree(tree::Error::Cancelled)), "{err}");
        assert!(
            src.read < 16 << 20,
            "read {} MiB of 64 after the cancel at 8",
            src.read >> 20
        );
    }

    #[test]
    fn directory_modes_and_times_survive_what_is_written_inside() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        for d in ["a/b/c", "a/x", "z"] {
            std::fs::create_dir_all(src.join(d)).unwrap();
        }
        std::fs::write(src.join("a/b/c/f"), b"f").unwrap();
        std::fs::write(src.join("a/x/g"), b"g").unwrap();
        let dirs = ["a", "a/b", "a/b/c", "a/x", "z"];
        for (i, d) in dirs.iter().enumerate() {
            TimeSpecPair::at(1_500_000_000 + i as i64).apply(&src.join(d));
        }
        std::fs::set_permissions(src.join("a/b"), std::fs::Permissions::from_mode(0o750)).unwrap();
        let (store, m) = archived(t.path(), &src);
        let (dst, d) = fresh(t.path(), "dst");
        restore(
            &store,
            &m,
            d,
            RestoreOptions::default(),
            &AtomicBool::new(false),
        )
        .unwrap();
        for d in dirs {
            let (a, b) = (
                std::fs::metadata(src.join(d)).unwrap(),
                std::fs::metadata(dst.join(d)).unwrap(),
            );
            assert_eq!(a.mtime(), b.mtime(), "{d} mtime");
            assert_eq!(a.mode(), b.mode(), "{d} mode");
        }
    }

    #[test]
    fn system_xattrs_are_restored_and_cloned_only_when_allowed() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!(
                "SKIPPED system_xattrs_are_restored_and_cloned_only_when_allowed: needs root"
            );
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("f"), b"data").unwrap();
        if !xattr_set(&src.join("f"), "trusted.nfs-csi-test", b"t") {
            eprintln!(
                "SKIPPED system_xattrs_are_restored_and_cloned_only_when_allowed: no trusted xattrs here"
            );
            return;
        }
        let user = xattr_set(&src.join("f"), "user.nfs-csi-test", b"u");
        let (store, m) = archived(t.path(), &src);
        for allowed in [false, true] {
            let policy = tree::Policy {
                allow_devices: false,
                system_xattrs: allowed,
            };
            let (r, d) = fresh(t.path(), &format!("restored-{allowed}"));
            let opts = RestoreOptions {
                policy,
                capacity: 0,
            };
            restore(&store, &m, d, opts, &AtomicBool::new(false)).unwrap();
            let (c, d) = fresh(t.path(), &format!("cloned-{allowed}"));
            clone_tree(
                &DirFd::open_root(&src).unwrap(),
                Dest::new(d, policy),
                2,
                &AtomicBool::new(false),
            )
            .unwrap();
            for out in [r, c] {
                let f = out.join("f");
                assert_eq!(
                    xattr_get(&f, "trusted.nfs-csi-test").is_some(),
                    allowed,
                    "{}",
                    f.display()
                );
                if user {
                    assert_eq!(xattr_get(&f, "user.nfs-csi-test"), Some(b"u".to_vec()));
                }
            }
        }
    }

    /// A small archive (as a tar stream) with every kind of entry.
    fn small_tar() -> &'static [u8] {
        static TAR: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        TAR.get_or_init(|| {
            let t = tempfile::tempdir().unwrap();
            let root = t.path();
            std::fs::create_dir_all(root.join("d/e")).unwrap();
            std::fs::write(root.join("d/e/f"), b"some text").unwrap();
            std::fs::hard_link(root.join("d/e/f"), root.join("h")).unwrap();
            symlink("d/e/f", root.join("l")).unwrap();
            let long = "y".repeat(130);
            std::fs::write(root.join(&long), b"long name").unwrap();
            let f = File::create(root.join("sparse")).unwrap();
            f.set_len(1 << 20).unwrap();
            use std::os::unix::fs::FileExt;
            for i in 0..6u64 {
                f.write_all_at(b"x", i * 150_000).unwrap();
            }
            let _ = xattr_set(&root.join("d/e/f"), "user.k", b"v\n=");
            let (_, _, tar) = write_tar(
                &DirFd::open_root(root).unwrap(),
                Vec::new(),
                &AtomicBool::new(false),
            )
            .unwrap();
            tar
        })
    }

    /// Extracts `data` into a fresh directory with small limits: it must
    /// restore or fail, never panic or run away.
    fn extract_any(data: &[u8]) -> Result<(u64, u64)> {
        let t = tempfile::tempdir().unwrap();
        let (_, d) = fresh(t.path(), "dst");
        let dest = Dest::new(d, tree::Policy::default()).limits(64 << 20, 1000);
        extract(&mut &data[..], dest, &AtomicBool::new(false))
    }

    #[test]
    fn the_small_archive_restores_and_its_bounds_hold() {
        extract_any(small_tar()).unwrap();
        let mut pax = Vec::new();
        for (key, size) in [
            (tar::EntryType::XHeader, reader::MAX_PAX + 1),
            (tar::EntryType::GNULongName, 5000),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(key);
            h.set_size(size);
            h.set_cksum();
            pax.clear();
            pax.extend_from_slice(h.as_bytes());
            pax.resize(pax.len() + size as usize + 1024, b'a');
            let err = extract_any(&pax).unwrap_err();
            assert!(matches!(err, Error::Refused { .. }), "{err}");
        }
        // PAX headers piling up for one entry (their xattrs would be kept)
        let mut piled = Vec::new();
        for _ in 0..2 {
            let rec = b"12 uid=1000\n";
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::XHeader);
            h.set_size(rec.len() as u64);
            h.set_cksum();
            piled.extend_from_slice(h.as_bytes());
            piled.extend_from_slice(rec);
            piled.resize(piled.len().div_ceil(512) * 512, 0);
        }
        piled.extend_from_slice(small_tar());
        let err = extract_any(&piled).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        // a bad header checksum, a truncated entry: corrupt
        let mut bad = small_tar().to_vec();
        bad[150] ^= 0x10;
        assert!(matches!(extract_any(&bad), Err(Error::Corrupt { .. })));
        let cut = &small_tar()[..2048];
        let err = extract_any(cut).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    }

    #[test]
    fn a_zstd_window_beyond_the_cap_is_refused() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("store")).unwrap();
        let store = Store {
            dir: DirFd::open_root(&t.path().join("store")).unwrap(),
        };
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
        enc.set_parameter(zstd::stream::raw::CParameter::WindowLog(WINDOW_LOG_MAX + 2))
            .unwrap();
        enc.write_all(small_tar()).unwrap();
        let data = enc.finish().unwrap();
        std::fs::write(t.path().join("store").join(ARCHIVE), &data).unwrap();
        let m = Manifest {
            name: "s".into(),
            source_volume_id: "v".into(),
            created_unix: 0,
            created_nanos: 0,
            size_bytes: 1 << 20,
            file_count: 100,
            archive_bytes: data.len() as u64,
            sha256: hex::encode(Sha256::digest(&data)),
            compression: "zstd".into(),
            level: 1,
        };
        let (_, d) = fresh(t.path(), "dst");
        let err = restore(
            &store,
            &m,
            d,
            RestoreOptions::default(),
            &AtomicBool::new(false),
        )
        .unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

            #[test]
            fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..3000)) {
                let _ = extract_any(&data);
            }

            #[test]
            fn mutated_archives_never_panic(
                flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
                cut in any::<prop::sample::Index>(),
                truncate in any::<bool>(),
            ) {
                let mut data = small_tar().to_vec();
                for (i, b) in flips {
                    let i = i.index(data.len());
                    data[i] = b;
                }
                if truncate {
                    data.truncate(cut.index(data.len()));
                }
                let _ = extract_any(&data);
            }

            #[test]
            fn arbitrary_archive_files_fail_cleanly(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
                let t = tempfile::tempdir().unwrap();
                std::fs::create_dir_all(t.path().join("store")).unwrap();
                let store = Store { dir: DirFd::open_root(&t.path().join("store")).unwrap() };
                std::fs::write(t.path().join("store").join(ARCHIVE), &data).unwrap();
                let m = Manifest {
                    name: "s".into(), source_volume_id: "v".into(), created_unix: 0,
                    created_nanos: 0, size_bytes: 1 << 20, file_count: 100,
                    archive_bytes: data.len() as u64,
                    sha256: hex::encode(Sha256::digest(&data)),
                    compression: "zstd".into(), level: 1,
                };
                let (dst, d) = fresh(t.path(), "dst");
                let res = restore(&store, &m, d, RestoreOptions::default(), &AtomicBool::new(false));
                if res.is_err() {
                    prop_assert_eq!(std::fs::read_dir(&dst).unwrap().count(), 0);
                }
            }
        }
    }
}
