//! Who may pull: the checks that sit between the HTTP edge and the cache.
//!
//! - [`clients`]: Ferry's own client identities (`[[client]]`, HTTP Basic).

pub mod clients;

pub use clients::ClientAuth;
