//! A MapReduce word count's output equals a sequential word count of its inputs.
//!
//! Inputs: the regular files of the input directory whose names do not start
//! with `.` (as go-fixtures' `mr.InputFiles`). Output: every `mr-out-*` file of
//! the output directory, lines `"<word> <count>"`; a word may appear on one line
//! of one file only (reduce partitions are disjoint). Temporary files of the
//! workers' atomic writes start with `.` and are not read.
//!
//! A word is a maximal run of letters, case kept, as the Go worker's
//! `mr.Words` (`unicode.IsLetter`). For ASCII (what the generated inputs are)
//! this is exactly `[A-Za-z]+`. Beyond ASCII this checker uses Unicode's
//! Alphabetic property, which also counts letter numbers (Nl, e.g. Roman
//! numerals) and some combining marks that Go's IsLetter (category L) does not,
//! so inputs with such characters could be miscounted by this checker.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Why the check could not run (a mismatch is not an error: see [`MrReport`]).
#[derive(Debug, thiserror::Error)]
pub enum MrError {
    /// A file or directory could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// An output line is not `"<word> <count>"`.
    #[error("{path}:{line}: want \"<word> <count>\", got {text:?}")]
    Malformed {
        /// The output file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The line.
        text: String,
    },
    /// A word appears on more than one output line.
    #[error("{path}:{line}: word {word:?} appears in more than one output line")]
    Duplicate {
        /// The output file.
        path: PathBuf,
        /// 1-based line number of the second appearance.
        line: usize,
        /// The word.
        word: String,
    },
    /// The output directory has no `mr-out-*` file.
    #[error("no mr-out-* file in {dir}")]
    NoOutput {
        /// The directory.
        dir: PathBuf,
    },
    /// The input directory has no input file.
    #[error("no input file in {dir}")]
    NoInput {
        /// The directory.
        dir: PathBuf,
    },
}

/// A word whose count differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MrMismatch {
    /// The word.
    pub word: String,
    /// Its count in the inputs (0: not there).
    pub expected: u64,
    /// Its count in the output (0: not there).
    pub got: u64,
}

/// The comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MrReport {
    /// Input files read.
    pub input_files: usize,
    /// `mr-out-*` files read.
    pub output_files: usize,
    /// Distinct words in the inputs.
    pub distinct_words: usize,
    /// Words in the inputs, with repetition.
    pub total_words: u64,
    /// Words whose counts differ.
    pub mismatches: usize,
    /// The first of them in byte order.
    pub first_mismatch: Option<MrMismatch>,
}

impl MrReport {
    /// True when the output equals the sequential count.
    pub fn ok(&self) -> bool {
        self.mismatches == 0
    }
}

impl fmt::Display for MrReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} input files, {} output files, {} distinct words, {} words: ",
            self.input_files, self.output_files, self.distinct_words, self.total_words
        )?;
        match &self.first_mismatch {
            None => write!(f, "output equals the sequential count"),
            Some(m) => write!(
                f,
                "{} words differ; first {:?}: want {}, got {}",
                self.mismatches, m.word, m.expected, m.got
            ),
        }
    }
}

fn is_letter(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_alphabetic()
    } else {
        c.is_alphabetic()
    }
}

