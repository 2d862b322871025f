//! TLS both ways: the roots the upstream client trusts (Mozilla's or the system's, plus an operator's
//! CA bundle), the listener's certificate (reloaded in place when its files change or on SIGHUP, the
//! old one kept serving when the new pair is broken), and upstream certificate failures in plain words.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, RootCertStore};
use serde::Deserialize;

/// The protocols the listener offers by ALPN, preferred first.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The crypto every TLS configuration here uses (ring, as the upstream connector does).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Which built-in roots the upstream client trusts, besides `upstream.ca_file`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Roots {
    /// Mozilla's root program, compiled in (webpki-roots): the same everywhere, no file needed.
    #[default]
    Webpki,
    /// The operating system's store (`/etc/ssl/certs` and the like), as `rustls-native-certs` finds it.
    System,
}

/// TLS material that could not be used. Each names the file it came from.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {what}", path.display())]
    Pem { path: PathBuf, what: String },
    #[error("{}: no PEM certificate in it", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: {}", path.display(), key_problem(source))]
    Key {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("no root certificate in the system store ({0})")]
    NoSystemRoots(String),
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

fn key_problem(error: &rustls::Error) -> String {
    match error {
        rustls::Error::InconsistentKeys(_) => "the private key does not fit the certificate".into(),
        other => format!("not a private key rustls can use ({other})"),
    }
}

/// Every certificate of a PEM file.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certificates = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            what: pem_error(&e),
        })?;
    if certificates.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certificates)
}

/// A PEM parse error in words: rustls's own `Display` prints some markers as byte arrays.
fn pem_error(error: &pem::Error) -> String {
    match error {
        pem::Error::MissingSectionEnd { end_marker } => format!(
            "a PEM section has no `{}` line (a truncated file?)",
            String::from_utf8_lossy(end_marker)
        ),
        pem::Error::IllegalSectionStart { .. } => "a malformed `-----BEGIN` line".to_owned(),
        pem::Error::Base64Decode(_) => "a PEM section is not valid base64".to_owned(),
        pem::Error::NoItemsFound => "no PEM item in it".to_owned(),
        other => other.to_string(),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    crate::file::read_bounded(path, crate::file::MAX_PEM).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The upstream client's TLS configuration: `roots`, plus every certificate of `ca_file`.
pub fn client_config(
    roots: Roots,
    ca_file: Option<&Path>,
) -> Result<rustls::ClientConfig, TlsError> {
    let mut store = RootCertStore::empty();
    match roots {
        Roots::Webpki => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Roots::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map_or_else(|| "none found".to_owned(), ToString::to_string);
                return Err(TlsError::NoSystemRoots(why));
            }
        }
    }
    if let Some(path) = ca_file {
        for certificate in read_certificates(path)? {
            store.add(certificate).map_err(|e| TlsError::Pem {
                path: path.to_owned(),
                what: format!("a certificate rustls cannot use as a root: {e}"),
            })?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(store)
        .with_no_client_auth();
    Ok(config)
}

/// A certificate chain and its private key, checked to belong together.
pub fn load_certified_key(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = read_certificates(cert_file)?;
    let key_bytes = read(key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| TlsError::Pem {
        path: key_file.to_owned(),
        what: match e {
            pem::Error::NoItemsFound => "no PEM private key in it".to_owned(),
            e => pem_error(&e),
        },
    })?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|source| TlsError::Key {
        path: key_file.to_owned(),
        source,
    })
}

/// Where the listener's certificate and key live, and how often they are checked for change.
#[derive(Debug, Clone)]
pub struct ListenerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub reload_interval: Duration,
}

/// What identifies a version of the two files: a rotation changes at least one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    // `metadata` follows symlinks: Kubernetes and certbot rotate by swapping one.
    let metadata = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&metadata);
    #[cfg(not(unix))]
    let inode = 0;
    Some(Stamp {
        modified: metadata.modified().ok(),
        len: metadata.len(),
        inode,
    })
}

/// How a reload attempt ended.
#[derive(Debug)]
pub enum Reload {
    /// The files are as they were when last loaded.
    Unchanged,
    /// A new pair is being served.
    Reloaded,
    /// The files changed but the new pair is unusable: the old one keeps serving.
    Failed(TlsError),
}

