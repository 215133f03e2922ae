//! The CNI protocol layer of `netbridge-cni`, independent of the engine:
//! spec types with hand-written (de)serialization for CNI 0.4.0, 1.0.0 and
//! 1.1.0, the environment, the error object, VERSION, the configuration
//! (the reference bridge plugin's keys, the runtime's keys, netbridge's
//! own), IPAM delegation and the built-in IPAM's locked lease store, and a
//! dispatcher that turns one invocation into one [`Plugin`] call.
//!
//! [`NetbridgeCni`] is the plugin on netbridge's engine (the
//! `netbridge-cni` binary): one CNI network is one topology, one
//! attachment one port on its bridge.
//!
//! Shapes follow what Debian 12's podman 4.3 and reference plugins
//! (containernetworking-plugins 1.1.1) actually exchange; the captured
//! samples under `testdata/` are the fixtures of the tests.
pub mod attach;
pub mod conf;
pub mod env;
pub mod error;
pub mod ipam;
pub mod names;
pub mod network;
pub mod plugin;
pub mod result;
pub mod store;
pub mod version;

pub use attach::NetbridgeCni;

pub use conf::{Attachment, NetConf, PortMapping};
pub use env::{CniEnv, Command};
pub use error::{CniError, code};
pub use plugin::{Plugin, Reply, Request, dispatch, plugin_main};
pub use result::CniResult;
pub use version::CniVersion;
