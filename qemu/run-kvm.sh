#!/usr/bin/env bash
# Boot the hypervisor image under nested QEMU/KVM (the hypervisor sees VMX and a PMU).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
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

while [[ $# -gt 0 ]]; do
    case "$1" in
        --iso) iso="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --mem) mem="$2"; shift 2 ;;
        --cpus) cpus="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        --) shift; extra=("$@"); break ;;
        *) echo "run-kvm.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

[[ -f "$iso" ]] || { echo "run-kvm.sh: $iso does not exist: run 'cargo xtask image'" >&2; exit 2; }
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

mkdir -p "$out"
rm -f "$out/serial.txt" "$out/samples.vmlog"
echo "run-kvm.sh: booting $iso; console -> $out/serial.txt, samples -> $out/samples.vmlog"
status=0
qemu-system-x86_64 \
    -machine q35 -accel kvm -cpu host,+vmx,pmu=on \
    -m "$mem" -smp "$cpus" \
    -display none -monitor none -nic none \
    -serial "file:$out/serial.txt" -serial "file:$out/samples.vmlog" \
    -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
    -cdrom "$iso" -boot d -no-reboot \
    "${extra[@]}" || status=$?
cat "$out/serial.txt" 2>/dev/null || true
if (( status & 1 )); then
    echo "run-kvm.sh: hypervisor stop status $(( status >> 1 ))"
    exit $(( status >> 1 ))
fi
echo "run-kvm.sh: QEMU exited with status $status (no debug-exit)"
exit "$status"
