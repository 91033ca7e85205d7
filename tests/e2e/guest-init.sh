#!/bin/sh
# PID 1 inside the user-mode-linux guest started by tests/e2e/nfsvm.
#
# Stage 1 runs on the host's / (hostfs). knfsd cannot export through a hostfs
# root (no export_operations), and the NFSv4 pseudo-root needs "/" exportable,
# so stage 1 builds a tmpfs root, mounts every top-level host directory
# read-only into it at the same path (hostfs), pivots into it and re-executes
# itself as stage 2, which starts the NFS server and runs the command.
# Writable in the guest: the host working directory (hostfs rw, same path),
# the run directory, and guest-only tmpfs: / /tmp /var /run /srv /mnt.
#
# Kernel command-line variables arrive as environment variables:
#   nfsvm_run      host run directory holding `cmd`; receives rc, t_*, logs
#   nfsvm_cwd      host working directory
#   nfsvm_verbose  non-empty: progress on stderr
#   nfsvm_out_tty, nfsvm_err_tty  non-empty: host stdout/stderr is a terminal
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
RUN=${nfsvm_run:-}
up() { cut -d' ' -f1 /proc/uptime; }
log() { if [ -n "${nfsvm_verbose:-}" ]; then echo "nfsvm[guest $(up)s]: $*" >/dev/tty2; fi; }
die() {
  echo "nfsvm: FATAL: $*" >/dev/tty2
  [ -f /run/nfsvm.log ] && cat /run/nfsvm.log >/dev/tty2
  echo 125 > "$RUN/rc" 2>/dev/null; halt
}
# Power off. Flush only the hostfs file systems (run dir, cwd): a plain `sync`
# would block forever on dirty pages of a hard NFS mount whose server is down.
# sysrq 'o' needs no systemd poweroff.
halt() {
  sync -f "$RUN" "${nfsvm_cwd:-$RUN}" 2>/dev/null
  [ -e /proc/sysrq-trigger ] || mount -t proc proc /proc
  echo o > /proc/sysrq-trigger; sleep 10; poweroff -f --no-wtmp
}

if [ "${1:-}" != stage2 ]; then
  # (process spawns cost ~20-50 ms each under UML: batch mounts via fstab)
  mount -t proc proc /proc
  mount -t tmpfs -o mode=0755 tmpfs /mnt || die "tmpfs /mnt"
  R=/mnt F=/mnt/nfsvm-fstab1 dirs='' links=''
  for e in /*; do
    n=${e#/}
    case "$n" in
      proc|sys|dev|run|tmp|var|srv|mnt|lost+found|oldroot|old_root|media|boot|'*') continue ;;
    esac
    if [ -L "$e" ]; then
      links="$links $e"
    elif [ -d "$e" ]; then
      dirs="$dirs $R/$n"
      echo "none $R/$n hostfs ro,$e 0 0" >> $F
    fi
  done
  # shellcheck disable=SC2086  # word lists on purpose (no spaces in names)
  mkdir -p $dirs $R/proc $R/sys $R/dev $R/run $R/tmp $R/var $R/srv $R/mnt $R/oldroot || die mkdir
  # shellcheck disable=SC2086
  cp -P $links "$0" $R/ || die "cp links"
  mount -a -T $F || die "hostfs mounts"
  umount /proc
  cd "$R" || die "cd $R"
  pivot_root . oldroot || die pivot_root
  exec chroot . /bin/sh "/${0##*/}" stage2
fi

