//! Whom a TLS client trusts: one meaning of `ca_file`, `pin_sha256` and
//! `accept_invalid_certs` for every kind that speaks TLS (FTP, HTTP, email).
//!
//! * None set: the system's roots (Debian's `ca-certificates`).
//! * `ca_file`: exactly the certificates of that PEM file, *instead of* the system's roots,
//!   as curl's `--cacert` does: a private CA, or a self-signed server's own certificate. A
//!   server presenting one of them itself is trusted even when it is marked as a CA (as
//!   `openssl req -x509` makes them), which webpki alone refuses ("CaUsedAsEndEntity").
//! * `pin_sha256`: the server's certificate must be the one with this SHA-256 fingerprint
//!   (`openssl x509 -fingerprint -sha256` prints it), whoever issued it.
//! * `accept_invalid_certs = true`: any certificate that names the host (the handshake's
//!   signatures are still checked). Only for testing: the connection is then open to
//!   interception.
//!
//! Only one of them may be set. [`TlsSettings`] is embedded in a kind's settings with
//! `#[serde(flatten)]`; [`Trust`] is what it resolves to: a rustls [`ClientConfig`] (on
//! aws-lc-rs, never the process default), or, for a client library that builds its own
//! (lettre, for email), a verifier to run on the chain the server presented
//! ([`check_presented`]) before anything of worth is sent.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde::Deserialize;
use sha2::Digest as _;

use crate::error::{DeliveryError, ErrorKind};
use crate::settings::{KeyPath, Problems};

/// `ca_file` and `accept_invalid_certs`, as a kind's settings carry them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct TlsSettings {
    /// A PEM file of the certificates to trust instead of the system's roots (a private CA,
    /// a self-signed server). Relative to the job file's directory.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The SHA-256 fingerprint of the one certificate to trust (hex, colons optional).
    #[serde(default)]
    pub pin_sha256: Option<String>,
    /// Accept any certificate the server shows. Only for testing: the connection is then
    /// open to interception.
    #[serde(default)]
    pub accept_invalid_certs: bool,
}

impl TlsSettings {
    /// Checks the settings at `at`. `tls` says whether the kind's connection uses TLS at
    /// all; `needs` names the setting that turns it on (for the message).
    pub fn validate(&self, tls: bool, needs: &str, at: &KeyPath, problems: &mut Problems) {
        let given = [
            ("ca_file", self.ca_file.is_some()),
            ("pin_sha256", self.pin_sha256.is_some()),
            ("accept_invalid_certs", self.accept_invalid_certs),
        ];
        if !tls {
            for (key, _) in given.iter().filter(|(_, set)| *set) {
                problems.add(at.key(key), format!("only applies with {needs}"));
            }
            return;
        }
        let mut set = given.iter().filter(|(_, set)| *set).map(|(key, _)| *key);
        if let (Some(first), Some(second)) = (set.next(), set.next()) {
            problems.add(
                at.key(second),
                format!("cannot be combined with `{first}`: give one way to trust the server"),
            );
        }
        if let Some(pin) = &self.pin_sha256
            && fingerprint(pin).is_none()
        {
            problems.add(
                at.key("pin_sha256"),
                "must be a SHA-256 fingerprint: 64 hex digits, colons allowed (openssl x509 -noout -fingerprint -sha256 -in CERT)",
            );
        }
    }

