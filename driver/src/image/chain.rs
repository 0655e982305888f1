//! A folder of epochs (`cs-driver checkpoint -o DIR`) and folding a chain of them
//! into one full image.
//!
//! Names: `DIR/<epoch, 8 digits>.full` or `.delta`, each written through
//! [`crate::image::ImageOut`] (temporary file, fsync, rename, directory fsync), so a
//! name exists only for a complete epoch; a checkpointer killed mid-write leaves a
//! temporary file that is ignored (and removed by the next writer of that name).
//!
//! The chain for epoch N is the newest full epoch at or before N and every delta
//! after it up to N, with no gap. Folding it: the newest epoch's own frames for
//! everything but pages (threads, mappings, fds, signals, credentials: a delta
//! carries them in full), and for pages, each page's newest version in the chain
//! (a zero run in a delta erases older data: the program released the page),
//! restricted to the newest epoch's stored mappings. The result is written as a
//! full epoch that `restore` (and `--keep`'s new base) uses like any image.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::image::{self, ImageError, ImageOut, ImagePages};
use crate::model::{Epoch, PageRun, PageSource, PAGE};

/// One committed epoch file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochFile {
    pub epoch: u64,
    pub full: bool,
    pub path: PathBuf,
}

/// The side file where `checkpoint` notes each epoch's pause for `inspect DIR`
/// (`<epoch> <ms>` per line; informational, never read by restore).
pub const PAUSES: &str = "pauses.txt";

/// The file name of epoch `n`.
pub fn name(n: u64, full: bool) -> String {
    format!("{n:08}.{}", if full { "full" } else { "delta" })
}

/// The committed epochs in `dir`, in epoch order. Temporary files are skipped.
pub fn list(dir: &Path) -> Result<Vec<EpochFile>, ImageError> {
    let rd = std::fs::read_dir(dir).map_err(|e| ImageError::Io {
        path: dir.display().to_string(),
        source: e,
    })?;
    let mut out = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some((num, ext)) = name.split_once('.') else {
            continue;
        };
        if num.len() != 8 || !num.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let full = match ext {
            "full" => true,
            "delta" => false,
            _ => continue,
        };
        let Ok(epoch) = num.parse() else { continue };
        out.push(EpochFile {
            epoch,
            full,
            path: e.path(),
        });
    }
    out.sort_by_key(|f| (f.epoch, !f.full));
    out.dedup_by_key(|f| f.epoch);
    Ok(out)
}

/// The chain that restores epoch `target` (the newest when `None`): the newest full
/// epoch at or before it, then every delta up to it.
pub fn chain_for(
    all: &[EpochFile],
    target: Option<u64>,
    dir: &Path,
) -> Result<Vec<EpochFile>, ImageError> {
    let err = |detail: String| ImageError::Content {
        path: dir.display().to_string(),
        detail,
    };
    let target = match target {
        Some(t) => t,
        None => all
            .last()
            .map(|f| f.epoch)
            .ok_or_else(|| err("holds no committed epoch".into()))?,
    };
    let upto: Vec<&EpochFile> = all.iter().filter(|f| f.epoch <= target).collect();
    if upto.last().map(|f| f.epoch) != Some(target) {
        return Err(err(format!("has no epoch {target}")));
    }
    let base = upto
        .iter()
        .rposition(|f| f.full)
        .ok_or_else(|| err(format!("has no full epoch at or before epoch {target}")))?;
    let chain: Vec<EpochFile> = upto[base..].iter().map(|f| (*f).clone()).collect();
    for w in chain.windows(2) {
        if w[1].epoch != w[0].epoch + 1 {
            return Err(err(format!(
                "misses epoch {} (between {} and {}): the chain to epoch {target} is broken",
                w[0].epoch + 1,
                w[0].epoch,
                w[1].epoch
            )));
        }
    }
    Ok(chain)
}

/// Where a page's newest bytes are.
#[derive(Clone, Copy, Debug)]
enum Src {
    /// Released: reads as zero.
    Zero,
    /// In chain file `file` at byte `offset`.
    Raw { file: usize, offset: usize },
}

/// The pages of a chain of epochs, newest first: every stored page of the newest
/// epoch's mappings where the latest epoch that holds it put it, read from the
/// mapped epoch files in place (no fold written). Runs are coalesced where
/// consecutive pages sit back to back in one file.
#[derive(Debug)]
pub struct ChainPages {
    files: Vec<ImagePages>,
    runs: Vec<PageRun>,
    /// The file of each run.
    run_file: Vec<usize>,
}

impl PageSource for ChainPages {
    fn runs(&self) -> &[PageRun] {
        &self.runs
    }

    fn bytes(&self, i: usize) -> &[u8] {
        let r = &self.runs[i];
        let len = (r.npages * PAGE) as usize;
        self.files[self.run_file[i]]
            .file_bytes()
            .get(r.offset..r.offset + len)
            .unwrap_or_default()
    }

    fn populate(&self) {
        for f in &self.files {
            f.populate();
        }
    }
}