# ---- stage 2: / is tmpfs ----
cat > /nfsvm-fstab2 <<EOF2
proc /proc proc defaults 0 0
sysfs /sys sysfs defaults 0 0
devtmpfs /dev devtmpfs defaults 0 0
devpts /dev/pts devpts gid=5,mode=620,ptmxmode=666,X-mount.mkdir 0 0
tmpfs /dev/shm tmpfs X-mount.mkdir 0 0
tmpfs /run tmpfs mode=0755 0 0
tmpfs /tmp tmpfs mode=1777 0 0
tmpfs /var tmpfs mode=0755 0 0
tmpfs /srv tmpfs mode=0755 0 0
tmpfs /mnt tmpfs mode=0755 0 0
none ${nfsvm_cwd:-} hostfs ${nfsvm_cwd:-},X-mount.mkdir 0 0
none $RUN hostfs $RUN,X-mount.mkdir 0 0
EOF2
mount -a -T /nfsvm-fstab2 || die "stage2 mounts"
umount -l /oldroot || die "umount oldroot"
rmdir /oldroot
mkdir -m 1777 /var/tmp
mkdir -p /var/lib/nfs /var/log /var/cache /run/lock /run/rpcbind /run/rpc_pipefs \
         /var/lib/nfs/sm /var/lib/nfs/sm.bak /var/lib/nfs/nfsdcld /var/lib/nfs/v4recovery \
         /srv/export /srv/reflink /run/nfsvm-mods/lib/modules
ln -s /run /var/run
up > "$RUN/t_init"
log "root ready"

ip link set lo up
echo nfsvm > /proc/sys/kernel/hostname
printf '127.0.0.1 localhost nfsvm nfs-server\n::1 localhost ip6-localhost\n' > /run/hosts
mount --bind /run/hosts /etc/hosts

# Kernel modules: nothing autoloads (no /lib/modules on the host), so load them
# all now. Short NLM grace so NFSv3 locks work seconds after the start.
ln -s "/usr/lib/uml/modules/$(uname -r)" "/run/nfsvm-mods/lib/modules/$(uname -r)"
M="modprobe -d /run/nfsvm-mods"
$M lockd nlm_grace_period=1 nlm_timeout=3 || die "modprobe lockd"
$M -a sunrpc auth_rpcgss nfs_acl nfsd nfs nfsv3 nfsv4 || die "modprobe nfs modules"
log "modules loaded"

# NFS server: rpcbind, statd (NLM locking for v3), nfsdcld (lets nfsd skip the
# 90 s NFSv4 grace period on a fresh start), mountd, nfsd.
L=/run/nfsvm.log
: > /var/lib/nfs/etab; : > /var/lib/nfs/rmtab
chown statd /var/lib/nfs/sm /var/lib/nfs/sm.bak
mount -t rpc_pipefs rpc_pipefs /run/rpc_pipefs || die "rpc_pipefs"
mount -t nfsd nfsd /proc/fs/nfsd || die "nfsd fs"
rpcbind >>$L 2>&1 || die rpcbind
nfsdcld >>$L 2>&1 || die nfsdcld
echo 10 > /proc/fs/nfsd/nfsv4leasetime
echo 10 > /proc/fs/nfsd/nfsv4gracetime
chmod 0777 /srv/export
# fsid=1 (not 0): v3 and v4 see the same paths (/srv/export/...).
exportfs -o rw,sync,no_subtree_check,no_root_squash,insecure,fsid=1 '*:/srv/export' >>$L 2>&1 || die exportfs
# The reflink export: XFS (reflink=1, made by nfsvm) on the ubd device, so
# that NFSv4.2 CLONE/COPY reach a filesystem that shares extents.
mount -t xfs /dev/ubda /srv/reflink || die "mount -t xfs /dev/ubda /srv/reflink"
chmod 0777 /srv/reflink
exportfs -o rw,sync,no_subtree_check,no_root_squash,insecure,fsid=2 '*:/srv/reflink' >>$L 2>&1 || die "exportfs /srv/reflink"
log "rpcbind, nfsdcld, exportfs done"
t_nfsd=$(up)
rpc.nfsd 8 >>$L 2>&1 || die rpc.nfsd
# nfsd creates the cld pipe at start and waits ~1 s for nfsdcld to open it; if
# it misses, nfsd falls back to nfsdcltrack and a 10 s NFSv4 grace period
# (OPEN/LOCK return NFS4ERR_GRACE and clients retry). Restart once if so.
if ! dmesg | grep -q 'skipping NFSv4 grace'; then
  log "nfsd started with a grace period; restarting nfsd once"
  rpc.nfsd 0 >>$L 2>&1; t_nfsd=$(up); rpc.nfsd 8 >>$L 2>&1 || die rpc.nfsd
  dmesg | tail -n 3 | grep -q 'skipping NFSv4 grace' || log "WARNING: NFSv4 grace period active (<=10 s)"
