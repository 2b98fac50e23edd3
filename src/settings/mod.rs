//! The vocabulary every kind's settings share, below everything else: where a setting sits
//! in the job file ([`KeyPath`]), the problems found while checking settings
//! ([`Problems`]), durations and sizes written the way people write them, and secrets
//! ([`SecretField`]: `password`, `password_env` or `password_file`).
//!
//! Sources, writers and notifiers take their settings types from here, never from
//! [`crate::config`], which assembles them into the job file.

mod duration;
mod secret;

use std::fmt;

pub use duration::{ByteRate, ByteSize, ConfigDuration};
pub use secret::{
    NOT_A_VARIABLE, Secret, SecretField, SecretKey, SecretRef, is_variable_name, keys,
    read_secret_file,
};

/// Where a setting sits in the job file: `jobs[2].source.path`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(pub(crate) Vec<Segment>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    Key(String),
    Index(usize),
}

impl KeyPath {
    /// The top of the file.
    pub fn root() -> KeyPath {
        KeyPath::default()
    }

    /// This path followed by table key `key`.
    pub fn key(&self, key: &str) -> KeyPath {
        let mut next = self.clone();
        next.0.push(Segment::Key(key.to_owned()));
        next
    }

    /// This path followed by array index `index`.
    pub fn index(&self, index: usize) -> KeyPath {
        let mut next = self.clone();
        next.0.push(Segment::Index(index));
        next
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) if i == 0 => write!(f, "{key}")?,
                Segment::Key(key) => write!(f, ".{key}")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// Problems found while checking settings, each at the setting it concerns.
#[derive(Debug, Default)]
pub struct Problems(Vec<(KeyPath, String)>);

impl Problems {
    /// Records a problem with the setting at `at`.
    pub fn add(&mut self, at: KeyPath, message: impl Into<String>) {
        self.0.push((at, message.into()));
    }

    /// How many problems were found.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none were found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn into_inner(self) -> Vec<(KeyPath, String)> {
        self.0
    }
}
