//! Incremental archives: what changed since the parent snapshot, and the
//! GNU "dumpdir" listing each directory carries.
//!
//! An incremental archive holds every directory as a GNU tar `D` entry
//! whose data lists the directory's entries, one per record: a code byte,
//! the name, a NUL; an empty record ends the list. `Y`: the entry is in
//! this archive; `N`: unchanged, kept from the parent; `D`: a
//! subdirectory. A restore (ours, or GNU tar's `--listed-incremental`)
//! removes what a directory's listing does not name (and a directory the
//! listing calls a file, or the reverse) before extracting what follows.
//!
//! Safety assumptions: a dumpdir from an archive is hostile: its size is
//! bounded ([`MAX_DUMPDIR`]), and every name must be one path component
//! (no `/`, not `.` or `..`, at most 255 bytes); codes other than `Y`, `N`
//! and `D` (GNU's renames) are refused.

use nix::sys::stat::FileStat;

use super::index::Rec;
use super::tree::{self, Kind};
use super::{Error, Result};

/// The tar type flag of a GNU dumpdir entry.
pub const DUMPDIR: u8 = b'D';
/// Largest directory listing a restore reads (and an archive writes): some
/// 500,000 entries of 30-byte names.
pub const MAX_DUMPDIR: u64 = 16 << 20;

/// Whether an entry must be stored again: new, another inode, or any of
/// size, times, mode and owner changed. Files with several links are
/// always stored, so that their links are rebuilt together.
pub fn changed(old: Option<&Rec>, st: &FileStat) -> bool {
    let k = tree::kind(st);
    let Some(old) = old else {
        return true;
    };
    if k == Kind::File && st.st_nlink > 1 {
        return true;
    }
    !old.same(&Rec::from_stat(&old.name, st))
}

/// Appends one dumpdir record.
pub fn push(dumpdir: &mut Vec<u8>, code: u8, name: &[u8]) {
    dumpdir.push(code);
    dumpdir.extend_from_slice(name);
    dumpdir.push(0);
}

fn refused(reason: String) -> Error {
    Error::Refused { reason }
}

/// A parsed dumpdir: the raw bytes and, sorted by name, where each record
/// is (offset and length of the name, code).
pub struct Dumpdir {
    data: Vec<u8>,
    names: Vec<(u32, u32, u8)>,
}

impl Dumpdir {
    pub fn parse(data: Vec<u8>, dir: &[u8]) -> Result<Dumpdir> {
        if data.len() as u64 > MAX_DUMPDIR {
            return Err(refused(format!(
                "a directory listing of {} bytes at {} (at most {MAX_DUMPDIR})",
                data.len(),
                tree::show(dir)
            )));
        }
        let bad = |why: &str| Error::Corrupt {
            reason: format!("directory listing of {}: {why}", tree::show(dir)),
        };
        let mut names = Vec::new();
        let mut pos = 0usize;
        loop {
            let Some(&code) = data.get(pos) else {
                return Err(bad("unterminated"));
            };
            if code == 0 {
                break;
            }
            let start = pos + 1;
            let Some(len) = data[start..].iter().position(|b| *b == 0) else {
                return Err(bad("unterminated"));
            };
            let name = &data[start..start + len];
            if name.is_empty() || name.len() > 255 || name == b"." || name == b".." {
                return Err(refused(format!(
                    "a bad name {:?} in the listing of {}",
                    tree::show(name),
                    tree::show(dir)
                )));
            }
            if name.contains(&b'/') {
                return Err(refused(format!(
                    "a name with '/' ({}) in the listing of {}",
                    tree::show(name),
                    tree::show(dir)
                )));
            }
            if !matches!(code, b'Y' | b'N' | b'D') {
                return Err(refused(format!(
                    "a listing code {:?} in {} (renames are not supported)",
                    code as char,
                    tree::show(dir)
                )));
            }
            names.push((start as u32, len as u32, code));
            pos = start + len + 1;
        }
        let mut d = Dumpdir { data, names };
        let data = std::mem::take(&mut d.data);
        d.names
            .sort_by(|a, b| name_of(&data, a).cmp(name_of(&data, b)));
        d.data = data;
        Ok(d)
    }

    /// Whether a restore keeps an entry found on disk.
    pub fn keeps(&self, name: &[u8], is_dir: bool) -> bool {
        let found = self
            .names
            .binary_search_by(|r| name_of(&self.data, r).cmp(name));
        match found {
            Err(_) => false,
            Ok(i) => match self.names[i].2 {
                b'D' => is_dir,
                b'Y' => !is_dir,
                _ => true,
            },
        }
    }
}

fn name_of<'d>(data: &'d [u8], r: &(u32, u32, u8)) -> &'d [u8] {
    &data[r.0 as usize..(r.0 + r.1) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dumpdirs_are_parsed_and_hostile_ones_refused() {
        let mut dd = Vec::new();
        push(&mut dd, b'Y', b"new");
        push(&mut dd, b'N', b"kept");
        push(&mut dd, b'D', b"sub");
        dd.push(0);
        let d = Dumpdir::parse(dd, b"x").unwrap();
        assert!(d.keeps(b"new", false) && !d.keeps(b"new", true));
        assert!(d.keeps(b"kept", false) && d.keeps(b"kept", true));
        assert!(d.keeps(b"sub", true) && !d.keeps(b"sub", false));
        assert!(!d.keeps(b"gone", false));
        for bad in [
            &b"Ya/b\0\0"[..],
            b"Y..\0\0",
            b"Y.\0\0",
            b"Y\0\0",
            b"Rold\0Tnew\0\0",
        ] {
            let e = Dumpdir::parse(bad.to_vec(), b"x").err().unwrap();
            assert!(matches!(e, Error::Refused { .. }), "{bad:?}: {e}");
        }
        for bad in [&b"Yname"[..], b"Yname\0", b""] {
            let e = Dumpdir::parse(bad.to_vec(), b"x").err().unwrap();
            assert!(matches!(e, Error::Corrupt { .. }), "{bad:?}: {e}");
        }
        let mut long = b"Y".to_vec();
        long.extend(std::iter::repeat_n(b'a', 256));
        long.extend_from_slice(b"\0\0");
        assert!(Dumpdir::parse(long, b"x").is_err());
        let huge = vec![b'Y'; MAX_DUMPDIR as usize + 1];
        let e = Dumpdir::parse(huge, b"x").err().unwrap();
        assert!(matches!(e, Error::Refused { .. }), "{e}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Any bytes: parsed or refused, never a panic; what parses keeps
        /// only plain names it listed.
        #[test]
        fn any_listing_is_parsed_or_refused(
            data in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::prelude::Just(0u8),
                    proptest::prelude::Just(b'Y'),
                    proptest::prelude::Just(b'N'),
                    proptest::prelude::Just(b'D'),
                    proptest::prelude::Just(b'/'),
                    proptest::prelude::Just(b'.'),
                    proptest::prelude::any::<u8>(),
                ],
                0..64,
            ),
            probe in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..8),
        ) {
            if let Ok(d) = Dumpdir::parse(data.clone(), b"x")
                && (d.keeps(&probe, false) || d.keeps(&probe, true))
            {
                let mut listed = data.split(|b| *b == 0).map(|r| r.get(1..).unwrap_or(&[]));
                proptest::prop_assert!(listed.any(|n| n == probe.as_slice()));
                proptest::prop_assert!(!probe.contains(&b'/') && probe != b".." && probe != b".");
            }
        }
    }
}