    /// Reads what the settings trust; `ca_file` is taken from `base_dir`. `accept_invalid_certs`
    /// is logged at WARN each time (at every start and reload), naming `whom`.
    pub fn trust(&self, base_dir: &Path, whom: &str) -> Result<Trust, DeliveryError> {
        if self.accept_invalid_certs {
            tracing::warn!(
                to = whom,
                "accept_invalid_certs = true: any certificate is accepted; the connection is open to interception."
            );
            return Ok(Trust::Any);
        }
        if let Some(pin) = &self.pin_sha256 {
            let pin = fingerprint(pin).ok_or_else(|| {
                DeliveryError::new(ErrorKind::Config, "pin_sha256 is not a SHA-256 fingerprint")
            })?;
            return Ok(Trust::Pinned(pin));
        }
        let Some(file) = &self.ca_file else {
            return Ok(Trust::System);
        };
        let file = base_dir.join(file);
        let shown = file.display();
        let unreadable = |err: rustls_pki_types::pem::Error| {
            DeliveryError::new(ErrorKind::Config, format!("ca_file {shown}: {err}"))
        };
        let certs = CertificateDer::pem_file_iter(&file)
            .map_err(unreadable)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(unreadable)?;
        if certs.is_empty() {
            return Err(DeliveryError::new(
                ErrorKind::Config,
                format!("ca_file {shown} holds no PEM certificate"),
            ));
        }
        Ok(Trust::Exactly(certs))
    }
}

/// Whom a TLS client trusts.
#[derive(Debug, Clone)]
pub enum Trust {
    /// The system's roots.
    System,
    /// Exactly these certificates (from `ca_file`): as roots, or as the server's own.
    Exactly(Vec<CertificateDer<'static>>),
    /// The certificate with this SHA-256 fingerprint (`pin_sha256`).
    Pinned([u8; 32]),
    /// Any certificate (`accept_invalid_certs`), still for the right host name.
    Any,
}

impl Trust {
    /// A rustls client configuration on aws-lc-rs that trusts this.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, DeliveryError> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|err| DeliveryError::new(ErrorKind::Config, format!("TLS: {err}")))?;
        if let Some(verifier) = self.verifier()? {
            return Ok(Arc::new(
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(verifier)
                    .with_no_client_auth(),
            ));
        }
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        if roots.is_empty() {
            return Err(DeliveryError::new(
                ErrorKind::Config,
                "no CA certificates found on this machine (install ca-certificates) \
                 and no `ca_file` given",
            ));
        }
        Ok(Arc::new(
            builder.with_root_certificates(roots).with_no_client_auth(),
        ))
    }

    /// The verifier of a server's certificate for everything but the system's roots (`None`
    /// for those: rustls's own webpki verifier checks them). The handshake's signatures are
    /// checked in every case.
    ///
    /// A client library that builds its own TLS configuration (lettre, for email) can be
    /// told to accept any certificate while still checking the handshake and the host name,
    /// and then give the chain the server presented to [`check_presented`], before
    /// anything but a greeting is sent.
    pub fn verifier(&self) -> Result<Option<Arc<dyn ServerCertVerifier>>, DeliveryError> {
        let accept = match self {
            Trust::System => return Ok(None),
            Trust::Any => Accept::Any,
            Trust::Pinned(pin) => Accept::Pinned(*pin),
            Trust::Exactly(certs) => {
                let mut anchors = rustls::RootCertStore::empty();
                for cert in certs {
                    anchors.add(cert.clone()).map_err(|err| {
                        DeliveryError::new(ErrorKind::Config, format!("ca_file: {err}"))
                    })?;
                }
                let chain = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(anchors),
                    provider(),
                )
                .build()
                .map_err(|err| DeliveryError::new(ErrorKind::Config, format!("ca_file: {err}")))?;
                Accept::Exactly {
                    certs: certs.clone(),
                    chain,
                }
            }
        };
        Ok(Some(Arc::new(Chosen {
            provider: provider(),
            accept,
        })))
    }
}

