//! Clones: a volume's tree copied into a new one with the same fidelity as
//! an archive round trip, file data copied by worker threads.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};

use super::tree::{self, Dest, Kind, Links, Meta};
use super::{Error, Result};
use crate::sys::safefs::DirFd;

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
