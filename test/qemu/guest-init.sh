#!/bin/busybox sh
# /init of the test guest. Fills 8 MiB of RAM-backed rootfs with random bytes, remembers their MD5 in
# the shell's memory, and then for ever prints "vntick N ok" (or "vntick N BAD" if the buffer no
# longer matches) on the console. A restored guest must continue the count with every check "ok".
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t devtmpfs dev /dev 2>/dev/null
dd if=/dev/urandom of=/pattern bs=1M count=8 2>/dev/null
want=$(md5sum /pattern | cut -c1-32)
echo "vnguest ready $want"
i=0
while true; do
  i=$((i + 1))
  got=$(md5sum /pattern | cut -c1-32)
  if [ "$got" = "$want" ]; then echo "vntick $i ok"; else echo "vntick $i BAD"; fi
  sleep 0.3
done
