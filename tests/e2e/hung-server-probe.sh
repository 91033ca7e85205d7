#!/bin/bash
# Measures what a stopped NFS server looks like to clients in the guest:
#     tests/e2e/nfsvm tests/e2e/hung-server-probe.sh
# For each case: mount, stop nfsd (rpc.nfsd 0), time `timeout 10 stat -f`
# (statvfs) and an unmount variant, restart nfsd (rpc.nfsd 8) and clean up.
# Also tries a raw mount(2)/umount2(2) without mount.nfs (as a driver that
# calls the syscall itself would), if /usr/bin/python3 exists.
# Informational: prints a table, exits non-zero only if cleanup fails.
set -uo pipefail
up() { cut -d' ' -f1 /proc/uptime; }
ms() { awk "BEGIN{printf \"%d\", ($2 - $1) * 1000}"; }
[ -n "${NFSVM:-}" ] || { echo "run me inside the guest: tests/e2e/nfsvm $0"; exit 2; }
W=$(mktemp -d /tmp/probe.XXXXXX)
mkdir -p "$NFS_EXPORT/probe"
SRC="$NFS_SERVER:$NFS_EXPORT/probe"

# timed CMD...: prints "<ms> ms, exit <rc>"
timed() {
  local t0 t1 rc
  t0=$(up); "$@" >/dev/null 2>"$W/err"; rc=$?; t1=$(up)
  printf '%5d ms, exit %3d %s' "$(ms "$t0" "$t1")" "$rc" "$(head -c 80 "$W/err" | tr '\n' ' ')"
}
server_up() {
  local t0; t0=$(up)
  rpc.nfsd 8
  # wait until a fresh statfs on the export answers again (recovery)
  for _ in $(seq 1 60); do
    if mountpoint -q "$W/ctl" && timeout 5 stat -f "$W/ctl" >/dev/null 2>&1; then
      printf '%-43s rpc.nfsd 8: statvfs answers again after %d ms\n' "" "$(ms "$t0" "$(up)")"
      return 0
    fi
    sleep 0.5
  done
  echo "server did not come back"; return 1
}
mkdir -p "$W/ctl"
mount -t nfs -o vers=4.2 "$NFS_SERVER:$NFS_EXPORT" "$W/ctl" || exit 1

# case NAME MOUNT-OPTIONS UNMOUNT-COMMAND...
case_() {
  local name=$1 opts=$2 mp="$W/$1"; shift 2
  mkdir -p "$mp"
  mount -t nfs -o "$opts" "$SRC" "$mp" || { echo "$name: mount -o $opts failed"; return 1; }
  echo data > "$mp/file"
  rpc.nfsd 0
  printf '%-10s %-32s statvfs: %s\n' "$name" "$opts" "$(timed timeout 10 stat -f "$mp")"
  printf '%-10s %-32s %s: %s\n' "$name" "" "$*" "$(timed timeout 20 "$@" "$mp")"
  server_up
  if mountpoint -q "$mp"; then timeout 60 umount "$mp" || umount -l "$mp"; fi
  rmdir "$mp" 2>/dev/null
}

echo "nfsd stopped with rpc.nfsd 0 (rpcbind and mountd keep running):"
case_ hard41    vers=4.1                          umount -l
case_ hard41f   vers=4.1                          umount -f
case_ hard41p   vers=4.1                          umount
case_ hard3     vers=3                            umount -l
case_ hard3p    vers=3                            umount
case_ hard3f    vers=3                            umount -f
case_ soft41    vers=4.1,soft,timeo=10,retrans=1  umount -f
case_ soft41b   vers=4.1,soft,timeo=20,retrans=2  umount -l
case_ soft3     vers=3,soft,timeo=10,retrans=1    umount -f

if [ -x /usr/bin/python3 ]; then
  echo "raw mount(2) of nfs without mount.nfs (a driver calling the syscall):"
  mkdir -p "$W/raw"
  /usr/bin/python3 - "$NFS_SERVER" "$NFS_EXPORT/probe" "$W/raw" <<'EOF'
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
server, path, target = sys.argv[1:]
for fstype, data in [("nfs4", f"vers=4.1,addr={server}"),
                     ("nfs", f"vers=4.1,addr={server}"),
                     ("nfs", f"vers=3,addr={server},mountaddr={server},nolock")]:
    rc = libc.mount(f"{server}:{path}".encode(), target.encode(), fstype.encode(), 0, data.encode())
    err = os.strerror(ctypes.get_errno()) if rc else "ok"
    line = [l.split() for l in open("/proc/self/mountinfo") if l.split()[4] == target]
    shown = " ".join(line[0][line[0].index("-") + 1:][:2]) if line else "-"
    print(f"  mount(2) type={fstype} data={data}: {err}; mountinfo: {shown}")
    if rc == 0:
        rc = libc.umount2(target.encode(), 0)
        print(f"  umount2: {'ok' if rc == 0 else os.strerror(ctypes.get_errno())}")
EOF
  rmdir "$W/raw"
fi

umount "$W/ctl"; rm -rf "$W" "${NFS_EXPORT:?}/probe"
if awk '$3 ~ /^nfs4?$/ {f = 1} END {exit !f}' /proc/mounts; then echo "nfs mounts left:"; grep nfs /proc/mounts; exit 1; fi
echo "probe done"
