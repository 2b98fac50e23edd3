//! `pgp = { … }`: the payload encrypted with OpenPGP on its way to the writers, for partners
//! who require it (the pure-Rust `pgp` crate; what `gpg --decrypt` reads).
//!
//! The payload (after `transform`, so compressed data is what is encrypted) is encrypted to
//! every key in `recipients` (each can decrypt it) with AES-256 (SEIPD v1, the format every
//! OpenPGP implementation reads), and optionally signed with `sign_key_file`. It streams:
//! the encryption runs on a thread of its own between the source and the writers, reading
//! and writing a chunk at a time, so memory stays at a few chunks whatever the size.
//! Keys are read when the job is built: a file that is not a key, or a recipient without a
//! key that may encrypt, is a configuration error then, not at the first run. An
//! encrypted payload cannot be resumed mid-way: a retry starts over.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use pgp::composed::{Deserializable as _, MessageBuilder, SignedPublicKey, SignedSecretKey};
use pgp::crypto::hash::HashAlgorithm;
use pgp::crypto::sym::SymmetricKeyAlgorithm;
use pgp::packet::Signature;
use pgp::types::{KeyDetails as _, Password};
use serde::Deserialize;
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::CHUNK_SIZE;
use crate::error::{DeliveryError, ErrorKind};
use crate::settings::{KeyPath, Problems, Secret, SecretField, keys, read_secret_file};
use crate::source::ByteStream;

/// The most a key file may hold.
const MAX_KEY_FILE: u64 = 1 << 20;

/// `pgp = { recipients = […], … }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgpConfig {
    /// The public keys to encrypt to (armored files, `gpg --armor --export`, relative to
    /// the job file); any of them can decrypt.
    pub recipients: Vec<PathBuf>,
    /// A secret key to sign with (armored, `gpg --armor --export-secret-keys`).
    #[serde(default)]
    pub sign_key_file: Option<PathBuf>,
    /// The signing key's passphrase: `passphrase`, `passphrase_env` or `passphrase_file`.
    #[serde(flatten)]
    pub passphrase: SecretField<keys::Passphrase>,
    /// ASCII armor (`-----BEGIN PGP MESSAGE-----`) instead of binary OpenPGP.
    #[serde(default)]
    pub armor: bool,
}

impl PgpConfig {
    /// Checks the settings without I/O, recording problems at `at`.
    pub fn validate(&self, at: &KeyPath, problems: &mut Problems) {
        if self.recipients.is_empty() {
            problems.add(at.key("recipients"), "needs at least one public key file");
        }
        self.passphrase.validate(at, problems);
        if self.passphrase.is_given() && self.sign_key_file.is_none() {
            problems.add(
                at.key(&self.passphrase.given_key()),
                "is the passphrase of sign_key_file, which is not set",
            );
        }
    }

    /// Reads the keys (relative to `base_dir`).
    pub fn build(&self, base_dir: &Path) -> Result<Encryption, DeliveryError> {
        let recipients = self
            .recipients
            .iter()
            .map(|file| recipient(file, base_dir))
            .collect::<Result<Vec<_>, _>>()?;
        let signer = match &self.sign_key_file {
            None => None,
            Some(file) => {
                let shown = file.display();
                let text = read_secret_file(file, base_dir, MAX_KEY_FILE)?;
                let (key, _) = SignedSecretKey::from_string(&text).map_err(|err| {
                    config(format!(
                        "sign_key_file {shown} is not an armored secret key ({err})"
                    ))
                })?;
                Some((key, self.passphrase.resolve(base_dir)?))
            }
        };
        Ok(Encryption {
            recipients,
            signer,
            armor: self.armor,
        })
    }
}

fn config(message: String) -> DeliveryError {
    DeliveryError::new(ErrorKind::Config, message)
}

/// A key to encrypt to: a recipient's subkey marked for encryption, or its primary key
/// when that is the one that may encrypt.
#[derive(Debug, Clone)]
enum Recipient {
    Primary(Box<SignedPublicKey>),
    Subkey(Box<pgp::composed::SignedPublicSubKey>),
}

/// Whether a key's binding signatures allow encryption.
fn may_encrypt(signatures: &[Signature]) -> bool {
    signatures.iter().any(|sig| {
        let flags = sig.key_flags();
        flags.encrypt_comms() || flags.encrypt_storage()
    })
}

