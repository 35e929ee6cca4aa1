#!/usr/bin/env bash
# Boot the hypervisor image under nested QEMU/KVM (the hypervisor sees VMX and a PMU).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=qemu/common.sh
source "$root/qemu/common.sh"
name=run-kvm.sh
iso="$root/build/hypervisor.iso"
out="$root/build/kvm-run"
mem=1024
cpus=2
extra=()

usage() {
    cat <<USAGE
Usage: qemu/run-kvm.sh [--iso FILE] [--out DIR] [--mem MB] [--cpus N] [-- QEMU-ARGS...]

Boots the hypervisor ISO (build it with 'cargo xtask image') in QEMU with KVM and
nested VMX: -accel kvm -cpu host,+vmx,pmu=on. The host needs an Intel CPU with VT-x
and the kvm_intel module loaded with nested=1:
    sudo modprobe -r kvm_intel && sudo modprobe kvm_intel nested=1
    cat /sys/module/kvm_intel/parameters/nested    # Y

Output: DIR/serial.txt (COM1, text console) and DIR/samples.vmlog (COM2, binary
sample log). The hypervisor's stop status is decoded from QEMU's exit status
(isa-debug-exit: status = (N << 1) | 1).

Options:
  --iso FILE   image to boot (default: build/hypervisor.iso)
  --out DIR    where the serial files go (default: build/kvm-run)
  --mem MB     guest RAM of the virtual machine (default: $mem)
  --cpus N     virtual CPUs (default: $cpus)
  -h, --help   this text
Anything after '--' is passed to QEMU unchanged.
USAGE
}

parse_args "$@"

require_iso
[[ -w /dev/kvm ]] || { echo "run-kvm.sh: /dev/kvm is missing or not writable" >&2; exit 2; }
if [[ ! -r /sys/module/kvm_intel/parameters/nested ]]; then
    echo "run-kvm.sh: the kvm_intel module is not loaded (needs an Intel CPU with VT-x; see --help)" >&2
    exit 2
fi
nested="$(cat /sys/module/kvm_intel/parameters/nested)"
if [[ "$nested" != "Y" && "$nested" != "1" ]]; then
    echo "run-kvm.sh: kvm_intel nested=$nested: load kvm_intel with nested=1 (see --help)" >&2
    exit 2
fi

boot_and_exit -accel kvm -cpu host,+vmx,pmu=on
