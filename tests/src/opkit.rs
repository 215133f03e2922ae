//! Helpers of the operator's-kit tests (graph, agent, traps, JSON schemas).
use std::{process::Output, time::Duration};

use crate::Sandbox;

/// Status, stdout and stderr of a finished command, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// In a nat-lab brought up with `prefix`: an HTTP server on white:5000
/// (owned by the sandbox) and a first request from upstream through the
/// forward on the uplink address, retried until the server answers. Each
/// call after that is one DNAT session.
pub fn serve_forward(sb: &mut Sandbox, prefix: &str) {
    let (white, upstream) = (format!("{prefix}white"), format!("{prefix}upstream"));
    sb.spawn(
        &white,
        &["python3", "-m", "http.server", "5000", "--bind", "0.0.0.0"],
    );
    let served = Sandbox::wait_for(Duration::from_secs(10), || {
        let o = sb.sh_output(&upstream, FETCH);
        o.status.success().then_some(())
    });
    assert!(served.is_some(), "forward 5000 never answered");
}

/// A request from upstream to the uplink address's forwarded port 5000.
pub const FETCH: &str = "curl -s -o /dev/null -m 2 http://203.0.113.1:5000/";
