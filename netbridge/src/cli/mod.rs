//! The command groups of the CLI, each over the library's engine.
pub mod common;
pub mod demo;
pub mod inspect;
pub mod lifecycle;
pub mod logs;
pub mod nat_cmds;