/// Reads and verifies every epoch of `chain` (oldest first, a full epoch then
/// deltas) and returns the newest epoch as a full one with the chain's pages.
pub fn open(chain: &[EpochFile]) -> Result<(Epoch, ChainPages), ImageError> {
    let mut files = Vec::with_capacity(chain.len());
    let mut pages: std::collections::BTreeMap<u64, Src> = Default::default();
    let mut newest = None;
    for (i, f) in chain.iter().enumerate() {
        let path = f.path.display().to_string();
        let file = File::open(&f.path).map_err(|e| ImageError::Io {
            path: path.clone(),
            source: e,
        })?;
        let d = image::read_image_any(&file, &path)?;
        if d.epoch.number != f.epoch || d.epoch.full != f.full {
            return Err(ImageError::Content {
                path,
                detail: format!(
                    "holds epoch {} ({}), its name says {} ({})",
                    d.epoch.number,
                    if d.epoch.full { "full" } else { "delta" },
                    f.epoch,
                    if f.full { "full" } else { "delta" }
                ),
            });
        }
        for r in d.pages.runs() {
            for k in 0..r.npages {
                pages.insert(
                    r.start + k * PAGE,
                    Src::Raw {
                        file: i,
                        offset: r.offset + (k * PAGE) as usize,
                    },
                );
            }
        }
        for &(start, end) in &d.epoch.zeros {
            for a in (start..end).step_by(PAGE as usize) {
                pages.insert(a, Src::Zero);
            }
        }
        files.push(d.pages);
        newest = Some(d.epoch);
    }
    let mut epoch = newest.ok_or_else(|| ImageError::Content {
        path: "chain".into(),
        detail: "is empty".into(),
    })?;
    // Pages inside the newest epoch's stored mappings, in address order.
    let stored: Vec<(u64, u64)> = epoch
        .vmas
        .iter()
        .filter(|v| crate::capture::stores_pages(v) && !v.reservation)
        .map(|v| (v.start, v.end))
        .collect();
    let inside = |a: u64| {
        let i = stored.partition_point(|&(_, e)| e <= a);
        stored.get(i).is_some_and(|&(s, _)| s <= a)
    };
    let mut runs: Vec<PageRun> = Vec::new();
    let mut run_file: Vec<usize> = Vec::new();
    for (&a, &src) in &pages {
        let Src::Raw { file, offset } = src else {
            continue;
        };
        if !inside(a) {
            continue;
        }
        match (runs.last_mut(), run_file.last()) {
            (Some(r), Some(&f))
                if f == file
                    && r.start + r.npages * PAGE == a
                    && r.offset + (r.npages * PAGE) as usize == offset =>
            {
                r.npages += 1
            }
            _ => {
                runs.push(PageRun {
                    start: a,
                    npages: 1,
                    offset,
                });
                run_file.push(file);
            }
        }
    }
    epoch.full = true;
    epoch.zeros.clear();
    Ok((
        epoch,
        ChainPages {
            files,
            runs,
            run_file,
        },
    ))
}

/// Folds `chain` (verified epoch by epoch) into a full image written to `out`.
/// Returns the epoch number of the result.
pub fn fold(chain: &[EpochFile], out: &mut ImageOut) -> Result<u64, ImageError> {
    let (epoch, pages) = open(chain)?;
    out.write_epoch(&epoch, Some(&pages), &mut |_, _| {})?;
    Ok(epoch.number)
}

/// `--keep`: folds the chain up to epoch `upto` into a new full epoch `upto`, then
/// removes every older epoch file and `upto`'s delta. Crash-safe in any order of
/// events: the full epoch is committed before anything is removed, and while both
/// exist [`list`] prefers it; files are removed oldest first, so a folder left
/// half-pruned still holds a valid chain to its newest epoch.
pub fn compact(dir: &Path, upto: u64) -> Result<u64, ImageError> {
    let all = list(dir)?;
    let chain = chain_for(&all, Some(upto), dir)?;
    if chain.len() > 1 {
        let mut out = ImageOut::create(&dir.join(name(upto, true)))?;
        fold(&chain, &mut out)?;
        out.commit()?;
    }
    for f in all.iter().filter(|f| f.epoch < upto) {
        let _ = std::fs::remove_file(&f.path);
    }
    let _ = std::fs::remove_file(dir.join(name(upto, false)));
    Ok(upto)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(epoch: u64, full: bool) -> EpochFile {
        EpochFile {
            epoch,
            full,
            path: PathBuf::from(name(epoch, full)),
        }
    }

    #[test]
    fn a_chain_starts_at_the_newest_full_epoch_and_refuses_gaps() {
        let dir = Path::new("ck");
        let all = [
            f(1, true),
            f(2, false),
            f(3, false),
            f(4, true),
            f(5, false),
        ];
        let epochs = |c: Vec<EpochFile>| c.iter().map(|e| e.epoch).collect::<Vec<_>>();
        assert_eq!(epochs(chain_for(&all, None, dir).unwrap()), vec![4, 5]);
        assert_eq!(
            epochs(chain_for(&all, Some(3), dir).unwrap()),
            vec![1, 2, 3]
        );
        assert_eq!(epochs(chain_for(&all, Some(4), dir).unwrap()), vec![4]);
        let e = chain_for(&all, Some(9), dir).unwrap_err().to_string();
        assert!(e.contains("has no epoch 9"), "{e}");
        let gap = [f(1, true), f(2, false), f(4, false)];
        let e = chain_for(&gap, None, dir).unwrap_err().to_string();
        assert!(e.contains("misses epoch 3"), "{e}");
        let no_base = [f(2, false), f(3, false)];
        let e = chain_for(&no_base, None, dir).unwrap_err().to_string();
        assert!(e.contains("no full epoch"), "{e}");
        assert!(chain_for(&[], None, dir).is_err());
    }
}
