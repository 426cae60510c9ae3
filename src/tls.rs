//! What TLS listeners serve and how upstream roots reach Pingora.
//!
//! Listeners (and the admin listener) answer TLS handshakes through a
//! `CertificateResolver`: one per listening address, built at start, that
//! picks a certificate by the client's SNI name (the listener's `tls.sni`
//! entries, else its default `tls.cert`). A reload loads every listener's
//! files first (`config::certificates` checks them) and only then swaps each
//! resolver's set, so a broken file changes nothing; a swap affects new
//! handshakes only: live connections keep the keys they agreed on.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::certificates::{load_set, CertificateSet};
use crate::config::TlsFiles;

/// Answers a listener's handshakes with the certificate its current set
/// chooses; `replace` swaps the set for new handshakes.
#[derive(Debug)]
pub struct CertificateResolver {
    current: ArcSwap<CertificateSet>,
}

impl CertificateResolver {
    pub fn new(set: CertificateSet) -> Self {
        CertificateResolver {
            current: ArcSwap::from_pointee(set),
        }
    }

    pub fn replace(&self, set: CertificateSet) {
        self.current.store(Arc::new(set));
    }

    pub fn current(&self) -> Arc<CertificateSet> {
        self.current.load_full()
    }
}

impl ResolvesServerCert for CertificateResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().choose(hello.server_name()).key.clone())
    }
}

/// The resolvers of every TLS listener of this process, by address: built
/// with the server, refilled by reloads.
#[derive(Default)]
pub struct Resolvers {
    by_address: Mutex<HashMap<SocketAddr, Arc<CertificateResolver>>>,
}

impl Resolvers {
    /// The resolver for a new listener at `address`, serving `set`.
    pub fn register(&self, address: SocketAddr, set: CertificateSet) -> Arc<CertificateResolver> {
        let resolver = Arc::new(CertificateResolver::new(set));
        self.by_address.lock().insert(address, resolver.clone());
        resolver
    }

    pub fn get(&self, address: &SocketAddr) -> Option<Arc<CertificateResolver>> {
        self.by_address.lock().get(address).cloned()
    }

    /// Every listener's address and current set.
    pub fn current(&self) -> Vec<(SocketAddr, Arc<CertificateSet>)> {
        self.by_address
            .lock()
            .iter()
            .map(|(address, r)| (*address, r.current()))
            .collect()
    }
}

/// The TLS blocks of a config, by address and with their config path:
/// every proxy listener's and the admin listener's.
pub fn tls_blocks(config: &crate::config::Config) -> Vec<(String, SocketAddr, &TlsFiles)> {
    let mut out: Vec<_> = config
        .listeners
        .iter()
        .enumerate()
        .filter_map(|(i, l)| {
            l.tls
                .as_ref()
                .map(|tls| (format!("listen[{i}].tls"), l.address, tls))
        })
        .collect();
    if let Some(admin) = &config.admin {
        if let Some(tls) = &admin.tls {
            out.push(("admin.tls".to_string(), admin.address, tls));
        }
    }
    out
}

/// Loads every TLS block of `config`: all or nothing, the error listing
/// each broken file with its config path.
pub fn load_all(
    config: &crate::config::Config,
    now: i64,
) -> Result<Vec<(SocketAddr, CertificateSet)>, String> {
    let mut sets = Vec::new();
    let mut errors = Vec::new();
    for (path, address, files) in tls_blocks(config) {
        match load_set(files, now) {
            Ok(set) => sets.push((address, set)),
            Err(es) => errors.extend(
                es.into_iter()
                    .map(|e| format!("{path}.{}: {}", e.field, e.message)),
            ),
        }
    }
    if errors.is_empty() {
        Ok(sets)
    } else {
        Err(errors.join("; "))
    }
}

/// The roots in the form Pingora's rustls connector takes per peer.
pub fn pingora_roots(
    certificates: &[Vec<u8>],
) -> Result<Arc<[pingora::utils::tls::WrappedX509]>, String> {
    certificates
        .iter()
        .map(|der| {
            pingora::utils::tls::WrappedX509::try_new(der.clone(), |raw| {
                x509_parser::parse_x509_certificate(raw).map(|(_, cert)| cert)
            })
            .map_err(|e| format!("not an X.509 certificate: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Arc::from)
}

/// The listener a connection arrived on: the one bound to its local
/// address exactly, else one bound to the unspecified address of the same
/// family on the same port.
pub fn listener_at(
    listeners: &[crate::config::Listener],
    local: SocketAddr,
) -> Option<&crate::config::Listener> {
    listeners.iter().find(|l| l.address == local).or_else(|| {
        listeners.iter().find(|l| {
            l.address.port() == local.port()
                && l.address.ip().is_unspecified()
                && l.address.is_ipv4() == local.is_ipv4()
        })
    })
}

/// The `Strict-Transport-Security` value for a response on a connection
/// to `local`: only over TLS, only when its listener sets `hsts`.
pub fn hsts_header(
    listeners: &[crate::config::Listener],
    local: Option<SocketAddr>,
    tls: bool,
) -> Option<String> {
    if !tls {
        return None;
    }
    listener_at(listeners, local?)?
        .hsts
        .as_ref()
        .map(crate::config::Hsts::header_value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn hsts_only_over_tls_on_a_listener_that_sets_it() {
        use crate::config::{Hsts, Listener};
        let hsts = Hsts {
            max_age: std::time::Duration::from_secs(86400),
            include_subdomains: true,
            preload: false,
        };
        let files = TlsFiles {
            cert: PathBuf::new(),
            key: PathBuf::new(),
            sni: vec![],
        };
        let listeners = vec![
            Listener {
                address: "0.0.0.0:8443".parse().unwrap(),
                tls: Some(files.clone()),
                hsts: Some(hsts),
            },
            Listener {
                address: "127.0.0.1:9443".parse().unwrap(),
                tls: Some(files),
                hsts: None,
            },
        ];
        let at = |a: &str, tls| hsts_header(&listeners, Some(a.parse().unwrap()), tls);
        let value = Some("max-age=86400; includeSubDomains".to_string());
        assert_eq!(at("10.1.2.3:8443", true), value);
        assert_eq!(at("10.1.2.3:8443", false), None);
        assert_eq!(at("127.0.0.1:9443", true), None);
        assert_eq!(at("[::1]:8443", true), None);
        assert_eq!(hsts_header(&listeners, None, true), None);
    }

    #[test]
    fn ca_files_become_pingora_roots() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ca.pem");
        std::fs::write(&file, ca.pem()).unwrap();
        let roots = crate::config::certificates::load_ca_file(&file).unwrap();
        assert_eq!(pingora_roots(&roots).unwrap().len(), 1);
    }
}
