//! Reading a job file and reporting its problems as `file:line:col: message`.
//!
//! The text is parsed into toml's spanned document tree first. Each section (`[daemon]`,
//! `[defaults]`, each notifier, each job) is then deserialized on its own, so a mistake in
//! one job does not hide the mistakes in the next. Checks that need more than one value
//! ([`super::validate`]) name the setting by its key path, and the path is looked up in the
//! tree to find its line and column.
//!
//! A valid file of plain `[[jobs]]` sections is read one job at a time instead (see
//! [`parse`]): the tree of a 100,000-job file is never held whole.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::{Config, validate};
use crate::settings::{KeyPath, Segment};

/// One problem in a job file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or the name given to [`parse`]).
    pub origin: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// What is wrong, naming the setting.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.origin, self.line, self.column, self.message
        )
    }
}

/// Every problem found in a job file, in the order they appear in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, err) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{err}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads and checks the job file at `path`. Relative paths inside it are taken from the
/// file's directory.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let origin = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|err| {
        ConfigErrors(vec![ConfigError {
            origin: origin.clone(),
            line: 1,
            column: 1,
            message: format!("cannot read the job file: {err}"),
        }])
    })?;
    let text = String::from_utf8(bytes).map_err(|err| {
        // Placed at the bad byte: the text before it is valid.
        let good = &err.as_bytes()[..err.utf8_error().valid_up_to()];
        let good = std::str::from_utf8(good).unwrap_or_default();
        let (line, column) = line_column(good, &line_starts(good), good.len());
        ConfigErrors(vec![ConfigError {
            origin: origin.clone(),
            line,
            column,
            message: format!(
                "the job file is not UTF-8: invalid byte 0x{:02x}",
                err.as_bytes()[good.len()]
            ),
        }])
    })?;
    let base_dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let base_dir = std::path::absolute(&base_dir).unwrap_or(base_dir);
    parse(&text, &origin, base_dir)
}

/// Parses and checks job-file `text` without any I/O. `origin` names it in errors;
/// `base_dir` is where its relative paths are taken from.
///
/// A file whose jobs are plain `[[jobs]]` sections is read one job at a time: the spanned
/// tree of each job is dropped once the job is read, so a 100,000-job file never holds the
/// tree of all of them (about 4.7 KB a job). Anything else, and any file with a problem, is
/// read whole, which places every problem.
pub fn parse(text: &str, origin: &str, base_dir: PathBuf) -> Result<Config, ConfigErrors> {
    match job_by_job(text, origin, &base_dir) {
        Some(config) => Ok(config),
        None => whole(text, origin, base_dir),
    }
}

/// Reads `text` as one tree and reports every problem at its place.
fn whole(text: &str, origin: &str, base_dir: PathBuf) -> Result<Config, ConfigErrors> {
    let mut report = Report::new(text, origin);
    let (root, syntax_errors) = DeTable::parse_recoverable(text);
    if !syntax_errors.is_empty() {
        for err in syntax_errors {
            report.at_span(err.span(), err.message().to_owned());
        }
        return Err(report.finish());
    }

    let mut config = Config::empty(origin, base_dir);
    // Where each job that could be read sits in the file's `jobs` array.
    let mut job_indexes = Vec::new();
    let root_span = root.span();
    let root = root.into_inner();
    for (key, value) in root.iter() {
        report.root_entry(&mut config, &mut job_indexes, key, value);
    }

    let problems = validate::validate(&config, &job_indexes);
    for (at, message) in problems.into_inner() {
        let span = locate(&root, root_span.clone(), &at);
        report.at_span(Some(span), format!("{at}: {message}"));
    }
    if report.errors.is_empty() {
        Ok(config)
    } else {
        Err(report.finish())
    }
}

