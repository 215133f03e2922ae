//! netbridge: declarative namespaces, veths and a bridge, with the datapath
//! running in eBPF. The binary (`main.rs`) is a thin CLI over this library;
//! the integration tests use it directly.
pub mod bpf;
pub mod capture;
pub mod cni;
pub mod config;
pub mod lock;
pub mod metrics;
pub mod nat;
pub mod nat6;
pub mod netlink;
pub mod netns;
pub mod pins;
pub mod progstats;
pub mod state;
pub mod stats;
pub mod tcfilter;
pub mod topology;
