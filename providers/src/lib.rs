//! kip's engines: one module per engine, each implementing the [`Engine`](kip_core::engine::Engine) contract of
//! `kip-core` for the schema `kip-schemas` describes. [`engines`] registers them; the CLI and tests take the
//! registry from here, so adding an engine is a module and a line below.

pub mod mariadb;
pub mod nats;
pub mod postgres;
pub mod process;
pub mod s3;
pub mod shared;
pub mod template;
pub mod valkey;

use kip_core::engine::Engines;

/// Every engine this kip can run.
pub fn engines() -> Engines {
    let mut engines = Engines::new();
    engines.register(mariadb::MariaDb);
    engines.register(nats::Nats);
    engines.register(postgres::Postgres);
    engines.register(process::Process);
    engines.register(s3::S3);
    engines.register(valkey::Valkey);
    engines
}

/// The step that finishes a spare of `variant` ([`template::SpareFinish`]), for `kip prepare-spare`; `None` for a
/// variant this kip does not know (an older or newer kip's request), which is then not prepared.
pub fn spare_finisher(variant: &str) -> Option<template::Finisher> {
    match variant {
        postgres::template::PREMADE_VARIANT => Some(postgres::template::premade_database),
        _ => None,
    }
}
