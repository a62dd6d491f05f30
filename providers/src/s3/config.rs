//! How kip runs SeaweedFS: `weed mini` (master, volume server, filer and S3 gateway in one process) with every
//! listener on a loopback port kip assigned and kept in state, and the S3 identity file it reads at start.
//!
//! `weed mini` opens ten TCP listeners, and each one it is not told a port for defaults to a fixed one (9333,
//! 8888, 8333, …) or to that port + 10000 for its gRPC twin: all of them are set here, all bound to 127.0.0.1
//! (`-ip.bind`), and the components kip does not use (WebDAV, the admin UI, the Iceberg and Lance catalogs, the
//! embedded IAM API) are off. Telemetry is off: a local store reports to nobody. `security.toml` gives the filer
//! and volume server JWT keys, and every listener but the S3 API mutual TLS with the instance's certificate.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kip_core::engine::{EngineError, InstanceCtx};
use serde_json::json;

use super::args::InstanceArgs;
use super::tls::TlsFiles;

/// The identity file, in the data directory: 0600 and the engine account's, written before the first start.
pub const IDENTITY_FILE: &str = "s3-identity.json";
/// SeaweedFS's security configuration, in the data directory (its working directory, where `weed` looks first):
/// 0600 and the engine account's, written before the first start.
pub const SECURITY_FILE: &str = "security.toml";

/// The ports kip assigns, by the name they are kept under in state and the `weed mini` flag that takes them.
/// The S3 API's own port (`s3`) is the declared `port` when there is one.
pub const PORTS: [(&str, &str); 10] = [
    ("master", "master.port"),
    ("master-grpc", "master.port.grpc"),
    ("volume", "volume.port"),
    ("volume-grpc", "volume.port.grpc"),
    ("filer", "filer.port"),
    ("filer-grpc", "filer.port.grpc"),
    ("s3", "s3.port"),
    ("s3-grpc", "s3.port.grpc"),
    ("admin", "admin.port"),
    ("admin-grpc", "admin.port.grpc"),
];

/// The port name of the S3 API.
pub const S3_PORT: &str = "s3";

/// The components whose gRPC servers SeaweedFS also serves on a unix socket at a path it does not let one
/// choose: `/tmp/seaweedfs-<component>-grpc-<port>.sock`, by the name of the port that names it.
const GRPC_SOCKETS: [(&str, &str); 5] = [
    ("master", "master-grpc"),
    ("volume", "volume-grpc"),
    ("filer", "filer-grpc"),
    ("s3", "s3-grpc"),
    ("admin", "admin-grpc"),
];

/// The S3 API port: declared, else the one kip assigned (`None` before provision assigned it).
pub fn s3_port(ctx: &InstanceCtx, args: &InstanceArgs) -> Option<u16> {
    args.port.or_else(|| ctx.ports.get(S3_PORT).copied())
}

/// Gives every listener a port, once: kept in state, so the instance keeps its addresses across restarts.
pub fn assign_ports(ctx: &mut InstanceCtx, args: &InstanceArgs) -> Result<(), EngineError> {
    for (name, _) in PORTS {
        if name == S3_PORT && args.port.is_some() {
            continue;
        }
        // Never the declared S3 port: it is free until weed binds it, and the kernel may offer it. Nor one whose
        // gRPC socket path has a file already: another account's would stop weed, and is not kip's to remove.
        ctx.port_where(name, |port| {
            Some(port) != args.port && grpc_socket(name, port).is_none_or(|path| !path.exists())
        })?;
    }
    Ok(())
}

/// Whether another account's file is at the path of the gRPC socket SeaweedFS names after the port `name` (the
/// instance's own are removed by the supervisor before each start).
pub fn grpc_socket_taken(name: &str, port: u16, account: u32) -> bool {
    grpc_socket(name, port).is_some_and(|path| {
        std::fs::symlink_metadata(path)
            .is_ok_and(|metadata| std::os::unix::fs::MetadataExt::uid(&metadata) != account)
    })
}

/// The port kept under `name`, or an error saying provision has not run.
fn assigned(ports: &BTreeMap<String, u16>, name: &str) -> Result<u16, EngineError> {
    ports.get(name).copied().ok_or_else(|| {
        EngineError::new(format!(
            "no port is assigned to SeaweedFS's {name} listener yet"
        ))
        .hint("this is a bug in kip's s3 provider: provision assigns every port before a start")
    })
}

