//! Every `--json` output validates against its schema in `schemas/`
//! (JSON Schema 2020-12, checked by Debian's python3-jsonschema), taken
//! from a running NAT lab with sessions, forwards, learned MACs and rates;
//! every schema is used, and broken documents (a field missing, an extra
//! field, a wrong type) are rejected, so the check can fail.
use std::{collections::BTreeSet, io::Write, path::PathBuf, process::Stdio};

use netbridge_tests::{Sandbox, example, opkit::serve_forward, require_root, script};
use serde_json::Value;

fn schema(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../schemas")
        .join(format!("{name}.schema.json"))
}

/// Validates `doc` against schema `name`: Ok, or the validator's errors.
fn validate(name: &str, doc: &str, lines: bool) -> Result<(), String> {
    let path = schema(name);
    let mut argv = vec![script("validate_json.py"), path.display().to_string()];
    if lines {
        argv.push("--lines".into());
    }
    let mut child = std::process::Command::new("/usr/bin/python3")
        .args(&argv)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 (xtask setup installs python3-jsonschema)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(doc.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !err.contains("Traceback"),
        "the validator itself failed:\n{err}"
    );
    if out.status.success() {
        Ok(())
    } else {
        Err(err)
    }
}

#[test]
fn every_json_output_matches_its_schema() {
    require_root!();
    let mut sb = Sandbox::new();
    let prefix = sb.prefix();
    let file = example("nat-lab.toml");
    let topo = sb.name("nat-lab");
    let mut used = BTreeSet::new();
    let mut check = |sb: &Sandbox, name: &str, args: &[&str], lines: bool| -> Value {
        let out = sb.nb_ok(args);
        if let Err(e) = validate(name, &out, lines) {
            panic!("netbridge {args:?} does not match {name}.schema.json:\n{e}\n{out}");
        }
        used.insert(name.to_string());
        let first = out.lines().next().unwrap_or("");
        serde_json::from_str(if lines { first } else { &out }).unwrap()
    };
    let up = check(
        &sb,
        "up",
        &["up", "-f", &file, "--prefix", &prefix, "--json"],
        false,
    );
    assert!(!up["changes"].as_array().unwrap().is_empty());
    let again = check(
        &sb,
        "up",
        &["up", "-f", &file, "--prefix", &prefix, "--json"],
        false,
    );
    assert_eq!(again["changes"], Value::Array(vec![]));
    serve_forward(&mut sb, &prefix);
    let black = sb.name("black");
    sb.sh(&black, "ping -c 3 -i 0.2 203.0.113.254");
    let n = ["--name", topo.as_str()];
    // `args` and `--name TOPOLOGY`.
    let run =
        |args: &[&str]| -> Vec<String> { args.iter().chain(&n).map(|s| s.to_string()).collect() };
    let status = check(&sb, "status", &strs(&run(&["status", "--json"])), false);
    assert!(status.as_array().unwrap().len() >= 4);
    let fdb = check(&sb, "fdb", &strs(&run(&["fdb", "--json"])), false);
    assert!(!fdb.as_array().unwrap().is_empty(), "no MAC learned");
    let ct = check(
        &sb,
        "conntrack",
        &strs(&run(&["conntrack", "--json"])),
        false,
    );
    let kinds: BTreeSet<&str> = ct["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains("snat") && kinds.contains("dnat"), "{ct}");
    let fl = check(
        &sb,
        "forward-list",
        &strs(&run(&["forward", "list", "--json"])),
        false,
    );
    assert_eq!(fl.as_array().unwrap().len(), 2);
    let stats = check(&sb, "stats", &strs(&run(&["stats", "--json"])), false);
    assert!(stats["nat"].is_object());
    let watch = [
        "stats",
        "--json",
        "--watch",
        "--interval",
        "300ms",
        "--count",
        "2",
    ];
    check(&sb, "stats", &strs(&run(&watch)), true);
    // The programs' cost: the port program ran (pings above), the NAT
    // tail call is listed as counted in its caller.
    sb.sh(&black, "ping -c 3 -i 0.05 203.0.113.254");
    let progs = ["stats", "--programs", "--json", "--interval", "300ms"];
    let ps = check(&sb, "progstats", &strs(&run(&progs)), false);
    let programs = ps["programs"].as_array().unwrap();
    assert!(
        programs
            .iter()
            .any(|p| p["tail_called"] == Value::Bool(true))
            && programs.iter().any(|p| p["attached"][0]
                .as_str()
                .is_some_and(|a| a.starts_with("uplink_in@"))),
        "{ps}"
    );
    let g = check(
        &sb,
        "graph",
        &strs(&run(&["graph", "--format", "json", "--interval", "300ms"])),
        false,
    );
    assert!(g["sample_secs"].is_number());
    check(
        &sb,
        "graph",
        &[
            "graph",
            "--format",
            "json",
            "-f",
            &example("two-namespaces.toml"),
        ],
        false,
    );
    // A topology without NAT: stats' nat is null, and that is valid too.
    let three = example("bridge-three.toml");
    let p3 = sb.name("b-");
    sb.nb_ok(&["up", "-f", &three, "--prefix", &p3]);
    let s3 = check(
        &sb,
        "stats",
        &["stats", "--json", "--name", &format!("{p3}bridge-three")],
        false,
    );
    assert!(s3["nat"].is_null());
    sb.nb_ok(&["down", "--name", &format!("{p3}bridge-three")]);

    // Every schema in schemas/ was used.
    let all: BTreeSet<String> = std::fs::read_dir(schema("x").parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter_map(|n| n.strip_suffix(".schema.json").map(String::from))
        .collect();
    assert_eq!(
        used, all,
        "schemas without a test, or tests without a schema"
    );

    // Controls: the validator rejects what breaks the schema.
    let mut broken = stats.clone();
    broken.as_object_mut().unwrap().remove("fdb_entries");
    assert!(
        validate("stats", &broken.to_string(), false)
            .unwrap_err()
            .contains("fdb_entries")
    );
    let mut extra = ct.clone();
    extra["surprise"] = Value::from(1);
    assert!(
        validate("conntrack", &extra.to_string(), false)
            .unwrap_err()
            .contains("surprise")
    );
    let mut wrong = fdb.clone();
    wrong[0]["vlan"] = Value::from("zero");
    assert!(validate("fdb", &wrong.to_string(), false).is_err());
    let mut live = g.clone();
    let port = live["edges"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|e| e["kind"] == "port")
        .unwrap();
    port["live"] = serde_json::json!({"sessions": 1, "sessions_per_sec": null});
    assert!(
        validate("graph", &live.to_string(), false).is_err(),
        "port edge with forward figures"
    );
    sb.nb_ok(&["down", "--name", &topo]);
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The drop-reason lists of the schemas are the datapath's table, in its
/// order: a reason added to `codes.rs` without its schema fails here
/// without root (the live check above needs a running lab).
#[test]
fn schemas_list_every_drop_reason() {
    let names: Vec<Value> = netbridge_common::DropReason::ALL
        .iter()
        .map(|r| Value::from(r.name()))
        .collect();
    for (file, path) in [
        ("stats", "/properties/drops"),
        ("graph", "/properties/drops"),
    ] {
        let text = std::fs::read_to_string(schema(file)).unwrap();
        let doc: Value = serde_json::from_str(&text).unwrap();
        let drops = doc
            .pointer(path)
            .unwrap_or_else(|| panic!("{file}.schema.json has no {path}"));
        assert_eq!(
            drops["propertyNames"]["enum"].as_array(),
            Some(&names),
            "{file}.schema.json {path} enum"
        );
        assert_eq!(
            drops["required"].as_array(),
            Some(&names),
            "{file}.schema.json {path} required"
        );
    }
}
