//! Reading the running Linux kernel from user space, as root, without a module: the CR3
//! key of every process.
//!
//! - [`kcore`]: kernel virtual memory through `/proc/kcore` (an ELF core file).
//! - [`btf`]: `task_struct`/`mm_struct` field offsets from `/sys/kernel/btf/vmlinux`
//!   (feature `collect`, the default: it needs the `btfparse` crate).
//! - [`btf_scan`]: the same offsets from raw BTF in one pass, without the crate (what
//!   `guest-kit watch` uses: ~60 times less guest CPU at startup).
//! - [`tasks`]: the walk of `init_task.tasks` and `__pa(mm->pgd)` of each process.
//! - [`poll`]: the cheap repeated walk of `guest-kit watch` (few reads per task).
//! - [`synth`]: synthetic kernels (BTF, kcore, kallsyms) for tests.

#[cfg(feature = "collect")]
pub mod btf;
pub mod btf_scan;
pub mod kcore;
pub mod poll;
pub mod synth;
pub mod tasks;
