//! CPU-bound work with known shares of instructions, for profiling Linux guests: the
//! `workload` binary runs rounds of [`work::hot_alpha`] (50 %), [`work::hot_beta`]
//! (30 %) and [`work::hot_gamma`] (20 %); the `spinner` binary rounds of
//! [`work::spin_left`] (75 %) and [`work::spin_right`] (25 %).

pub mod work;

/// CPU time this process has had, in seconds (`CLOCK_PROCESS_CPUTIME_ID`).
pub fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to the valid, exclusively borrowed `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID) failed");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}
