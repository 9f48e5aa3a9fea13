#!/usr/bin/env bash
# Real guest memory for the space benchmarks (bench/RESULTS.md, "Real guest memory"): boots small
# Linux guests with QEMU under TCG (no KVM needed) and saves their physical memory at two epochs.
#
#   bash bench/qemu-guest-memory.sh OUTDIR [MiB...]     # default: two guests of 256 and 384 MiB
#   node bench/zstd-choice.mjs --images=OUTDIR/vm0/0.img,OUTDIR/vm1/0.img,... --max-pages=1000000
#   node dist/cli/bin.cjs bench --images OUTDIR
#
# Needs qemu-system-x86_64, busybox-static and python3 (Debian: apt-get install qemu-system-x86
# busybox-static); downloads the Debian cloud kernel package with apt-get download and unpacks it (no
# install). Each guest runs the kernel with an initramfs of busybox and a few host files; its /init
# archives, compresses and checksums them into a tmpfs (epoch 0), waits, then writes a little more
# (epoch 1). Memory is saved with the QEMU monitor's pmemsave while the guest is stopped.
set -euo pipefail
out=$(realpath -m "${1:?usage: qemu-guest-memory.sh OUTDIR [MiB...]}")
shift
sizes=("${@:-256}")
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

mkdir -p ir/bin ir/proc ir/sys ir/dev ir/data ir/work
cp "$(command -v busybox)" ir/bin/
for a in sh mount sleep cat cp md5sum gzip tar find sort seq; do ln -sf busybox "ir/bin/$a"; done
cp /usr/lib/x86_64-linux-gnu/libzstd.so.1.* /usr/lib/x86_64-linux-gnu/liblz4.so.1.* ir/data/ 2>/dev/null || true
cp -r /usr/share/doc/a* ir/data/ 2>/dev/null || true
cat > ir/init <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs -o size=200m tmp /work
tar cf /work/data.tar /data
gzip -c /work/data.tar > /work/data.tar.gz
find / -xdev -type f 2>/dev/null | sort > /work/files.txt
md5sum /work/data.tar /bin/busybox > /work/sums.txt
echo READY1 > /dev/console
sleep 25
seq 1 200000 > /work/numbers.txt
gzip -c /work/files.txt > /work/files.gz
cp /work/data.tar.gz /work/copy.gz
echo READY2 > /dev/console
sleep 100000
INIT
chmod +x ir/init
(cd ir && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 > ../initrd.gz)

monitor() { # SOCKET COMMAND...: send monitor commands, one per argument, pausing between them
  python3 - "$@" <<'PY'
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
time.sleep(0.3)
for cmd in sys.argv[2:]:
    s.send(cmd.encode() + b'\n')
    time.sleep(8 if cmd.startswith('pmemsave') else 0.3)
PY
}

vm=0
for mib in "${sizes[@]}"; do
  name=vm$vm
  mkdir -p "$out/$name"
  qemu-system-x86_64 -machine pc,accel=tcg -cpu qemu64 -smp 1 -m "${mib}M" -kernel "$kernel" -initrd initrd.gz \
    -append "console=ttyS0 quiet panic=-1" -display none -serial "file:$name.console" \
    -monitor "unix:$name.mon,server,nowait" -no-reboot &
  qpid=$!
  for epoch in 0 1; do
    for _ in $(seq 1 300); do grep -q "READY$((epoch + 1))" "$name.console" 2>/dev/null && break; sleep 1; done
    grep -q "READY$((epoch + 1))" "$name.console" || { echo "$name: guest never reached epoch $epoch" >&2; kill $qpid; exit 1; }
    monitor "$name.mon" stop "pmemsave 0 $((mib * 1024 * 1024)) \"$out/$name/$epoch.img\"" cont
    echo "$name: epoch $epoch saved to $out/$name/$epoch.img"
  done
  kill $qpid
  wait $qpid 2>/dev/null || true
  vm=$((vm + 1))
done
