//! `cs-driver`: the CheckSync command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use cs_driver::model::{Epoch, PageSource};
use cs_driver::{capture, image, image::inspect, restore, restore::lazy, run};

#[derive(Parser, Debug)]
#[command(
    name = "cs-driver",
    version,
    about = "CheckSync: checkpoint, replicate and restore an unmodified Go process"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// More detail: `-v` logs each step (and `inspect` lists every VMA and fd),
    /// `-vv` everything. `RUST_LOG` (e.g. `RUST_LOG=cs_driver::capture=trace`)
    /// overrides the level.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Launch a program under the driver, traced from its first instruction; forwards
    /// signals and the exit status.
    Run {
        /// Program and arguments.
        #[arg(trailing_var_arg = true, required = true)]
        argv: Vec<String>,
    },
    /// Freeze a running process, capture it into an image, then kill it (default) or
    /// leave it running.
    Dump {
        /// Process to capture (need not be a child of the driver).
        pid: i32,
        /// Image file to write.
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
        /// Resume the program after the capture instead of killing it.
        #[arg(long)]
        leave_running: bool,
        /// Copy all memory inside the freeze instead of pre-copying it while the
        /// program runs (a longer pause; for comparison and for kernels without
        /// userfaultfd write-protect tracking).
        #[arg(long)]
        no_precopy: bool,
    },
    /// Checkpoint a running program continuously: a full epoch, then every
    /// interval a short freeze that writes only what changed (a delta), each
    /// committed crash-safely into DIR. Ctrl-C, SIGTERM or --count end it; the
    /// program runs on.
    Checkpoint {
        /// Process to protect (or launch one: `-- ./app args`).
        #[arg(required_unless_present = "argv")]
        pid: Option<i32>,
        /// Folder of epochs (created if missing).
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
        /// Milliseconds from one freeze to the next.
        #[arg(long, default_value_t = 100)]
        interval: u64,
        /// Stop after this many epochs.
        #[arg(long)]
        count: Option<u64>,
        /// Keep at most this many deltas beside one full epoch: older ones are
        /// folded into a new full epoch in the background.
        #[arg(long)]
        keep: Option<u64>,
        /// No write tracking: every epoch is a full one, copied inside its freeze
        /// (what happens on a kernel without userfaultfd write-protect; for
        /// comparison and tests).
        #[arg(long)]
        no_tracking: bool,
        /// Launch this program and protect it from its start.
        #[arg(last = true)]
        argv: Vec<String>,
    },
    /// Start a fresh process from an image (or the newest epoch of a checkpoint
    /// folder) and resume the program where it was.
    Restore {
        /// Image written by `dump`, or a folder written by `checkpoint`.
        image: PathBuf,
        /// With a folder: restore this epoch instead of the newest.
        #[arg(long)]
        epoch: Option<u64>,
        /// Print the program's pid and exit, leaving it running.
        #[arg(long)]
        detach: bool,
        /// Append the program's stdout to this file instead of the driver's stdout.
        #[arg(long)]
        stdout: Option<PathBuf>,
        /// Append the program's stderr to this file instead of the driver's stderr.
        #[arg(long)]
        stderr: Option<PathBuf>,
        /// Path of cs-restore-stub (default: next to cs-driver, or $CS_RESTORE_STUB).
        #[arg(long)]
        stub: Option<PathBuf>,
        /// Copy every page in before the program runs. By default the program
        /// runs as soon as its address space is laid out, and pages are filled
        /// on first touch and in the background (userfaultfd).
        #[arg(long)]
        eager: bool,
    },
    /// Verify an image and print a readable summary of it; for a checkpoint folder,
    /// verify and list its epochs.
    Inspect {
        /// Image written by `dump`, or a folder written by `checkpoint`.
        image: PathBuf,
    },
    /// Write a fresh shared key for a primary and its backup (mode 0600); give both
    /// sides the same file.
    Keygen {
        /// Key file to create (never overwritten).
        file: PathBuf,
    },
    /// Protect a program: launch it (`-- ./app args`) or take `--pid`, stream its
    /// epochs to a backup, and serve PUBLIC with output commit (a reply leaves only
    /// once the backup holds the state that produced it).
    Primary {
        /// The backup's `--listen` address (HOST:PORT).
        #[arg(long)]
        backup: String,
        /// Shared key file (`cs-driver keygen`).
        #[arg(long)]
        key: PathBuf,
        /// PUBLIC=APPADDR: clients connect to PUBLIC; the program listens on APPADDR.
        #[arg(long)]
        serve: String,
        /// Milliseconds between epochs (sooner when output waits).
        #[arg(long, default_value_t = 50)]
        interval: u64,
        /// Milliseconds of silence after which the peer is taken for dead.
        #[arg(long, default_value_t = 200)]
        timeout: u64,
        /// Serve the status (Prometheus text) on this address.
        #[arg(long)]
        status: Option<String>,
        /// No write tracking: every epoch is a full one.
        #[arg(long)]
        no_tracking: bool,
        /// When waiting output starts an epoch of its own, besides the interval.
        #[arg(long, value_enum, default_value_t = OutputEpochsArg::Pipelined)]
        output_epochs: OutputEpochsArg,
        /// Release the program's output at once instead of after the backup's ack
        /// (replies a failover may take back; to measure what output commit costs).
        #[arg(long)]
        no_output_commit: bool,
        /// Protect this running process instead of launching one.
        #[arg(long)]
        pid: Option<i32>,
        /// Launch this program and protect it.
        #[arg(last = true)]
        argv: Vec<String>,
    },
    /// Hold a primary's state and take over when it is lost: restore the last
    /// committed epoch and serve PUBLIC.
    Backup {
        /// Address to accept the primary on.
        #[arg(long)]
        listen: String,
        /// Shared key file (`cs-driver keygen`).
        #[arg(long)]
        key: PathBuf,
        /// After a promotion, serve this public address (towards the program's own
        /// address, which the primary tells the backup).
        #[arg(long)]
        serve: Option<String>,
        /// Also persist every committed epoch here (`cs-driver restore DIR` works on it).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Milliseconds of silence after which the primary is taken for dead.
        #[arg(long, default_value_t = 200)]
        timeout: u64,
        /// Serve the status (Prometheus text) on this address.
        #[arg(long)]
        status: Option<String>,
        /// Path of cs-restore-stub (default: next to cs-driver, or $CS_RESTORE_STUB).
        #[arg(long)]
        stub: Option<PathBuf>,
        /// Append the promoted program's stdout to this file.
        #[arg(long)]
        app_stdout: Option<PathBuf>,
        /// Append the promoted program's stderr to this file.
        #[arg(long)]
        app_stderr: Option<PathBuf>,
        /// After a promotion, protect the program again: stream its epochs to a
        /// backup at this address (typically this pair's other machine, restarted
        /// as `cs-driver backup`), with output commit on the public address.
        #[arg(long)]
        peer: Option<String>,
        /// Once re-protecting: milliseconds between epochs (sooner when output waits).
        #[arg(long, default_value_t = 50)]
        interval: u64,
        /// Once re-protecting: no write tracking, every epoch is a full one.
        #[arg(long)]
        no_tracking: bool,
    },
    /// Print a driver's status (its `--status` endpoint), Prometheus text format.
    Status {
        /// The driver's `--status` address.
        addr: String,
    },
}

