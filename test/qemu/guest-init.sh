#!/bin/busybox sh
# /init of the test guest. Fills 8 MiB of RAM-backed rootfs with random bytes, remembers their MD5 in
# the shell's memory, and then for ever prints "vntick N ok" (or "vntick N BAD" if the buffer no
# longer matches) on the console. A restored guest must continue the count with every check "ok".
# With vnip=ADDR and vnpeer=ADDR on the kernel command line (the environment test) it also brings
# up eth0 (virtio-net) at ADDR/24 and pings the peer for ever: "vnping" lines, then busybox ping's
# "seq=N" replies, whose numbering goes on in a restored guest. With vnload=PAGES it also rewrites
# that many pages of /scratch with random bytes for ever, to dirty memory while it is migrated.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t devtmpfs dev /dev 2>/dev/null
dd if=/dev/urandom of=/pattern bs=1M count=8 2>/dev/null
want=$(md5sum /pattern | cut -c1-32)
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    vnip=*) vnip=${arg#vnip=} ;;
    vnpeer=*) vnpeer=${arg#vnpeer=} ;;
    vnload=*) vnload=${arg#vnload=} ;;
  esac
done
if [ -n "$vnip" ]; then
  for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover virtio_net; do
    insmod /modules/$m.ko
  done
  ip link set lo up
  ip addr add "$vnip/24" dev eth0
  ip link set eth0 up
  echo "vnping from $vnip to $vnpeer"
  ping -i 0.3 "$vnpeer" &
fi
if [ -n "$vnload" ]; then
  (while true; do dd if=/dev/urandom of=/scratch bs=4k count="$vnload" conv=notrunc 2>/dev/null; done) &
fi
echo "vnguest ready $want"
i=0
while true; do
  i=$((i + 1))
  got=$(md5sum /pattern | cut -c1-32)
  if [ "$got" = "$want" ]; then echo "vntick $i ok"; else echo "vntick $i BAD"; fi
  sleep 0.3
done