/// The `weed mini` arguments for the instance.
pub fn command_line(ctx: &InstanceCtx, args: &InstanceArgs) -> Result<Vec<String>, EngineError> {
    let path = |path: PathBuf| path.to_string_lossy().into_owned();
    let mut line = vec![
        "mini".to_owned(),
        format!("-dir={}", path(ctx.data_dir.clone())),
        "-ip=127.0.0.1".to_owned(),
        "-ip.bind=127.0.0.1".to_owned(),
    ];
    for (name, flag) in PORTS {
        let port = match (name, args.port) {
            (S3_PORT, Some(port)) => port,
            _ => assigned(&ctx.ports, name)?,
        };
        line.push(format!("-{flag}={port}"));
    }
    line.extend([
        format!("-s3.config={}", path(ctx.data_dir.join(IDENTITY_FILE))),
        // Its own unix sockets default to /tmp; the instance's private run directory instead.
        format!(
            "-filer.localSocket={}",
            path(ctx.run_dir.join("filer.sock"))
        ),
        format!("-s3.localSocket={}", path(ctx.run_dir.join("s3.sock"))),
        // S3's behaviour, not SeaweedFS's conveniences: a bucket is made by CreateBucket only, and a
        // non-empty one is not dropped.
        "-s3.autoCreateBucket=false".to_owned(),
        "-s3.allowDeleteBucketNotEmpty=false".to_owned(),
        "-s3.iam=false".to_owned(),
        "-s3.port.iceberg=0".to_owned(),
        "-s3.port.lance=0".to_owned(),
        "-webdav=false".to_owned(),
        "-admin.ui=false".to_owned(),
        "-master.telemetry=false".to_owned(),
    ]);
    Ok(line)
}

/// The identity file: one identity with every action, the declared or generated keys.
pub fn identity(access_key: &str, secret_key: &str) -> String {
    let document = json!({
        "identities": [{
            "name": "kip",
            "credentials": [{ "accessKey": access_key, "secretKey": secret_key }],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }],
    });
    format!("{document:#}\n")
}

/// `security.toml`: the filer's and the volume server's HTTP listeners take reads and writes only with a JWT signed
/// with these keys, which only the process itself holds (its S3 gateway signs what it sends them), so another
/// local account cannot read or write objects around the S3 API's identity with plain HTTP; and their web UIs
/// are off. Keys are derived from `key`, a secret kept in state.
///
/// Every listener but the S3 API's (the master's, volume server's, filer's and admin server's HTTP, and every
/// gRPC server) also speaks only TLS and requires a client certificate signed by the instance's own CA
/// ([`super::tls`]): the master's HTTP API and the gRPC servers take no JWT, so without this any local account
/// could drop a bucket's volumes through the master. `weed`'s own clients present the same certificate.
pub fn security(key: &str, tls: &TlsFiles) -> String {
    let derive = |purpose: &str| {
        let digest = <sha2::Sha256 as sha2::Digest>::digest(format!("kip s3 {purpose}\0{key}"));
        digest
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect::<String>()
    };
    let sections = [
        ("jwt.signing", "volume write"),
        ("jwt.signing.read", "volume read"),
        ("jwt.filer_signing", "filer write"),
        ("jwt.filer_signing.read", "filer read"),
    ];
    let mut text = String::from("# Written by kip before every start of this store.\n");
    for (section, purpose) in sections {
        text.push_str(&format!("\n[{section}]\nkey = \"{}\"\n", derive(purpose)));
    }
    text.push_str("\n[access]\nui = false\n");
    let (ca, cert, tls_key) = (
        toml_path(&tls.ca),
        toml_path(&tls.cert),
        toml_path(&tls.key),
    );
    // gRPC: every server requires a client certificate the CA signed; the client section is what weed's
    // components present when they dial each other.
    text.push_str(&format!("\n[grpc]\nca = {ca}\n"));
    for component in GRPC_TLS_SECTIONS {
        text.push_str(&format!(
            "\n[grpc.{component}]\ncert = {cert}\nkey = {tls_key}\n"
        ));
    }
    // HTTP: a server section with a CA requires client certificates; the client section makes weed's own HTTP
    // clients (S3 gateway to filer and volume server, filer to volume server) speak TLS with the certificate.
    text.push_str(&format!(
        "\n[https.client]\nenabled = true\ncert = {cert}\nkey = {tls_key}\nca = {ca}\n"
    ));
    for component in HTTPS_TLS_SECTIONS {
        text.push_str(&format!(
            "\n[https.{component}]\ncert = {cert}\nkey = {tls_key}\nca = {ca}\n"
        ));
    }
    text
}

