#!/bin/bash
# Self-test of the NFS guest harness. Run from the repository root:
#     tests/e2e/nfsvm tests/e2e/selftest.sh
# Proves, inside the guest: NFS v3 and v4.1 mounts of a sub-directory of the
# export, done by a child process of a child process (as a test program that
# runs the driver, which runs mount(8), would); what /proc/self/mountinfo
# shows for them; writes visible across versions and on the server; a bind
# mount of an NFS mount with a read-only remount (what NodePublish does);
# stopping (rpc.nfsd 0) and restarting (rpc.nfsd 8) the server with the
# mounts recovering; umount. Cleans up its mounts and directories.
set -euo pipefail
up() { cut -d' ' -f1 /proc/uptime; }
ms() { awk "BEGIN{printf \"%d\", ($2 - $1) * 1000}"; }
fail() { echo "SELFTEST FAIL: $*"; exit 1; }
[ -n "${NFSVM:-}" ] || fail "run me inside the guest: tests/e2e/nfsvm $0"
echo "guest: $(uname -r), uptime at start $(up)s, cwd $(pwd), NFS_SERVER=$NFS_SERVER NFS_EXPORT=$NFS_EXPORT"

SRC="$NFS_SERVER:$NFS_EXPORT/sub"
W=$(mktemp -d /tmp/selftest.XXXXXX)          # guest-private tmpfs
S3=$W/stage3 S41=$W/stage41 POD=$W/pod
cleanup() {
  local m
  for m in "$POD" "$S41" "$S3"; do
    if mountpoint -q "$m"; then umount "$m" || umount -l "$m"; fi
  done
  rm -rf "$W" "${NFS_EXPORT:?}/sub"
}
trap cleanup EXIT
mkdir -p "$NFS_EXPORT/sub" "$S3" "$S41" "$POD"

# (i) a process that itself runs mount: bash -> bash -c -> mount(8) -> mount.nfs
for v in 3 4.1; do
  d=$W/stage${v/./}
  t0=$(up)
  bash -c 'exec mount -t nfs -o "vers=$1" "$2" "$3"' mount-helper "$v" "$SRC" "$d" \
    || fail "mount vers=$v"
  t1=$(up)
  echo "mount -t nfs vers=$v (from a grandchild process): $(ms "$t0" "$t1") ms"
done

# (iii) what /proc/self/mountinfo shows: fields 5 mount point, 9 fstype, 10 source
mi() { awk -v m="$1" '$5 == m { for (i = 7; $i != "-"; i++); print $(i+1), $(i+2) }' /proc/self/mountinfo; }
echo "mountinfo $S3: $(mi "$S3")"
echo "mountinfo $S41: $(mi "$S41")"
[ "$(mi "$S3")" = "nfs $SRC" ] || fail "mountinfo for v3: $(mi "$S3")"
[ "$(mi "$S41")" = "nfs4 $SRC" ] || fail "mountinfo for v4.1: $(mi "$S41")"
grep -q "vers=3" <<<"$(awk -v m="$S3" '$2 == m {print $4}' /proc/mounts)" || fail "v3 options"
grep -q "vers=4.1" <<<"$(awk -v m="$S41" '$2 == m {print $4}' /proc/mounts)" || fail "v4.1 options"

echo "written-via-v3" > "$S3/f3"
[ "$(cat "$S41/f3")" = written-via-v3 ] || fail "v3 -> v4.1 read"
echo "written-via-v41" > "$S41/f41"
[ "$(cat "$S3/f41")" = written-via-v41 ] || fail "v4.1 -> v3 read"
[ "$(cat "$NFS_EXPORT/sub/f41")" = written-via-v41 ] || fail "server-side read"
t0=$(up); dd if=/dev/zero of="$S41/big" bs=1M count=32 conv=fsync status=none; t1=$(up)
echo "write 32 MiB over v4.1 (fsync): $(ms "$t0" "$t1") ms"
rm -f "$S41/big"
echo "cross-version writes: ok"

# bind mount + read-only remount, as NodePublishVolume does
mount --bind "$S41" "$POD" || fail "bind mount"
echo "mountinfo $POD (bind): $(mi "$POD")"
echo "via-bind" > "$POD/fb"
[ "$(cat "$S3/fb")" = via-bind ] || fail "bind write visible via v3"
mount -o remount,bind,ro "$POD" || fail "ro remount of bind"
if (echo x > "$POD/ro-test") 2>/dev/null; then fail "ro bind writable"; fi
[ "$(cat "$POD/fb")" = via-bind ] || fail "ro bind readable"
touch "$S41/still-rw" || fail "stage mount became read-only"
echo "bind mount + ro remount: ok"
umount "$POD" || fail "umount bind"

# stop and restart the server; the mounts recover
rpc.nfsd 0 || fail "rpc.nfsd 0"
[ "$(cat /proc/fs/nfsd/threads)" = 0 ] || fail "nfsd threads after rpc.nfsd 0"
if timeout 3 stat -f "$S41" >/dev/null 2>&1; then fail "statfs answered with nfsd stopped"; fi
echo "nfsd stopped: statfs on the v4.1 mount hangs (killed after 3 s): ok"
t0=$(up)
rpc.nfsd 8 || fail "rpc.nfsd 8"
[ "$(cat /proc/fs/nfsd/threads)" = 8 ] || fail "nfsd threads after rpc.nfsd 8"
timeout 60 stat -f "$S41" >/dev/null || fail "v4.1 statfs after restart"
timeout 60 sh -c "echo after-restart > '$S41/fr'" || fail "v4.1 write after restart"
timeout 60 cat "$S3/fr" >/dev/null || fail "v3 read after restart"
t1=$(up)
echo "nfsd restarted: v4.1 write + v3 read work again after $(ms "$t0" "$t1") ms"

for d in "$S41" "$S3"; do umount "$d" || fail "umount $d"; done
if awk '$3 ~ /^nfs4?$/ {f = 1} END {exit !f}' /proc/mounts; then fail "nfs mounts left"; fi
echo "guest memory: $(free -m | awk '/Mem:/{print "used " $3 " MiB of " $2 " MiB"}')"
echo "SELFTEST OK (uptime $(up)s)"
