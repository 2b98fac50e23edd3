//! Secrets: passwords and tokens, taken from the environment or a file, never logged.
//!
//! A secret setting `password` has two more forms, `password_env` (the name of an
//! environment variable) and `password_file` (a file whose content, less a trailing newline,
//! is the secret). At most one may be given. A kind's settings embed the three as one
//! [`SecretField`] (`#[serde(flatten)] password: SecretField<keys::Password>`). Values are
//! resolved when a job is built, not when the file is validated, and neither a
//! [`SecretField`] nor a [`Secret`] ever prints its value.

use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};

use super::{KeyPath, Problems};
use crate::error::{DeliveryError, ErrorKind};

/// Why a `*_env` value is refused (without showing it: it may be the secret, put in the
/// wrong key).
pub const NOT_A_VARIABLE: &str = "not an environment variable name (letters, digits and '_', not starting with a digit); the value is not shown";

/// Whether `name` can name an environment variable: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A `*_file` path starting with this is read from the directory systemd hands credentials
/// in (`LoadCredential=` in the unit): `password_file = "$CREDENTIALS_DIRECTORY/ferry_smtp"`.
pub const CREDENTIALS: &str = "$CREDENTIALS_DIRECTORY";

/// The directory systemd put the unit's credentials in.
fn credentials_dir() -> Result<PathBuf, DeliveryError> {
    std::env::var_os("CREDENTIALS_DIRECTORY")
        .map(PathBuf::from)
        .ok_or_else(|| {
            DeliveryError::new(
                ErrorKind::Config,
                "a *_file names $CREDENTIALS_DIRECTORY, which is not set: ferry is not running \
                 under a systemd unit with LoadCredential=",
            )
        })
}

/// The name of a secret setting: `KEY`, and the keys of its three forms.
pub trait SecretKey {
    /// The inline form's key, e.g. `password`.
    const KEY: &'static str;
    /// `KEY`, `KEY_env` and `KEY_file`.
    const FIELDS: &'static [&'static str];
}

/// Declares a [`SecretKey`] marker type: `secret_key!(Password = "password");`.
macro_rules! secret_key {
    ($(#[$meta:meta])* $name:ident = $key:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct $name;

        impl $crate::settings::SecretKey for $name {
            const KEY: &'static str = $key;
            const FIELDS: &'static [&'static str] =
                &[$key, concat!($key, "_env"), concat!($key, "_file")];
        }
    };
}

/// The secret settings the built-in kinds share.
pub mod keys {
    secret_key!(
        /// `password`, `password_env`, `password_file`.
        Password = "password"
    );
    secret_key!(
        /// `passphrase`, `passphrase_env`, `passphrase_file` (a private key's).
        Passphrase = "passphrase"
    );
    secret_key!(
        /// `url`, `url_env`, `url_file` (a URL that carries a token).
        Url = "url"
    );
    secret_key!(
        /// `bearer_token`, `bearer_token_env`, `bearer_token_file`.
        BearerToken = "bearer_token"
    );
    secret_key!(
        /// `access_key_id`, `access_key_id_env`, `access_key_id_file`.
        AccessKeyId = "access_key_id"
    );
    secret_key!(
        /// `state`, `state_env`, `state_file` (a store URL that may hold a password).
        State = "state"
    );
    secret_key!(
        /// `read_token`, `read_token_env`, `read_token_file` (`[api]`).
        ReadToken = "read_token"
    );
    secret_key!(
        /// `admin_token`, `admin_token_env`, `admin_token_file` (`[api]`).
        AdminToken = "admin_token"
    );
    secret_key!(
        /// `token`, `token_env`, `token_file` (a registry's access token).
        Token = "token"
    );
    secret_key!(
        /// `secret_access_key`, `secret_access_key_env`, `secret_access_key_file`.
        SecretAccessKey = "secret_access_key"
    );
}

/// A secret setting as the job file gives it: `KEY`, `KEY_env` or `KEY_file` (at most one),
/// read by a kind's settings with `#[serde(flatten)]`.
pub struct SecretField<K> {
    inline: Option<String>,
    env: Option<String>,
    file: Option<PathBuf>,
    key: PhantomData<K>,
}

impl<K: SecretKey> SecretField<K> {
    /// The inline form, for tests and library users (`password = "…"`).
    pub fn inline(value: impl Into<String>) -> SecretField<K> {
        SecretField {
            inline: Some(value.into()),
            ..SecretField::default()
        }
    }

    /// Whether any form was given.
    pub fn is_given(&self) -> bool {
        self.inline.is_some() || self.env.is_some() || self.file.is_some()
    }

