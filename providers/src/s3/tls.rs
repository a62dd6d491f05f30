//! The instance's private certificate authority and the one certificate it signs, which close SeaweedFS's
//! listeners other than the S3 API to every other local account with mutual TLS.
//!
//! The master's HTTP API (`/col/delete` drops a bucket's volumes), every gRPC server and the admin server take
//! anything that reaches their port; loopback is no boundary on a machine shared with other accounts. With these
//! files named in `security.toml`, each of those listeners (and the filer's and volume server's HTTP, which also
//! want a JWT) completes a TLS handshake only with a client certificate this CA signed. The certificate and its
//! key live in the data directory, 0600 and the engine account's, so only `weed` itself (and kip, which reads
//! them to ask the master where volumes are) can present one. The CA's key is never written: nothing is signed
//! after the files are made, and when any of them is missing all three are made anew before the start.
//!
//! One certificate serves both directions (`weed` presents it as a server and as a client); SeaweedFS does not
//! check host names on gRPC, and its HTTPS clients dial 127.0.0.1, which the certificate names.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use super::{S3Error, io_error};

/// The CA's certificate, in the data directory: what every listener trusts a client certificate by.
pub const CA_FILE: &str = "tls-ca.pem";
/// The certificate `weed` presents as a server and as a client, signed by the CA.
pub const CERT_FILE: &str = "tls-cert.pem";
/// That certificate's private key.
pub const KEY_FILE: &str = "tls-key.pem";

/// Where the instance's TLS files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// The files in `data_dir`.
    pub fn in_dir(data_dir: &Path) -> TlsFiles {
        TlsFiles {
            ca: data_dir.join(CA_FILE),
            cert: data_dir.join(CERT_FILE),
            key: data_dir.join(KEY_FILE),
        }
    }

    /// Makes a new CA and certificate unless all three files are there: 0600 and `owner`'s. Returns whether it
    /// made them.
    pub fn ensure(&self, owner: Option<(u32, u32)>) -> Result<bool, S3Error> {
        if [&self.ca, &self.cert, &self.key]
            .iter()
            .all(|path| path.is_file())
        {
            return Ok(false);
        }
        let generated = generate()?;
        for (path, contents) in [
            (&self.ca, &generated.ca),
            (&self.cert, &generated.cert),
            (&self.key, &generated.key),
        ] {
            kip_core::fsutil::write_private(path, contents.as_bytes(), owner)
                .map_err(io_error("write", path))?;
        }
        Ok(true)
    }

    /// The certificate and its key in one PEM text, as an HTTP client presents them.
    pub fn client_identity_pem(&self) -> Result<Vec<u8>, S3Error> {
        let mut pem = std::fs::read(&self.key).map_err(io_error("read", &self.key))?;
        pem.push(b'\n');
        pem.extend(std::fs::read(&self.cert).map_err(io_error("read", &self.cert))?);
        Ok(pem)
    }

    /// The CA's certificate, which the master's certificate is checked against.
    pub fn ca_pem(&self) -> Result<Vec<u8>, S3Error> {
        std::fs::read(&self.ca).map_err(io_error("read", &self.ca))
    }
}

/// A new CA and a certificate it signed, as PEM text.
#[derive(Debug)]
pub struct Generated {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

/// Makes a CA (ECDSA P-256) and a certificate for 127.0.0.1 and localhost, for server and client use.
pub fn generate() -> Result<Generated, S3Error> {
    let ca_key = KeyPair::generate().map_err(S3Error::Certificate)?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = name("kip s3 instance CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params
        .self_signed(&ca_key)
        .map_err(S3Error::Certificate)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate().map_err(S3Error::Certificate)?;
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .map_err(S3Error::Certificate)?;
    params.distinguished_name = name("kip s3 instance");
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(S3Error::Certificate)?;
    Ok(Generated {
        ca: ca.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_files_are_made_once_and_again_when_one_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles::in_dir(dir.path());
        assert!(files.ensure(None).unwrap());
        let ca = std::fs::read_to_string(&files.ca).unwrap();
        assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
        for path in [&files.ca, &files.cert, &files.key] {
            let mode = std::fs::metadata(path).unwrap().permissions();
            assert_eq!(
                std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
                0o600
            );
        }
        assert!(!files.ensure(None).unwrap(), "kept while all are there");
        assert_eq!(std::fs::read_to_string(&files.ca).unwrap(), ca);
        std::fs::remove_file(&files.key).unwrap();
        assert!(files.ensure(None).unwrap());
        assert_ne!(std::fs::read_to_string(&files.ca).unwrap(), ca, "a new CA");
        let identity = String::from_utf8(files.client_identity_pem().unwrap()).unwrap();
        assert!(identity.contains("PRIVATE KEY-----") && identity.contains("CERTIFICATE-----"));
    }

    #[test]
    fn every_instance_gets_its_own_ca() {
        let one = generate().unwrap();
        let two = generate().unwrap();
        assert_ne!(one.ca, two.ca);
        assert_ne!(one.key, two.key);
    }
}