/// `--output-epochs`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum OutputEpochsArg {
    /// When output waits that no epoch in flight covers (the window allowing).
    Pipelined,
    /// When output waits and no epoch is in flight.
    WhenIdle,
    /// Never: output waits for the next interval's epoch.
    Off,
}

impl From<OutputEpochsArg> for cs_driver::replica::OutputEpochs {
    fn from(a: OutputEpochsArg) -> Self {
        match a {
            OutputEpochsArg::Pipelined => Self::Pipelined,
            OutputEpochsArg::WhenIdle => Self::WhenIdle,
            OutputEpochsArg::Off => Self::Off,
        }
    }
}

/// The replication timings for a peer timeout of `timeout` ms.
fn replica_config(interval: u64, timeout: u64) -> cs_driver::replica::Config {
    let d = cs_driver::replica::Config::default();
    cs_driver::replica::Config {
        epoch_interval_ms: interval.max(1),
        heartbeat_interval_ms: (timeout / 10).clamp(1, d.heartbeat_interval_ms),
        peer_timeout_ms: timeout,
        backup_timeout_ms: 2 * timeout,
        stall_timeout_ms: d.stall_timeout_ms.max(timeout / 2),
        ..d
    }
}

/// Logs of the driver library go to stderr: info and up by default (`-v`: debug,
/// `-vv`: trace), or what `RUST_LOG` says.
fn init_logs(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("warn,cs_driver={level}")));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(verbose > 0)
        .with_ansi(false);
    // With -v, each line says when (seconds since the driver started).
    if verbose > 0 {
        logs.with_timer(tracing_subscriber::fmt::time::uptime())
            .init();
    } else {
        logs.without_time().init();
    }
}