/// Calls `f` for every word of `text` (see the module docs).
pub fn words<'a>(text: &'a str, mut f: impl FnMut(&'a str)) {
    let mut start = None;
    for (i, c) in text.char_indices() {
        match (is_letter(c), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                f(&text[s..i]);
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        f(&text[s..]);
    }
}

fn read(path: &Path) -> Result<Vec<u8>, MrError> {
    std::fs::read(path).map_err(|source| MrError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn list(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<Vec<PathBuf>, MrError> {
    let err = |source| MrError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(err)? {
        let e = e.map_err(err)?;
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type().map_err(err)?.is_file() && keep(&name) {
            out.push(e.path());
        }
    }
    out.sort();
    Ok(out)
}

/// The input files of `dir`: regular files not starting with `.`, sorted.
pub fn input_files(dir: &Path) -> Result<Vec<PathBuf>, MrError> {
    list(dir, |n| !n.starts_with('.'))
}

/// The word counts of `files`, counted one after the other.
pub fn sequential_count(files: &[PathBuf]) -> Result<BTreeMap<String, u64>, MrError> {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for p in files {
        let bytes = read(p)?;
        let text = String::from_utf8_lossy(&bytes);
        words(&text, |w| {
            if let Some(n) = counts.get_mut(w) {
                *n += 1;
            } else {
                counts.insert(w.to_string(), 1);
            }
        });
    }
    Ok(counts)
}

/// Merges every `mr-out-*` file of `dir`; returns the counts and the file count.
pub fn read_outputs(dir: &Path) -> Result<(BTreeMap<String, u64>, usize), MrError> {
    let files = list(dir, |n| n.starts_with("mr-out-"))?;
    if files.is_empty() {
        return Err(MrError::NoOutput {
            dir: dir.to_path_buf(),
        });
    }
    let mut counts = BTreeMap::new();
    for p in &files {
        let bytes = read(p)?;
        let text = String::from_utf8_lossy(&bytes);
        for (i, line) in text.lines().enumerate() {
            let malformed = || MrError::Malformed {
                path: p.clone(),
                line: i + 1,
                text: line.chars().take(200).collect(),
            };
            let (word, count) = line.split_once(' ').ok_or_else(malformed)?;
            let count: u64 = count.parse().map_err(|_| malformed())?;
            if word.is_empty() {
                return Err(malformed());
            }
            if counts.insert(word.to_string(), count).is_some() {
                return Err(MrError::Duplicate {
                    path: p.clone(),
                    line: i + 1,
                    word: word.to_string(),
                });
            }
        }
    }
    Ok((counts, files.len()))
}

/// Compares two word counts.
pub fn compare(
    expected: &BTreeMap<String, u64>,
    got: &BTreeMap<String, u64>,
) -> (usize, Option<MrMismatch>) {
    let mut mismatches = 0;
    let mut first: Option<MrMismatch> = None;
    let mut note = |word: &str, e: u64, g: u64| {
        mismatches += 1;
        if first.as_ref().is_none_or(|m| word < m.word.as_str()) {
            first = Some(MrMismatch {
                word: word.to_string(),
                expected: e,
                got: g,
            });
        }
    };
    for (w, &e) in expected {
        let g = got.get(w).copied().unwrap_or(0);
        if g != e {
            note(w, e, g);
        }
    }
    for (w, &g) in got {
        if !expected.contains_key(w) {
            note(w, 0, g);
        }
    }
    (mismatches, first)
}

/// Checks the `mr-out-*` files of `output_dir` against the inputs in `input_dir`.
pub fn check_mr(input_dir: &Path, output_dir: &Path) -> Result<MrReport, MrError> {
    let inputs = input_files(input_dir)?;
    if inputs.is_empty() {
        return Err(MrError::NoInput {
            dir: input_dir.to_path_buf(),
        });
    }
    let expected = sequential_count(&inputs)?;
    let (got, output_files) = read_outputs(output_dir)?;
    let (mismatches, first_mismatch) = compare(&expected, &got);
    Ok(MrReport {
        input_files: inputs.len(),
        output_files,
        distinct_words: expected.len(),
        total_words: expected.values().sum(),
        mismatches,
        first_mismatch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(text: &str) -> Vec<&str> {
        let mut v = Vec::new();
        words(text, |w| v.push(w));
        v
    }

    #[test]
    fn words_are_maximal_runs_of_letters() {
        assert_eq!(
            collect("Hello, world-wide web; 42times x\nA."),
            ["Hello", "world", "wide", "web", "times", "x", "A"]
        );
        assert_eq!(collect(""), Vec::<&str>::new());
        assert_eq!(collect("  123 ... "), Vec::<&str>::new());
        assert_eq!(collect("end"), ["end"]);
        // Non-ASCII letters are letters; invalid UTF-8 separates words.
        assert_eq!(collect("café naïve"), ["café", "naïve"]);
        let lossy = String::from_utf8_lossy(b"ab\xffcd");
        assert_eq!(collect(&lossy), ["ab", "cd"]);
    }

    fn setup(inputs: &[(&str, &str)], outputs: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("in")).unwrap();
        std::fs::create_dir(d.path().join("out")).unwrap();
        for (n, t) in inputs {
            std::fs::write(d.path().join("in").join(n), t).unwrap();
        }
        for (n, t) in outputs {
            std::fs::write(d.path().join("out").join(n), t).unwrap();
        }
        d
    }

    fn run(d: &tempfile::TempDir) -> Result<MrReport, MrError> {
        check_mr(&d.path().join("in"), &d.path().join("out"))
    }

    #[test]
    fn matching_output_passes() {
        let d = setup(
            &[
                ("pg-0.txt", "a b, a. B"),
                ("pg-1.txt", "c a\n"),
                (".hidden", "zzz"),
            ],
            &[
                ("mr-out-0", "a 3\nc 1\n"),
                ("mr-out-1", "B 1\nb 1\n"),
                (".mr-out-2.tmp-123", "garbage"),
            ],
        );
        let r = run(&d).unwrap();
        assert!(r.ok(), "{r}");
        assert_eq!(
            (
                r.input_files,
                r.output_files,
                r.distinct_words,
                r.total_words
            ),
            (2, 2, 4, 6)
        );
    }

    #[test]
    fn reports_first_differing_word() {
        let d = setup(
            &[("pg-0.txt", "a b c d")],
            &[("mr-out-0", "a 1\nb 2\n"), ("mr-out-1", "d 1\ne 1\n")],
        );
        let r = run(&d).unwrap();
        assert_eq!(r.mismatches, 3, "{r}");
        assert_eq!(
            r.first_mismatch,
            Some(MrMismatch {
                word: "b".into(),
                expected: 1,
                got: 2
            })
        );
        assert!(r.to_string().contains("3 words differ"), "{r}");
        // Missing word: got 0; extra word: expected 0.
        let d = setup(&[("pg-0.txt", "x y")], &[("mr-out-0", "x 1\n")]);
        let m = run(&d).unwrap().first_mismatch.unwrap();
        assert_eq!((m.word.as_str(), m.expected, m.got), ("y", 1, 0));
        let d = setup(&[("pg-0.txt", "x")], &[("mr-out-0", "w 2\nx 1\n")]);
        let m = run(&d).unwrap().first_mismatch.unwrap();
        assert_eq!((m.word.as_str(), m.expected, m.got), ("w", 0, 2));
    }

    #[test]
    fn bad_outputs_are_errors() {
        let d = setup(&[("pg-0.txt", "a")], &[("mr-out-0", "a 1\na 1\n")]);
        assert!(matches!(run(&d), Err(MrError::Duplicate { line: 2, .. })));
        let d = setup(
            &[("pg-0.txt", "a")],
            &[("mr-out-0", "a 1\n"), ("mr-out-1", "a 1\n")],
        );
        assert!(matches!(run(&d), Err(MrError::Duplicate { .. })));
        for bad in ["a\n", "a x\n", " 1\n", "a -1\n"] {
            let d = setup(&[("pg-0.txt", "a")], &[("mr-out-0", bad)]);
            let e = run(&d).unwrap_err();
            assert!(
                matches!(e, MrError::Malformed { line: 1, .. }),
                "{bad:?}: {e}"
            );
            assert!(e.to_string().contains("mr-out-0:1"), "{e}");
        }
        let d = setup(&[("pg-0.txt", "a")], &[]);
        assert!(matches!(run(&d), Err(MrError::NoOutput { .. })));
        let d = setup(&[], &[("mr-out-0", "a 1\n")]);
        assert!(matches!(run(&d), Err(MrError::NoInput { .. })));
        let e = check_mr(Path::new("/nonexistent"), Path::new("/nonexistent")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent"), "{e}");
    }
}