/// Checks that `chain` (the server's own certificate first, then what it sent to chain it
/// to an issuer), presented by a server reached as `host`, is one that `verifier` accepts.
/// For a handshake a client library made while accepting any certificate (see
/// [`Trust::verifier`]): the library must have checked the handshake's signatures, which
/// prove the server holds the key of the certificate checked here.
pub fn check_presented(
    verifier: &dyn ServerCertVerifier,
    chain: &[CertificateDer<'_>],
    host: &str,
) -> Result<(), rustls::Error> {
    let (end_entity, intermediates) = chain
        .split_first()
        .ok_or(rustls::Error::NoCertificatesPresented)?;
    let name = ServerName::try_from(host)
        .map_err(|_| rustls::Error::General(format!("{host} is not a host name")))?;
    verifier
        .verify_server_cert(end_entity, intermediates, &name, &[], UnixTime::now())
        .map(drop)
}

/// rustls's cryptography: aws-lc-rs, never the process default.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A SHA-256 fingerprint as people write it (`AB:CD:…` from openssl, or plain hex from
/// `sha256sum`), as bytes; `None` when it is not one.
pub fn fingerprint(text: &str) -> Option<[u8; 32]> {
    let hex: String = text.trim().chars().filter(|c| *c != ':').collect();
    let mut out = [0u8; 32];
    hex::decode_to_slice(&hex, &mut out).ok()?;
    Some(out)
}

/// What a server's certificate is checked against, when not the system's roots.
#[derive(Debug)]
enum Accept {
    /// `accept_invalid_certs`: any certificate, issuer and validity unchecked, as long as it
    /// names the host connected to (as lettre does for email).
    Any,
    /// `pin_sha256`: the certificate with this fingerprint, naming the host.
    Pinned([u8; 32]),
    /// `ca_file`: one of these certificates presented as the server's own (a self-signed
    /// one marked as a CA included), naming the host; else a chain to one of them.
    Exactly {
        certs: Vec<CertificateDer<'static>>,
        chain: Arc<rustls::client::WebPkiServerVerifier>,
    },
}

/// The verifier for [`Accept`]; the handshake's signatures are checked in every case.
#[derive(Debug)]
struct Chosen {
    provider: Arc<CryptoProvider>,
    accept: Accept,
}

/// A server certificate that is not the pinned one.
struct NotPinned(String);

impl std::fmt::Debug for NotPinned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the server's certificate has SHA-256 fingerprint {}, not the one in pin_sha256",
            self.0
        )
    }
}

impl std::fmt::Display for NotPinned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

impl std::error::Error for NotPinned {}

impl ServerCertVerifier for Chosen {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let names_the_host = || {
            let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_name(&parsed, server_name)?;
            Ok(ServerCertVerified::assertion())
        };
        match &self.accept {
            Accept::Any => names_the_host(),
            Accept::Pinned(pin) => {
                let seen: [u8; 32] = sha2::Sha256::digest(end_entity.as_ref()).into();
                if seen != *pin {
                    let shown = seen
                        .iter()
                        .map(|b| format!("{b:02X}"))
                        .collect::<Vec<_>>()
                        .join(":");
                    return Err(rustls::Error::InvalidCertificate(
                        rustls::CertificateError::Other(rustls::OtherError(Arc::new(NotPinned(
                            shown,
                        )))),
                    ));
                }
                names_the_host()
            }
            Accept::Exactly { certs, chain } => {
                if certs
                    .iter()
                    .any(|cert| cert.as_ref() == end_entity.as_ref())
                {
                    names_the_host()
                } else {
                    chain.verify_server_cert(
                        end_entity,
                        intermediates,
                        server_name,
                        ocsp_response,
                        now,
                    )
                }
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_read_as_openssl_and_sha256sum_print_them() {
        let bytes: Vec<u8> = (0u8..32).collect();
        let colons = bytes
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":");
        let plain = hex::encode(&bytes);
        assert_eq!(
            fingerprint(&colons).map(|f| f.to_vec()),
            Some(bytes.clone())
        );
        assert_eq!(
            fingerprint(&format!(" {plain}\n")).map(|f| f.to_vec()),
            Some(bytes)
        );
        assert_eq!(fingerprint(&plain[2..]), None, "too short");
        assert_eq!(fingerprint(&format!("{plain}00")), None, "too long");
        assert_eq!(fingerprint(&plain.replace('0', "g")), None, "not hex");
    }
}
