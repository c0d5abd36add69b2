#!/bin/sh
# Stage the edge-agent package into a Jetson root file system before flashing.
#
#   sudo packaging/jetson/stage_rootfs.sh Linux_for_Tegra/rootfs dist/edge-agent_<version>_arm64.deb
#
# The files are unpacked into the root file system now (dpkg --root, no maintainer scripts run on this
# x86 host); the package is configured on the Jetson's first boot by edge-agent-firstboot.service
# (dpkg --configure: service user, /opt/edge-agent/venv from the bundled wheels, offline), which runs
# before edge-agent.service. See docs/jetson.md.
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
if [ ! -e "$ROOTFS/usr/bin/python3" ] && [ ! -L "$ROOTFS/usr/bin/python3" ]; then
    echo "warning: $ROOTFS has no /usr/bin/python3; the first boot cannot build the venv" >&2
fi

# Unpack only (no postinst on this host); the package's dependencies are checked on the device.
dpkg --root="$ROOTFS" --force-architecture --force-depends --unpack "$DEB"

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
