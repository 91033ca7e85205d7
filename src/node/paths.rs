//! Paths from node requests: checked as strings here, then opened by
//! descriptor below the kubelet directory (`sys::hostpath`).

use std::path::PathBuf;

use crate::storage::ids::absolute_path;
use crate::sys::hostpath::{self, HostPath};

use super::*;

/// Runs `work` on the directory at `hp`, created if missing; a directory
/// this call created is removed again when `work` fails, so a refused or
/// failed mount leaves nothing behind.
pub(super) fn with_dir<T>(
    hp: &HostPath,
    work: impl FnOnce(&hostpath::HostDir) -> Result<T>,
) -> Result<T> {
    let (dir, created) = hp.dir_or_create()?;
    let out = work(&dir);
    drop(dir);
    if out.is_err() && created {
        let _ = hp.remove_dir();
    }
    out
}

impl NodeService {
    /// Validates a path from a request: absolute, no `.`, `..` or empty
    /// components, strictly below the kubelet directory. Symlinks are
    /// checked when the path is opened (see `hostpath`).
    pub(super) fn path(&self, what: &'static str, s: &str) -> Result<PathBuf> {
        if s.is_empty() {
            return Err(Error::Missing(what));
        }
        let p = absolute_path(what, s)?;
        hostpath::check_below(&self.base(), &p)?;
        Ok(p)
    }
}
