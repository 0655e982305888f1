//! `cs-check`: run CheckSync's correctness checkers on what the Go fixtures'
//! clients recorded. Exit status: 0 correct, 1 a violation was found, 2 the
//! check could not run (usage, unreadable or malformed input), 3 unknown (the
//! linearizability search hit its bound).

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use cs_tests::check::{history, kv, lock, mr, preload};

const USAGE: &str = "\
usage:
  cs-check kv [--max-steps N] HISTORY...   linearizability of kvclient histories
  cs-check lock HISTORY...                 mutual exclusion from lockclient histories
  cs-check mr INPUT_DIR OUTPUT_DIR         mr-out-* equal a sequential word count
  cs-check preload ADDR MIB                kvstore at ADDR holds its -preload-mib MIB values

Several history files are merged on their wall-clock times; one file uses its
monotonic times. Exit status: 0 correct, 1 violation, 2 error, 3 unknown.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cs-check: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &[String]) -> Result<ExitCode> {
    let Some((cmd, rest)) = args.split_first() else {
        bail!("{USAGE}");
    };
    // `--help` anywhere asks for the usage; any other option the checks do not
    // know is an error, never a file name.
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return Ok(ExitCode::SUCCESS);
    }
    let known = |a: &String| a == "--max-steps" && cmd == "kv";
    if let Some(opt) = rest
        .iter()
        .find(|a| a.starts_with('-') && a.len() > 1 && !known(a))
    {
        bail!("unknown option {opt:?} for {cmd:?}\n{USAGE}");
    }
    match cmd.as_str() {
        "kv" => check_kv(rest),
        "lock" => {
            if rest.is_empty() {
                bail!("lock needs at least one history file\n{USAGE}");
            }
            let ops = history::load_lock(rest)?;
            let report = lock::check_locks(&ops);
            println!("{report}");
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        "mr" => {
            let [input, output] = rest else {
                bail!("mr needs INPUT_DIR OUTPUT_DIR\n{USAGE}");
            };
            let report = mr::check_mr(Path::new(input), Path::new(output))?;
            println!("{report}");
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        "preload" => {
            let [addr, mib] = rest else {
                bail!("preload needs ADDR MIB\n{USAGE}");
            };
            let mib: u64 = mib.parse().with_context(|| format!("MIB {mib:?}"))?;
            match preload::verify_preload(addr, mib, Duration::from_secs(30)) {
                Ok(r) => {
                    println!("all {} preloaded keys ({} MiB) intact", r.keys, r.mib);
                    Ok(ExitCode::SUCCESS)
                }
                Err(e @ preload::PreloadError::BadValues { .. })
                | Err(e @ preload::PreloadError::WrongCount { .. }) => {
                    println!("{e}");
                    Ok(ExitCode::from(1))
                }
                Err(e) => Err(e.into()),
            }
        }
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        other => bail!("unknown check {other:?}\n{USAGE}"),
    }
}

fn check_kv(mut rest: &[String]) -> Result<ExitCode> {
    let mut opts = kv::KvCheckOptions::default();
    if let [flag, n, tail @ ..] = rest {
        if flag == "--max-steps" {
            opts.max_steps_per_key = n.parse().with_context(|| format!("--max-steps {n:?}"))?;
            rest = tail;
        }
    }
    if rest.is_empty() {
        bail!("kv needs at least one history file\n{USAGE}");
    }
    let ops = history::load_kv(rest)?;
    let verdict = kv::check_kv(&ops, &opts);
    println!("{verdict}");
    Ok(match verdict {
        kv::KvVerdict::Linearizable { .. } => ExitCode::SUCCESS,
        kv::KvVerdict::NotLinearizable(_) => ExitCode::from(1),
        kv::KvVerdict::Unknown { .. } => ExitCode::from(3),
    })
}