/// Reads `text` one `[[jobs]]` section at a time, when it is laid out so: the lines before
/// the first `[[jobs]]` line hold the other sections, and after it only `[[jobs]]` and
/// `[jobs.…]` / `[[jobs.…]]` headers start a line. `None` when it is not, or when anything
/// is wrong: [`parse`] then reads the file whole and reports. (A `[[jobs]]` line inside a
/// multi-line string leaves the string unclosed in its part, which fails, so a wrong split
/// falls back too.)
fn job_by_job(text: &str, origin: &str, base_dir: &Path) -> Option<Config> {
    let mut starts = Vec::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.starts_with('[') {
            let header = line.split('#').next().unwrap_or_default().trim();
            let of_a_job = header.starts_with("[jobs.") || header.starts_with("[[jobs.");
            if header == "[[jobs]]" {
                starts.push(offset);
            } else if of_a_job == starts.is_empty() {
                // Another section among the jobs, or a job's table before them.
                return None;
            }
        }
        offset += line.len();
    }
    let first = *starts.first()?;
    let mut report = Report::new(text, origin);
    let mut config = Config::empty(origin, base_dir.to_path_buf());
    let mut job_indexes = Vec::new();

    let head = DeTable::parse(&text[..first]).ok()?.into_inner();
    for (key, value) in head.iter() {
        if key.get_ref() == "jobs" {
            return None;
        }
        report.root_entry(&mut config, &mut job_indexes, key, value);
    }
    drop(head);
    starts.push(text.len());
    config.jobs.reserve(starts.len() - 1);
    for (i, part) in starts.windows(2).enumerate() {
        let root = DeTable::parse(&text[part[0]..part[1]]).ok()?.into_inner();
        let (Some(jobs), 1) = (root.get("jobs"), root.len()) else {
            return None;
        };
        let DeValue::Array(jobs) = jobs.get_ref() else {
            return None;
        };
        let (Some(job), 1) = (jobs.iter().next(), jobs.len()) else {
            return None;
        };
        report.offset = part[0];
        config
            .jobs
            .push(report.section(job, &format!("jobs[{i}]"))?);
        job_indexes.push(i);
    }
    let problems = validate::validate(&config, &job_indexes);
    (report.errors.is_empty() && problems.into_inner().is_empty()).then_some(config)
}

impl Config {
    /// A configuration with nothing set, to be filled from a file.
    fn empty(origin: &str, base_dir: PathBuf) -> Config {
        Config {
            origin: origin.to_owned(),
            base_dir,
            daemon: Default::default(),
            api: Default::default(),
            defaults: Default::default(),
            notifiers: Default::default(),
            jobs: Vec::new(),
        }
    }
}

struct Report<'a> {
    text: &'a str,
    origin: &'a str,
    errors: Vec<(usize, ConfigError)>,
    /// Where each line of `text` starts, computed for the first error: placing thousands
    /// of errors stays linear in the file's size.
    line_starts: Option<Vec<usize>>,
    /// Where in `text` the tree being read was parsed from (a job's part of the file).
    offset: usize,
}

