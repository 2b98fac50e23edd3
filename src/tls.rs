//! Whom a TLS client trusts: one meaning of `ca_file` and `accept_invalid_certs` for every
//! kind that speaks TLS (FTP, email, and whatever comes next).
//!
//! * Neither set: the system's roots (Debian's `ca-certificates`).
//! * `ca_file`: exactly the certificates of that PEM file, *instead of* the system's roots,
//!   as curl's `--cacert` does: a private CA, or a self-signed server's own certificate.
//! * `accept_invalid_certs = true`: any certificate (the handshake's signatures are still
//!   checked). Only for testing: the connection is then open to interception.
//!
//! The two cannot be combined. [`TlsSettings`] is embedded in a kind's settings with
//! `#[serde(flatten)]`; [`Trust`] is what it resolves to, turned into a rustls
//! [`ClientConfig`] (on aws-lc-rs, never the process default) or handed to a client library
//! that builds its own.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde::Deserialize;

use crate::error::{DeliveryError, ErrorKind};
use crate::settings::{KeyPath, Problems};

/// `ca_file` and `accept_invalid_certs`, as a kind's settings carry them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct TlsSettings {
    /// A PEM file of the certificates to trust instead of the system's roots (a private CA,
    /// a self-signed server). Relative to the job file's directory.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate the server shows. Only for testing: the connection is then
    /// open to interception.
    #[serde(default)]
    pub accept_invalid_certs: bool,
}

impl TlsSettings {
    /// Checks the settings at `at`. `tls` says whether the kind's connection uses TLS at
    /// all; `needs` names the setting that turns it on (for the message).
    pub fn validate(&self, tls: bool, needs: &str, at: &KeyPath, problems: &mut Problems) {
        if !tls {
            if self.ca_file.is_some() {
                problems.add(at.key("ca_file"), format!("only applies with {needs}"));
            }
            if self.accept_invalid_certs {
                problems.add(
                    at.key("accept_invalid_certs"),
                    format!("only applies with {needs}"),
                );
            }
        } else if self.ca_file.is_some() && self.accept_invalid_certs {
            problems.add(
                at.key("accept_invalid_certs"),
                "cannot be combined with `ca_file`: either trust that file's certificates or none",
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
    /// Exactly these certificates (from `ca_file`).
    Exactly(Vec<CertificateDer<'static>>),
    /// Any certificate (`accept_invalid_certs`), still for the right host name.
    Any,
}

impl Trust {
    /// A rustls client configuration on aws-lc-rs that trusts this.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, DeliveryError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|err| DeliveryError::new(ErrorKind::Config, format!("TLS: {err}")))?;
        let mut roots = rustls::RootCertStore::empty();
        match self {
            Trust::Any => {
                return Ok(Arc::new(
                    builder
                        .dangerous()
                        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                        .with_no_client_auth(),
                ));
            }
            Trust::Exactly(certs) => {
                for cert in certs {
                    roots.add(cert.clone()).map_err(|err| {
                        DeliveryError::new(ErrorKind::Config, format!("ca_file: {err}"))
                    })?;
                }
            }
            Trust::System => {
                let native = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(native.certs);
                if roots.is_empty() {
                    return Err(DeliveryError::new(
                        ErrorKind::Config,
                        "no CA certificates found on this machine (install ca-certificates) \
                         and no `ca_file` given",
                    ));
                }
            }
        }
        Ok(Arc::new(
            builder.with_root_certificates(roots).with_no_client_auth(),
        ))
    }
}

/// `accept_invalid_certs`: takes any certificate, issuer and validity unchecked, as long as
/// it names the host connected to (as lettre does for email) and the handshake's signatures
/// check out.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_name(&parsed, server_name)?;
        Ok(ServerCertVerified::assertion())
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
