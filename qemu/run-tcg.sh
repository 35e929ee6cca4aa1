#!/usr/bin/env bash
# Boot the hypervisor image under QEMU TCG (software emulation: no VMX; the hypervisor
# must stop with 'hv: fatal: VMX unavailable: ...', status 3).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
iso="$root/build/hypervisor.iso"
out="$root/build/tcg-run"
mem=512
cpus=1
extra=()

usage() {
    cat <<USAGE
Usage: qemu/run-tcg.sh [--iso FILE] [--out DIR] [--mem MB] [--cpus N] [-- QEMU-ARGS...]

Boots the hypervisor ISO (build it with 'cargo xtask image') in QEMU with TCG,
-cpu max. TCG emulates no VMX, so this exercises the boot path (GRUB, multiboot2,
serial console) and the hypervisor's "no VT-x" error: expect stop status 3.

Output: DIR/serial.txt (COM1, text console) and DIR/samples.vmlog (COM2, binary
sample log). The hypervisor's stop status is decoded from QEMU's exit status
(isa-debug-exit: status = (N << 1) | 1).

Options:
  --iso FILE   image to boot (default: build/hypervisor.iso)
  --out DIR    where the serial files go (default: build/tcg-run)
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
        *) echo "run-tcg.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

[[ -f "$iso" ]] || { echo "run-tcg.sh: $iso does not exist: run 'cargo xtask image'" >&2; exit 2; }

mkdir -p "$out"
rm -f "$out/serial.txt" "$out/samples.vmlog"
echo "run-tcg.sh: booting $iso; console -> $out/serial.txt, samples -> $out/samples.vmlog"
status=0
qemu-system-x86_64 \
    -machine q35 -accel tcg -cpu max \
    -m "$mem" -smp "$cpus" \
    -display none -monitor none -nic none \
    -serial "file:$out/serial.txt" -serial "file:$out/samples.vmlog" \
    -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
    -cdrom "$iso" -boot d -no-reboot \
    "${extra[@]}" || status=$?
cat "$out/serial.txt" 2>/dev/null || true
if (( status & 1 )); then
    echo "run-tcg.sh: hypervisor stop status $(( status >> 1 ))"
    exit $(( status >> 1 ))
fi
echo "run-tcg.sh: QEMU exited with status $status (no debug-exit)"
exit "$status"