/// The listener's certificate: what every new handshake is answered with, swapped in place on reload,
/// so a rotation needs no restart and drops no connection.
pub struct ListenerCert {
    files: ListenerTls,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' stamps when `current` was loaded (or last failed to load, so a broken pair is
    /// reported once, not on every check).
    seen: Mutex<(Option<Stamp>, Option<Stamp>)>,
}

impl std::fmt::Debug for ListenerCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerCert")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ListenerCert {
    /// Loads the pair once; fails when it is unusable (the gateway does not start on a bad pair).
    pub fn load(files: &ListenerTls) -> Result<Arc<Self>, TlsError> {
        let seen = (stamp(&files.cert_file), stamp(&files.key_file));
        let key = load_certified_key(&files.cert_file, &files.key_file)?;
        Ok(Arc::new(ListenerCert {
            files: files.clone(),
            current: RwLock::new(Arc::new(key)),
            seen: Mutex::new(seen),
        }))
    }

    /// Loads the pair again if either file changed since it was last looked at.
    pub fn reload_if_changed(&self) -> Reload {
        let now = (stamp(&self.files.cert_file), stamp(&self.files.key_file));
        {
            let mut seen = self.seen.lock();
            if *seen == now {
                return Reload::Unchanged;
            }
            *seen = now;
        }
        self.reload()
    }

    /// Loads the pair again, whatever the files' stamps say (SIGHUP).
    pub fn reload(&self) -> Reload {
        match load_certified_key(&self.files.cert_file, &self.files.key_file) {
            Ok(key) => {
                *self.current.write() = Arc::new(key);
                Reload::Reloaded
            }
            Err(e) => Reload::Failed(e),
        }
    }

    /// The server configuration new handshakes use: this certificate, ALPN `h2` then `http/1.1`.
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }

    pub fn reload_interval(&self) -> Duration {
        self.files.reload_interval
    }
}

impl ResolvesServerCert for ListenerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.read()))
    }
}

/// Why an upstream's certificate was refused, from a connect error's source chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateFault {
    UnknownIssuer,
    Expired,
    NotYetValid,
    WrongName,
    Other,
}

impl CertificateFault {
    pub const ALL: [CertificateFault; 5] = [
        CertificateFault::UnknownIssuer,
        CertificateFault::Expired,
        CertificateFault::NotYetValid,
        CertificateFault::WrongName,
        CertificateFault::Other,
    ];

    /// Finds a certificate verification failure in `error` or anything it wraps.
    pub fn find(error: &(dyn std::error::Error + 'static)) -> Option<Self> {
        let mut source = Some(error);
        while let Some(e) = source {
            if let Some(rustls::Error::InvalidCertificate(c)) = e.downcast_ref::<rustls::Error>() {
                return Some(Self::of(c));
            }
            // The redis crate keeps its cause as an `Arc<dyn Error>`, whose `source` skips the
            // error inside: step into it.
            if let Some(inner) = e.downcast_ref::<Arc<dyn std::error::Error + Send + Sync>>() {
                source = Some(inner.as_ref() as &(dyn std::error::Error + 'static));
                continue;
            }
            // `io::Error::source` skips the error it wraps, and hyper-rustls wraps rustls's error in
            // an I/O error inside another: step into each.
            source = match e
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
            {
                Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
                None => e.source(),
            };
        }
        None
    }

    /// The fault a message names, for errors that kept only rustls's words (the redis crate's
    /// cluster client wraps its connection errors in text): `invalid peer certificate: <cause>`.
    pub fn from_message(message: &str) -> Option<Self> {
        let (_, cause) = message.split_once("invalid peer certificate: ")?;
        Some(if cause.starts_with("UnknownIssuer") {
            CertificateFault::UnknownIssuer
        } else if cause.starts_with("Expired") {
            CertificateFault::Expired
        } else if cause.starts_with("NotValidYet") {
            CertificateFault::NotYetValid
        } else if cause.starts_with("NotValidForName") {
            CertificateFault::WrongName
        } else {
            CertificateFault::Other
        })
    }

    fn of(error: &CertificateError) -> Self {
        match error {
            CertificateError::UnknownIssuer => CertificateFault::UnknownIssuer,
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                CertificateFault::Expired
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                CertificateFault::NotYetValid
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                CertificateFault::WrongName
            }
            _ => CertificateFault::Other,
        }
    }

    /// What the client is told in the 502's body.
    pub fn reason(self) -> &'static str {
        match self {
            CertificateFault::UnknownIssuer => {
                "the upstream's TLS certificate is not signed by a trusted authority (a private CA belongs in upstream.ca_file)"
            }
            CertificateFault::Expired => "the upstream's TLS certificate has expired",
            CertificateFault::NotYetValid => "the upstream's TLS certificate is not valid yet",
            CertificateFault::WrongName => {
                "the upstream's TLS certificate is for another name than the upstream URL's host"
            }
            CertificateFault::Other => "the upstream's TLS certificate was refused",
        }
    }

    /// What the log says when Redis's certificate is refused (the shared tier's TLS).
    pub fn redis_reason(self) -> &'static str {
        match self {
            CertificateFault::UnknownIssuer => {
                "Redis's TLS certificate is not signed by a trusted authority (a private CA belongs in shared_cache.ca_file)"
            }
            CertificateFault::Expired => "Redis's TLS certificate has expired",
            CertificateFault::NotYetValid => "Redis's TLS certificate is not valid yet",
            CertificateFault::WrongName => {
                "Redis's TLS certificate is for another name than the one connected to"
            }
            CertificateFault::Other => "Redis's TLS certificate was refused",
        }
    }

