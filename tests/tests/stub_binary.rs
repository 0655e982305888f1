//! The restore stub is a static, libc-free executable (issue 2): checked on the
//! real binary with readelf, and run once to see it exit through its own raw
//! `exit_group` with a report naming what was wrong.
//!
//! Does not prove anything about restoring (dump_restore.rs does that).

use std::process::Command;

use cs_tests::driver;

#[test]
fn stub_is_static_and_has_no_interpreter_or_dynamic_section() {
    let stub = driver::stub();
    let out = Command::new("readelf")
        .args(["-h", "-l", "-d", "-s"])
        .arg(&stub)
        .output()
        .unwrap_or_else(|e| {
            panic!("readelf is needed for this test (apt-get install binutils): {e}")
        });
    assert!(
        out.status.success(),
        "readelf failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("EXEC (Executable file)"),
        "not a fixed-address executable:\n{text}"
    );
    assert!(
        !text.contains("INTERP"),
        "the stub asks for a program interpreter:\n{text}"
    );
    assert!(
        text.contains("There is no dynamic section"),
        "the stub has a dynamic section:\n{text}"
    );
    assert!(
        text.contains("0x0000300000000000"),
        "not linked at the stub base 0x300000000000:\n{text}"
    );
    // No undefined symbols: nothing is expected from a libc.
    let undefined: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(" UND ") && !l.trim_end().ends_with("UND"))
        .collect();
    assert!(undefined.is_empty(), "undefined symbols: {undefined:?}");
}

#[test]
fn stub_without_arguments_reports_and_exits_by_itself() {
    let out = Command::new(driver::stub()).output().expect("run the stub");
    assert_eq!(out.status.code(), Some(2), "exit_group(2) on bad arguments");
    let r = restore_stub::report::Report::parse(&out.stderr).expect("a report on stderr");
    assert_eq!(
        restore_stub::report::Phase::from_raw(r.status),
        restore_stub::report::Phase::Args
    );
}
