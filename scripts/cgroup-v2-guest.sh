#!/usr/bin/env bash
# Boots a cgroup-v2 guest on this host and runs one command in it, for the tests that must see
# pyexec where its users run it: Kubernetes nodes, Cloud Run's second generation and every
# current distribution mount cgroup v2 only, while this host mounts v1.
#
# The guest is user-mode Linux 6.1 (Debian's user-mode-linux, installed by scripts/setup.sh):
# a Linux kernel run as an ordinary process, no KVM, no disk image. Its root is this host's /
# read-only (hostfs), so the service built here and /opt/pyexec run there unchanged; its
# /tmp, /run and /dev/shm are its own; DIR is the one host directory it may write.
#
# Usage: scripts/cgroup-v2-guest.sh DIR [HOSTPORT:GUESTPORT]...
#   Runs `bash DIR/run` as root in the guest, in its own cgroup (/init, as a container's or a
#   unit's init would be: the root group then only delegates), with every controller enabled
#   at the root. Its output goes to DIR/guest.log, its exit status to DIR/status. Each
#   127.0.0.1:HOSTPORT on this host is forwarded to GUESTPORT in the guest, through a network
#   card of its own (user-mode Linux's arguments cannot carry the comma that would list two
#   forwards on one): the Nth (from 0) is ethN, 10.0.(2+N).15/24. The guest has no route
#   beyond those links and cannot reach this host's loopback: it is reached, it reaches
#   nothing. Returns when the guest is down: 0 if DIR/run succeeded.
#
# Inside the guest the same script runs as init (PID 1), with PYEXEC_GUEST_DIR from the
# kernel's command line.
set -euo pipefail

if [ "$$" -eq 1 ] && [ -n "${PYEXEC_GUEST_DIR:-}" ]; then
  export PATH=/usr/sbin:/usr/bin:/sbin:/bin
  dir=$PYEXEC_GUEST_DIR
  mount -t proc proc /proc
  mount -t sysfs sys /sys
  mountpoint -q /dev || mount -t devtmpfs dev /dev
  mkdir -p /dev/pts /dev/shm
  mount -t devpts devpts /dev/pts
  mount -t tmpfs tmpfs /dev/shm
  mount -t tmpfs tmpfs /run
  mount -t tmpfs -o mode=1777 tmpfs /tmp
  mount -t hostfs -o "$dir" none "$dir"
  mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
  mkdir /sys/fs/cgroup/init
  echo $$ >/sys/fs/cgroup/init/cgroup.procs
  read -ra controllers </sys/fs/cgroup/cgroup.controllers
  for controller in "${controllers[@]}"; do
    echo "+$controller" >/sys/fs/cgroup/cgroup.subtree_control
  done
  ip link set lo up
  for card in /sys/class/net/eth*; do
    n=${card##*/eth}
    ip addr add "10.0.$((2 + n)).15/24" dev "eth$n"
    ip link set "eth$n" up
  done
  status=0
  (cd "$dir" && exec bash ./run) >"$dir/guest.log" 2>&1 </dev/null || status=$?
  echo "$status" >"$dir/status"
  sync
  echo o >/proc/sysrq-trigger
  sleep 60
fi

[ $# -ge 1 ] || { echo "usage: $0 DIR [HOSTPORT:GUESTPORT]..." >&2; exit 2; }
dir=$(cd "$1" && pwd)
shift
[ -x /usr/bin/linux.uml ] || { echo "$0: /usr/bin/linux.uml is missing: run scripts/setup.sh" >&2; exit 1; }
cards=()
for forward in "$@"; do
  n=${#cards[@]}
  net="10.0.$((2 + n))"
  cards+=("eth$n=vde,slirp:///addr=$net.2/disable_host_loopback/tcpfwd=127.0.0.1:${forward%%:*}:$net.15:${forward##*:}")
done
rm -f "$dir/status" "$dir/guest.log"
# Kernel words the kernel does not know (NAME=VALUE) reach init as its environment. UML keeps
# its memory in a file under TMPDIR; the host's /tmp serves. It dies with this script.
TMPDIR=/tmp setpriv --pdeathsig KILL /usr/bin/linux.uml mem=1536M root=/dev/root rootfstype=hostfs rootflags=/ ro \
  init="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")" \
  PYEXEC_GUEST_DIR="$dir" panic=-1 con=null con0=null,fd:1 quiet "${cards[@]}" \
  </dev/null >"$dir/console.log" 2>&1 || true
[ -f "$dir/status" ] || { echo "$0: the guest stopped before its command ended; see $dir/console.log" >&2; exit 1; }
exit "$(cat "$dir/status")"