/// Reads a recipient's armored public key (`path` relative to `base_dir`, with the size
/// limit and `$CREDENTIALS_DIRECTORY` of key files) and picks the key to encrypt to.
fn recipient(path: &Path, base_dir: &Path) -> Result<Recipient, DeliveryError> {
    let shown = path.display();
    let text = read_secret_file(path, base_dir, MAX_KEY_FILE)?;
    let (key, _) = SignedPublicKey::from_string(&text).map_err(|err| {
        config(format!(
            "recipient {shown} is not an armored public key ({err})"
        ))
    })?;
    if let Some(subkey) = key
        .public_subkeys
        .iter()
        .find(|sub| sub.key.algorithm().can_encrypt() && may_encrypt(&sub.signatures))
    {
        return Ok(Recipient::Subkey(Box::new(subkey.clone())));
    }
    if key.primary_key.algorithm().can_encrypt() {
        return Ok(Recipient::Primary(Box::new(key)));
    }
    Err(config(format!(
        "recipient {shown} ({:?}) has no key that may encrypt (a signing-only key?)",
        key.fingerprint()
    )))
}

/// The keys a job's payload is encrypted to and signed with.
#[derive(Debug)]
pub struct Encryption {
    recipients: Vec<Recipient>,
    signer: Option<(SignedSecretKey, Option<Secret>)>,
    armor: bool,
}

/// A reader that keeps the first error it meets (a failing source), so that it, not the
/// encryption's rewording of it, ends the stream.
struct Keeping<R> {
    inner: R,
    failure: Arc<Mutex<Option<io::Error>>>,
}

impl<R: Read> Read for Keeping<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|err| {
            if let Ok(mut kept) = self.failure.lock()
                && kept.is_none()
            {
                *kept = Some(io::Error::new(err.kind(), err.to_string()));
            }
        })
    }
}

/// A writer that hands on chunks of [`CHUNK_SIZE`] to the stream the writers read.
struct Chunks {
    buffer: Vec<u8>,
    tx: tokio::sync::mpsc::Sender<io::Result<Bytes>>,
}

impl Chunks {
    fn send(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(CHUNK_SIZE),
        ));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the writers stopped reading"))
    }
}

impl Write for Chunks {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(buf);
        if self.buffer.len() >= CHUNK_SIZE {
            self.send()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Encryption {
    /// Wraps `stream` so that its bytes come out encrypted (and signed). A failure of the
    /// inner stream comes through as it was; the encryption's own failures are
    /// `integrity` errors.
    pub fn apply(self: &Arc<Self>, stream: ByteStream) -> ByteStream {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(2);
        let failure = Arc::new(Mutex::new(None));
        let reader = Keeping {
            inner: SyncIoBridge::new(StreamReader::new(stream)),
            failure: Arc::clone(&failure),
        };
        let encryption = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("ferry-pgp".into())
            .spawn(move || {
                let mut out = Chunks {
                    buffer: Vec::with_capacity(CHUNK_SIZE),
                    tx,
                };
                let written = encryption.encrypt(reader, &mut out);
                let ended = written.and_then(|()| out.send().map_err(Into::into));
                if let Err(err) = ended {
                    let kept = failure.lock().ok().and_then(|mut kept| kept.take());
                    let err = kept.unwrap_or_else(|| {
                        DeliveryError::new(ErrorKind::Integrity, format!("PGP encryption: {err}"))
                            .into_io()
                    });
                    let _ = out.tx.blocking_send(Err(err));
                }
            });
        if let Err(err) = spawned {
            let failed = DeliveryError::new(ErrorKind::Io, format!("start the PGP thread: {err}"));
            return Box::pin(futures::stream::once(async move { Err(failed.into_io()) }));
        }
        Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }

    /// Encrypts everything `reader` gives into `out`.
    fn encrypt<R: Read>(&self, reader: R, out: &mut Chunks) -> pgp::errors::Result<()> {
        let mut rng = rand_08::thread_rng();
        let mut builder = MessageBuilder::from_reader("", reader)
            .seipd_v1(&mut rng, SymmetricKeyAlgorithm::AES256);
        for recipient in &self.recipients {
            match recipient {
                Recipient::Primary(key) => builder.encrypt_to_key(&mut rng, &**key)?,
                Recipient::Subkey(key) => builder.encrypt_to_key(&mut rng, &**key)?,
            };
        }
        if let Some((key, passphrase)) = &self.signer {
            let password = passphrase
                .as_ref()
                .map_or_else(Password::empty, |p| Password::from(p.expose()));
            builder.sign(&key.primary_key, password, HashAlgorithm::Sha256);
        }
        match self.armor {
            true => builder.to_armored_writer(&mut rng, Default::default(), out),
            false => builder.to_writer(&mut rng, out),
        }
    }
}
