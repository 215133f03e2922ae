//! `completions SHELL` (clap_complete) and the hidden `manpages DIR`
//! (clap_mangen) that `cargo xtask dist` uses to build the package.
use std::path::Path;

use anyhow::{Context, Result};

/// Prints the completion script of `shell` for `cmd`.
pub fn print(mut cmd: clap::Command, shell: clap_complete::Shell) -> Result<()> {
    let name = cmd.get_name().to_string();
    clap_complete::generate(shell, &mut cmd, name, &mut std::io::stdout());
    Ok(())
}

/// Writes `netbridge.1` and one page per command (`netbridge-up.1`, ...).
pub fn manpages(cmd: clap::Command, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(cmd, dir)
        .with_context(|| format!("writing man pages into {}", dir.display()))
}
