//! Failover from the backup's store (issue 9): the backup keeps the committed
//! state in memory ([`cs_driver::replica::store::EpochStore`]) and restores from it
//! through the lazy path when the primary is lost.
//!
//! A real kvstore is checkpointed by `cs-driver checkpoint --interval 50 --count 6`
//! (a full epoch, then deltas) while it grows its heap by 96 MiB and then hands it
//! back to the kernel. Every epoch file's bytes are fed, in order, into an
//! `EpochStore` (as a backup receives them), which also persists them to a state
//! folder. The store must hold exactly the pages the fold of the checkpoint folder
//! holds, and its state folder the same. Then the kvstore is killed and the program
//! is restored from the store with `cs_driver::restore::restore`: it serves, every
//! preloaded value verifies, a key acknowledged after the full epoch (so only in the
//! deltas) is there, and a key written after the last epoch is not.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use cs_driver::image::chain;
use cs_driver::model::{PageSource, PAGE};
use cs_driver::replica::store::EpochStore;
use cs_driver::restore::{self, RestoreOptions};
use cs_tests::check::preload::verify_preload;
use cs_tests::driver;
use cs_tests::fixture::{fixture_bin, temp_dir, GoToolchain, Service};
use cs_tests::procs::{check_serving, kv_get, kv_put, kv_request, wait_gone};

const MARKER: &str = "backup-store-marker";
const MIB: u64 = 64;

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn committed(dir: &Path) -> usize {
    chain::list(dir).map_or(0, |l| l.len())
}

