//! kip's engine-agnostic core: everything between the command line and the engines.
//!
//! This part of the pipeline: decode `kip.hcl` into a checked [`config::Config`] (variables, locals,
//! outputs, instances, objects), validate it against the engine schemas and the signed registry, and build the
//! resource [`graph::Graph`]. Later stages (plan, apply, state, supervisor) build on these types.
//!
//! Invariant: the core knows no engine by name. What an engine accepts comes from `kip-schemas`; which versions
//! are supported comes from `kip-registry`.

pub mod address;
pub mod apply;
pub mod archive;
pub mod config;
pub mod desired;
pub mod diag;
pub mod engine;
pub mod fetch;
pub mod fmt;
pub mod fsutil;
pub mod graph;
pub mod huge_pages;
pub mod lock;
pub mod mirror;
pub mod mirror_build;
pub mod plan;
pub mod planner;
pub mod project;
pub mod references;
pub mod resolve;
pub mod runas;
pub mod source;
pub mod state;
pub mod supervise;
pub mod supervisor;
pub(crate) mod wake;
