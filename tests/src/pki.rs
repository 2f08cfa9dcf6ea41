//! Certificate authorities the TLS tests make for themselves.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

/// A certificate authority, its certificate written to `<name>-ca.pem`.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub cert_file: PathBuf,
}

/// A server certificate and its key, as PEM files.
pub struct ServerCert {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl TestCa {
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let key = KeyPair::generate().expect("generate a CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, format!("Apiary test CA {name}"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("self-sign the CA");
        let cert_file = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&cert_file, cert.pem()).expect("write the CA certificate");
        TestCa { issuer: Issuer::new(params, key), cert_file }
    }

    /// A certificate for `localhost` and 127.0.0.1, written to `<name>.pem` and `<name>.key`.
    pub fn server_cert(&self, dir: &Path, name: &str) -> ServerCert {
        let key = KeyPair::generate().expect("generate a server key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).expect("server parameters");
        params.distinguished_name.push(DnType::CommonName, "apiaryd");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer).expect("sign the server certificate");
        let cert_file = dir.join(format!("{name}.pem"));
        let key_file = dir.join(format!("{name}.key"));
        std::fs::write(&cert_file, cert.pem()).expect("write the server certificate");
        std::fs::write(&key_file, key.serialize_pem()).expect("write the server key");
        ServerCert { cert_file, key_file }
    }
}
