#!/usr/bin/env bash
# Runs a command inside a small KVM guest whose kernel offers kernel TLS, for the
# tests of the in-place upgrade's kTLS handoff on a host whose own kernel does not
# (a Firecracker kernel lists only `mptcp` in tcp_available_ulp).
#
#   scripts/ktls-vm.sh install          install what is missing, build the initramfs
#   scripts/ktls-vm.sh check            exit 0 when a guest can be started here
#   scripts/ktls-vm.sh run -- CMD ARGS  run CMD in the guest; its stdout, stderr and
#                                       exit status come back as this script's
#
# The guest is the host seen through a window: its root file system is the host's
# `/`, shared read-only over 9p (virtio) with a tmpfs overlay on top, so every file
# the host has (the test binary, the ferry binary, InspIRCd, the fixtures) is there
# at the same path, and whatever the guest writes stays in the guest's memory. The
# kernel is a Debian one (linux-image-amd64), installed with its modules on the
# host; the guest loads `tls` from the host's /lib/modules and checks that
# tcp_available_ulp then lists it. Loopback is its only network. The command runs
# as root in the same working directory and with the same environment as here; it
# writes its output into a second 9p share (a temporary directory of the host),
# read back once the guest has powered off.
#
# Idempotent: packages are installed only when missing (apt-get update only then),
# and the initramfs (klibc's tools and the modules the 9p root needs) is built
# once per kernel and cached under /var/cache/ferry-ktls-vm.
#
# Environment: KTLS_VM_MEM (MiB, default 2048), KTLS_VM_CPUS (default 2),
# KTLS_VM_TIMEOUT (seconds for the whole guest, default 600), KTLS_VM_VERBOSE=1
# (the guest's console on stderr afterwards), KTLS_VM_APPEND (kernel arguments
# instead of "quiet loglevel=3"), KTLS_VM_ACCEL (see `accelerator`).
set -euo pipefail

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
SELF="$(readlink -f "$0")"
CACHE=/var/cache/ferry-ktls-vm

log() { printf 'ktls-vm: %s\n' "$*" >&2; }
die() {
    log "$*"
    exit 125
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n env DEBIAN_FRONTEND=noninteractive "$@"
    else
        log "need root (or sudo) to run: $*"
        return 1
    fi
}

# The newest Debian kernel installed with its modules, e.g. 6.1.0-57-amd64.
kernel_version() {
    local k v best=""
    for k in /boot/vmlinuz-*; do
        [ -e "$k" ] || continue
        v="${k#/boot/vmlinuz-}"
        [ -f "/lib/modules/$v/modules.dep" ] || continue
        [ -f "/lib/modules/$v/kernel/net/tls/tls.ko" ] || continue
        if [ -z "$best" ] || [ "$(printf '%s\n%s\n' "$best" "$v" | sort -V | tail -n1)" = "$v" ]; then
            best="$v"
        fi
    done
    printf '%s' "$best"
}

install_packages() {
    local missing=()
    command -v qemu-system-x86_64 >/dev/null 2>&1 || missing+=(qemu-system-x86)
    [ -n "$(kernel_version)" ] || missing+=(linux-image-amd64)
    [ -d /usr/lib/klibc/bin ] || missing+=(klibc-utils)
    command -v modprobe >/dev/null 2>&1 || missing+=(kmod)
    command -v ip >/dev/null 2>&1 || missing+=(iproute2)
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        as_root apt-get update -q
        as_root apt-get install -y -q --no-install-recommends \
            -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}"
    fi
    [ -n "$(kernel_version)" ] || die "no Debian kernel with its modules (and tls.ko) under /boot and /lib/modules"
}

# The initramfs's /init (klibc's sh): the 9p root, read-only, under a tmpfs
# overlay; then this script's `guest` as PID 1 on it.
STAGE1='#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in /modules/*.ko; do insmod "$m"; done
mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288,cache=loose,ro root /lower
mount -t tmpfs -o mode=0755 tmpfs /upper
mkdir /upper/u /upper/w
mount -t overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w overlay /root
umount /proc
umount /sys
umount /dev
mount -t devtmpfs devtmpfs /root/dev
stage2=$(cat /stage2)
exec run-init /root /bin/bash "$stage2" guest
'
MODULES=(virtio_pci 9pnet_virtio 9p overlay)