impl<'a> Report<'a> {
    fn new(text: &'a str, origin: &'a str) -> Report<'a> {
        Report {
            text,
            origin,
            errors: Vec::new(),
            line_starts: None,
            offset: 0,
        }
    }

    /// Reads one top-level entry of the file into `config`.
    fn root_entry(
        &mut self,
        config: &mut Config,
        job_indexes: &mut Vec<usize>,
        key: &Spanned<std::borrow::Cow<'_, str>>,
        value: &Spanned<DeValue<'_>>,
    ) {
        let report = self;
        match key.get_ref().as_ref() {
            "daemon" => {
                if let Some(daemon) = report.section(value, "daemon") {
                    config.daemon = daemon;
                }
            }
            "api" => {
                if let Some(api) = report.section(value, "api") {
                    config.api = api;
                }
            }
            "defaults" => {
                if let Some(defaults) = report.section(value, "defaults") {
                    config.defaults = defaults;
                }
            }
            "notifiers" => match value.get_ref() {
                DeValue::Table(table) => {
                    for (name, notifier) in table.iter() {
                        let at = format!("notifiers.{}", name.get_ref());
                        if let Some(notifier) = report.section(notifier, &at) {
                            config.notifiers.insert(name.get_ref().to_string(), notifier);
                        }
                    }
                }
                _ => report.at_span(
                    Some(value.span()),
                    "`notifiers` must be a table of named notifiers, e.g. [notifiers.ops]".into(),
                ),
            },
            "jobs" => match value.get_ref() {
                DeValue::Array(jobs) => {
                    for (i, job) in jobs.iter().enumerate() {
                        if let Some(job) = report.section(job, &format!("jobs[{i}]")) {
                            config.jobs.push(job);
                            job_indexes.push(i);
                        }
                    }
                }
                _ => report.at_span(
                    Some(value.span()),
                    "`jobs` must be an array of tables: write each job under [[jobs]]".into(),
                ),
            },
            other => report.at_span(
                Some(key.span()),
                format!(
                    "unknown top-level key `{other}`, expected one of `daemon`, `api`, `defaults`, `notifiers`, `jobs`"
                ),
            ),
        }
    }

    /// Reads `value` (the section at `at`) as a `T`, reporting every problem serde finds
    /// in it, not only the first: each bad key is reported at its place and left out (an
    /// unknown key removed, a bad value dropped so that its default applies), and the rest
    /// read again. `None` when the section cannot be read without a key it lacks; the rest
    /// of a readable one goes on to the cross-key checks, whose problems are reported too.
    fn section<T: DeserializeOwned>(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        at: &str,
    ) -> Option<T> {
        let mut value = value.clone();
        let mut removed: Vec<String> = Vec::new();
        let mut unknown_said: Vec<String> = Vec::new();
        for _ in 0..MAX_PROBLEMS_PER_SECTION {
            let err = match T::deserialize(ValueDeserializer::from(value.clone())) {
                Ok(section) => return Some(section),
                Err(err) => err,
            };
            let message = err.message().to_owned();
            // A required key left out because it was bad, or probably misspelt as a key
            // already reported unknown ("unknown field `pth`, expected `path`"): said.
            if let Some(missing) = message
                .strip_prefix("missing field `")
                .and_then(|rest| rest.split('`').next())
            {
                let quoted = format!("`{missing}`");
                if removed.iter().any(|key| key == missing)
                    || unknown_said.iter().any(|said| said.contains(&quoted))
                {
                    return None;
                }
            }
            let mut span = err.span().unwrap_or(value.span());
            let mut path = Vec::new();
            deepest_path(&value, span.start, &mut path);
            let unknown = message
                .strip_prefix("unknown field `")
                .and_then(|rest| rest.split('`').next())
                .map(str::to_owned);
            // Inside a tagged table (a source, a writer, a notifier) serde loses the key's
            // place: find the unknown key itself, or the value the message quotes.
            if let Some(key_span) = unknown
                .as_deref()
                .and_then(|key| key_span(&value, &path, key))
            {
                span = key_span;
            } else if let Some(needle) = Needle::of(&message)
                && let Some(found) = find_value(&value, &path, &needle)
            {
                span = found.1;
                path = found.0;
            }
            let mut shown = at.to_owned();
            for segment in &path {
                match segment {
                    Segment::Key(key) => {
                        shown.push('.');
                        shown.push_str(key);
                    }
                    Segment::Index(i) => shown.push_str(&format!("[{i}]")),
                }
            }
            self.at_span(Some(span), format!("{shown}: {message}"));
            if let Some(unknown) = unknown {
                path.push(Segment::Key(unknown));
                unknown_said.push(message.clone());
            }
            match path.last() {
                Some(Segment::Key(key)) => removed.push(key.clone()),
                Some(Segment::Index(_)) => {}
                None => return None,
            }
            if !remove(&mut value, &path) {
                return None;
            }
        }
        None
    }

    fn at_span(&mut self, span: Option<Range<usize>>, message: String) {
        let offset = (self.offset + span.map_or(0, |s| s.start)).min(self.text.len());
        let lines = self
            .line_starts
            .get_or_insert_with(|| line_starts(self.text));
        let (line, column) = line_column(self.text, lines, offset);
        self.errors.push((
            offset,
            ConfigError {
                origin: self.origin.to_owned(),
                line,
                column,
                message,
            },
        ));
    }

    fn finish(mut self) -> ConfigErrors {
        self.errors.sort_by_key(|(offset, _)| *offset);
        ConfigErrors(self.errors.into_iter().map(|(_, err)| err).collect())
    }
}

/// The byte offset at which each line of `text` starts.
fn line_starts(text: &str) -> Vec<usize> {
    std::iter::once(0)
        .chain(text.match_indices('\n').map(|(i, _)| i + 1))
        .collect()
}

/// The 1-based line and character column of byte `offset` in `text`, whose lines start
/// at `starts`.
fn line_column(text: &str, starts: &[usize], offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let line = starts.partition_point(|&start| start <= offset).max(1);
    let line_start = starts[line - 1];
    let column = text[line_start..offset].chars().count() + 1;
    (line, column)
}

/// How many problems one section (a job, a notifier) may report before the rest of it is
/// left unread.
const MAX_PROBLEMS_PER_SECTION: usize = 64;

