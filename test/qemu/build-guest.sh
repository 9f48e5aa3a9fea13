#!/usr/bin/env bash
# Builds the tiny test guest for test/qemu-live.test.ts: a Debian cloud kernel (unpacked from its
# package with dpkg -x) and a busybox initramfs whose /init counts on the serial console and checks
# its own memory. The result is cached in test/qemu/.cache/ (git-ignored); prints the cache path.
# Needs: apt-get (download only), dpkg, gzip, busybox-static (also its cpio). Network only on the first run.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="$here/.cache"
out="$cache/guest"
if [[ -s "$out/vmlinuz" && -s "$out/initrd.gz" && "$out/init" -nt "$here/guest-init.sh" && "$out/init" -nt "$here/build-guest.sh" ]]; then echo "$out"; exit 0; fi
mkdir -p "$cache" "$out"
work="$(mktemp -d "$cache/build.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# The cloud kernel boots fastest under TCG (few drivers) and has the 8250 serial console built in.
# Resolve the meta package to the versioned image package of the configured Debian release.
pkg="$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*-cloud-amd64\)$/\1/p' | head -n1)"
if [[ -z "$pkg" ]]; then
  echo "build-guest: no linux-image-*-cloud-amd64 package known to apt (run apt-get update)" >&2
  exit 1
fi
(cd "$work" && apt-get download "$pkg" >/dev/null)
dpkg -x "$work"/"$pkg"_*.deb "$work/kernel"
cp "$(ls "$work"/kernel/boot/vmlinuz-* | head -n1)" "$work/vmlinuz"

busybox="$(command -v busybox || true)"
# The guest has no libraries: a dynamically linked busybox (package busybox) would not start.
if [[ -z "$busybox" ]] || ldd "$busybox" >/dev/null 2>&1; then
  echo "build-guest: needs a statically linked busybox (apt-get install busybox-static)" >&2
  exit 1
fi
root="$work/root"
mkdir -p "$root"/{bin,proc,sys,dev,tmp,modules}
# virtio-net is a module in the cloud kernel: the environment test's guests load it (in this order,
# each after what it needs) when their command line gives them an address (guest-init.sh).
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover virtio_net; do
  ko="$(find "$work/kernel/lib/modules" -name "$m.ko" | head -n1)"
  if [[ -z "$ko" ]]; then echo "build-guest: module $m.ko not in $pkg" >&2; exit 1; fi
  cp "$ko" "$root/modules/"
done
cp "$busybox" "$root/bin/busybox"
cp "$here/guest-init.sh" "$root/init"
chmod 0755 "$root/init" "$root/bin/busybox"
(cd "$root" && find . | "$busybox" cpio -o -H newc 2>/dev/null | gzip -6 > "$work/initrd.gz")

mv "$work/vmlinuz" "$out/vmlinuz.new" && mv "$out/vmlinuz.new" "$out/vmlinuz"
mv "$work/initrd.gz" "$out/initrd.gz.new" && mv "$out/initrd.gz.new" "$out/initrd.gz"
cp "$here/guest-init.sh" "$out/init"
echo "$pkg" > "$out/kernel-package"
echo "$out"
