#![doc = include_str!("../README.md")]

pub mod bundle;
pub mod collect;
pub mod truth;

pub use bundle::{Bundle, KMap, KSym, Map, ParseError, ParseErrorKind, Proc, normalize_cr3};
