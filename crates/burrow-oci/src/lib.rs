//! OCI images into plain root directories: `burrow images import` and `burrow images pull`.
//!
//! This crate owns reading image formats (OCI image layout, `docker save` archives, the OCI distribution
//! protocol), verifying every blob against its digest, and applying layers (whiteouts, opaque directories,
//! hard links) to a directory. It hands back the image's runtime settings as [`ImageConfig`].
//!
//! It must never write outside the destination (the private `layer` module documents how paths are resolved), leave
//! a half-built root behind, trust unverified content, or talk to anything but the registry named in the
//! reference and the token service that registry points to. It does not shift uids, snapshot, or know about
//! the storage pool: the daemon does that with the directory it gets.
//!
//! Output contract, shared by [`import_archive`] and [`pull`]: `dest_root` must not exist (or be an empty
//! directory) and its parent must exist. The image is assembled in a hidden temporary directory beside
//! `dest_root` (same filesystem) and renamed into place as the last step; on any error the temporary
//! directory is removed and `dest_root` is untouched.
//!
//! Ownership is reproduced only when running as root; directories, files and symlinks get their modes,
//! mtimes and (where the filesystem allows) xattrs. Device nodes and FIFOs are skipped.

#![forbid(unsafe_code)]

mod archive;
mod digest;
mod error;
mod image;
mod layer;
mod reference;
mod registry;
mod staging;

pub use archive::{ImportOptions, import_archive};
pub use error::OciError;
pub use image::{ImageConfig, Platform};
pub use layer::LayerStats;
pub use reference::{Reference, TagOrDigest};
pub use registry::{PullOptions, PullProgress, pull};

/// Progress callback for [`import_archive`]: one human-readable line per step (per blob, per layer).
pub type Progress<'a> = &'a mut dyn FnMut(&str);