fn main() -> ExitCode {
    // Children of our children (the restored program's namespace init) are reaped by
    // us, not by the machine's slow init.
    let _ = nix::sys::prctl::set_child_subreaper(true);
    let cli = Cli::parse();
    init_logs(cli.verbose);
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            // Each layer's message already includes its cause's text where it
            // helps; print a cause only when it adds something.
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg = format!("{msg}: {c}");
                }
            }
            eprintln!("cs-driver: error: {msg}");
            ExitCode::FAILURE
        }
    }
}

static FORWARD_TO: AtomicI32 = AtomicI32::new(0);
/// A forwarded signal that arrived before the program's pid was known.
static EARLY: AtomicI32 = AtomicI32::new(0);
const FORWARDED: [libc::c_int; 6] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

extern "C" fn forward(sig: libc::c_int) {
    let pid = FORWARD_TO.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe and takes integers.
        unsafe { libc::kill(pid, sig) };
    } else {
        EARLY.store(sig, Ordering::SeqCst);
    }
}

/// From now on the usual termination and user signals are caught; they go to the
/// program once [`forward_to`] names it (one that came earlier is sent then).
fn catch_signals() {
    for sig in FORWARDED {
        // SAFETY: installing an async-signal-safe handler that only calls kill(2)
        // or stores to an atomic.
        unsafe { libc::signal(sig, forward as *const () as libc::sighandler_t) };
    }
}

