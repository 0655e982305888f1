//! Page-run encode and decode throughput against a memcpy baseline.
//!
//! A 256 MiB region of 4 KiB non-zero pages; 1 %, 50 % (random pages: short runs) and
//! 100 % (every page: 1024-page runs) of it dirty. For each dirty set, measured in the
//! same run:
//! - `memcpy`: copy the dirty pages into a staging buffer (what the pause costs at
//!   least; the baseline);
//! - `encode`: `PageRunEncoder` from the region into frames (zero test, copy, xxh3 for
//!   the run and frame checksums, headers);
//! - `decode`: walk the frames, verify header, payload and run checksums, and copy each
//!   run into a destination region (what the backup does to apply an epoch).
//!
//! Throughput is dirty-page bytes per second. After criterion's report a table of
//! medians in GB/s (10^9 bytes) and their ratio to memcpy is printed.
//! Run: `cargo bench -p cs-benches --bench page_runs`.

use std::hint::black_box;
use std::time::Duration;

use core_format::encode::{max_encoded_len, RegionPages};
use core_format::{frames, PageRunEncoder, Record};
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use cs_benches::{criterion_median_ns, dirty_pages, random_memory};

const REGION_BYTES: usize = 256 << 20;
const PAGE: usize = 4096;
const BASE: u64 = 0x7f00_0000_0000;
const PERCENTS: [u32; 3] = [1, 50, 100];

fn page_runs(c: &mut Criterion) {
    let region = random_memory(REGION_BYTES, 0x5eed);
    let mut staging = vec![0u8; REGION_BYTES];
    let mut dest = vec![0u8; REGION_BYTES];
    let mut group = c.benchmark_group("page_runs");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for percent in PERCENTS {
        let addrs = dirty_pages(BASE, REGION_BYTES / PAGE, percent, 42 + u64::from(percent));
        let bytes = (addrs.len() * PAGE) as u64;
        group.throughput(Throughput::Bytes(bytes));
        let param = format!("{percent}pct");
        let src = RegionPages {
            base: BASE,
            data: &region,
        };
        let mut out = vec![0u8; max_encoded_len(addrs.len())];
        // Pre-fault the output buffers so the first sample does not pay page faults.
        out.fill(1);
        staging.fill(1);
        dest.fill(1);

        group.bench_function(BenchmarkId::new("memcpy", &param), |b| {
            b.iter(|| {
                for (i, &a) in addrs.iter().enumerate() {
                    let off = (a - BASE) as usize;
                    staging[i * PAGE..(i + 1) * PAGE].copy_from_slice(&region[off..off + PAGE]);
                }
                black_box(&staging);
            })
        });

        let mut encoded_len = 0;
        group.bench_function(BenchmarkId::new("encode", &param), |b| {
            b.iter(|| {
                let mut enc = PageRunEncoder::new(&addrs).unwrap();
                let p = enc.encode_into(&src, &mut out).unwrap();
                assert!(p.done);
                encoded_len = p.bytes_written;
                black_box(&out);
            })
        });

        let encoded = &out[..encoded_len];
        group.bench_function(BenchmarkId::new("decode", &param), |b| {
            b.iter(|| {
                for f in frames(encoded) {
                    let Record::PageRun(run) = f.unwrap().record else {
                        unreachable!()
                    };
                    let off = (run.start - BASE) as usize;
                    run.decode_into(&mut dest[off..]).unwrap();
                }
                black_box(&dest);
            })
        });
        // The decoded pages are the region's pages.
        for &a in addrs.iter().step_by(97) {
            let off = (a - BASE) as usize;
            assert_eq!(dest[off..off + PAGE], region[off..off + PAGE]);
        }
    }
    group.finish();
}

/// `<target>/criterion`, where criterion writes (unless CRITERION_HOME says otherwise).
fn criterion_dir() -> std::path::PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return home.into();
    }
    // The bench binary is <target>/<profile>/deps/page_runs-<hash>.
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().join("criterion")
}

fn summary() {
    let dir = criterion_dir().join("page_runs");
    println!("\npage_runs medians (GB/s = 10^9 bytes of dirty pages per second):");
    println!("| dirty | pages | memcpy GB/s | encode GB/s | encode/memcpy | decode GB/s | decode/memcpy |");
    println!("|---|---|---|---|---|---|---|");
    for percent in PERCENTS {
        let n = dirty_pages(BASE, REGION_BYTES / PAGE, percent, 42 + u64::from(percent)).len();
        let bytes = (n * PAGE) as f64;
        let gbs =
            |f: &str| criterion_median_ns(&dir, &format!("{f}/{percent}pct")).map(|ns| bytes / ns);
        match (gbs("memcpy"), gbs("encode"), gbs("decode")) {
            (Some(m), Some(e), Some(d)) => println!(
                "| {percent}% | {n} | {m:.2} | {e:.2} | {:.2} | {d:.2} | {:.2} |",
                e / m,
                d / m
            ),
            _ => println!("| {percent}% | {n} | (no estimates found under {dir:?}) |"),
        }
    }
}

criterion_group!(benches, page_runs);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