    /// The key the job file gives it under (`password`, `password_env` or
    /// `password_file`), for problems about the value to point at; the plain key when none.
    pub fn given_key(&self) -> String {
        let key = K::KEY;
        match (&self.env, &self.file) {
            (Some(_), _) => format!("{key}_env"),
            (None, Some(_)) => format!("{key}_file"),
            (None, None) => key.to_owned(),
        }
    }

    /// Records a problem at `at` when more than one form was given, or an empty variable
    /// name.
    pub fn validate(&self, at: &KeyPath, problems: &mut Problems) {
        let key = K::KEY;
        let given = [
            self.inline.is_some(),
            self.env.is_some(),
            self.file.is_some(),
        ];
        if given.iter().filter(|g| **g).count() > 1 {
            problems.add(
                at.key(key),
                format!("give only one of `{key}`, `{key}_env` and `{key}_file`"),
            );
        }
        if let Some(name) = &self.env
            && !is_variable_name(name)
        {
            problems.add(at.key(&format!("{key}_env")), NOT_A_VARIABLE);
        }
    }

    /// Like [`SecretField::validate`], and records a problem when no form was given.
    pub fn validate_required(&self, at: &KeyPath, problems: &mut Problems) {
        let key = K::KEY;
        if !self.is_given() {
            problems.add(
                at.key(key),
                format!("missing: give `{key}`, `{key}_env` or `{key}_file`"),
            );
        }
        self.validate(at, problems);
    }

    /// Where the secret comes from, when given (the environment before a file before the
    /// job file, should validation have been skipped).
    pub fn source(&self) -> Option<SecretRef> {
        if let Some(name) = &self.env {
            return Some(SecretRef::Env(name.clone()));
        }
        if let Some(path) = &self.file {
            return Some(SecretRef::File(path.clone()));
        }
        self.inline.clone().map(SecretRef::Inline)
    }

    /// Reads the secret, when given. Relative file paths are taken from `base_dir`.
    pub fn resolve(&self, base_dir: &Path) -> Result<Option<Secret>, DeliveryError> {
        self.source()
            .map(|source| source.resolve(base_dir))
            .transpose()
    }

    /// Reads the secret, which must be given.
    pub fn resolve_required(&self, base_dir: &Path) -> Result<Secret, DeliveryError> {
        self.resolve(base_dir)?.ok_or_else(|| {
            let key = K::KEY;
            DeliveryError::new(
                ErrorKind::Config,
                format!("missing: give `{key}`, `{key}_env` or `{key}_file`"),
            )
        })
    }
}

impl<K> Default for SecretField<K> {
    fn default() -> Self {
        SecretField {
            inline: None,
            env: None,
            file: None,
            key: PhantomData,
        }
    }
}

impl<K> Clone for SecretField<K> {
    fn clone(&self) -> Self {
        SecretField {
            inline: self.inline.clone(),
            env: self.env.clone(),
            file: self.file.clone(),
            key: PhantomData,
        }
    }
}

impl<K: SecretKey> fmt::Debug for SecretField<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple(K::KEY).field(&self.source()).finish()
    }
}

impl<'de, K: SecretKey> Deserialize<'de> for SecretField<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_struct("secret", K::FIELDS, FieldVisitor(PhantomData))
    }
}

struct FieldVisitor<K>(PhantomData<K>);

