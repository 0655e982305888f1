//! The vDSO's symbol table, read with `goblin`.
//!
//! A Go program looks its vDSO functions up once at start (`runtime.vdsoauxv`)
//! and keeps their addresses; the restorer maps this kernel's vDSO where the old
//! one was. If this kernel's vDSO places a function elsewhere, the program's
//! cached pointers land in the middle of other code. So the dump records a digest
//! of the vDSO's dynamic symbols (name, offset, size of every defined function),
//! as a `MappedFiles` entry named `[vdso]` (no device or inode, the digest in
//! its hash), and restore compares it with its own vDSO's before starting
//! anything.

use goblin::elf::{sym, Elf};

/// The identity path of the vDSO entry in an image's `MappedFiles`.
pub const VDSO_ENTRY: &[u8] = b"[vdso]";

/// One defined function of a vDSO.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Symbol {
    pub name: String,
    /// Offset from the vDSO's load address.
    pub offset: u64,
    pub size: u64,
}

/// Why a vDSO could not be read.
#[derive(Debug, thiserror::Error)]
pub enum VdsoError {
    #[error("the vDSO is not a readable ELF image: {0}")]
    Elf(#[from] goblin::error::Error),
    #[error("reading the vDSO at {addr:#x}: {source}")]
    Read { addr: u64, source: std::io::Error },
    #[error("this process has no vDSO (AT_SYSINFO_EHDR is 0)")]
    Missing,
}

/// The defined functions of the vDSO image `bytes`, sorted by name.
pub fn symbols(bytes: &[u8]) -> Result<Vec<Symbol>, VdsoError> {
    let elf = Elf::parse(bytes)?;
    // The vDSO is linked at 0 (or at its text's address on old kernels): offsets
    // are relative to the lowest PT_LOAD.
    let base = elf
        .program_headers
        .iter()
        .filter(|p| p.p_type == goblin::elf::program_header::PT_LOAD)
        .map(|p| p.p_vaddr)
        .min()
        .unwrap_or(0);
    let mut out: Vec<Symbol> = elf
        .dynsyms
        .iter()
        .filter(|s| s.st_type() == sym::STT_FUNC && s.st_shndx != 0 && s.st_value != 0)
        .filter_map(|s| {
            let name = elf.dynstrtab.get_at(s.st_name)?;
            Some(Symbol {
                name: name.to_string(),
                offset: s.st_value.wrapping_sub(base),
                size: s.st_size,
            })
        })
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// XXH3-128 of the symbol table (one `name offset size` line per function).
pub fn digest(symbols: &[Symbol]) -> [u8; 16] {
    let mut text = String::new();
    for s in symbols {
        text.push_str(&format!("{} {:#x} {:#x}\n", s.name, s.offset, s.size));
    }
    xxhash_rust::xxh3::xxh3_128(text.as_bytes()).to_le_bytes()
}

/// The vDSO of process `pid`, mapped at `[start, end)`.
pub fn of_process(pid: i32, start: u64, end: u64) -> Result<Vec<Symbol>, VdsoError> {
    let mut buf = vec![0u8; (end - start) as usize];
    let len = buf.len();
    crate::linux::sys::read_remote(pid, &mut buf, &[(start, len)]).map_err(|source| {
        VdsoError::Read {
            addr: start,
            source,
        }
    })?;
    symbols(&buf)
}

/// This process's vDSO: the one a restored program gets on this kernel.
pub fn own() -> Result<Vec<Symbol>, VdsoError> {
    let maps = std::fs::read_to_string("/proc/self/maps")
        .map_err(|source| VdsoError::Read { addr: 0, source })?;
    let (start, end) = maps
        .lines()
        .find(|l| l.ends_with("[vdso]"))
        .and_then(|l| {
            let range = l.split_whitespace().next()?;
            let (a, b) = range.split_once('-')?;
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            ))
        })
        .ok_or(VdsoError::Missing)?;
    of_process(std::process::id() as i32, start, end)
}

/// The symbols in `image` (a dump's) that are missing from `host` or sit
/// elsewhere there, as readable lines.
pub fn differences(image: &[Symbol], host: &[Symbol]) -> Vec<String> {
    let mut out = Vec::new();
    for s in image {
        match host.iter().find(|h| h.name == s.name) {
            None => out.push(format!("{} is missing", s.name)),
            Some(h) if h.offset != s.offset || h.size != s.size => out.push(format!(
                "{} at {:#x} ({} B), here at {:#x} ({} B)",
                s.name, s.offset, s.size, h.offset, h.size
            )),
            Some(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_vdso_exports_the_clock_functions_go_uses() {
        let syms = own().expect("own vDSO");
        for name in ["__vdso_clock_gettime", "__vdso_gettimeofday"] {
            assert!(
                syms.iter().any(|s| s.name == name && s.size > 0),
                "{name} not in {syms:?}"
            );
        }
        // Stable: the same table gives the same digest, a moved symbol another.
        let d = digest(&syms);
        assert_eq!(d, digest(&own().expect("again")));
        let mut moved = syms.clone();
        moved[0].offset += 16;
        assert_ne!(d, digest(&moved));
        assert_eq!(differences(&syms, &syms), Vec::<String>::new());
        assert_eq!(differences(&moved, &syms).len(), 1);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(symbols(b"not an elf").is_err());
        let mut bytes = vec![0u8; 4096];
        bytes[..4].copy_from_slice(b"\x7fELF");
        let _ = symbols(&bytes);
    }
}
