#!/usr/bin/env bash
# Real guest memory for the space benchmarks (bench/RESULTS.md, "Real guest memory"): boots small
# Linux guests with QEMU under TCG (no KVM needed) and saves their physical memory at each epoch.
#
#   bash bench/qemu-guest-memory.sh [--busy [--tar-copies]] [--epochs N] OUTDIR [MiB...]   # default: idle, 2 epochs, 256 and 384 MiB
#   node bench/zstd-choice.mjs --images=OUTDIR/vm0/0.img,OUTDIR/vm1/0.img,... --max-pages=1000000
#   node dist/cli/bin.cjs bench --images OUTDIR
#
# Needs qemu-system-x86_64, busybox-static and python3 (Debian: apt-get install qemu-system-x86
# busybox-static); downloads the Debian cloud kernel package with apt-get download and unpacks it (no
# install). Each guest runs that kernel with an initramfs of busybox and host files; memory is saved
# with the QEMU monitor's pmemsave while the guest is stopped, as OUTDIR/vmN/EPOCH.img.
#
# Idle guests (default): /init archives, compresses and checksums 1-2 MB of host files into a tmpfs
# (epoch 0), then writes a little more at each later epoch. Mostly zero pages.
#
# Busy guests (--busy; issue 16's guests were busy Debian 12 machines): the initramfs carries ~120 MB
# of the host's Debian 12 userland (Python 3.11's library, Perl's, shared libraries): the page cache
# every guest of one distribution shares. Each guest then runs daemons (syslogd, crond, httpd) and its
# own work, seeded by its number: a copy of part of that userland and a gzipped tar of it (with
# --tar-copies: the tar itself, whose file bytes sit at 512-byte offsets, which content-defined
# chunkers deduplicate and page dedup cannot), a generated CSV table (~5 MB) and a sorted copy,
# checksums, and an awk process that keeps a ~20 MB table of records in its heap. Each later epoch rewrites a tenth of the table, appends logs,
# re-sorts and re-compresses, and starts another heap process: the dirty pages of a busy guest.
# Guests run at once (-smp 1 each); give each about 4-8 min of one core.
set -euo pipefail
busy=0
tarcopies=0
epochs=2
while [ $# -gt 0 ]; do
  case "$1" in
    --busy) busy=1; shift ;;
    --tar-copies) tarcopies=1; shift ;;
    --epochs) epochs=${2:?--epochs needs a number}; shift 2 ;;
    *) break ;;
  esac
done
out=$(realpath -m "${1:?usage: qemu-guest-memory.sh [--busy [--tar-copies]] [--epochs N] OUTDIR [MiB...]}")
shift
sizes=("$@")
[ $# -eq 0 ] && sizes=(256 384)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

apt-get download -qq linux-image-cloud-amd64 >/dev/null
meta=$(ls linux-image-cloud-amd64_*.deb)
kpkg=$(dpkg-deb -f "$meta" Depends | grep -o 'linux-image-[0-9][^ ,]*-cloud-amd64' | head -1)
apt-get download -qq "$kpkg" >/dev/null
dpkg-deb -x "$kpkg"_*.deb k
kernel=$(ls k/boot/vmlinuz-*)

mkdir -p ir/bin ir/proc ir/sys ir/dev ir/data ir/work ir/var/log ir/var/spool/cron/crontabs
cp "$(command -v busybox)" ir/bin/
for a in sh mount sleep cat cp md5sum sha256sum gzip tar find sort seq awk head tail rm mv wc syslogd crond httpd logger; do
  ln -sf busybox "ir/bin/$a"
done
if [ "$busy" = 1 ]; then
  # The shared userland: Python's and Perl's libraries, then shared libraries in name order up to 40 MB.
  cp -r /usr/lib/python3.11 ir/data/python3.11
  cp -r /usr/lib/x86_64-linux-gnu/perl ir/data/perl
  mkdir ir/data/lib
  find /usr/lib/x86_64-linux-gnu -maxdepth 1 -type f -name '*.so*' -size -3M -printf '%s %p\n' | sort -k2 |
    awk '{ s += $1; if (s > 40e6) exit; print $2 }' | xargs cp -t ir/data/lib
  cat > ir/init <<'INIT'
#!/bin/sh
# Busy guest: daemons, per-guest data seeded by vnvm= on the kernel command line, a heap-holding awk.
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs -o size=280m tmp /work
vm=${vnvm:-0}
syslogd -O /var/log/messages
echo '* * * * * date >> /var/log/cron.log' > /var/spool/cron/crontabs/root
crond
httpd -p 8080 -h /data
# A table of records: the guest's application data. $1 = epoch: rows with (i % 10 == epoch) change.
table() {
  awk -v seed="$vm" -v epoch="$1" 'BEGIN { srand(seed * 7919 + 1)
    for (i = 0; i < 110000; i++) { r = rand(); if (i % 10 == epoch) r = rand() + epoch
      printf "%07d,host%d-%05d,%s,%.9f,%x\n", i, seed, int(r * 50000), (r < 0.5 ? "active" : "idle"), r, int(rand() * 2147483647) } }'
}
# A process that keeps records in its heap and stays alive.
heap() {
  awk -v seed="$vm" -v epoch="$1" 'BEGIN { srand(seed * 104729 + epoch)
    for (i = 0; i < 120000; i++) a[i] = sprintf("session-%d-%d user%06d %s %.6f", seed, epoch, int(rand() * 1e6), (rand() < 0.3 ? "GET /index.html" : "POST /api/v1/items"), rand())
    system("sleep 100000") }' &
}
case $((vm % 3)) in
  0) part=/data/python3.11 ;;
  1) part="/data/perl /data/lib" ;;
  *) part="/data/lib /data/python3.11/email /data/python3.11/asyncio" ;;
