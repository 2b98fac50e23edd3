//! Secrets: passwords and tokens, taken from the environment or a file, never logged.
//!
//! A secret setting `password` has two more forms, `password_env` (the name of an
//! environment variable) and `password_file` (a file whose content, less a trailing newline,
//! is the secret). At most one may be given. Values are resolved when a job is built, not
//! when the file is validated, and a [`Secret`] never prints its value.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::config::{KeyPath, Problems};
use crate::error::{DeliveryError, ErrorKind};

/// Where a secret comes from, as the job file says.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// Written in the job file itself (discouraged, but allowed).
    Inline(String),
    /// Read from this environment variable.
    Env(String),
    /// Read from this file.
    File(PathBuf),
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Inline(_) => f.write_str("Inline(<redacted>)"),
            SecretRef::Env(name) => f.debug_tuple("Env").field(name).finish(),
            SecretRef::File(path) => f.debug_tuple("File").field(path).finish(),
        }
    }
}

impl SecretRef {
    /// Picks the one form of secret `key` that was given (`key`, `key_env` or `key_file`),
    /// recording a problem at `at` when more than one was.
    pub fn pick(
        key: &str,
        inline: Option<&String>,
        env: Option<&String>,
        file: Option<&PathBuf>,
        at: &KeyPath,
        problems: &mut Problems,
    ) -> Option<SecretRef> {
        let given = [inline.is_some(), env.is_some(), file.is_some()];
        if given.iter().filter(|g| **g).count() > 1 {
            problems.add(
                at.key(key),
                format!("give only one of `{key}`, `{key}_env` and `{key}_file`"),
            );
            return None;
        }
        if let Some(name) = env {
            if name.is_empty() {
                problems.add(at.key(&format!("{key}_env")), "empty variable name");
            }
            return Some(SecretRef::Env(name.clone()));
        }
        if let Some(path) = file {
            return Some(SecretRef::File(path.clone()));
        }
        inline.map(|value| SecretRef::Inline(value.clone()))
    }

    /// Reads the secret. Relative file paths are taken from `base_dir`.
    pub fn resolve(&self, base_dir: &Path) -> Result<Secret, DeliveryError> {
        match self {
            SecretRef::Inline(value) => Ok(Secret(value.clone())),
            SecretRef::Env(name) => std::env::var(name).map(Secret).map_err(|_| {
                DeliveryError::new(
                    ErrorKind::Config,
                    format!("environment variable {name} is not set (or not UTF-8)"),
                )
            }),
            SecretRef::File(path) => {
                let path = base_dir.join(path);
                let mut text = std::fs::read_to_string(&path).map_err(|err| {
                    DeliveryError::new(
                        ErrorKind::Config,
                        format!("cannot read secret file {}", path.display()),
                    )
                    .with_source(err)
                })?;
                let trimmed = text.trim_end_matches(['\n', '\r']).len();
                text.truncate(trimmed);
                Ok(Secret(text))
            }
        }
    }
}

/// A resolved secret. Its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret's value, for handing to a protocol client. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_form_may_be_given() {
        let mut problems = Problems::default();
        let picked = SecretRef::pick(
            "password",
            Some(&"x".to_string()),
            Some(&"VAR".to_string()),
            None,
            &KeyPath::root().key("jobs"),
            &mut problems,
        );
        assert!(picked.is_none());
        assert_eq!(problems.len(), 1);
    }

    #[test]
    fn a_file_secret_loses_its_trailing_newline_and_never_prints() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("pass"), "hunter2\n").expect("write secret");
        let secret = SecretRef::File("pass".into())
            .resolve(dir.path())
            .expect("readable");
        assert_eq!(secret.expose(), "hunter2");
        assert_eq!(format!("{secret:?} {secret}"), "<redacted> <redacted>");
        let inline = SecretRef::Inline("hunter2".into());
        assert!(!format!("{inline:?}").contains("hunter2"));
    }

    #[test]
    fn a_missing_variable_is_named_without_a_value() {
        let err = SecretRef::Env("FERRY_TEST_SURELY_UNSET_VAR".into())
            .resolve(Path::new("/"))
            .expect_err("unset");
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("FERRY_TEST_SURELY_UNSET_VAR"));
    }
}
