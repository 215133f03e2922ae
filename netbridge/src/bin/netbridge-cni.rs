//! `netbridge-cni`: the CNI plugin binary. Runtimes run it once per call
//! with the CNI environment and the network configuration on stdin; see
//! `netbridge::cni` and the README's CNI section.
fn main() {
    // Warnings (a lock being waited for) go to stderr, which runtimes log;
    // stdout carries only the result or error JSON.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .target(env_logger::Target::Stderr)
        .init();
    netbridge::cni::plugin_main(
        "netbridge-cni",
        &mut netbridge::cni::NetbridgeCni::default(),
    )
}