# Builds (once) the initramfs for kernel $1 and prints its path.
initramfs() {
    local kver="$1" out tmp m
    # Rebuilt when what goes in changes.
    out="$CACHE/initrd-$kver-$(printf '%s\n' "$STAGE1" "${MODULES[*]}" "$SELF" | sha256sum | cut -c1-12).cpio"
    if [ -s "$out" ]; then
        printf '%s' "$out"
        return
    fi
    as_root mkdir -p "$CACHE"
    tmp="$(mktemp -d)"
    mkdir -p "$tmp/bin" "$tmp/lib" "$tmp/modules" "$tmp/proc" "$tmp/sys" "$tmp/dev" \
        "$tmp/lower" "$tmp/upper" "$tmp/root"
    cp -a /usr/lib/klibc/bin/. "$tmp/bin/"
    cp -a /usr/lib/klibc-*.so "$tmp/lib/"
    # The modules the 9p root and the overlay need, dependencies first.
    local n=0
    for m in "${MODULES[@]}"; do
        modprobe -S "$kver" --show-depends "$m" | awk '$1 == "insmod" { print $2 }'
    done | awk '!seen[$0]++' | while read -r m; do
        n=$((n + 1))
        cp "$m" "$tmp/modules/$(printf '%02d' "$n")-$(basename "$m")"
    done
    printf '%s' "$STAGE1" >"$tmp/init"
    chmod +x "$tmp/init"
    printf '%s' "$SELF" >"$tmp/stage2"
    (cd "$tmp" && find . | cpio -o -H newc --quiet) >"$tmp.cpio"
    as_root rm -f "$CACHE/initrd-$kver-"*.cpio
    as_root mv "$tmp.cpio" "$out"
    rm -rf "$tmp"
    printf '%s' "$out"
}

# Stage 2, in the guest as PID 1 on the overlay root.
guest() {
    mount -t proc proc /proc
    mount -t sysfs sysfs /sys
    mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
    mkdir -p /dev/pts /dev/shm
    mount -t devpts devpts /dev/pts
    mount -t tmpfs tmpfs /dev/shm
    mount -t tmpfs tmpfs /tmp
    mount -t tmpfs tmpfs /run
    mkdir -p /run/ktls-out
    mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 out /run/ktls-out
    local o=/run/ktls-out
    off() {
        sync
        echo o >/proc/sysrq-trigger
        sleep 10
    }
    trap off EXIT
    ip link set lo up
    modprobe tls || true
    if ! grep -qw tls /proc/sys/net/ipv4/tcp_available_ulp; then
        echo "guest: tls is not in tcp_available_ulp: $(cat /proc/sys/net/ipv4/tcp_available_ulp)" >"$o/stderr"
        echo 125 >"$o/rc"
        return
    fi
    ulimit -n 65536 || true
    local kv
    while IFS= read -r -d '' kv; do
        export "$kv" 2>/dev/null || true
    done <"$o/env"
    local -a cmd=()
    while IFS= read -r -d '' kv; do
        cmd+=("$kv")
    done <"$o/cmd"
    local rc=0 t0
    t0=$(cut -d' ' -f1 /proc/uptime)
    echo "$t0" >"$o/uptime"
    (cd "$(cat "$o/cwd")" && exec "${cmd[@]}") >"$o/stdout" 2>"$o/stderr" </dev/null || rc=$?
    awk -v a="$t0" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN { printf "%.2f", b - a }' >"$o/took"
    echo "$rc" >"$o/rc"
}

# kvm where /dev/kvm can run an ordinary kernel, else tcg (emulation: slower, but
# the guest's kernel, and so its kernel TLS, is the real thing). A host whose KVM is
# PVM (kvm_pvm: nested virtualisation without VMX/SVM, as on Firecracker hosts)
# runs only kernels built as PVM guests, and a Debian kernel hangs in it at boot.
# KTLS_VM_ACCEL=kvm|tcg overrides. The machine is q35: its HPET lets the kernel
# calibrate the TSC on a busy host, where microvm (PIT only) hangs at boot one time
# in three.
accelerator() {
    if [ -n "${KTLS_VM_ACCEL:-}" ]; then
        printf '%s' "$KTLS_VM_ACCEL"
    elif [ -r /dev/kvm ] && [ -w /dev/kvm ] && [ ! -d /sys/module/kvm_pvm ]; then
        printf kvm
    else
        printf tcg
    fi
}

