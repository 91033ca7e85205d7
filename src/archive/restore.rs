//! Restores: an archive checked against its manifest (size and SHA-256)
//! before anything is written, then extracted through the bounded reader
//! into a [`Dest`], and removed again when the restore fails.

use std::fs::File;
use std::io::{BufReader, Read};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;
use sha2::{Digest, Sha256};

use super::tree::{self, Dest, Kind};
use super::{ARCHIVE, Error, Manifest, READ_BUF, Result, Store, incremental, index, ioe, reader};
use crate::sys::safefs::DirFd;

/// Largest zstd window a restore accepts (2^24 = 16 MiB; level 19, the
/// highest the driver writes, uses 2^23): a hostile frame header cannot make
/// the decoder allocate more.
pub(super) const WINDOW_LOG_MAX: u32 = 24;
/// Slack over the manifest's data size a restore may write (1 MiB + 1%).
pub(super) const SLACK_BYTES: u64 = 1 << 20;

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
    // An incremental archive is bounded by what it stores itself.
    let (size, count) = match manifest.stored {
        Some(s) => (s.bytes, s.entries),
        None => (manifest.size_bytes, manifest.file_count),
    };
    let slack = size / 100 + SLACK_BYTES;
    let mut bytes = size.saturating_add(slack);
    if capacity > 0 {
        bytes = bytes.min(capacity);
    }
    let entries = count.saturating_add(count / 100 + 16);
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

/// Restores the snapshot of `store` into `dest` (an empty directory): its
/// chain of archives (the full one, then each incremental one in order;
/// one archive for a full snapshot). Every archive is opened once and its
/// size and SHA-256 checked against its manifest before anything is
/// written; each is then extracted from the same descriptor (and hashed
/// again on the way: a file changed meanwhile fails too). On failure,
/// whatever was written is removed. Blocking.
pub fn restore(
    store: &Store,
    manifest: &Manifest,
    dest: DirFd,
    opts: RestoreOptions,
    cancel: &AtomicBool,
) -> Result<(u64, u64)> {
    let chain = super::chain::resolve(store, manifest)?;
    let mut files = Vec::with_capacity(chain.len());
    for (dir, m) in &chain {
        let t = std::time::Instant::now();
        files.push(open_checked(dir, m, cancel)?);
        tracing::debug!(snapshot = %m.name, bytes = m.archive_bytes, ms = t.elapsed().as_millis() as u64, "restore step: archive verified");
    }
    let root = dest;
    let res = (|| {
        let (mut n, mut bytes) = (0u64, 0u64);
        let last = chain.len() - 1;
        for (i, ((file, path), (_, m))) in files.iter().zip(&chain).enumerate() {
            // An earlier tree of the chain may be larger than the last
            // (files deleted since): each earlier step is bounded by its
            // own tree's size where that exceeds the capacity.
            let mut opts = opts;
            if opts.capacity > 0 && i < last {
                opts.capacity = opts.capacity.max(m.size_bytes);
            }
            // Earlier archives skip what the restored snapshot holds in
            // another version (or not at all), where both indexes say so.
            let skip = if i < last {
                superseded(&chain[i], &chain[last])
            } else {
                None
            };
            let t = std::time::Instant::now();
            let (a, b) = extract_checked(file, path, m, root.try_clone()?, opts, skip, cancel)?;
            tracing::debug!(snapshot = %m.name, entries = a, bytes = b, ms = t.elapsed().as_millis() as u64, "restore step: archive extracted");
            n += a;
            bytes += b;
        }
        Ok((n, bytes))
    })();
    if res.is_err()
        && let Err(e) = empty_dir(&root)
    {
        tracing::error!(error = %e, "cannot remove what a failed restore wrote");
    }
    res
}

/// The filter of an earlier archive of a chain against the last one:
/// `None` (every entry written) when either index is missing or unusable.
fn superseded(own: &(DirFd, Manifest), last: &(DirFd, Manifest)) -> Option<index::Superseded> {
    let open = |(dir, m): &(DirFd, Manifest)| {
        let info = m.index.as_ref()?;
        match index::open_index(dir, info) {
            Ok(r) => Some(index::Lookup::new(r)),
            Err(e) => {
                tracing::debug!(snapshot = %m.name, error = %e, "index not used by the restore");
                None
            }
        }
    };
    Some(index::Superseded {
        own: open(own)?,
        last: open(last)?,
    })
}

