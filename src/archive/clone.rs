//! Clones: a volume's tree copied into a new one with the same fidelity as
//! an archive round trip, file data copied by worker threads.
//!
//! A file's data is copied by the cheapest means the filesystem offers
//! (`copy_data`), in this order:
//! 1. `FICLONE` of the whole file: a reflink, no data copied (XFS with
//!    `reflink=1`, btrfs). On an NFSv4.2 mount the client sends one CLONE
//!    and the server shares the extents if its filesystem can.
//! 2. `copy_file_range` of each data extent (found with SEEK_DATA and
//!    SEEK_HOLE, so holes stay holes), [`RANGE_CHUNK`] at a time: on an
//!    NFSv4.2 mount each call is a server-side COPY (no file data crosses
//!    the network), locally an in-kernel copy.
//! 3. read and write, only where copy_file_range refuses (EXDEV, EOPNOTSUPP,
//!    ENOSYS, EINVAL: across filesystems, old kernels), whole zero pages
//!    skipped so that holes stay holes. A sparse file on a filesystem that
//!    reports no holes (NFSv3 and v4.1 have no SEEK) goes this way too: a
//!    blind copy_file_range would fill its holes with zeros. Such a file
//!    looks like one extent taking less room than its size, as a
//!    compressed file (ZFS, btrfs) does on a filesystem that does report
//!    holes; the new file, extended to the size, tells them apart: where
//!    holes are reported, SEEK_DATA finds no data in it.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use nix::errno::Errno;
use nix::sys::stat::FileStat;
use nix::unistd::{Whence, lseek};

use super::tree::{self, Dest, Kind, Links, Meta};
use super::{Error, Result};
use crate::sys::safefs::DirFd;

/// copy_file_range's request size: large, so that an NFSv4.2 client sends
/// few COPY operations (the server may still answer each with less).
pub const RANGE_CHUNK: usize = 64 << 20;

/// Copies the tree below `src` into `dest` with the same fidelity as an
/// archive round trip: file data through `workers` threads (reflink, else
/// copy_file_range of the data extents, else read/write; holes kept).
/// Returns the files and bytes of the new tree. Blocking.
pub fn clone_tree(
    src: &DirFd,
    dest: Dest,
    workers: usize,
    cancel: &AtomicBool,
) -> Result<(u64, u64)> {
    let how = Copied::default();
    let done = clone_with(src, dest, workers, cancel, &Calls::REAL, &how)?;
    tracing::info!(
        reflinked_files = how.reflinked.load(Ordering::Relaxed),
        copy_file_range_bytes = how.ranged.load(Ordering::Relaxed),
        read_write_bytes = how.read_write.load(Ordering::Relaxed),
        "clone copied its file data"
    );
    Ok(done)
}

/// How a clone's file data was copied.
#[derive(Debug, Default)]
pub(crate) struct Copied {
    /// Files copied whole by FICLONE.
    pub reflinked: AtomicU64,
    /// Bytes copied by copy_file_range.
    pub ranged: AtomicU64,
    /// Bytes read and written (zero pages skipped are not counted).
    pub read_write: AtomicU64,
}

type Ficlone = dyn Fn(&File, &File) -> nix::Result<()> + Sync;
type CopyRange = dyn Fn(&File, i64, &File, i64, usize) -> nix::Result<usize> + Sync;
type Extents = dyn Fn(&File, i64) -> std::io::Result<Vec<(i64, i64)>> + Sync;
type Holes = dyn Fn(&File, i64) -> bool + Sync;

/// The kernel calls a file's copy is made of; tests replace them with fakes
/// that refuse, to drive the fallbacks.
pub(crate) struct Calls<'a> {
    /// FICLONE of `src` into `dst`, the whole file.
    pub ficlone: &'a Ficlone,
    /// copy_file_range of up to `len` bytes at the same offset in both.
    pub copy_range: &'a CopyRange,
    /// The data extents of a file of the size given.
    pub extents: &'a Extents,
    /// Whether the filesystem of a new, empty file reports holes (the file
    /// is extended to the size given).
    pub reports_holes: &'a Holes,
}

impl Calls<'static> {
    pub(crate) const REAL: Calls<'static> = Calls {
        ficlone: &ficlone,
        copy_range: &copy_range,
        extents: &extents,
        reports_holes: &reports_holes,
    };
}

