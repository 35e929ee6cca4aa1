//! `memcpy`, `memmove`, `memset`, `memcmp` and `bcmp` for the bare-metal target, which the
//! compiler emits calls to. The image is built with `-Z build-std=core,alloc` without the
//! `compiler-builtins-mem` feature, so nothing else provides them. String instructions
//! (`rep movsb`/`rep stosb`) keep the compiler from turning these into calls to themselves.

use core::arch::asm;
use core::ffi::{c_int, c_void};

/// # Safety
/// As C `memcpy`: `dst` and `src` valid for `n` bytes and not overlapping.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dst: *mut c_void, src: *const c_void, n: usize) -> *mut c_void {
    // SAFETY: the caller guarantees both ranges are valid; DF is clear (ABI).
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dst => _, inout("rsi") src => _, options(nostack, preserves_flags))
    };
    dst
}

/// # Safety
/// As C `memmove`: `dst` and `src` valid for `n` bytes; they may overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dst: *mut c_void, src: *const c_void, n: usize) -> *mut c_void {
    if (dst as usize).wrapping_sub(src as usize) >= n {
        // dst before src, or no overlap: copying forwards is safe.
        // SAFETY: as `memcpy`; a forward copy never reads a byte it already overwrote here.
        unsafe { memcpy(dst, src, n) };
    } else {
        // SAFETY: dst overlaps the tail of src: copy backwards (DF set, then cleared again),
        // starting from the last byte of each range.
        unsafe {
            asm!(
                "std",
                "rep movsb",
                "cld",
                inout("rcx") n => _,
                inout("rdi") dst.cast::<u8>().add(n - 1) => _,
                inout("rsi") src.cast::<u8>().add(n - 1) => _,
                options(nostack)
            )
        };
    }
    dst
}

/// # Safety
/// As C `memset`: `dst` valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dst: *mut c_void, c: c_int, n: usize) -> *mut c_void {
    // SAFETY: the caller guarantees the range is valid; DF is clear (ABI).
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dst => _, in("al") c as u8, options(nostack, preserves_flags))
    };
    dst
}

/// # Safety
/// As C `memcmp`: both pointers valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const c_void, b: *const c_void, n: usize) -> c_int {
    let (a, b) = (a.cast::<u8>(), b.cast::<u8>());
    let mut i = 0;
    while i < n {
        // SAFETY: i < n and both ranges are valid for n bytes.
        let (x, y) = unsafe { (a.add(i).read_volatile(), b.add(i).read_volatile()) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

/// # Safety
/// As `memcmp`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const c_void, b: *const c_void, n: usize) -> c_int {
    // SAFETY: same contract.
    unsafe { memcmp(a, b, n) }
}