/// Extends `path` with the keys of the innermost value under `value` whose span holds
/// `offset`, so that an error inside `source = { … }` names `jobs[1].source`.
fn deepest_path(value: &Spanned<DeValue<'_>>, offset: usize, path: &mut Vec<Segment>) {
    let inside = |v: &Spanned<DeValue<'_>>| v.span().contains(&offset);
    match value.get_ref() {
        DeValue::Table(table) => {
            if let Some((key, child)) = table.iter().find(|(_, v)| inside(v)) {
                path.push(Segment::Key(key.get_ref().to_string()));
                deepest_path(child, offset, path);
            }
        }
        DeValue::Array(items) => {
            if let Some((i, child)) = items.iter().enumerate().find(|(_, v)| inside(v)) {
                path.push(Segment::Index(i));
                deepest_path(child, offset, path);
            }
        }
        _ => {}
    }
}

/// A value an error message quotes: serde's `string "x"`, `integer `5``, `boolean `true``,
/// or an unknown variant's name.
enum Needle {
    Text(String),
    Integer(String),
    Boolean(bool),
}

impl Needle {
    fn of(message: &str) -> Option<Needle> {
        let quoted = |rest: &str| {
            let rest = rest.strip_prefix('"')?;
            let end = rest.find("\", expected").or_else(|| rest.rfind('"'))?;
            Some(rest[..end].to_owned())
        };
        let ticked = |rest: &str| rest.split('`').nth(1).map(str::to_owned);
        for prefix in ["invalid type: ", "invalid value: "] {
            if let Some(rest) = message.strip_prefix(prefix) {
                if let Some(text) = rest.strip_prefix("string ") {
                    return quoted(text).map(Needle::Text);
                }
                if let Some(number) = rest.strip_prefix("integer ") {
                    return ticked(number).map(Needle::Integer);
                }
                if let Some(flag) = rest.strip_prefix("boolean ") {
                    return ticked(flag).map(|b| Needle::Boolean(b == "true"));
                }
            }
        }
        message
            .strip_prefix("unknown variant ")
            .and_then(ticked)
            .map(Needle::Text)
    }

    fn matches(&self, value: &DeValue<'_>) -> bool {
        match (self, value) {
            (Needle::Text(text), DeValue::String(s)) => s.as_ref() == text,
            (Needle::Integer(n), DeValue::Integer(i)) => i.as_str() == n,
            (Needle::Boolean(b), DeValue::Boolean(v)) => b == v,
            _ => false,
        }
    }
}

/// The first value matching `needle` under the value at `path` (depth first), with its
/// full path and the span of its key.
fn find_value(
    value: &Spanned<DeValue<'_>>,
    path: &[Segment],
    needle: &Needle,
) -> Option<(Vec<Segment>, Range<usize>)> {
    let current = value_at(value, path)?;
    fn search(
        value: &Spanned<DeValue<'_>>,
        needle: &Needle,
        path: &mut Vec<Segment>,
        key: Option<Range<usize>>,
    ) -> Option<Range<usize>> {
        if needle.matches(value.get_ref()) {
            return Some(key.unwrap_or(value.span()));
        }
        match value.get_ref() {
            DeValue::Table(table) => {
                for (k, child) in table.iter() {
                    path.push(Segment::Key(k.get_ref().to_string()));
                    if let Some(found) = search(child, needle, path, Some(k.span())) {
                        return Some(found);
                    }
                    path.pop();
                }
                None
            }
            DeValue::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    path.push(Segment::Index(i));
                    if let Some(found) = search(child, needle, path, None) {
                        return Some(found);
                    }
                    path.pop();
                }
                None
            }
            _ => None,
        }
    }
    let mut found = path.to_vec();
    let span = search(current, needle, &mut found, None)?;
    Some((found, span))
}

/// The value at `path` under `value`.
fn value_at<'a, 'i>(
    value: &'a Spanned<DeValue<'i>>,
    path: &[Segment],
) -> Option<&'a Spanned<DeValue<'i>>> {
    let mut current = value;
    for segment in path {
        current = match (segment, current.get_ref()) {
            (Segment::Key(k), DeValue::Table(table)) => table.get(k.as_str())?,
            (Segment::Index(i), DeValue::Array(items)) => items.get(*i)?,
            _ => return None,
        };
    }
    Some(current)
}

/// The span of key `key` in the table at `path` under `value`.
fn key_span(value: &Spanned<DeValue<'_>>, path: &[Segment], key: &str) -> Option<Range<usize>> {
    match value_at(value, path)?.get_ref() {
        DeValue::Table(table) => table
            .iter()
            .find(|(k, _)| k.get_ref() == key)
            .map(|(k, _)| k.span()),
        _ => None,
    }
}

