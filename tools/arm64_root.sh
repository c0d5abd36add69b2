#!/bin/sh
# tools/arm64_root.sh: an arm64 Debian 12 (bookworm) root file system for installing the edge-agent
# package under qemu-user emulation (tools/arm64_check.py), as a tarball cached between CI runs.
#
#   sudo tools/arm64_root.sh [CACHE_DIR]     # prints the tarball's path on its last line
#
# CACHE_DIR defaults to $ARM64_ROOT_CACHE, else /var/cache/edge-agent-ci. The tarball is named by a
# hash of everything that decides its contents (suite, package list, builder and its options), so a
# changed list builds a new one and an unchanged one is reused; one older than
# $ARM64_ROOT_MAX_AGE_DAYS (default 30) is rebuilt to pick up Debian's updates. Concurrent callers
# wait on a lock rather than build twice.
#
# The root holds Debian's essential set plus the package's dependencies, no Recommends and no
# documentation: the smallest system a device could have. mmdebstrap makes it in 1.5 to 3 minutes on 2
# cores (most of it dpkg and maintainer scripts under emulation); debootstrap --variant=minbase, the
# fallback where mmdebstrap is not installed (or ARM64_ROOT_BUILDER=debootstrap), takes about twice
# as long.
#
# Needs root, the Debian mirror ($ARM64_ROOT_MIRROR) and the qemu-aarch64 binfmt handler with the F
# flag (as Debian's qemu-user-static + binfmt-support register it), which runs the root's arm64
# binaries in a chroot without a copy of qemu inside it.
set -eu

CACHE_DIR=${1:-${ARM64_ROOT_CACHE:-/var/cache/edge-agent-ci}}
SUITE=${ARM64_ROOT_SUITE:-bookworm}
MIRROR=${ARM64_ROOT_MIRROR:-http://deb.debian.org/debian}
MAX_AGE_DAYS=${ARM64_ROOT_MAX_AGE_DAYS:-30}
# The package's Depends (python3.11, python3, adduser; init-system-helpers is essential) and its
# Recommends python3-systemd (sd_notify, journald fields). libstdc++6: the manylinux wheels (numpy,
# onnxruntime, opencv) link it, but the package does not depend on it and a root without apt lacks it.
INCLUDE=${ARM64_ROOT_INCLUDE:-python3.11,python3,adduser,python3-systemd,libstdc++6}
# dpkg leaves out what nothing here reads, which also saves unpacking time under emulation.
EXCLUDES="/usr/share/man/* /usr/share/doc/* /usr/share/locale/* /usr/share/info/*"
BUILDER=${ARM64_ROOT_BUILDER:-$(command -v mmdebstrap >/dev/null 2>&1 && echo mmdebstrap || echo debootstrap)}
case "$BUILDER" in
    mmdebstrap) RECIPE="mmdebstrap essential merged-usr eatmydata no-recommends excludes=$EXCLUDES" ;;
    debootstrap) RECIPE="debootstrap minbase" ;;
    *) echo "arm64_root: ARM64_ROOT_BUILDER is mmdebstrap or debootstrap, not $BUILDER" >&2; exit 2 ;;
esac

die() { echo "arm64_root: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root ($BUILDER and chroot)"
command -v "$BUILDER" >/dev/null 2>&1 || die "$BUILDER is not installed (apt-get install mmdebstrap arch-test)"
binfmt=/proc/sys/fs/binfmt_misc/qemu-aarch64
if [ ! -r "$binfmt" ] || ! grep -qx enabled "$binfmt"; then
    die "no qemu-aarch64 binfmt handler ($binfmt): apt-get install qemu-user-static binfmt-support, then update-binfmts --enable qemu-aarch64"
fi
grep -q '^flags:.*F' "$binfmt" || die "the qemu-aarch64 binfmt handler lacks the F (fix binary) flag, so a chroot cannot find qemu: use Debian's qemu-user-static"

key=$(printf '%s\n' "$SUITE" arm64 "$INCLUDE" "$RECIPE" | sha256sum | cut -c1-16)
tarball="$CACHE_DIR/debian-$SUITE-arm64-$key.tar"
mkdir -p "$CACHE_DIR"

exec 9>"$tarball.lock"
flock 9
if [ -s "$tarball" ] && [ -z "$(find "$tarball" -mtime +"$MAX_AGE_DAYS")" ]; then
    echo "arm64_root: cached ($INCLUDE)" >&2
    echo "$tarball"
    exit 0
fi

start=$(date +%s)
tmp="$CACHE_DIR/.partial-$key.tar"
rm -rf "$tmp" "$tmp.d"
if [ "$BUILDER" = mmdebstrap ]; then
    # --variant=essential: the Essential:yes packages (dpkg, coreutils, ...) and the --include list with
    # its dependencies; no apt. eatmydata: dpkg does not fsync. merged-usr as bookworm has it, without
    # running usrmerge's conversion under emulation.
    set -- --mode=root --format=tar --arch=arm64 --variant=essential --include="$INCLUDE" \
        --aptopt='APT::Install-Recommends "false"' \
        --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr --hook-dir=/usr/share/mmdebstrap/hooks/eatmydata
    set -f  # the patterns are dpkg's, not this shell's to expand
    for pattern in $EXCLUDES; do
        set -- "$@" --dpkgopt="path-exclude=$pattern"
    done
    set +f
    set -- "$@" --dpkgopt='path-include=/usr/share/doc/*/copyright'
    mmdebstrap "$@" "$SUITE" "$tmp" "$MIRROR" >&2
else
    debootstrap --arch=arm64 --variant=minbase --include="$INCLUDE" "$SUITE" "$tmp.d" "$MIRROR" >&2
    rm -rf "$tmp.d/var/cache/apt/archives/"*.deb "$tmp.d/var/lib/apt/lists/"*_Packages
    tar --numeric-owner -C "$tmp.d" -cf "$tmp" .
    rm -rf "$tmp.d"
fi
mv -f "$tmp" "$tarball"
# Roots of other package lists that nothing has rebuilt for a while.
find "$CACHE_DIR" -maxdepth 1 -name "debian-$SUITE-arm64-*.tar" -mtime +"$MAX_AGE_DAYS" -delete
echo "arm64_root: built with $BUILDER in $(($(date +%s) - start)) s ($(du -m "$tarball" | cut -f1) MB, $INCLUDE)" >&2
echo "$tarball"
