//! The OCI distribution protocol as pure types, with no I/O: names, references,
//! digests, media types, routes, ranges and error codes. Everything here is
//! tested without sockets.

pub use ferry_storage::digest;
pub mod error;
pub mod image_ref;
pub mod media;
pub mod name;
pub mod range;
pub mod route;

pub use digest::{Algorithm, Digest, Hasher};
pub use error::{ErrorCode, OciError};
pub use image_ref::ImageRef;
pub use name::{Reference, RepoName, Tag};
pub use range::{RangeAnswer, RangeRequest};
pub use route::{PullRequest, Route, TagsPage};
