//! Who may pull: the checks that sit between the HTTP edge and the cache.
//!
//! - [`clients`]: Ferry's own client identities (`[[client]]`, HTTP Basic),
//!   optionally limited to repositories;
//! - [`checked`]: upstream-checked access: the upstream decides, with the
//!   client's own credentials, and its decisions are cached;
//! - [`links`]: which digests were seen in which repository, so a digest known
//!   from one repository is not served under another;
//! - [`admin`]: the admin API's bearer token.

pub mod admin;
pub mod checked;
pub mod clients;
pub mod links;

pub use admin::AdminToken;
pub use checked::{Decisions, Verdict};
pub use clients::ClientAuth;
pub use links::Links;