/// [`clone_tree`] with the copy calls given, counting in `how`.
pub(crate) fn clone_with(
    src: &DirFd,
    dest: Dest,
    workers: usize,
    cancel: &AtomicBool,
    calls: &Calls<'_>,
    how: &Copied,
) -> Result<(u64, u64)> {
    let dest = std::sync::Mutex::new(dest);
    let (tx, rx) = std::sync::mpsc::sync_channel::<(File, File, FileStat, Meta, Vec<u8>)>(64);
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
                    let Ok((src, dst, st, meta, path)) = job else {
                        return;
                    };
                    let size = st.st_size.max(0) as u64;
                    let halt = || cancel.load(Ordering::Relaxed) || stop.load(Ordering::Relaxed);
                    let res = copy_data(&src, &dst, &st, calls, how, &halt).map_err(|e| {
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
                            tx.send((f, out, st, meta, v.path.to_vec()))
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

/// Copies a file's data (`st`: the source's stat when it was opened; its
/// size is what is copied): FICLONE, else copy_file_range of each data
/// extent, else read/write of it, holes kept. See the module's doc.
fn copy_data(
    src: &File,
    dst: &File,
    st: &FileStat,
    calls: &Calls<'_>,
    how: &Copied,
    cancel: &dyn Fn() -> bool,
) -> std::io::Result<()> {
    let size = st.st_size.max(0);
    if size == 0 {
        return Ok(());
    }
    if (calls.ficlone)(src, dst).is_ok() {
        how.reflinked.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    let extents = (calls.extents)(src, size)?;
    // One extent over the whole of a file that takes less room than its
    // size: compressed, or on a filesystem that does not tell its holes;
    // then find them by reading.
    let blind = matches!(extents.as_slice(), [(0, end)] if *end == size)
        && st.st_blocks.saturating_mul(512) < size
        && !(calls.reports_holes)(dst, size);
    let mut ranged = !blind;
    for (start, end) in extents {
        let mut pos = start;
        while pos < end {
            if cancel() {
                return Err(tree::cancelled());
            }
            if ranged {
                let want = ((end - pos) as u64).min(RANGE_CHUNK as u64) as usize;
                match (calls.copy_range)(src, pos, dst, pos, want) {
                    Ok(0) => break, // the file shrank under us
                    Ok(n) => {
                        pos += n as i64;
                        how.ranged.fetch_add(n as u64, Ordering::Relaxed);
                        continue;
                    }
                    Err(Errno::EINTR) => continue,
                    Err(Errno::EXDEV | Errno::EOPNOTSUPP | Errno::ENOSYS | Errno::EINVAL) => {
                        ranged = false;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            let n = copy_rw(src, dst, pos, end, cancel)?;
            how.read_write.fetch_add(n, Ordering::Relaxed);
            break;
        }
    }
    Ok(())
}

/// The data extents `[start, end)` of a file of `size` bytes, by SEEK_DATA
/// and SEEK_HOLE; the whole file where the filesystem cannot tell.
fn extents(src: &File, size: i64) -> std::io::Result<Vec<(i64, i64)>> {
    let mut out = Vec::new();
    let mut off = 0;
    while off < size {
        let start = match lseek(src.as_fd(), off, Whence::SeekData) {
            Ok(d) => d,
            Err(Errno::ENXIO) => break, // only a hole remains
            Err(Errno::EINVAL | Errno::EOPNOTSUPP | Errno::ENOSYS) if out.is_empty() => {
                return Ok(vec![(0, size)]);
            }
            Err(e) => return Err(e.into()),
        };
        if start >= size {
            break;
        }
        let end = match lseek(src.as_fd(), start, Whence::SeekHole) {
            Ok(h) => h.min(size),
            Err(Errno::ENXIO) => break, // shrank under us
            Err(_) => size,
        };
        if end <= start {
            break;
        }
        out.push((start, end));
        off = end;
    }
    Ok(out)
}

/// Whether `dst`'s filesystem reports holes: `dst` (new and empty) is
/// extended to `size`, one hole where holes are reported, so SEEK_DATA
/// finds no data (ENXIO); elsewhere the whole file reads as data.
fn reports_holes(dst: &File, size: i64) -> bool {
    nix::unistd::ftruncate(dst.as_fd(), size).is_ok()
        && matches!(lseek(dst.as_fd(), 0, Whence::SeekData), Err(Errno::ENXIO))
}

fn ficlone(src: &File, dst: &File) -> nix::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: FICLONE takes the source descriptor as its argument; both are
    // open files borrowed for the call.
    let r = unsafe { nix::libc::ioctl(dst.as_raw_fd(), nix::libc::FICLONE, src.as_raw_fd()) };
    Errno::result(r).map(drop)
}

fn copy_range(src: &File, off_in: i64, dst: &File, off_out: i64, len: usize) -> nix::Result<usize> {
    let (mut i, mut o) = (off_in, off_out);
    nix::fcntl::copy_file_range(src.as_fd(), Some(&mut i), dst.as_fd(), Some(&mut o), len)
}

/// Reads `src` from `from` to `to` and writes it at the same offsets of
/// `dst`, leaving whole zero pages as holes. Returns the bytes read.
fn copy_rw(
    src: &File,
    dst: &File,
    from: i64,
    to: i64,
    cancel: &dyn Fn() -> bool,
) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    /// `src` read at explicit offsets up to `to`, never past it.
    struct At<'a> {
        file: &'a File,
        pos: u64,
        to: u64,
    }
    impl std::io::Read for At<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            use std::os::unix::fs::FileExt;
            let want = (self.to.saturating_sub(self.pos)).min(buf.len() as u64) as usize;
            if want == 0 {
                return Ok(0);
            }
            let n = self.file.read_at(&mut buf[..want], self.pos)?;
            self.pos += n as u64;
            Ok(n)
        }
    }
    let mut out = dst.try_clone()?;
    out.seek(SeekFrom::Start(from as u64))?;
    let mut input = At {
        file: src,
        pos: from as u64,
        to: to as u64,
    };
    tree::copy_sparse(&mut input, &mut out, cancel)
}

#[cfg(test)]
mod tests;
