#!/bin/sh
# Stage the edge-agent package into a Jetson root file system before flashing.
#
#   sudo packaging/jetson/stage_rootfs.sh Linux_for_Tegra/rootfs dist/edge-agent_<version>_arm64.deb
#
# ROOTFS is NVIDIA's sample root file system as the Jetson Linux quick start lays it out
# (Linux_for_Tegra/rootfs, after sudo ./apply_binaries.sh). The files are unpacked into it now
# (dpkg --root; only the preinst runs, on this host, chroot-less: it checks that the root has the
# Python the package is built for); the package is configured on the Jetson's first boot by
# edge-agent-firstboot.service (dpkg --configure: service user, the version's virtual environment
# from the bundled wheels, offline, checked, pycuda built against JetPack's CUDA), which runs before
# edge-agent.service. Nothing else needs to be in the root: no python3-venv, no network.
# See docs/jetson.md.
set -eu

if [ $# -ne 2 ]; then
    echo "usage: $0 ROOTFS PACKAGE.deb" >&2
    exit 2
fi
ROOTFS=$(cd "$1" && pwd)
DEB=$2
HERE=$(cd "$(dirname "$0")" && pwd)

for needed in etc/os-release var/lib/dpkg/status usr/bin; do
    if [ ! -e "$ROOTFS/$needed" ]; then
        echo "$ROOTFS does not look like a root file system: $needed is missing" >&2
        exit 1
    fi
done
if [ ! -e "$ROOTFS/etc/nv_tegra_release" ]; then
    echo "warning: $ROOTFS has no /etc/nv_tegra_release: not a Jetson Linux root (was apply_binaries.sh run?)" >&2
fi

# Unpack only; the package's dependencies are checked on the device. The preinst runs here with
# DPKG_ROOT set and refuses a root without the package's Python, before anything is unpacked.
dpkg --root="$ROOTFS" --force-architecture --force-depends --force-script-chrootless --unpack "$DEB"

install -m 0644 "$HERE/edge-agent-firstboot.service" "$ROOTFS/etc/systemd/system/edge-agent-firstboot.service"
mkdir -p "$ROOTFS/etc/systemd/system/multi-user.target.wants"
ln -sf /etc/systemd/system/edge-agent-firstboot.service \
    "$ROOTFS/etc/systemd/system/multi-user.target.wants/edge-agent-firstboot.service"
ln -sf /lib/systemd/system/edge-agent.service \
    "$ROOTFS/etc/systemd/system/multi-user.target.wants/edge-agent.service"
touch "$ROOTFS/opt/edge-agent/.configure-on-first-boot"
# dpkg keeps a conffile as .dpkg-new until configured: give it its name now so that it can be edited
# before flashing (the first boot configures with --force-confold and keeps it).
CONF="$ROOTFS/etc/edge-agent/config.toml"
if [ -f "$CONF.dpkg-new" ] && [ ! -e "$CONF" ]; then
    cp -p "$CONF.dpkg-new" "$CONF"
fi

echo "staged $(basename "$DEB") into $ROOTFS; it is configured on the first boot"
echo "edit $ROOTFS/etc/edge-agent/config.toml now to preload models or set an API key"