esac
if [ "${vntar:-0}" = 1 ]; then
  # An archive in memory: the files' bytes again, at 512-byte offsets (no page-aligned duplicates).
  tar cf /work/part.tar $part
  gzip -c /work/part.tar > /work/part.tar.gz
else
  # A copy: the files' bytes again, page-aligned, as a second copy in a page cache is.
  mkdir /work/part
  cp -r $part /work/part/
  tar cf - $part | gzip -c > /work/part.tar.gz
fi
table 0 > /work/table.csv
sort -t, -k3 /work/table.csv > /work/table.sorted
gzip -c /work/table.csv > /work/table.csv.gz
find /data -type f | sort > /work/files.txt
md5sum /work/part.tar.gz /bin/busybox > /work/sums.txt
heap 0
sleep 5
echo READY1 > /dev/console
epoch=1
while true; do
  sleep 20
  table $epoch > /work/table.csv
  sort -t, -k3 /work/table.csv > /work/table.sorted
  gzip -c /work/table.csv > /work/table.csv.gz
  seq $((epoch * 100000)) $((epoch * 100000 + 60000)) | awk '{ print "event", $1, $1 % 97 }' >> /work/events.log
  logger "epoch $epoch done"
  heap $epoch
  sleep 5
  epoch=$((epoch + 1))
  echo READY$epoch > /dev/console
done
INIT
else
  cp /usr/lib/x86_64-linux-gnu/libzstd.so.1.* /usr/lib/x86_64-linux-gnu/liblz4.so.1.* ir/data/ 2>/dev/null || true
  cp -r /usr/share/doc/a* ir/data/ 2>/dev/null || true
  cat > ir/init <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs -o size=200m tmp /work
tar cf /work/data.tar /data
gzip -c /work/data.tar > /work/data.tar.gz
find / -xdev -type f 2>/dev/null | sort > /work/files.txt
md5sum /work/data.tar /bin/busybox > /work/sums.txt
echo READY1 > /dev/console
epoch=1
while true; do
  sleep 25
  seq $((epoch * 200000)) $((epoch * 200000 + 200000)) > /work/numbers$epoch.txt
  gzip -c /work/files.txt > /work/files$epoch.gz
  cp /work/data.tar.gz /work/copy$epoch.gz
  epoch=$((epoch + 1))
  echo READY$epoch > /dev/console
done
INIT
fi
chmod +x ir/init
(cd ir && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 > ../initrd.gz)

monitor() { # SOCKET COMMAND...: one monitor command per argument, each awaited until the next prompt
  python3 - "$@" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(600)
s.connect(sys.argv[1])
def prompt():
    buf = b''
    while not buf.endswith(b'(qemu) '):
        chunk = s.recv(4096)
        if not chunk:
            raise SystemExit('monitor closed')
        buf += chunk
prompt()
for cmd in sys.argv[2:]:
    s.send(cmd.encode() + b'\n')
    prompt()
PY
}

guest() { # INDEX MiB: boot one guest and save its memory at each epoch
  local name=vm$1 mib=$2
  mkdir -p "$out/$name"
  qemu-system-x86_64 -machine pc,accel=tcg -cpu qemu64 -smp 1 -m "${mib}M" -kernel "$kernel" -initrd initrd.gz \
    -append "console=ttyS0 quiet panic=-1 vnvm=$1 vntar=$tarcopies" -display none -serial "file:$name.console" \
    -monitor "unix:$name.mon,server,nowait" -no-reboot &
  local qpid=$!
  for ((epoch = 0; epoch < epochs; epoch++)); do
    for _ in $(seq 1 1800); do grep -q "READY$((epoch + 1))" "$name.console" 2>/dev/null && break; sleep 1; done
    grep -q "READY$((epoch + 1))" "$name.console" || { echo "$name: guest never reached epoch $epoch" >&2; kill $qpid; return 1; }
    monitor "$name.mon" stop "pmemsave 0 $((mib * 1024 * 1024)) \"$out/$name/$epoch.img\"" cont
    echo "$name: epoch $epoch saved to $out/$name/$epoch.img ($(date -u +%T))"
  done
  kill $qpid
  wait $qpid 2>/dev/null || true
}

pids=()
for i in "${!sizes[@]}"; do
  guest "$i" "${sizes[$i]}" &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
exit $status
