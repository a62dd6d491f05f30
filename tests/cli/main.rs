//! End-to-end tests of the `kip` binary: each test writes a project into a fresh temp dir, runs the real binary
//! there, and checks its exit code and output (snapshots, with machine-specific paths filtered out).

#[path = "../../core/tests/support/http.rs"]
mod http;
mod support;

mod apply;
mod contract;
mod diagnostics;
mod faults;
mod fmt;
mod graph;
mod init;
mod mariadb;
mod mirror_build;
mod nats;
mod process;
mod registry;
mod resolve;
mod s3;
mod schema;
mod security;
mod stack;
mod usage;
mod valkey;
