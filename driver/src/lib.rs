//! CheckSync's host driver library.
//!
//! The folders follow the data's journey:
//!
//! - [`capture`]: attach to a program ([`capture::attach`]), freeze it
//!   ([`capture::freeze`]), read threads, memory and kernel state (with
//!   [`capture::inject`] running the few syscalls only the target can answer and
//!   [`capture::fds`] classifying descriptors) into a [`capture::Capture`];
//!   [`capture::session`] keeps one program attached and emits epochs, with
//!   [`capture::track`] listing the pages written since the last one.
//! - [`image`]: the epoch file codec, crash-safe writing, checkpoint folders and
//!   their chains ([`image::chain`]), and `inspect`.
//! - [`restore`]: rebuild a process from an epoch with the static stub, and fill
//!   its memory eagerly or lazily ([`restore::lazy`]).
//! - [`linux`]: the kernel interface (raw syscalls and ioctls, `/proc` readers,
//!   the staging buffer).
//!
//! Around them: [`lock`] (one driver per program), [`cancel`] (SIGINT/SIGTERM
//! before the commit point), [`run`] (launch a program traced from its first
//! instruction), [`error`].

pub mod cancel;
pub mod capture;
pub mod channel;
pub mod error;
pub mod image;
pub mod linux;
pub mod lock;
pub mod model;
pub mod node;
pub mod replica;
pub mod restore;
pub mod run;
