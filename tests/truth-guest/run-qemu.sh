#!/bin/sh
# Builds the truth guest, boots it bare under QEMU TCG (PVH entry through -kernel) and
# checks what it prints. `-icount shift=0` makes the TSC count instructions (one per ns),
# so the guest's own TSC accounting measures the instruction split of the busy phase. Without a hypervisor VMCALL raises #UD, so the guest busy-waits
# instead of halting and powers off through isa-debug-exit; the run shows the boot path,
# ring 3, the page tables and the printed bundle/truth lines, not idle-by-HLT.
#
#   tests/truth-guest/run-qemu.sh ["gk.rounds=4 gk.vm=t1"]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../.."
target=${CARGO_TARGET_DIR:-$PWD/target}
cmdline=${1:-gk.rounds=4}

cargo build -q -p truth-guest --target x86_64-unknown-none --release
elf=$target/x86_64-unknown-none/release/truth-guest
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

status=0
timeout 120 qemu-system-x86_64 -kernel "$elf" -append "$cmdline" -m 64 \
    -display none -serial "file:$work/console.txt" -no-reboot \
    -icount shift=0 -device isa-debug-exit,iobase=0xf4,iosize=0x04 || status=$?
cat "$work/console.txt"
# isa-debug-exit turns the guest's status 0 into (0 << 1) | 1 = 1.
[ "$status" = 1 ] || { echo "FAIL: qemu exit status $status (want 1: guest status 0)"; exit 1; }
grep -q 'loops=ok' "$work/console.txt" || { echo "FAIL: no 'loops=ok'"; exit 1; }
grep -q '^@gk proc 1 alpha cr3=0x184000 ' "$work/console.txt" || { echo "FAIL: alpha proc line"; exit 1; }
grep -q '^@gk proc 2 beta cr3=0x188000 ' "$work/console.txt" || { echo "FAIL: beta proc line"; exit 1; }
# Measured instruction split: alpha (heavy + light) 70 %, beta 20 %, kernel 10 %, and
# busy = rounds x 10 units x 500 000 instructions, each within 0.1 %.
done_line=$(grep '^truth-guest: done:' "$work/console.txt")
field() { echo "$done_line" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
rounds=$(grep '^truth busy_tsc' "$work/console.txt" | tr ' ' '\n' | sed -n 's/^rounds=//p')
busy=$(field busy_tsc)
expect=$((rounds * 10 * 500000))
within() { # within NAME VALUE EXPECTED: |VALUE - EXPECTED| <= EXPECTED / 1000
    diff=$(( $2 > $3 ? $2 - $3 : $3 - $2 ))
    [ "$diff" -le $(( $3 / 1000 )) ] || { echo "FAIL: $1=$2, expected $3 +- 0.1 %"; exit 1; }
    echo "ok: $1=$2 (expected $3)"
}
within busy_insns "$busy" "$expect"
within alpha_insns "$(field alpha_tsc)" $((expect * 7 / 10))
within beta_insns "$(field beta_tsc)" $((expect * 2 / 10))
within kernel_insns "$(field kernel_tsc)" $((expect / 10))
cargo run -q -p guest-kit -- extract "$work/console.txt" --out-dir "$work"
TRUTH_GUEST_ELF=$elf cargo test -q -p truth-guest -- --ignored
echo "PASS: truth guest under QEMU TCG ($cmdline)"