check() {
    command -v qemu-system-x86_64 >/dev/null 2>&1 || die "qemu-system-x86_64 is missing (scripts/ktls-vm.sh install)"
    [ -n "$(kernel_version)" ] || die "no Debian kernel with modules (scripts/ktls-vm.sh install)"
    [ -d /usr/lib/klibc/bin ] || die "klibc-utils is missing (scripts/ktls-vm.sh install)"
}

run() {
    [ "${1:-}" = "--" ] && shift
    [ "$#" -gt 0 ] || die "usage: $0 run -- CMD ARGS"
    install_packages
    check
    local kver initrd out start rc
    kver="$(kernel_version)"
    initrd="$(initramfs "$kver")"
    out="$(mktemp -d /tmp/ktls-vm.XXXXXX)"
    # shellcheck disable=SC2064
    trap "rm -rf '$out'" EXIT
    env -0 >"$out/env"
    printf '%s\0' "$@" >"$out/cmd"
    pwd >"$out/cwd"
    start=$(date +%s.%N)
    rc=0
    local -a accel
    case "$(accelerator)" in
        kvm) accel=(-accel kvm -cpu host) ;;
        *) accel=(-accel tcg,thread=multi -cpu max) ;;
    esac
    timeout --foreground -k 5 "${KTLS_VM_TIMEOUT:-600}" \
        qemu-system-x86_64 "${accel[@]}" -machine q35 \
        -m "${KTLS_VM_MEM:-2048}" -smp "${KTLS_VM_CPUS:-2}" \
        -nodefaults -no-user-config -display none -no-reboot \
        -serial "file:$out/console.log" -monitor none \
        -kernel "/boot/vmlinuz-$kver" -initrd "$initrd" \
        -append "console=ttyS0 ${KTLS_VM_APPEND:-quiet loglevel=3} panic=-1 rdinit=/init" \
        -fsdev "local,id=root,path=/,security_model=none,readonly=on,multidevs=remap" \
        -device "virtio-9p-pci,fsdev=root,mount_tag=root" \
        -fsdev "local,id=out,path=$out,security_model=none,multidevs=remap" \
        -device "virtio-9p-pci,fsdev=out,mount_tag=out" \
        </dev/null >"$out/qemu.log" 2>&1 || rc=$?
    local end
    end=$(date +%s.%N)
    [ -f "$out/stdout" ] && cat "$out/stdout"
    [ -f "$out/stderr" ] && cat "$out/stderr" >&2
    if [ "${KTLS_VM_VERBOSE:-0}" = 1 ] || [ ! -f "$out/rc" ]; then
        log "qemu exit status $rc; qemu said:"
        cat "$out/qemu.log" >&2 || true
        log "guest console:"
        cat "$out/console.log" >&2 || true
    fi
    [ -f "$out/rc" ] || die "the guest did not report the command's exit status"
    log "$(awk -v s="$start" -v e="$end" -v u="$(cat "$out/uptime" 2>/dev/null || echo 0)" \
        -v t="$(cat "$out/took" 2>/dev/null || echo 0)" -v k="$kver" -v a="$(accelerator)" \
        'BEGIN { printf "kernel %s (%s): guest uptime at the command %.2f s, the command %.2f s, whole run %.2f s (boot and power-off %.2f s)", k, a, u, t, e - s, e - s - t }')"
    return "$(cat "$out/rc")"
}

case "${1:-}" in
    install)
        install_packages
        initramfs "$(kernel_version)" >/dev/null
        log "ok: kernel $(kernel_version)"
        ;;
    check) check ;;
    run)
        shift
        run "$@"
        ;;
    guest) guest ;;
    *) die "usage: $0 install | check | run -- CMD ARGS" ;;
esac
