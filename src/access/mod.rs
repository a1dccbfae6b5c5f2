//! Who may pull: the identities configuration holds.
//!
//! - [`clients`]: Ferry's own client identities (`[[client]]`, HTTP Basic),
//!   optionally limited to repositories;
//! - [`admin`]: the admin API's bearer token.
//!
//! Upstream-checked access (the upstream decides) needs the upstream and the
//! cache, so it lives in the cache: `proxy::access`.

pub mod admin;
pub mod clients;

pub use admin::AdminToken;
pub use clients::ClientAuth;