fi
rpc.statd --no-notify >>$L 2>&1 || die rpc.statd
rpc.mountd >>$L 2>&1 || die rpc.mountd
log "nfsd, statd, mountd started"
# lockd (started with nfsd) refuses non-reclaim locks during its grace period
# (3 s here: nlm_grace_period=1 rounded up to nlm_timeout=3), for NFSv3 and
# NFSv4 LOCKs alike; an NFSv3 client that hits it retries only after 5 s.
# Let it expire before CMD runs.
c() { v=$1; echo $(( ${v%.*} * 100 + 1${v#*.} - 100 )); }
while [ $(( $(c "$(up)") - $(c "$t_nfsd") )) -lt 320 ]; do sleep 0.2; done
up > "$RUN/t_ready"
log "NFS server ready: 127.0.0.1:/srv/export (tmpfs), 127.0.0.1:/srv/reflink (XFS, reflink=1)"

# What exists before CMD, to find what it leaves behind.
cut -d' ' -f5 /proc/self/mountinfo > /run/nfsvm.mounts0
pids0=" $(cd /proc && echo [0-9]*) "

# stdout -> UML con1 (host stdout), stderr -> con2 (host stderr); raw = no \r.
# Where the host's stdout/stderr is not a terminal, CMD gets pipes (as in CI)
# instead of the guest ttys, so tools do not switch on colours/progress bars.
stty -F /dev/tty1 raw -echo 2>/dev/null
stty -F /dev/tty2 raw -echo 2>/dev/null
out=/dev/tty1 err=/dev/tty2 cats=
if [ -z "${nfsvm_out_tty:-}" ]; then
  mkfifo /run/nfsvm.out; cat /run/nfsvm.out >/dev/tty1 & out=/run/nfsvm.out cats="$cats $!"
fi
if [ -z "${nfsvm_err_tty:-}" ]; then
  mkfifo /run/nfsvm.err; cat /run/nfsvm.err >/dev/tty2 & err=/run/nfsvm.err cats="$cats $!"
fi
/bin/bash "$RUN/cmd" </dev/null >$out 2>$err
rc=$?
up > "$RUN/t_done"

# Processes CMD left running (e.g. a driver a test did not stop) would keep
# the output pipes open and the guest up: report and kill them.
left=
for d in /proc/[0-9]*; do
  p=${d#/proc/}
  case "$pids0$cats " in *" $p "*) continue ;; esac
  [ "$p" = $$ ] && continue
  [ -e "$d/exe" ] || continue          # kernel thread (or already gone)
  read -r comm 2>/dev/null < "$d/comm" || continue
  case "$comm" in rpcbind|rpc.mountd|rpc.statd|nfsdcld|rpc.idmapd|sm-notify) continue ;; esac
  left="$left $p"
  echo "process $p ($comm): $(tr '\0' ' ' < "$d/cmdline" 2>/dev/null | cut -c1-200)" >> "$RUN/leftover"
done
# shellcheck disable=SC2086
[ -n "$left" ] && kill -9 $left 2>/dev/null
wait
# Mounts CMD left behind: report, then detach them (lazily: never blocks).
awk 'NR==FNR { seen[$1] = 1; next } !($5 in seen) { print $5, $9, $10 }' \
  /run/nfsvm.mounts0 /proc/self/mountinfo > /run/nfsvm.mounts1
if [ -s /run/nfsvm.mounts1 ]; then
  sed 's/^/mount /' /run/nfsvm.mounts1 >> "$RUN/leftover"
  tac /run/nfsvm.mounts1 | while read -r mp _; do umount -l "$mp" 2>/dev/null; done
fi
echo "$rc" > "$RUN/rc"
cp $L "$RUN/guest.log" 2>/dev/null; dmesg > "$RUN/dmesg" 2>/dev/null
halt
