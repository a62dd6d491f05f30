//! Signs a registry document with a PKCS#8 PEM ed25519 key and writes the detached signature next to it.
//!
//! `cargo run -p kip-registry --example sign -- KEY.pem DOC.json` writes `DOC.json.sig`. This is how the embedded
//! registry (`registry/data/registry.json`) is re-signed after an edit until `kip registry sign` exists; the key
//! stays outside the repository. The document is checked with `Registry::parse` first, so a broken registry is never
//! signed.

use std::error::Error;
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            let mut source = error.source();
            while let Some(cause) = source {
                eprintln!("caused by: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn Error>> {
    let mut arguments = std::env::args_os().skip(1);
    let (Some(key_path), Some(document_path), None) =
        (arguments.next(), arguments.next(), arguments.next())
    else {
        return Err("usage: sign KEY.pem DOC.json".into());
    };
    let key_path = PathBuf::from(key_path);
    let document_path = PathBuf::from(document_path);

    let pem = std::fs::read_to_string(&key_path)
        .map_err(|error| format!("could not read {}: {error}", key_path.display()))?;
    let key = kip_registry::load_signing_key(&pem)?;
    let document = std::fs::read(&document_path)
        .map_err(|error| format!("could not read {}: {error}", document_path.display()))?;
    kip_registry::Registry::parse(&document)?;

    let mut signature_path = document_path.into_os_string();
    signature_path.push(".sig");
    let signature_path = PathBuf::from(signature_path);
    std::fs::write(&signature_path, kip_registry::sign(&document, &key))
        .map_err(|error| format!("could not write {}: {error}", signature_path.display()))?;
    Ok(())
}
