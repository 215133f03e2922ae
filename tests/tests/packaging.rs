//! What the Debian package ships besides the binary, made by the binary
//! itself: shell completions (`netbridge completions SHELL`, clap_complete)
//! that bash loads and that complete real subcommands and options, and man
//! pages (the hidden `netbridge manpages DIR`, clap_mangen) for the tool
//! and every command, which man renders. (`cargo xtask dist` builds the
//! package; `.ci/run` installs, runs and removes it.)
use std::process::Command;

use netbridge_tests::{netbridge_bin, unique_id};

fn nb(args: &[&str]) -> String {
    let o = Command::new(netbridge_bin()).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "netbridge {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// The visible commands, from `netbridge --help`.
fn commands() -> Vec<String> {
    let help = nb(&["--help"]);
    let list = help.split("Commands:").nth(1).unwrap();
    list.lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(String::from)
        .collect()
}

/// Runs `script` in bash with the completion loaded; returns COMPREPLY.
fn complete(line: &str) -> Vec<String> {
    let words: Vec<&str> = line.split(' ').collect();
    let script = format!(
        "source <({bin} completions bash) && COMP_WORDS=({words}) && COMP_CWORD={cword} && \
         COMP_LINE='{line}' && COMP_POINT={point} && \
         _netbridge netbridge \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\" && \
         printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        bin = netbridge_bin().display(),
        words = words.join(" "),
        cword = words.len() - 1,
        point = line.len(),
    );
    let o = Command::new("bash").args(["-c", &script]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // (printf prints one empty line for an empty array.)
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

#[test]
fn completions_for_every_shell_and_bash_completes() {
    let cmds = commands();
    for c in ["up", "down", "graph", "agent", "completions", "stats"] {
        assert!(cmds.iter().any(|x| x == c), "{c} not in {cmds:?}");
    }
    assert!(!cmds.iter().any(|x| x == "manpages"), "hidden: {cmds:?}");
    for (shell, marker) in [
        ("bash", "complete -F _netbridge"),
        ("zsh", "#compdef netbridge"),
        ("fish", "complete -c netbridge"),
        ("elvish", "edit:completion:arg-completer[netbridge]"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let s = nb(&["completions", shell]);
        assert!(s.contains(marker), "{shell}: no {marker:?}");
        assert!(s.contains("graph") && s.contains("agent"), "{shell}");
    }
    let o = Command::new("bash")
        .args(["-n", "-c", &nb(&["completions", "bash"])])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Real completions: a command, an option, an option's values.
    assert_eq!(complete("netbridge gra"), vec!["graph"]);
    let opts = complete("netbridge graph --f");
    assert!(opts.contains(&"--format".to_string()), "{opts:?}");
    let formats = complete("netbridge graph --format ");
    assert_eq!(formats, vec!["svg", "dot", "json"]);
    // Control: nothing completes what does not exist.
    assert!(complete("netbridge zzz").is_empty());
    let o = Command::new(netbridge_bin())
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!o.status.success());
}

#[test]
fn man_pages_for_the_tool_and_every_command() {
    let dir = TmpDir(std::env::temp_dir().join(format!("nb-man-{}", unique_id())));
    let dir = &dir.0;
    nb(&["manpages", dir.to_str().unwrap()]);
    let mut pages: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    let mut expect: Vec<String> = commands()
        .iter()
        .map(|c| format!("netbridge-{c}.1"))
        .collect();
    // Subcommands of subcommands get their own too.
    expect.extend(["add", "del", "list"].map(|c| format!("netbridge-forward-{c}.1")));
    expect.push("netbridge.1".into());
    expect.sort();
    assert_eq!(pages, expect);
    // man renders them: the name line, the options, the version.
    let render = |page: &str| {
        let o = Command::new("man")
            .args(["-l", "-P", "cat"])
            .arg(dir.join(page))
            .env("MANWIDTH", "100")
            .output()
            .expect("man (man-db)");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        // Justified text: compare with single spaces.
        let text = String::from_utf8_lossy(&o.stdout);
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    };
    let graph = render("netbridge-graph.1");
    assert!(
        graph.contains("NAME netbridge-graph - Draw the topology"),
        "{graph}"
    );
    assert!(
        graph.contains("--format") && graph.contains("--interval"),
        "{graph}"
    );
    let main = render("netbridge.1");
    assert!(main.contains("netbridge-agent(1)"), "{main}");
    let version = nb(&["--version"]);
    let version = version.split_whitespace().nth(1).unwrap();
    assert!(main.contains(version), "{version}: {main}");
}

/// A directory removed when the test ends, however it ends.
struct TmpDir(std::path::PathBuf);

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
