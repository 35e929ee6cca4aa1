#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod aggregate;
pub mod check;
pub mod cli;
pub mod input;
pub mod merge;
pub mod procs;
pub mod report;
pub mod rundir;
pub mod symbols;
pub mod synth;

pub use input::Fatal;