impl<'de, K: SecretKey> Visitor<'de> for FieldVisitor<K> {
    type Value = SecretField<K>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` settings", K::KEY)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut field = SecretField::<K>::default();
        while let Some(name) = map.next_key::<String>()? {
            match K::FIELDS.iter().position(|f| *f == name) {
                Some(0) => field.inline = Some(map.next_value::<Text>()?.0),
                Some(1) => field.env = Some(map.next_value::<Text>()?.0),
                Some(2) => field.file = Some(PathBuf::from(map.next_value::<Text>()?.0)),
                _ => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        Ok(field)
    }
}

/// A string setting that, given anything else, says so without echoing the value (it may
/// be a secret typed into the wrong place).
struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;

        impl TextVisitor {
            fn refuse<E: de::Error>(what: &str) -> Result<Text, E> {
                Err(E::custom(format_args!(
                    "invalid type: {what}, expected a string (the value is not shown)"
                )))
            }
        }

        impl Visitor<'_> for TextVisitor {
            type Value = Text;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_owned()))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<Text, E> {
                Ok(Text(v))
            }

            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Text, E> {
                TextVisitor::refuse("a boolean")
            }

            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Text, E> {
                TextVisitor::refuse("an integer")
            }

            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Text, E> {
                TextVisitor::refuse("an integer")
            }

            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Text, E> {
                TextVisitor::refuse("a float")
            }
        }

        deserializer.deserialize_any(TextVisitor)
    }
}

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
    /// Reads the secret. Relative file paths are taken from `base_dir`.
    pub fn resolve(&self, base_dir: &Path) -> Result<Secret, DeliveryError> {
        match self {
            SecretRef::Inline(value) => Ok(Secret(value.clone())),
            SecretRef::Env(name) => std::env::var(name).map(Secret).map_err(|_| {
                // A value that is no variable name may be the secret itself: never shown.
                let shown = if is_variable_name(name) {
                    name.as_str()
                } else {
                    "(not a variable name; not shown)"
                };
                DeliveryError::new(
                    ErrorKind::Config,
                    format!("environment variable {shown} is not set (or not UTF-8)"),
                )
            }),
            SecretRef::File(path) => {
                let mut text = read_secret_file(path, base_dir, MAX_SECRET_FILE)?;
                let trimmed = text.trim_end_matches(['\n', '\r']).len();
                text.truncate(trimmed);
                Ok(Secret(text))
            }
        }
    }
}

/// The most a secret file (`*_file`) may hold.
const MAX_SECRET_FILE: u64 = 64 * 1024;

/// Reads a file that holds a secret (a `*_file` setting, a private key): `path` relative to
/// `base_dir`, or under systemd's `$CREDENTIALS_DIRECTORY` when it starts with the
/// credentials prefix; at most `limit` bytes, UTF-8.
pub fn read_secret_file(path: &Path, base_dir: &Path, limit: u64) -> Result<String, DeliveryError> {
    use std::io::Read as _;
    let path = match path.strip_prefix(CREDENTIALS) {
        Ok(name) => credentials_dir()?.join(name),
        Err(_) => base_dir.join(path),
    };
    let cannot = |why: &str| {
        DeliveryError::new(
            ErrorKind::Config,
            format!("cannot read secret file {}{why}", path.display()),
        )
    };
    let file = std::fs::File::open(&path).map_err(|err| cannot("").with_source(err))?;
    let mut text = String::new();
    file.take(limit + 1)
        .read_to_string(&mut text)
        .map_err(|err| cannot("").with_source(err))?;
    if text.len() as u64 > limit {
        return Err(cannot(&format!(
            ": it holds more than {limit} bytes, too much for a secret"
        )));
    }
    Ok(text)
}

/// A resolved secret. Its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A secret holding `value`.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

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

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Settings {
        host: String,
        #[serde(flatten)]
        password: SecretField<keys::Password>,
    }

    fn settings(text: &str) -> Result<Settings, String> {
        toml::from_str(text).map_err(|err: toml::de::Error| err.message().to_owned())
    }

    #[test]
    fn only_one_form_may_be_given() {
        let read =
            settings("host = \"h\"\npassword = \"x\"\npassword_env = \"VAR\"\n").expect("readable");
        assert_eq!(read.host, "h");
        let mut problems = Problems::default();
        read.password
            .validate(&KeyPath::root().key("jobs"), &mut problems);
        assert_eq!(problems.len(), 1);
    }

    #[test]
    fn a_flattened_field_reads_each_form_and_unknown_keys_are_still_refused() {
        let read = settings("host = \"h\"\npassword_file = \"pass\"\n").expect("readable");
        assert_eq!(read.password.source(), Some(SecretRef::File("pass".into())));
        let none = settings("host = \"h\"\n").expect("readable");
        assert!(!none.password.is_given());
        let err = settings("host = \"h\"\npasword = \"x\"\n").expect_err("typo refused");
        assert!(err.contains("pasword"), "{err}");
    }

    #[test]
    fn a_secret_of_the_wrong_type_is_not_echoed() {
        let err = settings("host = \"h\"\npassword = 987654321\n").expect_err("not a string");
        assert!(!err.contains("987654321"), "{err}");
        assert!(err.contains("expected a string"), "{err}");
        let field = SecretField::<keys::Password>::inline("hunter2");
        assert!(!format!("{field:?}").contains("hunter2"));
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
    fn a_secret_put_in_an_env_key_is_never_echoed() {
        let read = settings("host = \"h\"\npassword_env = \"https://hooks.example/T0KEN\"\n")
            .expect("readable");
        let mut problems = Problems::default();
        read.password.validate(&KeyPath::root(), &mut problems);
        let shown = format!("{:?}", problems.into_inner());
        assert!(shown.contains("password_env"), "{shown}");
        assert!(!shown.contains("T0KEN"), "{shown}");
        let err = read
            .password
            .resolve(Path::new("/"))
            .expect_err("no such variable");
        assert!(!err.to_string().contains("T0KEN"), "{err}");
        assert!(is_variable_name("FERRY_SMTP_PASSWORD") && !is_variable_name("9X"));
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