fn wait_committed(dir: &Path, n: usize, what: &str) {
    let t = Instant::now();
    while committed(dir) < n {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{what}: fewer than {n} epochs in 60 s"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn admin(addr: &str, op: &str) {
    let r = kv_request(addr, op, Duration::from_secs(30)).unwrap_or_else(|e| panic!("{op}: {e}"));
    assert!(r.contains("OK"), "{op} answered {r:?}");
}

/// Checks that `src` holds exactly the store's pages; returns the page count.
fn same_pages(store: &EpochStore, src: &dyn PageSource, what: &str) -> u64 {
    let mut n = 0;
    for (i, r) in src.runs().iter().enumerate() {
        let b = src.bytes(i);
        assert_eq!(
            b.len() as u64,
            r.npages * PAGE,
            "{what}: run at {:#x}",
            r.start
        );
        for k in 0..r.npages {
            let a = r.start + k * PAGE;
            let at = (k * PAGE) as usize;
            let mine = store
                .page(a)
                .unwrap_or_else(|| panic!("{what}: the store lacks page {a:#x}"));
            assert!(
                mine == &b[at..at + PAGE as usize],
                "{what}: page {a:#x} differs"
            );
            n += 1;
        }
    }
    assert_eq!(n, store.stored_pages(), "{what}: page count");
    n
}

fn fold(dir: &Path) -> (cs_driver::model::Epoch, chain::ChainPages) {
    let all = chain::list(dir).expect("list");
    let ch = chain::chain_for(&all, None, dir).expect("chain");
    chain::open(&ch).expect("open the chain")
}

/// The restored program's namespace, killed on drop (a failing test leaves
/// nothing running).
struct Running {
    init_pid: i32,
    host_pid: i32,
}

impl Drop for Running {
    fn drop(&mut self) {
        // SAFETY: kill(2) and waitpid(2) with integers; the init is our child
        // (we are its subreaper).
        unsafe {
            libc::kill(self.host_pid, libc::SIGKILL);
            libc::kill(self.init_pid, libc::SIGKILL);
            libc::waitpid(self.init_pid, std::ptr::null_mut(), 0);
        }
    }
}

#[test]
fn failover_restores_from_the_backup_store() {
    restore::check_privileges().expect("this test restores: run it as root");
    // The restored program's namespace init is reparented to us, and reaped here.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    for tc in GoToolchain::ALL {
        let dir = temp_dir("backup-store");
        let ck = dir.path().join("ck");
        let state = dir.path().join("state");
        let kv = Service::start(
            &fixture_bin(tc, "kvstore"),
            &["-addr", "127.0.0.1:0", "-preload-mib", &MIB.to_string()],
        )
        .expect("start kvstore");
        let (pid, addr) = (kv.pid(), kv.addr().to_string());
        kv_put(&addr, MARKER, MARKER);
        let _ = driver::stub();
        let ckp = Command::new(driver::driver())
            .args(["checkpoint", &pid.to_string(), "-o"])
            .arg(&ck)
            .args(["--interval", "50"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn cs-driver checkpoint");
        // After the full epoch: a key, and 96 MiB more heap (new mappings, written
        // pages); after the next epoch, the heap handed back (released pages).
        wait_committed(&ck, 1, &format!("{tc:?}"));
        kv_put(&addr, "mid", "m1");
        let t_mid = now_ns();
        admin(&addr, "ALLOC 96 keep");
        // An epoch whose freeze began after the ALLOC returned: the one after the
        // next to commit (the next may have been frozen while the ALLOC ran, and
        // pages written after its freeze and released by the FREE before another
        // one would be carried as released, not written).
        let now = committed(&ck);
        wait_committed(&ck, now + 2, &format!("{tc:?}"));
        admin(&addr, "FREE os");
        let t_free = now_ns();
        // Then an epoch frozen after the FREE returned, and the checkpoint ends
        // (however slow the ALLOC was: no fixed epoch count).
        let now = committed(&ck);
        wait_committed(&ck, now + 2, &format!("{tc:?}"));
        // SAFETY: kill(2) with integers, on the checkpointer this test started.
        unsafe { libc::kill(ckp.id() as i32, libc::SIGINT) };
        let out = ckp.wait_with_output().expect("wait for checkpoint");
        assert!(
            out.status.success(),
            "{tc:?}: checkpoint failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        kv_put(&addr, "after", "a1");

        // The backup: every epoch's bytes, in order.
        let files = chain::list(&ck).expect("list the epochs");
        let numbers: Vec<(u64, bool)> = files.iter().map(|f| (f.epoch, f.full)).collect();
        let want: Vec<(u64, bool)> = (1..=numbers.len() as u64).map(|n| (n, n == 1)).collect();
        assert_eq!(numbers, want, "{tc:?}: the epochs written");
        let mut store = EpochStore::new();
        store.persist_to(&state).expect("persist_to");
        let (mut written, mut released) = (0, 0);
        for f in &files {
            let bytes = std::fs::read(&f.path).expect("read an epoch");
            let done = store
                .apply(&bytes)
                .unwrap_or_else(|e| panic!("{tc:?}: epoch {}: {e}", f.epoch));
            assert_eq!(done.epoch, f.epoch);
            if !done.full {
                written += done.pages_written;
                released += done.pages_released;
            }
        }
        let e = store.epoch().expect("a committed epoch").clone();
        assert!(
            e.wall_ns > t_free && t_free > t_mid,
            "{tc:?}: the last epoch was frozen before the FREE returned: the run was too slow to test anything"
        );
        // The deltas carried the 96 MiB and its release.
        assert!(written >= 96 * 256, "{tc:?}: deltas wrote {written} pages");
        assert!(released > 0, "{tc:?}: no page released in the deltas");
        let (fe, fp) = fold(&ck);
        assert_eq!((fe.number, &fe.vmas), (e.number, &e.vmas), "{tc:?}");
        let n = same_pages(
            &store,
            &fp,
            &format!("{tc:?}: the checkpoint folder's fold"),
        );
        same_pages(
            &store,
            &fold(&state).1,
            &format!("{tc:?}: the state folder"),
        );
        eprintln!(
            "{tc:?}: store holds epoch {} with {n} pages; deltas wrote {written} and released {released}",
            e.number
        );

        // Failover: the primary is gone; restore from the store.
        drop(kv);
        wait_gone(pid);
        let (epoch, pages) = store.into_restorable().expect("restorable");
        let opts = RestoreOptions {
            stub: Some(driver::stub()),
            stdout: Some(dir.path().join("restored.stdout")),
            stderr: Some(dir.path().join("restored.stderr")),
            eager: false,
        };
        let mut r = restore::restore(&epoch, pages, &opts)
            .unwrap_or_else(|err| panic!("{tc:?}: restore from the store: {err}"));
        let _running = Running {
            init_pid: r.init_pid,
            host_pid: r.host_pid,
        };
        let lazy = r.lazy.take().expect("a lazy fill (the default)");
        check_serving(r.host_pid as u32, &addr, 1, MARKER)
            .unwrap_or_else(|err| panic!("{tc:?}: restored from the store: {err}"));
        let filled = lazy
            .wait()
            .unwrap_or_else(|err| panic!("{tc:?}: lazy fill: {err}"));
        eprintln!(
            "{tc:?}: every page in {:?} ({} faults, {} pages in the background)",
            filled.elapsed, filled.faults, filled.filled_pages
        );
        assert_eq!(
            kv_get(&addr, "mid", Duration::from_secs(5)),
            Ok(Some("m1".into())),
            "{tc:?}: a write acknowledged before the last epoch is lost"
        );
        assert_eq!(
            kv_get(&addr, "after", Duration::from_secs(5)),
            Ok(None),
            "{tc:?}: the store holds a write from after its last epoch"
        );
        verify_preload(&addr, MIB, Duration::from_secs(60))
            .unwrap_or_else(|err| panic!("{tc:?}: restored from the store: {err}"));
    }
}
