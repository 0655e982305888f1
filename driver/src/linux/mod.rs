//! The kernel interface: raw syscalls and ioctls the `nix` crate does not cover
//! (userfaultfd, `PAGEMAP_SCAN`, `process_vm_readv` batches, pidfd calls), the
//! `/proc` readers, the page-aligned staging buffer, and the vDSO's symbol
//! table (read with `goblin`).

pub mod features;
pub mod mapped;
pub mod procfs;
pub mod staging;
pub mod sys;
pub mod uffd;
pub mod vdso;