    /// The `cause` label of `mjgate_upstream_tls_errors_total`.
    pub fn label(self) -> &'static str {
        match self {
            CertificateFault::UnknownIssuer => "unknown_issuer",
            CertificateFault::Expired => "expired",
            CertificateFault::NotYetValid => "not_yet_valid",
            CertificateFault::WrongName => "wrong_name",
            CertificateFault::Other => "other",
        }
    }
}

/// Logs each certificate fault at warn at most once a minute: a broken upstream certificate fails
/// every call, and the count is in the metrics.
#[derive(Default)]
pub struct FaultLog {
    last: Mutex<[Option<Instant>; 5]>,
}

impl FaultLog {
    pub fn log(&self, fault: CertificateFault, detail: &str) {
        let index = CertificateFault::ALL
            .iter()
            .position(|f| *f == fault)
            .unwrap_or(4);
        let now = Instant::now();
        let mut last = self.last.lock();
        if last[index].is_some_and(|at| now.duration_since(at) < Duration::from_secs(60)) {
            tracing::debug!(cause = fault.label(), %detail, "upstream TLS certificate refused");
            return;
        }
        last[index] = Some(now);
        tracing::warn!(cause = fault.label(), %detail, "upstream TLS certificate refused (logged once a minute per cause; counted in mjgate_upstream_tls_errors_total)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_kept_only_as_rustls_words_is_still_named() {
        let said =
            "Failed to create initial connections - Io: invalid peer certificate: UnknownIssuer";
        assert_eq!(
            CertificateFault::from_message(said),
            Some(CertificateFault::UnknownIssuer)
        );
        assert_eq!(
            CertificateFault::from_message("invalid peer certificate: Expired"),
            Some(CertificateFault::Expired)
        );
        assert_eq!(CertificateFault::from_message("connection refused"), None);
    }

    #[test]
    fn a_certificate_fault_is_found_however_deep_the_io_errors_wrap_it() {
        let rustls_error = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let inner = std::io::Error::new(std::io::ErrorKind::InvalidData, rustls_error);
        let outer = std::io::Error::other(inner);
        assert_eq!(
            CertificateFault::find(&outer),
            Some(CertificateFault::UnknownIssuer)
        );
        let expired = rustls::Error::InvalidCertificate(CertificateError::Expired);
        assert_eq!(
            CertificateFault::find(&expired),
            Some(CertificateFault::Expired)
        );
        assert_eq!(
            CertificateFault::find(&std::io::Error::other("connection refused")),
            None
        );
    }

    #[test]
    fn the_system_roots_load_where_the_system_has_a_ca_bundle() {
        // Debian's ca-certificates; a machine without it has no system roots to use.
        if !Path::new("/etc/ssl/certs/ca-certificates.crt").exists() {
            return;
        }
        assert!(client_config(Roots::System, None).is_ok());
        assert!(
            client_config(Roots::System, Some(Path::new("/nonexistent/ca.pem"))).is_err(),
            "a missing bundle is an error with either roots"
        );
    }
}
