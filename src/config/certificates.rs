//! The certificate files of a configuration: loading them and checking
//! what an operator can get wrong — unreadable files, no certificate or key
//! in them, a key that is not the certificate's, a certificate expired or
//! not yet valid, an SNI name the certificate does not cover — with an
//! error that names which, for `portcullis check`, the start and reloads.
//! Also the roots of an upstream's `ca_file`. What is served, and how,
//! is `crate::tls`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::model::{SniCertificate, TlsFiles};

/// One loaded certificate and what is worth reporting about it.
#[derive(Debug, Clone)]
pub struct LoadedCertificate {
    pub key: Arc<CertifiedKey>,
    /// Seconds since the epoch after which clients refuse it.
    pub not_after: i64,
    /// The file it came from, for logs and metric labels.
    pub file: String,
}

/// The certificates one listener serves.
#[derive(Debug, Clone)]
pub struct CertificateSet {
    pub default: LoadedCertificate,
    /// Lowercase SNI name → certificate.
    pub by_name: HashMap<String, LoadedCertificate>,
}

impl CertificateSet {
    /// The certificate for a handshake that asked for `server_name`: the
    /// entry naming it exactly (case-insensitively), else the default.
    /// A wildcard entry (`*.example.com`) answers one label below its
    /// domain (`chat.example.com`, not `a.chat.example.com`), as the
    /// certificate itself would; an exact entry wins over a wildcard.
    pub fn choose(&self, server_name: Option<&str>) -> &LoadedCertificate {
        server_name
            .map(str::to_ascii_lowercase)
            .and_then(|name| {
                self.by_name.get(&name).or_else(|| {
                    let (_, parent) = name.split_once('.')?;
                    self.by_name.get(&format!("*.{parent}"))
                })
            })
            .unwrap_or(&self.default)
    }

    /// Every distinct certificate of the set (the default first).
    pub fn certificates(&self) -> Vec<&LoadedCertificate> {
        let mut out = vec![&self.default];
        for cert in self.by_name.values() {
            if !out.iter().any(|c| Arc::ptr_eq(&c.key, &cert.key)) {
                out.push(cert);
            }
        }
        out
    }
}

/// What is wrong with one of a listener's files: `field` is the config
/// path below the listener's `tls` (`cert`, `sni[1].key`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateError {
    pub field: String,
    pub message: String,
}

/// Loads and checks every certificate of a listener's `tls` block.
pub fn load_set(files: &TlsFiles, now: i64) -> Result<CertificateSet, Vec<CertificateError>> {
    let mut errors = Vec::new();
    let default = load_pair(&files.cert, &files.key, now)
        .map_err(|(field, message)| errors.push(CertificateError { field, message }))
        .ok();
    let mut by_name = HashMap::new();
    for (i, entry) in files.sni.iter().enumerate() {
        let prefix = format!("sni[{i}]");
        let loaded = match load_pair(&entry.cert, &entry.key, now) {
            Ok(loaded) => loaded,
            Err((field, message)) => {
                errors.push(CertificateError {
                    field: format!("{prefix}.{field}"),
                    message,
                });
                continue;
            }
        };
        for (j, name) in entry.names.iter().enumerate() {
            let field = format!("{prefix}.names[{j}]");
            if let Err(message) = covers(&loaded.key, name) {
                errors.push(CertificateError { field, message });
            } else if by_name.insert(name.clone(), loaded.clone()).is_some() {
                errors.push(CertificateError {
                    field,
                    message: format!("`{name}` is listed under more than one certificate"),
                });
            }
        }
    }
    match default {
        Some(default) if errors.is_empty() => Ok(CertificateSet { default, by_name }),
        _ => Err(errors),
    }
}

/// Checks an SNI entry's names before any file is read: host names, or
/// wildcards (`*.example.com`: one label below a domain of two or more).
pub fn check_sni_names(entry: &SniCertificate) -> Vec<(usize, String)> {
    let mut errors = Vec::new();
    if entry.names.is_empty() {
        errors.push((usize::MAX, "at least one name is required".to_string()));
    }
    for (i, name) in entry.names.iter().enumerate() {
        let host = name.strip_prefix("*.").unwrap_or(name);
        if name.starts_with("*.") && !host.contains('.') {
            errors.push((
                i,
                format!("`{name}`: a wildcard needs a domain of at least two labels"),
            ));
        } else if rustls::pki_types::DnsName::try_from(host).is_err()
            || host.contains('*')
            || host.parse::<std::net::IpAddr>().is_ok()
        {
            errors.push((
                i,
                format!("`{name}` is not a host name (or `*.` and a domain)"),
            ));
        }
    }
    errors
}

