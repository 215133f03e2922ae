//! netbridge CLI: argument parsing and dispatch only; each command group
//! lives in `cli/`, over the library's engine.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};

mod cli;

use cli::common::{Which, parse_duration};

#[derive(Parser)]
#[command(
    version,
    about = "Namespaces, veths and a bridge from one file, with an eBPF datapath"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create (or repair) everything the topology describes.
    Up {
        #[command(flatten)]
        which: Which,
        /// Print the list of changes as JSON.
        #[arg(long)]
        json: bool,
        /// Replace the running TC programs with this binary's (upgrade):
        /// no gap, pinned maps, conntrack and counters kept.
        #[arg(long)]
        reload: bool,
        /// After `up`, stay in the foreground printing the datapath's log
        /// events (new NAT sessions, drops) at this level (error..trace).
        #[arg(long)]
        log_level: Option<log::LevelFilter>,
        /// With --log-level: stop after this long (default: Ctrl-C).
        #[arg(long, value_parser = parse_duration, requires = "log_level")]
        log_duration: Option<Duration>,
    },
    /// Print the datapath's log events (new NAT sessions, drops; rate-limited
    /// in BPF) of a running topology until Ctrl-C.
    Log {
        #[command(flatten)]
        which: Which,
        #[arg(long, default_value = "info")]
        level: log::LevelFilter,
        /// Stop after this long.
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
    },
    /// Show packets as the datapath sees them (verdicts, drops with their
    /// reason, NAT rewrites), like tcpdump on a Linux bridge port.
    Capture {
        #[command(flatten)]
        which: Which,
        /// Stop after this long (e.g. 5s).
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
        #[command(flatten)]
        args: netbridge::capture::CaptureArgs,
    },
    /// Remove exactly what `up` created.
    Down {
        #[command(flatten)]
        which: Which,
    },
    /// Show namespaces, links, addresses and attached programs.
    Status {
        #[command(flatten)]
        which: Which,
        #[arg(long)]
        json: bool,
    },
    /// Show datapath counters read from the BPF maps.
    Stats {
        #[command(flatten)]
        which: Which,
        /// Machine-readable output (one JSON object per refresh with --watch).
        #[arg(long)]
        json: bool,
        /// Refresh in place like `top`, with rates (pps, bit/s).
        #[arg(long)]
        watch: bool,
        /// Refresh interval for --watch, sampling time for --programs (e.g. 1s, 500ms).
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        interval: Duration,
        /// Stop --watch after this many refreshes.
        #[arg(long)]
        count: Option<u64>,
        /// Per-program run count and ns/run (kernel BPF statistics,
        /// enabled only while sampling over --interval).
        #[arg(long, conflicts_with = "watch")]
        programs: bool,
    },
    /// Serve the counters as Prometheus metrics on http://LISTEN/metrics.
    Metrics {
        #[command(flatten)]
        which: Which,
        #[arg(long, default_value = "127.0.0.1:9469")]
        listen: std::net::SocketAddr,
        /// Exit after serving this many requests (bounded runs, tests).
        #[arg(long)]
        max_requests: Option<u64>,
    },
    /// List the MAC addresses the BPF datapath learned (port, age).
    Fdb {
        #[command(flatten)]
        which: Which,
        #[arg(long)]
        json: bool,
    },
    /// List NAT sessions (like `conntrack -L`) and the port-pool use.
    Conntrack {
        #[command(flatten)]
        which: Which,
        #[arg(long)]
        json: bool,
    },
    /// Sweep now: the kernel removes NAT sessions past their timeout (its
    /// own timer does so anyway; once, or every --every).
    Gc {
        #[command(flatten)]
        which: Which,
        /// Keep running, collecting at this interval (e.g. 10s).
        #[arg(long, value_parser = parse_duration)]
        every: Option<Duration>,
        /// With --every: stop after this many rounds.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Add, remove or list port forwards of a running topology (maps only,
    /// no reload; affected sessions are purged).
    Forward {
        #[command(subcommand)]
        op: ForwardOp,
    },
    /// Check a topology file without changing anything.
    Check {
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
    },
    /// Run a command inside a namespace (like `ip netns exec`).
    Exec {
        netns: String,
        #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
        cmd: Vec<String>,
    },
    /// Draw the topology: namespaces, bridge, ports, links, uplink,
    /// forwards, addresses; a running one with live rates and drops.
    Graph {
        #[command(flatten)]
        which: Which,
        /// svg (drawn by netbridge itself), dot (Graphviz) or json.
        #[arg(long, value_enum, default_value = "svg")]
        format: cli::graph::Format,
        /// Running topology: measure rates over this long (0: counters only).
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        interval: Duration,
        /// Write to this file instead of stdout.
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
    },
    /// One long-running process for the host: /metrics for every running
    /// topology, and their datapath logs on stdout (SIGTERM stops it).
    Agent {
        #[arg(long, default_value = "127.0.0.1:9469")]
        listen: std::net::SocketAddr,
        /// Only topologies whose name starts with this.
        #[arg(long)]
        prefix: Option<String>,
        /// How often to look for topologies and programs that came, changed
        /// or went (for the logs; metrics look at every scrape).
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        rescan: Duration,
        /// Level of the datapath log events printed (error..trace).
        #[arg(long, default_value = "info")]
        log_level: log::LevelFilter,
        /// Serve metrics only, follow no log.
        #[arg(long)]
        no_log: bool,
        /// Stop after this long (default: until SIGTERM or Ctrl-C).
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Write the man pages (netbridge.1 and one per command) into DIR.
    #[command(hide = true)]
    Manpages { dir: PathBuf },
    /// Bring up the default lab, send traffic, show counters, tear down.
    Demo {
        /// How long to run traffic (e.g. 5s, 1m). Without it: until Ctrl-C.
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
        /// Prefix the lab's names (run beside another copy).
        #[arg(long)]
        prefix: Option<String>,
    },
}

#[derive(Subcommand)]
enum ForwardOp {
    /// Forward PROTO PORT (or "first-last") on the uplink address to NS:PORT.
    Add {
        #[command(flatten)]
        which: Which,
        proto: String,
        port: String,
        to: String,
    },
    /// Remove the forward of PROTO PORT and purge its sessions.
    Del {
        #[command(flatten)]
        which: Which,
        proto: String,
        port: String,
    },
    /// List forwards and their hits (new sessions).
    List {
        #[command(flatten)]
        which: Which,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netbridge: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

impl Cmd {
    /// Whether the command creates or removes namespace or bpffs mounts
    /// (refused in a private mount namespace, see `cli::traps`).
    fn mounts(&self) -> bool {
        matches!(self, Cmd::Up { .. } | Cmd::Down { .. } | Cmd::Demo { .. })
    }
}

fn run(cli: Cli) -> Result<()> {
    use cli::{demo, inspect, lifecycle, logs, nat_cmds};
    if cli.cmd.mounts() {
        cli::traps::refuse_private_mounts()?;
    }
    match cli.cmd {
        Cmd::Up {
            which,
            json,
            reload,
            log_level,
            log_duration,
        } => lifecycle::up(
            &which,
            lifecycle::UpArgs {
                json,
                reload,
                log_level,
                log_duration,
            },
        ),
        Cmd::Log {
            which,
            level,
            duration,
        } => logs::follow(&cli::common::name_of(&which)?, level, duration),
        Cmd::Capture {
            which,
            duration,
            args,
        } => Ok(
            netbridge::capture::run(&cli::common::name_of(&which)?, &args, duration).map(drop)?,
        ),
        Cmd::Down { which } => lifecycle::down(&which),
        Cmd::Status { which, json } => lifecycle::status(&which, json),
        Cmd::Stats {
            which,
            json,
            interval,
            programs: true,
            ..
        } => inspect::programs(&which, json, interval),
        Cmd::Stats {
            which,
            json,
            watch,
            interval,
            count,
            programs: false,
        } => inspect::stats(&which, json, watch, interval, count),
        Cmd::Metrics {
            which,
            listen,
            max_requests,
        } => inspect::metrics(&which, listen, max_requests),
        Cmd::Fdb { which, json } => inspect::fdb(&which, json),
        Cmd::Conntrack { which, json } => nat_cmds::conntrack(&which, json),
        Cmd::Gc {
            which,
            every,
            count,
        } => nat_cmds::gc(&which, every, count),
        Cmd::Forward { op } => match op {
            ForwardOp::Add {
                which,
                proto,
                port,
                to,
            } => nat_cmds::forward_add(&which, &proto, &port, &to),
            ForwardOp::Del { which, proto, port } => nat_cmds::forward_del(&which, &proto, &port),
            ForwardOp::List { which, json } => nat_cmds::forward_list(&which, json),
        },
        Cmd::Check { file } => lifecycle::check(file),
        Cmd::Exec { netns, cmd } => inspect::exec(&netns, &cmd),
        Cmd::Demo { duration, prefix } => demo::run(duration, prefix),
        Cmd::Graph {
            which,
            format,
            interval,
            output,
        } => cli::graph::run(&which, format, interval, output),
        Cmd::Agent {
            listen,
            prefix,
            rescan,
            log_level,
            no_log,
            duration,
        } => cli::agent::run(cli::agent::AgentArgs {
            listen,
            prefix,
            rescan,
            log_level: (!no_log).then_some(log_level),
            duration,
        }),
        Cmd::Completions { shell } => cli::completions::print(Cli::command(), shell),
        Cmd::Manpages { dir } => cli::completions::manpages(Cli::command(), &dir),
    }
}
