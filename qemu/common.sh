# shellcheck shell=bash
# shellcheck disable=SC2154  # name, iso, out, mem, cpus, extra: set by the caller
# Shared by qemu/run-kvm.sh and qemu/run-tcg.sh (sourced, not run). The caller sets
# `name` (its script name for messages), `iso`, `out`, `mem`, `cpus`, `extra=()`
# and defines `usage`.

# Parses the command line into iso/out/mem/cpus/extra; exits on --help or a bad argument.
parse_args() {
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --iso) iso="$2"; shift 2 ;;
            --out) out="$2"; shift 2 ;;
            --mem) mem="$2"; shift 2 ;;
            --cpus) cpus="$2"; shift 2 ;;
            -h|--help) usage; exit 0 ;;
            --) shift; extra=("$@"); break ;;
            *) echo "$name: unknown argument '$1' (see --help)" >&2; exit 2 ;;
        esac
    done
}

# Exits 2 unless the image exists.
require_iso() {
    [[ -f "$iso" ]] || { echo "$name: $iso does not exist: run 'cargo xtask image'" >&2; exit 2; }
}

# Boots the image in QEMU with the given accelerator/CPU arguments, prints the console,
# and exits with the hypervisor's stop status (isa-debug-exit: status = (N << 1) | 1)
# or QEMU's own exit status.
boot_and_exit() {
    mkdir -p "$out"
    rm -f "$out/serial.txt" "$out/samples.vmlog"
    echo "$name: booting $iso; console -> $out/serial.txt, samples -> $out/samples.vmlog"
    local status=0
    qemu-system-x86_64 \
        -machine q35 "$@" \
        -m "$mem" -smp "$cpus" \
        -display none -monitor none -nic none \
        -serial "file:$out/serial.txt" -serial "file:$out/samples.vmlog" \
        -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
        -cdrom "$iso" -boot d -no-reboot \
        "${extra[@]}" || status=$?
    cat "$out/serial.txt" 2>/dev/null || true
    if (( status & 1 )); then
        echo "$name: hypervisor stop status $(( status >> 1 ))"
        exit $(( status >> 1 ))
    fi
    echo "$name: QEMU exited with status $status (no debug-exit)"
    exit "$status"
}