/// A certificate chain and its key from PEM files; the error names the
/// field (`cert` or `key`) and what is wrong, never the key's content.
fn load_pair(cert: &Path, key: &Path, now: i64) -> Result<LoadedCertificate, (String, String)> {
    let cert_err = |m: String| ("cert".to_string(), m);
    let key_err = |m: String| ("key".to_string(), m);
    let cert_pem = std::fs::read(cert)
        .map_err(|e| cert_err(format!("cannot read {}: {e}", cert.display())))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(format!("{}: not PEM: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(cert_err(format!(
            "{}: no certificate (a PEM `CERTIFICATE` block) in the file",
            cert.display()
        )));
    }
    let key_pem =
        std::fs::read(key).map_err(|e| key_err(format!("cannot read {}: {e}", key.display())))?;
    let private_key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| {
        key_err(format!(
            "{}: no private key (a PEM `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY` block) in the file",
            key.display()
        ))
    })?;
    let (not_before, not_after) = validity(&chain[0])
        .map_err(|e| cert_err(format!("{}: not an X.509 certificate: {e}", cert.display())))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let certified = CertifiedKey::from_der(chain, private_key, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => key_err(format!(
            "{} is not the key of the certificate in {}",
            key.display(),
            cert.display()
        )),
        other => key_err(format!("{}: unusable key: {other}", key.display())),
    })?;
    if now < not_before {
        return Err(cert_err(format!(
            "{}: not valid before {}",
            cert.display(),
            http_date(not_before)
        )));
    }
    if now > not_after {
        return Err(cert_err(format!(
            "{}: expired on {}",
            cert.display(),
            http_date(not_after)
        )));
    }
    Ok(LoadedCertificate {
        key: Arc::new(certified),
        not_after,
        file: cert.display().to_string(),
    })
}

/// The end-entity certificate's validity window, in seconds since the epoch.
fn validity(der: &CertificateDer<'_>) -> Result<(i64, i64), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let validity = cert.validity();
    Ok((
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    ))
}

fn http_date(epoch_seconds: i64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch_seconds.max(0) as u64);
    httpdate::fmt_http_date(time)
}

/// Whether the certificate is valid for `name`, by rustls's own check (the
/// one a client makes). For a wildcard entry, whether it is valid for any
/// name the entry answers: checked with one such name, which only a
/// wildcard certificate for that domain covers.
fn covers(key: &Arc<CertifiedKey>, name: &str) -> Result<(), String> {
    let probe_name = match name.strip_prefix("*.") {
        Some(domain) => format!("portcullis-sni-check.{domain}"),
        None => name.to_string(),
    };
    let mut probe = rustls::server::ResolvesServerCertUsingSni::new();
    probe
        .add(&probe_name, CertifiedKey::clone(key))
        .map_err(|_| format!("the certificate is not issued for `{name}`"))
}