/// The `[grpc.*]` sections of `security.toml` that get the certificate: every gRPC server `weed mini` runs, and
/// its clients.
const GRPC_TLS_SECTIONS: [&str; 6] = ["master", "volume", "filer", "s3", "admin", "client"];
/// The `[https.*]` server sections: every HTTP listener but the S3 API's.
const HTTPS_TLS_SECTIONS: [&str; 4] = ["master", "volume", "filer", "admin"];

/// A path as a TOML basic string.
fn toml_path(path: &Path) -> String {
    let mut quoted = String::from("\"");
    for character in path.to_string_lossy().chars() {
        match character {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            control if control.is_control() => {
                quoted.push_str(&format!("\\u{:04X}", u32::from(control)));
            }
            other => quoted.push(other),
        }
    }
    quoted.push('"');
    quoted
}

/// The ids of the volumes in the data directory (`<id>.dat`, or `<collection>_<id>.dat` for a bucket's), which
/// the volume server loads at start.
pub fn volumes_on_disk(data_dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return Vec::new();
    };
    let mut volumes: Vec<u32> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".dat")?;
            stem.rsplit('_').next()?.parse().ok()
        })
        .collect();
    volumes.sort_unstable();
    volumes.dedup();
    volumes
}

/// The unix sockets SeaweedFS serves its gRPC servers on for these ports, in `/tmp` (it has no flag for them).
pub fn grpc_sockets(ports: &BTreeMap<String, u16>) -> Vec<PathBuf> {
    ports
        .iter()
        .filter_map(|(name, port)| grpc_socket(name, *port))
        .collect()
}

/// The unix socket SeaweedFS serves a gRPC server on when the port kept under `name` is `port`, if it is a
/// gRPC port.
fn grpc_socket(name: &str, port: u16) -> Option<PathBuf> {
    GRPC_SOCKETS
        .iter()
        .find(|(_, grpc)| *grpc == name)
        .map(|(component, _)| {
            Path::new("/tmp").join(format!("seaweedfs-{component}-grpc-{port}.sock"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identity_is_valid_json_with_the_keys() {
        let text = identity("AKID", "se\"cret");
        let document: serde_json::Value = serde_json::from_str(&text).unwrap();
        let credentials = &document["identities"][0]["credentials"][0];
        assert_eq!(credentials["accessKey"], "AKID");
        assert_eq!(credentials["secretKey"], "se\"cret");
    }

    #[test]
    fn security_keys_differ_by_purpose_and_by_instance() {
        let files = TlsFiles::in_dir(Path::new("/data"));
        let one = security("a", &files);
        let keys: Vec<&str> = one
            .lines()
            .filter(|line| line.starts_with("key = ") && !line.contains("tls-key"))
            .collect();
        assert_eq!(keys.len(), 4);
        assert!(
            keys.iter()
                .all(|key| keys.iter().filter(|other| *other == key).count() == 1)
        );
        assert_ne!(one, security("b", &files));
    }

    #[test]
    fn every_listener_but_s3_requires_a_client_certificate() {
        let text = security("a", &TlsFiles::in_dir(Path::new("/data/x\"y")));
        for section in [
            "[grpc]\nca = \"/data/x\\\"y/tls-ca.pem\"",
            "[grpc.master]\ncert = \"/data/x\\\"y/tls-cert.pem\"\nkey = \"/data/x\\\"y/tls-key.pem\"",
            "[grpc.admin]",
            "[grpc.client]",
            "[https.client]\nenabled = true",
            "[https.master]\ncert = \"/data/x\\\"y/tls-cert.pem\"\nkey = \"/data/x\\\"y/tls-key.pem\"\nca = \"/data/x\\\"y/tls-ca.pem\"",
            "[https.volume]",
            "[https.filer]",
            "[https.admin]",
        ] {
            assert!(text.contains(section), "{section}\n{text}");
        }
        assert!(!text.contains("[https.s3]"), "the S3 API stays plain HTTP");
    }

    #[test]
    fn volumes_on_disk_are_read_from_the_data_files() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "keep_2.dat",
            "keep_2.idx",
            "7.dat",
            "my_bucket_12.dat",
            "notes.dat",
            "x.vif",
        ] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        assert_eq!(volumes_on_disk(dir.path()), [2, 7, 12]);
    }

    #[test]
    fn grpc_sockets_follow_seaweedfs_naming() {
        let ports = BTreeMap::from([("filer-grpc".to_owned(), 1234), ("filer".to_owned(), 99)]);
        assert_eq!(
            grpc_sockets(&ports),
            [PathBuf::from("/tmp/seaweedfs-filer-grpc-1234.sock")]
        );
    }
}
