#![no_std]
// Stub library target (aya-template layout): the programs live in the
// `netbridge` [[bin]], this only lets host tooling treat the crate normally.