/// Seconds since the epoch, for validity checks.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The roots in a PEM file, each checked the way both rustls (the trust
/// anchor) and Pingora (which parses each again with x509-parser) will
/// read it, so a bad file is refused by `check` and never panics later.
pub fn load_ca_file(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no certificate (a PEM `CERTIFICATE` block) in the file",
            path.display()
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    for (i, cert) in certs.iter().enumerate() {
        x509_parser::parse_x509_certificate(cert)
            .map_err(|e| format!("{}: certificate {}: {e}", path.display(), i + 1))?;
        roots
            .add(cert.clone())
            .map_err(|e| format!("{}: certificate {}: {e}", path.display(), i + 1))?;
    }
    Ok(certs.into_iter().map(|c| c.to_vec()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    struct Issued {
        cert_pem: String,
        key_pem: String,
    }

    fn ca() -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
    }

    fn issue(ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>, names: &[&str]) -> Issued {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, ca)
            .unwrap();
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn files(dir: &Path, name: &str, issued: &Issued) -> (PathBuf, PathBuf) {
        (
            write(dir, &format!("{name}.crt"), &issued.cert_pem),
            write(dir, &format!("{name}.key"), &issued.key_pem),
        )
    }

    #[test]
    fn chooses_by_sni_name_with_the_default_for_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca();
        let (cert, key) = files(dir.path(), "default", &issue(&ca, &["localhost"]));
        let (chat_cert, chat_key) = files(dir.path(), "chat", &issue(&ca, &["chat.example.com"]));
        let tls = TlsFiles {
            cert: cert.clone(),
            key,
            sni: vec![SniCertificate {
                names: vec!["chat.example.com".into()],
                cert: chat_cert.clone(),
                key: chat_key,
            }],
        };
        let set = load_set(&tls, now()).unwrap();
        let file = |name| set.choose(name).file.clone();
        assert_eq!(
            file(Some("chat.example.com")),
            chat_cert.display().to_string()
        );
        assert_eq!(
            file(Some("CHAT.example.com")),
            chat_cert.display().to_string()
        );
        assert_eq!(file(Some("other.example.com")), cert.display().to_string());
        assert_eq!(file(None), cert.display().to_string());
        assert_eq!(set.certificates().len(), 2);

        // A wildcard entry answers one label below its domain; an exact
        // entry still wins.
        let (wild_cert, wild_key) = files(dir.path(), "wild", &issue(&ca, &["*.example.com"]));
        let mut tls = tls;
        tls.sni.push(SniCertificate {
            names: vec!["*.example.com".into()],
            cert: wild_cert.clone(),
            key: wild_key.clone(),
        });
        let set = load_set(&tls, now()).unwrap();
        let file = |name| set.choose(name).file.clone();
        let wild = wild_cert.display().to_string();
        assert_eq!(file(Some("other.example.com")), wild);
        assert_eq!(
            file(Some("chat.example.com")),
            chat_cert.display().to_string()
        );
        assert_eq!(file(Some("a.b.example.com")), cert.display().to_string());
        assert_eq!(file(Some("example.com")), cert.display().to_string());
        // Only a wildcard certificate covers a wildcard entry.
        let e = load_set(
            &TlsFiles {
                sni: vec![SniCertificate {
                    names: vec!["*.example.com".into()],
                    cert: chat_cert.clone(),
                    key: files(dir.path(), "chat", &issue(&ca, &["chat.example.com"])).1,
                }],
                ..tls.clone()
            },
            now(),
        )
        .unwrap_err();
        assert!(e.iter().any(|e| e.field == "sni[0].names[0]"), "{e:?}");
    }

    #[test]
    fn refuses_what_an_operator_can_get_wrong_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca();
        let good = issue(&ca, &["chat.example.com"]);
        let other = issue(&ca, &["chat.example.com"]);
        let (cert, key) = files(dir.path(), "good", &good);
        let (_, other_key) = files(dir.path(), "other", &other);
        let empty = write(dir.path(), "empty.pem", "");
        let missing = dir.path().join("missing.pem");
        let errors = |tls: TlsFiles| -> Vec<(String, String)> {
            load_set(&tls, now())
                .unwrap_err()
                .into_iter()
                .map(|e| (e.field, e.message))
                .collect()
        };
        let plain = |cert: &PathBuf, key: &PathBuf| TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            sni: vec![],
        };
        let e = errors(plain(&cert, &other_key));
        assert_eq!(e[0].0, "key");
        assert!(
            e[0].1.contains("is not the key of the certificate"),
            "{e:?}"
        );
        let e = errors(plain(&missing, &key));
        assert_eq!(e[0].0, "cert");
        assert!(e[0].1.contains("cannot read"), "{e:?}");
        let e = errors(plain(&empty, &key));
        assert!(e[0].1.contains("no certificate"), "{e:?}");
        let e = errors(plain(&cert, &empty));
        assert_eq!(e[0].0, "key");
        assert!(e[0].1.contains("no private key"), "{e:?}");
        // A key file's content never appears in an error.
        let e = errors(plain(&key, &key));
        assert!(e.iter().all(|(_, m)| !m.contains("BEGIN")), "{e:?}");
        // An SNI name the certificate does not cover.
        let e = errors(TlsFiles {
            sni: vec![SniCertificate {
                names: vec!["chat.example.com".into(), "www.example.com".into()],
                cert: cert.clone(),
                key: key.clone(),
            }],
            ..plain(&cert, &key)
        });
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].0, "sni[0].names[1]");
        assert!(e[0].1.contains("not issued for `www.example.com`"), "{e:?}");
        // Expired.
        let key_pair = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["chat.example.com".into()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        let expired = Issued {
            cert_pem: params.signed_by(&key_pair, &ca).unwrap().pem(),
            key_pem: key_pair.serialize_pem(),
        };
        let (expired_cert, expired_key) = files(dir.path(), "expired", &expired);
        let e = errors(plain(&expired_cert, &expired_key));
        assert_eq!(e[0].0, "cert");
        assert!(e[0].1.contains("expired on Mon, 01 Jan 2001"), "{e:?}");
    }

    #[test]
    fn sni_names_are_exact_host_names() {
        let entry = |names: &[&str]| SniCertificate {
            names: names.iter().map(|n| n.to_string()).collect(),
            cert: PathBuf::new(),
            key: PathBuf::new(),
        };
        assert!(check_sni_names(&entry(&["chat.example.com", "*.example.com"])).is_empty());
        assert_eq!(check_sni_names(&entry(&[])).len(), 1);
        let e = check_sni_names(&entry(&["*.com", "10.0.0.1", "bad name", "a.*.com", "*"]));
        assert_eq!(
            e.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4]
        );
    }

    #[test]
    fn ca_files_are_refused_without_a_readable_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ca_file = write(dir.path(), "ca.pem", &ca().pem());
        assert_eq!(load_ca_file(&ca_file).unwrap().len(), 1);
        let empty = write(dir.path(), "empty.pem", "no pem here");
        assert!(load_ca_file(&empty).unwrap_err().contains("no certificate"));
        let garbage = write(
            dir.path(),
            "garbage.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
        assert!(load_ca_file(&garbage).is_err());
    }
}
