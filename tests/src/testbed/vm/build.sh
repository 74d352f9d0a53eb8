# Builds the VM test bed's image into $OUT (run by vm/image.rs as root):
# a Debian 12 rootfs from Debian's packages (mmdebstrap), the machine's
# linux-image-amd64 kernel uncompressed (TCG boots a vmlinux quicker than a
# bzImage decompresses), a small initramfs, and a qcow2 disk. Each VM boots a
# copy-on-write overlay of the disk; the keys come on a second disk (a tar).
set -eu
: "${OUT:?}" "${KVER:?}" "${PACKAGES:?}" "${MIRROR:?}"
work="$OUT.work"
rm -rf "$work"
mkdir -p "$work"
root="$work/root"

# 1. The rootfs. Units that slow a TCG boot or need hardware are masked.
mmdebstrap --variant=apt --include="$PACKAGES" \
  --customize-hook='rm -f "$1"/etc/ssh/ssh_host_*' \
  --customize-hook='for u in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer man-db.timer getty@.service serial-getty@.service user@0.service systemd-networkd.service systemd-networkd-wait-online.service systemd-resolved.service podman-auto-update.service podman-auto-update.timer; do ln -sf /dev/null "$1/etc/systemd/system/$u"; done' \
  bookworm "$root" "$MIRROR" >"$work/mmdebstrap.log" 2>&1 \
  || { tail -n 40 "$work/mmdebstrap.log" >&2; exit 1; }
echo tend-vm > "$root/etc/hostname"
printf '/dev/vda / ext4 rw,noatime 0 1\n' > "$root/etc/fstab"
mkdir -p "$root/etc/ssh/sshd_config.d" "$root/etc/systemd/logind.conf.d" "$root/root/.ssh"
printf 'HostKey /etc/ssh/ssh_host_ed25519_key\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nUseDNS no\nMaxSessions 20\nMaxStartups 100:30:200\n' \
  > "$root/etc/ssh/sshd_config.d/tend-testbed.conf"
# The strictest logind: a session's processes die when it ends (root's
# too), so a service left in its ssh session's scope is caught.
printf '[Login]\nKillUserProcesses=yes\nKillExcludeUsers=\n' > "$root/etc/systemd/logind.conf.d/tend-testbed.conf"
chmod 700 "$root/root/.ssh"
# Root's login shell needs no password; the console is not a way in.
sed -i 's/^root:[^:]*:/root:*:/' "$root/etc/shadow"
# Ulimits podman's defaults would exceed under a restricted root.
mkdir -p "$root/etc/containers"
printf '[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]\n' > "$root/etc/containers/containers.conf"

# 2. The kernel's modules the guest can use (no hardware drivers), and the kernel.
m="/lib/modules/$KVER"
mkdir -p "$root$m/kernel/drivers/net"
cp -a "$m"/modules.order "$m"/modules.builtin* "$root$m/"
for d in fs net lib crypto arch mm virt security block; do
  [ -d "$m/kernel/$d" ] && cp -a "$m/kernel/$d" "$root$m/kernel/"
done
mkdir -p "$root$m/kernel/drivers"
for d in virtio block char md; do cp -a "$m/kernel/drivers/$d" "$root$m/kernel/drivers/"; done
for f in virtio_net.ko net_failover.ko veth.ko tun.ko dummy.ko macvlan.ko; do
  [ -f "$m/kernel/drivers/net/$f" ] && cp -a "$m/kernel/drivers/net/$f" "$root$m/kernel/drivers/net/"
done
depmod -b "$root" "$KVER"
# The uncompressed vmlinux: the payload after the xz magic of the bzImage.
off=$(grep -abo "$(printf '\3757zXZ\000')" "/boot/vmlinuz-$KVER" | head -n 1 | cut -d: -f1)
tail -c "+$((off + 1))" "/boot/vmlinuz-$KVER" | xz -dc --single-stream > "$work/vmlinux" 2>/dev/null || true
[ "$(head -c 4 "$work/vmlinux" | od -An -c | tr -d ' ')" = '177ELF' ] || { echo "no vmlinux in /boot/vmlinuz-$KVER" >&2; exit 1; }

# 3. The initramfs: busybox, the modules for disk, network and entropy, /init.
ir="$work/initramfs"
mkdir -p "$ir/bin" "$ir/proc" "$ir/sys" "$ir/dev" "$ir/newroot" "$ir/mods"
cp "$root/bin/busybox" "$ir/bin/busybox"
for mod in virtio_pci virtio_blk virtio_net ext4 virtio_rng; do
  modprobe -S "$KVER" --show-depends "$mod" | awk '$1 == "insmod" { print $2 }'
done | awk '!seen[$0]++' > "$work/mods.list"
: > "$ir/mods.order"
while read -r f; do
  b=$(basename "$f"); cp "$f" "$ir/mods/$b"; echo "$b" >> "$ir/mods.order"
done < "$work/mods.list"
cat > "$ir/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
while read -r m; do insmod "/mods/$m" 2>/dev/null; done < /mods.order
i=0; while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
mount -t ext4 -o rw,noatime /dev/vda /newroot || { echo "tend-initramfs: cannot mount /dev/vda"; exec sh; }
# The seed disk: a tar of the files this VM gets (keys, hostname).
if [ -b /dev/vdb ]; then tar -x -f /dev/vdb -C /newroot && echo "tend-initramfs: seed applied"; fi
ip link set lo up; ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0; ip route add default via 10.0.2.2
umount /proc /sys /dev
exec switch_root /newroot /sbin/init
INIT
chmod 755 "$ir/init"
(cd "$ir" && find . | cpio -o -H newc --quiet | gzip -1) > "$work/initramfs.gz"

# 4. The disk.
rm -rf "$root/var/cache/apt/archives"/*.deb "$root/var/lib/apt/lists"/*_Packages
mkfs.ext4 -q -F -L root -d "$root" "$work/root.raw" 4G
qemu-img convert -f raw -O qcow2 "$work/root.raw" "$work/base.qcow2"
mv "$work/vmlinux" "$work/initramfs.gz" "$work/base.qcow2" "$OUT/"
du -sh "$root" | cut -f1 > "$OUT/rootfs-size"
rm -rf "$work"
