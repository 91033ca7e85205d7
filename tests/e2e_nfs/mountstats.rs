//! The NFS client's per-operation counters of one mount, from
//! `/proc/self/mountstats`: how many READ, WRITE, COPY, CLONE... it sent and
//! the bytes they carried. Counters are per superblock, so every mount of
//! the same export with the same options counts together.
//! (Also used by benches/nfs_clone.rs, through `#[path]`.)

use std::collections::HashMap;
use std::path::Path;

/// One operation's counters: a line `NAME: ops transmissions timeouts
/// bytes_sent bytes_recv queue rtt execute [errors]` of the per-op section.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Op {
    pub ops: u64,
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    pub errors: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpStats(pub HashMap<String, Op>);

impl OpStats {
    /// The counters of the NFS mount at `mount_point`, as this process sees
    /// it (its mount namespace).
    pub fn of_mount(mount_point: &Path) -> Option<OpStats> {
        let text = std::fs::read_to_string("/proc/self/mountstats").ok()?;
        OpStats::parse(&text, mount_point)
    }

    /// The counters of the mount at `mount_point` in a mountstats text.
    pub fn parse(text: &str, mount_point: &Path) -> Option<OpStats> {
        let want = mount_point.to_str()?;
        let mut lines = text.lines();
        lines.by_ref().find(|l| {
            l.starts_with("device ")
                && l.split_once(" mounted on ")
                    .and_then(|(_, rest)| rest.split_once(" with fstype "))
                    .is_some_and(|(mp, _)| mp == want)
        })?;
        let mut ops = HashMap::new();
        let mut in_ops = false;
        for l in lines.take_while(|l| !l.starts_with("device ")) {
            let l = l.trim();
            if l == "per-op statistics" {
                in_ops = true;
                continue;
            }
            let Some((name, nums)) = l.split_once(':').filter(|_| in_ops) else {
                continue;
            };
            let n: Vec<u64> = nums
                .split_whitespace()
                .map_while(|x| x.parse().ok())
                .collect();
            if n.len() >= 8 {
                let op = Op {
                    ops: n[0],
                    bytes_sent: n[3],
                    bytes_recv: n[4],
                    errors: n.get(8).copied().unwrap_or(0),
                };
                ops.insert(name.trim().to_string(), op);
            }
        }
        Some(OpStats(ops))
    }

    /// One operation's counters (zero if the mount does not list it).
    pub fn op(&self, name: &str) -> Op {
        self.0.get(name).copied().unwrap_or_default()
    }

    /// What was counted since `before`.
    pub fn since(&self, before: &OpStats) -> OpStats {
        let mut out = HashMap::new();
        for (name, now) in &self.0 {
            let was = before.op(name);
            out.insert(
                name.clone(),
                Op {
                    ops: now.ops.saturating_sub(was.ops),
                    bytes_sent: now.bytes_sent.saturating_sub(was.bytes_sent),
                    bytes_recv: now.bytes_recv.saturating_sub(was.bytes_recv),
                    errors: now.errors.saturating_sub(was.errors),
                },
            );
        }
        OpStats(out)
    }

    /// Bytes received by READ operations (file data read over the network).
    pub fn read_bytes(&self) -> u64 {
        self.op("READ").bytes_recv
    }

    /// Bytes sent by WRITE operations (file data written over the network).
    pub fn write_bytes(&self) -> u64 {
        self.op("WRITE").bytes_sent
    }

    /// Operations `name` that succeeded.
    pub fn ok_ops(&self, name: &str) -> u64 {
        let o = self.op(name);
        o.ops.saturating_sub(o.errors)
    }

    /// One line for a log: READ/WRITE bytes, COPY/CLONE/SEEK operations.
    pub fn summary(&self) -> String {
        let c = |n: &str| {
            let o = self.op(n);
            format!("{n} {} ops ({} failed)", o.ops, o.errors)
        };
        format!(
            "READ {} B, WRITE {} B, {}, {}, {}",
            self.read_bytes(),
            self.write_bytes(),
            c("COPY"),
            c("CLONE"),
            c("SEEK")
        )
    }
}

#[test]
fn mountstats_of_one_mount_are_read_and_subtracted() {
    // the format of a 6.1 kernel (statvers=1.1, errors as the 9th number)
    let text = "\
device rootfs mounted on / with fstype rootfs
device 127.0.0.1:/srv/reflink mounted on /mnt/a with fstype nfs4 statvers=1.1
\topts:\trw,vers=4.2,rsize=131072
\tper-op statistics
\t        READ: 4 4 0 920 1049188 0 10 12 0
\t       WRITE: 2 2 0 65900 300 1 2 3 0
\t       CLONE: 3 3 0 768 552 0 92 92 1
device 127.0.0.1:/srv/export mounted on /mnt/b with fstype nfs4 statvers=1.1
\tper-op statistics
\t        READ: 256 256 0 46080 33581056 13 137 231 0
";
    let a = OpStats::parse(text, Path::new("/mnt/a")).unwrap();
    assert_eq!(a.read_bytes(), 1049188);
    assert_eq!(a.write_bytes(), 65900);
    assert_eq!(a.ok_ops("CLONE"), 2);
    assert_eq!(a.op("COPY"), Op::default());
    let b = OpStats::parse(text, Path::new("/mnt/b")).unwrap();
    assert_eq!(b.read_bytes(), 33581056);
    assert_eq!(b.op("CLONE"), Op::default(), "another mount's counters");
    assert!(OpStats::parse(text, Path::new("/mnt")).is_none());
    let d = a.since(
        &OpStats::parse(
            &text.replace("READ: 4 4 0 920 1049188", "READ: 1 1 0 230 49188"),
            Path::new("/mnt/a"),
        )
        .unwrap(),
    );
    assert_eq!((d.op("READ").ops, d.read_bytes()), (3, 1_000_000));
    assert_eq!(d.op("WRITE"), Op::default());
}
