#!/usr/bin/env bash
# Boot the hypervisor image under QEMU TCG (software emulation: no VMX; the hypervisor
# must stop with 'hv: fatal: VMX unavailable: ...', status 3).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=qemu/common.sh
source "$root/qemu/common.sh"
name=run-tcg.sh
iso="$root/build/hypervisor.iso"
out="$root/build/tcg-run"
mem=1024
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

parse_args "$@"

require_iso

boot_and_exit -accel tcg -cpu max
