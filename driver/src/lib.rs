//! CheckSync's host driver library.
//!
//! The modules follow the data's journey: [`freeze`] stops every thread,
//! [`capture`] reads threads, memory and kernel state into a [`capture::Capture`]
//! (with [`inject`] running the few syscalls only the target can answer and [`fds`]
//! classifying descriptors), then the image is written; on the other side the
//! restorer rebuilds the process with the static stub.

pub mod cancel;
pub mod capture;
pub mod chain;
pub mod creds;
pub mod error;
pub mod fds;
pub mod freeze;
pub mod identity;
pub mod image;
pub mod inject;
pub mod inspect;
pub mod lazy;
pub mod lock;
pub mod procfs;
pub mod refuse;
pub mod replica;
pub mod restore;
pub mod run;
pub mod session;
pub mod staging;
pub mod sys;
pub mod track;
pub mod uffd;
