//! The command groups of the CLI, each over the library's engine.
pub mod agent;
pub mod common;
pub mod completions;
pub mod demo;
pub mod graph;
pub mod inspect;
pub mod lifecycle;
pub mod logs;
pub mod nat_cmds;
pub mod traps;