/// Removes the key or array item at `path` under `value`; `false` if there is none.
fn remove(value: &mut Spanned<DeValue<'_>>, path: &[Segment]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut current = value;
    for segment in parents {
        let next = match (segment, current.get_mut()) {
            (Segment::Key(key), DeValue::Table(table)) => table.get_mut(key.as_str()),
            (Segment::Index(i), DeValue::Array(items)) => items.get_mut(*i),
            _ => None,
        };
        match next {
            Some(next) => current = next,
            None => return false,
        }
    }
    match (last, current.get_mut()) {
        (Segment::Key(key), DeValue::Table(table)) => table.remove(key.as_str()).is_some(),
        (Segment::Index(i), DeValue::Array(items)) if *i < items.len() => {
            let mut kept = toml::de::DeArray::new();
            for (j, item) in items.iter().enumerate() {
                if j != *i {
                    kept.push(item.clone());
                }
            }
            *items = kept;
            true
        }
        _ => false,
    }
}

/// The span of the value at `path`, or of the deepest part of it that exists.
fn locate(root: &DeTable<'_>, root_span: Range<usize>, path: &KeyPath) -> Range<usize> {
    let mut span = root_span;
    let mut table = Some(root);
    let mut current: Option<&Spanned<DeValue<'_>>> = None;
    for segment in &path.0 {
        let next = match (segment, current.map(|v| v.get_ref())) {
            (Segment::Key(key), None) => table.and_then(|t| t.get(key.as_str())),
            (Segment::Key(key), Some(DeValue::Table(t))) => t.get(key.as_str()),
            (Segment::Index(i), Some(DeValue::Array(items))) => items.get(*i),
            _ => None,
        };
        match next {
            Some(value) => {
                span = value.span();
                current = Some(value);
                table = None;
            }
            None => break,
        }
    }
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layouts read job by job, and those read whole; either way the result is the same.
    #[test]
    fn job_by_job_reads_what_the_whole_file_says() {
        let job = |name: &str| {
            format!(
                "[[jobs]] # a comment\nname = \"{name}\"\nschedule = \"@hourly\"\nsource = {{ type = \"inline\", data = \"x\" }}\nwriters = [{{ type = \"local\", path = \"out/{{job}}\" }}]\n[jobs.retry]\nmax_attempts = 2\n\n"
            )
        };
        let head = "[daemon]\ntimezone = \"Europe/Berlin\"\n[defaults]\ntimeout = \"5m\"\n\n";
        let multiline = "[[jobs]]\nname = \"m\"\nschedule = \"@daily\"\nsource = { type = \"inline\", data = \"\"\"\n[[jobs]]\n\"\"\" }\nwriters = [{ type = \"local\", path = \"out/m\" }]\n";
        let cases = [
            (format!("{head}{}{}", job("a"), job("b")), true),
            (
                format!("{}{}", job("a"), job("b")).replace('\n', "\r\n"),
                true,
            ),
            (format!("{}[defaults]\ntimeout = \"5m\"\n", job("a")), false),
            (format!("{multiline}{}", job("a")), false),
            (format!("[jobs.x]\n{}", job("a")), false),
            ("[daemon]\n".to_owned(), false),
        ];
        for (text, apart) in cases {
            let base = PathBuf::from("/srv");
            let split = job_by_job(&text, "f", &base);
            assert_eq!(split.is_some(), apart, "{text}");
            let read = format!("{:?}", whole(&text, "f", base.clone()));
            assert_eq!(format!("{:?}", parse(&text, "f", base)), read, "{text}");
            if let Some(config) = split {
                assert_eq!(
                    format!("{:?}", Ok::<_, ConfigErrors>(config)),
                    read,
                    "{text}"
                );
            }
        }
    }

    #[test]
    fn line_and_column_count_characters() {
        let text = "a = 1\nbé = 2\n";
        let starts = line_starts(text);
        assert_eq!(line_column(text, &starts, 0), (1, 1));
        assert_eq!(line_column(text, &starts, 6), (2, 1));
        // "bé = " is 6 bytes but 5 characters.
        assert_eq!(line_column(text, &starts, 12), (2, 6));
        assert_eq!(line_column(text, &starts, text.len()), (3, 1));
    }
}
