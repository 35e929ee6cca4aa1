#![doc = include_str!("../README.md")]

pub mod bundle;
pub mod channel;
#[cfg(feature = "collect")]
pub mod collect;
pub mod elf;
pub mod kernel;
pub mod truth;
#[cfg(feature = "collect")]
pub mod watch;

pub use bundle::{
    Bundle, KMap, KSym, Kernel, Map, ParseError, ParseErrorKind, Proc, USeg, USym, cr3_key,
    normalize_cr3,
};