/// Opens the archive in `dir` and checks its size and SHA-256 against
/// `manifest`; returns it with its path (for messages).
fn open_checked(dir: &DirFd, manifest: &Manifest, cancel: &AtomicBool) -> Result<(File, String)> {
    let path = dir.path().join(ARCHIVE).display().to_string();
    let fd = openat(
        dir.fd(),
        ARCHIVE,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        Mode::empty(),
    )
    .map_err(|e| Error::Io {
        what: format!("open {path}"),
        source: e.into(),
    })?;
    let file = File::from(fd);
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
    Ok((file, path))
}

/// Extracts a checked archive into `dest`, hashing it again on the way.
fn extract_checked(
    mut file: &File,
    path: &str,
    manifest: &Manifest,
    dest: DirFd,
    opts: RestoreOptions,
    skip: Option<index::Superseded>,
    cancel: &AtomicBool,
) -> Result<(u64, u64)> {
    use std::io::{Seek, SeekFrom};
    let want = manifest.archive_bytes;
    file.seek(SeekFrom::Start(0)).map_err(ioe("seek archive"))?;
    let hashing = HashingReader {
        inner: file.take(want),
        hash: Sha256::new(),
    };
    let mut decoder =
        zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(1 << 20, hashing))
            .map_err(ioe("zstd"))?;
    decoder
        .window_log_max(WINDOW_LOG_MAX)
        .map_err(ioe("zstd window"))?;
    let (bytes, entries) = restore_limits(manifest, opts.capacity);
    let out = extract_filtered(
        &mut decoder,
        Dest::new(dest, opts.policy).limits(bytes, entries),
        skip,
        cancel,
    )?;
    // The rest of the file, raw (whatever follows the tar stream is not
    // decompressed), completes the second hash.
    let mut rest = decoder.finish();
    std::io::copy(&mut rest, &mut std::io::sink()).map_err(ioe("read archive"))?;
    let again = hex::encode(rest.into_inner().hash.finalize());
    if again != manifest.sha256 {
        return Err(Error::Checksum {
            path: path.to_string(),
            got: again,
            want: tree::show(manifest.sha256.as_bytes()),
        });
    }
    Ok(out)
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
pub fn extract(src: &mut dyn Read, dest: Dest, cancel: &AtomicBool) -> Result<(u64, u64)> {
    extract_filtered(src, dest, None, cancel)
}

/// [`extract`], leaving out the entries `skip` says are superseded (their
/// data is read past, not written).
fn extract_filtered(
    src: &mut dyn Read,
    mut dest: Dest,
    mut skip: Option<index::Superseded>,
    cancel: &AtomicBool,
) -> Result<(u64, u64)> {
    use std::io::{Seek, SeekFrom};
    let cancelled = || cancel.load(Ordering::Relaxed);
    let mut archive = reader::Reader::new(src);
    let mut stored = 0u64;
    let mut listed = 0u64;
    while let Some(e) = archive.next_entry(&cancelled)? {
        if cancelled() {
            return Err(tree::Error::Cancelled.into());
        }
        // Directory listings are not file data: bounded on their own (by
        // the same figure), so they never eat into the capacity.
        let (count, what) = if e.kind.as_byte() == incremental::DUMPDIR {
            (&mut listed, "bytes of directory listings")
        } else {
            (&mut stored, "bytes of file data")
        };
        *count = count.saturating_add(e.stored);
        if *count > dest.max_bytes() {
            return Err(tree::Error::OverLimit {
                what,
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
        if let Some(f) = skip.as_mut() {
            let is_dir = e.kind == T::Directory || e.kind.as_byte() == incremental::DUMPDIR;
            let norm = tree::components(path)?.join(&b'/');
            if is_dir {
                f.enter(&norm);
            } else if e.kind != T::Link && f.skip(&norm) {
                continue;
            }
        }
        match e.kind {
            T::Directory => dest.dir(path, e.meta.clone())?,
            k if k.as_byte() == incremental::DUMPDIR => {
                // A GNU dumpdir: the directory, then what it no longer
                // holds removed (see `incremental`).
                if e.stored > incremental::MAX_DUMPDIR {
                    return Err(Error::Refused {
                        reason: format!(
                            "a directory listing of {} bytes at {} (at most {})",
                            e.stored,
                            tree::show(path),
                            incremental::MAX_DUMPDIR
                        ),
                    });
                }
                let mut data = Vec::with_capacity(e.stored as usize);
                archive.data().read_to_end(&mut data).map_err(copy_err)?;
                let listing = incremental::Dumpdir::parse(data, path)?;
                dest.dir(path, e.meta.clone())?;
                dest.purge(path, &|name, is_dir| listing.keeps(name, is_dir))?;
            }
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
