//! The `cs-check` command line: each check's exit status on good and bad input
//! (0 correct, 1 violation, 2 error, 3 unknown). Needs no Go toolchain.
//!
//! Does not prove: the checkers' verdicts (their unit tests do) beyond one
//! example each.

use std::path::Path;
use std::process::Command;

fn cs_check(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cs-check"))
        .args(args)
        .output()
        .expect("run cs-check");
    (
        out.status.code().expect("exit code"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

fn kv_line(client: u32, op: &str, extra: &str, t: u64) -> String {
    format!(
        r#"{{"client":{client},"op":"{op}","key":"k",{extra}"invoke_ns":{t},"complete_ns":{},"invoke_wall_ns":{t},"complete_wall_ns":{},"status":"ok"}}"#,
        t + 1,
        t + 1
    ) + "\n"
}

#[test]
fn kv_exit_codes() {
    let d = tempfile::tempdir().unwrap();
    let good = kv_line(1, "put", r#""value":"a","#, 0)
        + &kv_line(2, "get", r#""output":"a","found":true,"#, 10);
    let bad = kv_line(1, "put", r#""value":"a","#, 0)
        + &kv_line(1, "put", r#""value":"b","#, 10)
        + &kv_line(2, "get", r#""output":"a","found":true,"#, 20);
    let (code, out, _) = cs_check(&["kv", &write(d.path(), "good", &good)]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("linearizable"), "{out}");
    let bad_path = write(d.path(), "bad", &bad);
    let (code, out, _) = cs_check(&["kv", &bad_path]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("NOT linearizable") && out.contains("bad:3"),
        "{out}"
    );
    // Two files merge on wall-clock times.
    let (code, out, _) = cs_check(&["kv", &write(d.path(), "g2", &good), &bad_path]);
    assert_eq!(code, 1, "{out}");
    // Many concurrent puts and an impossible read: the bound gives "unknown".
    let mut hard: String = (0..24)
        .map(|i| {
            format!(
                r#"{{"client":{i},"op":"put","key":"k","value":"v{i}","invoke_ns":0,"complete_ns":100,"status":"ok"}}"#
            ) + "\n"
        })
        .collect();
    hard += r#"{"client":99,"op":"get","key":"k","output":"x","found":true,"invoke_ns":200,"complete_ns":201,"status":"ok"}"#;
    let (code, out, _) = cs_check(&["kv", "--max-steps", "1000", &write(d.path(), "hard", &hard)]);
    assert_eq!(code, 3, "{out}");
    let (code, _, err) = cs_check(&["kv", &write(d.path(), "junk", "{\n")]);
    assert_eq!(code, 2);
    assert!(err.contains("junk:1"), "{err}");
}

#[test]
fn lock_exit_codes() {
    let d = tempfile::tempdir().unwrap();
    let line = |c: u32, op: &str, extra: &str, i: u64, r: u64| {
        format!(
            r#"{{"client":{c},"op":"{op}","lock":"L",{extra}"invoke_ns":{i},"complete_ns":{r},"invoke_wall_ns":{i},"complete_wall_ns":{r},"status":"ok"}}"#
        ) + "\n"
    };
    let a = line(1, "acquire", r#""granted":true,"#, 0, 10) + &line(1, "release", "", 20, 30);
    let ok_b = line(2, "acquire", r#""granted":true,"#, 5, 25) + &line(2, "release", "", 40, 41);
    let bad_b = line(2, "acquire", r#""granted":true,"#, 5, 15) + &line(2, "release", "", 40, 41);
    let a = write(d.path(), "a", &a);
    let (code, out, _) = cs_check(&["lock", &a, &write(d.path(), "b", &ok_b)]);
    assert_eq!(code, 0, "{out}");
    let (code, out, _) = cs_check(&["lock", &a, &write(d.path(), "b2", &bad_b)]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("clients 1 and 2"), "{out}");
}

#[test]
fn mr_exit_codes() {
    let d = tempfile::tempdir().unwrap();
    let (i, o) = (d.path().join("in"), d.path().join("out"));
    std::fs::create_dir_all(&i).unwrap();
    std::fs::create_dir_all(&o).unwrap();
    write(&i, "pg-0.txt", "a b a");
    write(&o, "mr-out-0", "a 2\nb 1\n");
    let (code, out, _) = cs_check(&["mr", i.to_str().unwrap(), o.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    write(&o, "mr-out-0", "a 1\nb 1\n");
    let (code, out, _) = cs_check(&["mr", i.to_str().unwrap(), o.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("\"a\": want 2, got 1"), "{out}");
}

#[test]
fn usage_errors() {
    for args in [
        &[][..],
        &["frob"],
        &["mr", "x"],
        &["preload", "127.0.0.1:1"],
        &["lock"],
    ] {
        let (code, _, err) = cs_check(args);
        assert_eq!(code, 2, "{args:?}");
        assert!(err.contains("usage:"), "{args:?}: {err}");
    }
    let (code, _, err) = cs_check(&["preload", "127.0.0.1:1", "8"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("connecting"), "{err}");
    let (code, out, _) = cs_check(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("cs-check kv"));
}

/// `--help` after a check's name prints the usage (it once opened a history file
/// named `--help`); an unknown option is an error that names it.
#[test]
fn help_and_unknown_options_are_not_file_names() {
    let d = tempfile::tempdir().unwrap();
    for check in ["kv", "lock", "mr", "preload"] {
        let (code, out, err) = cs_check(&[check, "--help"]);
        assert_eq!(code, 0, "{check} --help: {err}");
        assert!(out.contains("usage:"), "{check} --help printed {out:?}");
        let (code, _, err) = cs_check(&[check, "--bogus", "x"]);
        assert_eq!(code, 2, "{check} --bogus");
        assert!(err.contains("unknown option \"--bogus\""), "{check}: {err}");
    }
    // `--max-steps` still works for kv.
    let good = kv_line(1, "put", r#""value":"a","#, 0);
    let (code, _, err) = cs_check(&["kv", "--max-steps", "100", &write(d.path(), "h", &good)]);
    assert_eq!(code, 0, "{err}");
}