fn forward_to(pid: i32) {
    FORWARD_TO.store(pid, Ordering::SeqCst);
    let early = EARLY.swap(0, Ordering::SeqCst);
    if early != 0 {
        let _ = cs_driver::linux::sys::kill(pid, early);
    }
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(code.clamp(0, 255) as u8)
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let verbose = cli.verbose;
    match cli.cmd {
        Cmd::Run { argv } => {
            catch_signals();
            let code = run::run(&argv, forward_to).context("run")?;
            Ok(exit_code(code))
        }
        Cmd::Dump {
            pid,
            output,
            leave_running,
            no_precopy,
        } => {
            // From here SIGINT/SIGTERM/SIGHUP cancel the dump until its commit point.
            cs_driver::cancel::catch();
            let left = "the program was left as it was";
            // Every way the output can be wrong fails here, before the program is
            // touched.
            let mut out = image::ImageOut::create(&output)
                .with_context(|| format!("cannot write the image; {left}"))?;
            let opts = capture::Options {
                precopy: !no_precopy,
            };
            let (mut c, held) = capture::capture_held(pid, opts)
                .with_context(|| format!("capturing process {pid}; {left}"))?;
            if let Some(note) = &c.precopy_note {
                eprintln!("cs-driver: {note}; copying all memory inside the freeze");
            }
            let stats = if leave_running {
                c.times.pause = held.resume();
                let stats = write_with_progress(&c, &mut out)?;
                out.commit()
                    .with_context(|| format!("committing {}", output.display()))?;
                stats
            } else {
                // The program stays frozen until its image is durable: a failure
                // (or a killed driver) before the commit resumes it untouched.
                let stats = write_with_progress(&c, &mut out)
                    .with_context(|| format!("process {pid} not killed; {left}"))?;
                out.commit().with_context(|| {
                    format!(
                        "committing {}; process {pid} not killed; {left}",
                        output.display()
                    )
                })?;
                c.times.pause = held.kill();
                stats
            };
            eprintln!(
                "cs-driver: dumped pid {} ({} threads, {} VMAs, {} pages present, {} fds) to {}: {} bytes, {} pages stored and {} zero pages recorded without data; pause {:.2} ms (freeze {:.2}, threads {:.2}, inject {:.2}, memory {:.2} of which copy {:.2} for {} pages, fds {:.2}); pre-copy {:.2} ms of {} pages, with a {:.2} ms stop; program {}",
                c.epoch.process.pid,
                c.epoch.threads.len(),
                c.epoch.vmas.len(),
                c.npages(),
                c.epoch.fds.len(),
                output.display(),
                stats.bytes,
                stats.pages - stats.zero_pages,
                stats.zero_pages,
                ms(c.times.pause),
                ms(c.times.freeze),
                ms(c.times.threads),
                ms(c.times.inject),
                ms(c.times.memory),
                ms(c.times.copy),
                c.times.paused_pages,
                ms(c.times.fds),
                ms(c.times.precopy),
                c.times.staged_pages,
                ms(c.times.prefreeze),
                if leave_running { "left running" } else { "killed" },
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Checkpoint {
            pid,
            output,
            interval,
            count,
            keep,
            no_tracking,
            argv,
        } => checkpoint(
            pid,
            &argv,
            &output,
            interval,
            count,
            keep,
            capture::Options {
                precopy: !no_tracking,
            },
        ),
        Cmd::Restore {
            image: path,
            epoch,
            detach,
            stdout,
            stderr,
            stub,
            eager,
        } => {
            let started = std::time::Instant::now();
            restore::check_privileges()?;
            // A folder restores from its chain in place (no fold written); an
            // image file from its own pages.
            let (plan, pages): (Epoch, Arc<dyn PageSource>) = if path.is_dir() {
                let (e, p) = open_folder(&path, epoch)?;
                (e, Arc::new(p))
            } else {
                let file = image::open_image(&path)?;
                let d = image::read_image(&file, &path.display().to_string())?;
                (d.epoch, Arc::new(d.pages))
            };
            let checked = started.elapsed();
            if !detach {
                catch_signals();
            }
            let opts = restore::RestoreOptions {
                stub,
                stdout,
                stderr,
                eager,
            };
            let mut r = restore::restore(&plan, pages, &opts)?;
            eprintln!(
                "cs-driver: image checked in {:.1} ms; restored pid {} (host pid {}) from {} in {:.1} ms",
                ms(checked),
                plan.process.pid,
                r.host_pid,
                path.display(),
                ms(r.elapsed)
            );
            let lazy = r.lazy.take();
            let report_fill = |l: lazy::LazyFill| -> anyhow::Result<()> {
                let s = l.wait()?;
                eprintln!(
                    "cs-driver: every page of pid {} is in {:.1} ms after the fill began ({} faults brought {} pages, {} pages filled in the background)",
                    plan.process.pid,
                    ms(s.elapsed),
                    s.faults,
                    s.fault_pages,
                    s.filled_pages
                );
                Ok(())
            };
            if detach {
                println!("{}", r.host_pid);
                // The program already runs; its missing pages must be in before
                // the driver (their source) goes.
                if let Some(l) = lazy {
                    report_fill(l)?;
                }
                return Ok(ExitCode::SUCCESS);
            }
            forward_to(r.host_pid);
            let filler = lazy.map(|l| std::thread::spawn(move || l.wait()));
            let code = exit_code(r.wait());
            if let Some(Ok(Err(e))) = filler.map(|h| h.join()) {
                eprintln!("cs-driver: {e}");
            }
            Ok(code)
        }
        Cmd::Keygen { file } => {
            let info = cs_driver::channel::keygen_command(&file)?;
            println!("{info}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Primary {
            backup,
            key,
            serve,
            interval,
            timeout,
            status,
            no_tracking,
            output_epochs,
            no_output_commit,
            pid,
            argv,
        } => {
            use cs_driver::node::{parse_addr, primary};
            let (public, app) = serve.split_once('=').ok_or_else(|| {
                anyhow::anyhow!(
                    "--serve {serve:?}: expected PUBLIC=APPADDR, e.g. 0.0.0.0:8000=127.0.0.1:7000"
                )
            })?;
            let code = primary::run(primary::PrimaryArgs {
                backup,
                key,
                public: parse_addr("--serve PUBLIC", public)?,
                app: parse_addr("--serve APPADDR", app)?,
                cfg: cs_driver::replica::Config {
                    output_epochs: output_epochs.into(),
                    ..replica_config(interval, timeout)
                },
                pid,
                argv,
                status: status.map(|s| parse_addr("--status", &s)).transpose()?,
                precopy: !no_tracking,
                output_commit: !no_output_commit,
            })?;
            Ok(exit_code(code))
        }
        Cmd::Backup {
            listen,
            key,
            serve,
            state_dir,
            timeout,
            status,
            stub,
            app_stdout,
            app_stderr,
            peer,
            interval,
            no_tracking,
        } => {
            use cs_driver::node::{backup, parse_addr};
            let code = backup::run(backup::BackupArgs {
                listen: parse_addr("--listen", &listen)?,
                key,
                public: serve.map(|s| parse_addr("--serve", &s)).transpose()?,
                state_dir,
                cfg: replica_config(interval, timeout),
                status: status.map(|s| parse_addr("--status", &s)).transpose()?,
                peer,
                precopy: !no_tracking,
                restore: restore::RestoreOptions {
                    stub,
                    stdout: app_stdout,
                    stderr: app_stderr,
                    eager: false,
                },
            })?;
            Ok(exit_code(code))
        }
        Cmd::Status { addr } => {
            print!("{}", cs_driver::node::status::fetch(&addr)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Inspect { image: path } => {
            let verbose = verbose > 0;
            if path.is_dir() {
                return inspect_folder(&path);
            }
            let file = image::open_image(&path)?;
            let summary = image::read_image(&file, &path.display().to_string())?;
            // An image this machine cannot restore is refused here too.
            restore::check_cpu(&summary.epoch)
                .with_context(|| format!("{} cannot be restored here", path.display()))?;
            print!("{}", inspect::render(&summary, verbose));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Writes the image; on a terminal, shows how far it got (a 1 GiB image takes
/// seconds, most of it after the program was resumed or killed).
fn write_with_progress(
    c: &capture::Capture,
    out: &mut image::ImageOut,
) -> anyhow::Result<image::WriteStats> {
    let output = out.target_path().to_path_buf();
    use std::io::{IsTerminal, Write};
    let tty = std::io::stderr().is_terminal();
    let mut last = std::time::Instant::now();
    let mut shown = false;
    let mut progress = |done: u64, total: u64| {
        if tty && total > 0 && last.elapsed() >= std::time::Duration::from_millis(250) {
            last = std::time::Instant::now();
            shown = true;
            let mib = |p: u64| p * 4096 / (1 << 20);
            eprint!(
                "\r\x1b[Kcs-driver: writing {}: {}% ({} of {} MiB of pages)",
                output.display(),
                done * 100 / total,
                mib(done),
                mib(total)
            );
            let _ = std::io::stderr().flush();
        }
    };
    let stats = out
        .write(c, &mut progress)
        .with_context(|| format!("writing {}", output.display()))?;
    if shown {
        eprint!("\r\x1b[K");
    }
    Ok(stats)
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `cs-driver checkpoint`: one session, a full epoch, then deltas.
fn checkpoint(
    pid: Option<i32>,
    argv: &[String],
    dir: &std::path::Path,
    interval: u64,
    count: Option<u64>,
    keep: Option<u64>,
    opts: capture::Options,
) -> anyhow::Result<ExitCode> {
    use cs_driver::{capture::session::Session, image::chain};
    let mut child = None;
    let pid = match (pid, argv.split_first()) {
        (Some(p), None) => p,
        (None, Some((prog, args))) => {
            let c = capture::launch(prog, args).with_context(|| format!("launching {prog}"))?;
            let p = c.id() as i32;
            child = Some(c);
            p
        }
        _ => anyhow::bail!("give either a PID or `-- PROGRAM ARGS`, not both"),
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let existing = chain::list(dir)?;
    if let Some(last) = existing.last() {
        anyhow::bail!(
            "{} already holds epochs (up to {}); checkpoint into an empty folder",
            dir.display(),
            last.epoch
        );
    }
    cs_driver::cancel::catch();
    let left = "the program was left as it was";
    let write = |c: &capture::Capture| -> anyhow::Result<image::WriteStats> {
        let path = dir.join(chain::name(c.epoch.number, c.epoch.full));
        // The program runs while its epoch is written: on a small machine the
        // encoding must not take the CPU from it. The freeze keeps normal priority.
        let _low = cs_driver::linux::sys::LowPriority::new();
        let mut out = image::ImageOut::create(&path)?;
        let stats = out
            .write(c, &mut |_, _| {})
            .with_context(|| format!("writing epoch {}", c.epoch.number))?;
        out.commit()?;
        Ok(stats)
    };
    let report = |c: &capture::Capture, s: &image::WriteStats| {
        // The pause is not part of the epoch's frames: a side file keeps it for
        // `inspect DIR` (informational; not synced, never read by restore).
        {
            use std::io::Write;
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(chain::PAUSES))
            {
                let _ = writeln!(f, "{} {:.3}", c.epoch.number, ms(c.times.pause));
            }
        }
        eprintln!(
            "cs-driver: epoch {} ({}): pause {:.2} ms (freeze {:.2}, threads {:.2}, inject {:.2}, memory {:.2}, fds {:.2}), {} pages ({} zero), {} bytes, {} threads",
            c.epoch.number,
            if c.epoch.full { "full" } else { "delta" },
            ms(c.times.pause),
            ms(c.times.freeze),
            ms(c.times.threads),
            ms(c.times.inject),
            ms(c.times.memory),
            ms(c.times.fds),
            s.pages,
            s.zero_pages,
            s.bytes,
            c.epoch.threads.len()
        );
    };
    let (mut session, first) =
        Session::start(pid, opts).with_context(|| format!("capturing process {pid}; {left}"))?;
    if let Some(note) = &session.note {
        eprintln!("cs-driver: {note}; every epoch will be a full one");
    } else if !opts.precopy {
        eprintln!("cs-driver: no write tracking (--no-tracking): every epoch is a full one");
    }
    let stats = write(&first)?;
    report(&first, &stats);
    let mut done = 1u64;
    let mut folding: Option<std::thread::JoinHandle<anyhow::Result<u64>>> = None;
    let period = std::time::Duration::from_millis(interval.max(1));
    let mut next = std::time::Instant::now() + period;
    while count.is_none_or(|n| done < n) {
        let now = std::time::Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        next += period;
        if cs_driver::cancel::requested().is_some() {
            break;
        }
        let c = match session.epoch() {
            Ok(c) => c,
            Err(cs_driver::error::CaptureError::Cancelled(_)) => break,
            Err(e) => {
                // A launched program that ended ends the checkpoint with it.
                if let Some(st) = child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    eprintln!("cs-driver: the program ended ({st}) after {done} epochs");
                    return Ok(exit_code(st.code().unwrap_or(1)));
                }
                return Err(anyhow::Error::new(e).context(format!("epoch {}", done + 1)));
            }
        };
        match write(&c) {
            Ok(stats) => report(&c, &stats),
            Err(_) if cs_driver::cancel::requested().is_some() => break,
            Err(e) => return Err(e),
        }
        done += 1;
        if let Some(k) = keep {
            if folding.as_ref().is_none_or(|h| h.is_finished()) {
                if let Some(h) = folding.take() {
                    joined_fold(h)?;
                }
                let all = chain::list(dir)?;
                let base = all.iter().rposition(|f| f.full).unwrap_or(0);
                if (all.len() - base - 1) as u64 > k {
                    let (dir, upto) = (dir.to_path_buf(), c.epoch.number);
                    // In the background: a fold reads and writes whole images; the
                    // freezes go on meanwhile.
                    folding = Some(std::thread::spawn(move || {
                        chain::compact(&dir, upto).map_err(anyhow::Error::from)
                    }));
                }
            }
        }
        session.recycle(c);
    }
    if let Some(h) = folding.take() {
        joined_fold(h)?;
    }
    eprintln!(
        "cs-driver: {done} epochs in {}; process {} runs on",
        dir.display(),
        session.pid()
    );
    Ok(ExitCode::SUCCESS)
}

/// Waits for a background fold and reports it. A fold cut short by Ctrl-C is no
/// error: its temporary file is gone and the chain it would have replaced is intact.
fn joined_fold(h: std::thread::JoinHandle<anyhow::Result<u64>>) -> anyhow::Result<()> {
    match h
        .join()
        .map_err(|_| anyhow::anyhow!("the folding thread panicked"))?
    {
        Ok(n) => eprintln!("cs-driver: folded the chain into epoch {n} (full)"),
        Err(_) if cs_driver::cancel::requested().is_some() => {
            eprintln!("cs-driver: a fold in progress was cancelled; the chain is unchanged")
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

/// Folds a checkpoint folder's chain (to `epoch`, or the newest) into one full
/// image and opens it (the file is unlinked once open).
fn open_folder(
    dir: &std::path::Path,
    epoch: Option<u64>,
) -> anyhow::Result<(Epoch, cs_driver::image::chain::ChainPages)> {
    use cs_driver::image::chain;
    let all = chain::list(dir)?;
    if all.is_empty() {
        anyhow::bail!(
            "{} is a directory with no committed epoch: neither an image nor a checkpoint folder",
            dir.display()
        );
    }
    let chain = chain::chain_for(&all, epoch, dir)?;
    let (e, pages) = chain::open(&chain)?;
    eprintln!(
        "cs-driver: epoch {} of {} (a chain of {} epochs from {})",
        e.number,
        dir.display(),
        chain.len(),
        chain[0].epoch
    );
    Ok((e, pages))
}

/// `cs-driver inspect DIR`: every committed epoch, verified.
fn inspect_folder(dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    use cs_driver::image::chain;
    let all = chain::list(dir)?;
    if all.is_empty() {
        anyhow::bail!(
            "{} is a directory with no committed epoch: neither an image nor a checkpoint folder",
            dir.display()
        );
    }
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    // A closed stdout (`| head`) ends the listing quietly.
    let _ = writeln!(out, "{}: {} epochs", dir.display(), all.len());
    let _ = writeln!(
        out,
        "{:>8}  {:<5}  {:>23}  {:>8}  {:>8}  {:>12}  {:>9}",
        "epoch", "kind", "time (UTC, s)", "pages", "zero", "bytes", "pause ms"
    );
    let pauses: std::collections::HashMap<u64, String> =
        std::fs::read_to_string(dir.join(chain::PAUSES))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (e, p) = l.split_once(' ')?;
                Some((e.parse().ok()?, p.to_string()))
            })
            .collect();
    for f in &all {
        let file = image::open_image(&f.path)?;
        let d = image::read_image_any(&file, &f.path.display().to_string())?;
        let (s, st) = (&d.epoch, &d.stats);
        let _ = writeln!(
            out,
            "{:>8}  {:<5}  {:>23.3}  {:>8}  {:>8}  {:>12}  {:>9}",
            s.number,
            if s.full { "full" } else { "delta" },
            s.wall_ns as f64 / 1e9,
            st.pages_stored,
            st.pages_zero,
            st.bytes,
            pauses.get(&s.number).map_or("-", |p| p.as_str())
        );
    }
    Ok(ExitCode::SUCCESS)
}
