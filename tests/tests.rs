//! Ferry's integration tests: one binary (link time on 2 cores), topical modules.
//! Every test starts a real Ferry on 127.0.0.1:0 in front of an in-process fake
//! upstream that counts what it receives, so upstream traffic is asserted exactly.

mod support;

mod access;
mod api;
mod auth;
mod blobs;
mod bucket;
mod cli;
mod cluster;
mod crash;
mod events;
mod freshness;
mod hostile;
mod lifecycle;
mod limits;
mod storage;
mod webhook;
