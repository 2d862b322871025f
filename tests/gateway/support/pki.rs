//! A private certificate authority for the TLS tests: a CA, leaf certificates it signs, PEM files in a
//! directory of the test's own, and clients that trust it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// A CA and the directory its files go to (removed when dropped).
pub struct Pki {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
    pub dir: PathBuf,
}

/// A leaf certificate and its key.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl Leaf {
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(mjgate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![self.der.clone()], key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

impl Pki {
    pub fn new(name: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "mjgate-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("mjgate test CA {name}"));
        let ca = params.self_signed(&key).unwrap();
        Pki {
            issuer: Issuer::new(params, key),
            ca_pem: ca.pem(),
            dir,
        }
    }

    /// A leaf for `localhost`.
    pub fn leaf(&self) -> Leaf {
        self.leaf_with(|_| {})
    }

    /// A leaf for `localhost`, its parameters changed by `edit` first (an expiry in the past, say).
    pub fn leaf_with(&self, edit: impl FnOnce(&mut CertificateParams)) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        edit(&mut params);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// Writes `text` to `name` in the directory, atomically (a temporary file renamed over it, as
    /// cert-manager and certbot replace theirs), and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        let partial = self.dir.join(format!(".{name}.partial"));
        std::fs::write(&partial, text).unwrap();
        std::fs::rename(&partial, &path).unwrap();
        path
    }

    /// Files for a `redis-server` on 127.0.0.1 signed by this CA (written to the directory), and
    /// whether it requires client certificates.
    pub fn redis_files(&self, clients_need_certificates: bool) -> super::RedisTlsFiles {
        let leaf = self.leaf_with(|params| {
            params.subject_alt_names.push(rcgen::SanType::IpAddress(
                std::net::Ipv4Addr::LOCALHOST.into(),
            ));
        });
        super::RedisTlsFiles {
            cert: self.write("redis.pem", &leaf.cert_pem),
            key: self.write("redis.key", &leaf.key_pem),
            ca: self.ca_file(),
            clients_need_certificates,
        }
    }

    /// A client certificate and key signed by this CA, as files: `(cert, key)`.
    pub fn client_files(&self) -> (PathBuf, PathBuf) {
        let leaf = self.leaf();
        (
            self.write("client.pem", &leaf.cert_pem),
            self.write("client.key", &leaf.key_pem),
        )
    }

    /// The CA certificate's PEM file.
    pub fn ca_file(&self) -> PathBuf {
        self.write("ca.pem", &self.ca_pem)
    }

    /// A client configuration trusting this CA only, offering `alpn`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        for cert in mjgate::tls::read_certificates(&self.ca_file()).unwrap() {
            roots.add(cert).unwrap();
        }
        let mut config = rustls::ClientConfig::builder_with_provider(mjgate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }

    /// Connects to `addr` as `localhost`, and returns the certificate the server presented.
    pub async fn presented_certificate(
        &self,
        addr: std::net::SocketAddr,
    ) -> CertificateDer<'static> {
        let connector = tokio_rustls::TlsConnector::from(Arc::new(self.client_config(&[])));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let tls = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("handshake");
        tls.get_ref().1.peer_certificates().unwrap()[0].clone()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `path` as a TOML string.
pub fn toml_path(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}
