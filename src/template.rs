//! Path and key templates: `{job}`, `{run_id}`, `{uuid}`, `{scheduled:FORMAT}`, and for a
//! `files` source's deliveries `{file_name}` and `{file_stem}`.
//!
//! Templates are parsed (and their strftime formats checked) when the job file is validated,
//! and rendered once per run, so every attempt of a run writes to the same place. They are
//! rendered over the run's *scheduled* time in the job's time zone, never the wall clock,
//! so a late or retried run still lands where its slot says. `{{` and `}}` stand for braces.

use std::fmt::{self, Write as _};
use std::path::{Component, Path, PathBuf};

use chrono::format::{Item, StrftimeItems};

use crate::context::RunContext;
use crate::error::{DeliveryError, ErrorKind};

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Job,
    RunId,
    Uuid,
    Scheduled(String),
    FileName,
    FileStem,
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

/// Why a template could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// A `{` without its `}`.
    #[error("unclosed '{{' at byte {0}")]
    Unclosed(usize),
    /// A `}` with no `{` before it.
    #[error("unmatched '}}' at byte {0} (write '}}}}' for a literal brace)")]
    Unmatched(usize),
    /// A placeholder name that does not exist.
    #[error(
        "unknown placeholder {{{0}}}; known: {{job}}, {{run_id}}, {{uuid}}, {{scheduled:FORMAT}}, {{file_name}}, {{file_stem}}"
    )]
    Unknown(String),
    /// A strftime format chrono cannot render.
    #[error("invalid time format {0:?} in {{scheduled:…}}")]
    BadFormat(String),
    /// A path template with a `..` component.
    #[error("a path must not contain '..' components")]
    ParentDir,
}

impl Template {
    /// Parses `source`, checking every placeholder and time format.
    pub fn parse(source: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = source.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|&(_, n)| n) == Some('{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().map(|&(_, n)| n) == Some('}') => {
                    chars.next();
                    literal.push('}');
                }
                '}' => return Err(TemplateError::Unmatched(at)),
                '{' => {
                    let rest = &source[at + 1..];
                    let end = rest.find('}').ok_or(TemplateError::Unclosed(at))?;
                    let name = &rest[..end];
                    // Skip the placeholder's characters.
                    for _ in 0..name.chars().count() + 1 {
                        chars.next();
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(parse_placeholder(name)?);
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Template {
            source: source.to_owned(),
            parts,
        })
    }

    /// Parses a template that names a file path: like [`Template::parse`], and also refuses
    /// `..` components in its literal text.
    pub fn parse_path(source: &str) -> Result<Template, TemplateError> {
        let template = Template::parse(source)?;
        let has_parent = template.parts.iter().any(|part| match part {
            Part::Literal(text) => text.split('/').any(|piece| piece == ".."),
            _ => false,
        });
        if has_parent {
            return Err(TemplateError::ParentDir);
        }
        Ok(template)
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the template has no placeholders.
    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Literal(_)))
    }

    /// Renders the template for a run.
    pub fn render(&self, ctx: &RunContext) -> String {
        let mut out = String::with_capacity(self.source.len() + 16);
        for part in &self.parts {
            // Writing to a String cannot fail.
            let _ = match part {
                Part::Literal(text) => out.write_str(text),
                Part::Job => out.write_str(&ctx.job),
                Part::RunId => out.write_str(&ctx.run_id),
                Part::Uuid => write!(out, "{}", ctx.uuid),
                Part::Scheduled(format) => write!(out, "{}", ctx.slot.format(format)),
                Part::FileName => out.write_str(ctx.file.as_ref().map_or("", |f| &f.name)),
                Part::FileStem => out.write_str(ctx.file.as_ref().map_or("", |f| &f.stem)),
            };
        }
        out
    }

    /// The directory the rendered path is confined to: the template's literal prefix up to
    /// its last `/` before the first placeholder (the whole parent for a literal template).
    pub fn base_dir(&self) -> PathBuf {
        let prefix = match self.parts.first() {
            Some(Part::Literal(text)) if self.parts.len() > 1 => text.as_str(),
            Some(Part::Literal(text)) => {
                return Path::new(text)
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_default();
            }
            _ => "",
        };
        match prefix.rfind('/') {
            Some(0) => PathBuf::from("/"),
            Some(end) => PathBuf::from(&prefix[..end]),
            None => PathBuf::new(),
        }
    }

    /// Renders a path template for a run, resolving a relative result against `root`, and
    /// refuses a result that would leave the template's base directory.
    pub fn render_path(&self, ctx: &RunContext, root: &Path) -> Result<PathBuf, DeliveryError> {
        let rendered = self.render(ctx);
        let base = self.base_dir();
        let escapes = || {
            DeliveryError::new(
                ErrorKind::Config,
                format!(
                    "path template {:?} rendered to {rendered:?}, which leaves its base directory {:?}",
                    self.source,
                    base.display()
                ),
            )
        };
        let tail = Path::new(&rendered)
            .strip_prefix(&base)
            .map_err(|_| escapes())?;
        if tail.as_os_str().is_empty()
            || !tail.components().all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(escapes());
        }
        Ok(root.join(rendered))
    }
}

fn parse_placeholder(name: &str) -> Result<Part, TemplateError> {
    match name {
        "job" => Ok(Part::Job),
        "run_id" => Ok(Part::RunId),
        "uuid" => Ok(Part::Uuid),
        "file_name" => Ok(Part::FileName),
        "file_stem" => Ok(Part::FileStem),
        _ => match name.strip_prefix("scheduled:") {
            Some(format) => {
                let broken = format.is_empty()
                    || StrftimeItems::new(format).any(|item| matches!(item, Item::Error));
                if broken {
                    Err(TemplateError::BadFormat(format.to_owned()))
                } else {
                    Ok(Part::Scheduled(format.to_owned()))
                }
            }
            None if name == "scheduled" => Ok(Part::Scheduled("%Y-%m-%dT%H:%M:%S%z".into())),
            None => Err(TemplateError::Unknown(name.to_owned())),
        },
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    fn ctx() -> RunContext {
        let slot = chrono_tz::Europe::Berlin
            .with_ymd_and_hms(2026, 3, 29, 1, 30, 0)
            .single()
            .expect("a valid instant");
        RunContext::new("nightly", slot)
    }

    #[test]
    fn renders_every_placeholder_over_the_scheduled_time() {
        let ctx = ctx();
        let t = Template::parse("out/{job}/{scheduled:%Y/%m/%d-%H%M}-{run_id}-{uuid}.csv")
            .expect("valid template");
        let out = t.render(&ctx);
        assert_eq!(
            out,
            format!(
                "out/nightly/2026/03/29-0130-{}-{}.csv",
                ctx.run_id, ctx.uuid
            )
        );
    }

    #[test]
    fn braces_escape() {
        let t = Template::parse("a{{b}}c").expect("valid");
        assert_eq!(t.render(&ctx()), "a{b}c");
        assert!(t.is_literal());
    }

    #[test]
    fn rejects_bad_templates() {
        assert_eq!(
            Template::parse("x/{jbo}"),
            Err(TemplateError::Unknown("jbo".into()))
        );
        assert_eq!(Template::parse("x/{job"), Err(TemplateError::Unclosed(2)));
        assert_eq!(Template::parse("x}"), Err(TemplateError::Unmatched(1)));
        assert!(matches!(
            Template::parse("{scheduled:%Q}"),
            Err(TemplateError::BadFormat(_))
        ));
        assert_eq!(
            Template::parse_path("/srv/../etc/{job}"),
            Err(TemplateError::ParentDir)
        );
    }

    #[test]
    fn base_dir_is_the_literal_prefix() {
        let t = Template::parse_path("/srv/out/{job}/x.csv").expect("valid");
        assert_eq!(t.base_dir(), PathBuf::from("/srv/out"));
        let t = Template::parse_path("/srv/out/x-{job}.csv").expect("valid");
        assert_eq!(t.base_dir(), PathBuf::from("/srv/out"));
        let t = Template::parse_path("/srv/out/x.csv").expect("valid");
        assert_eq!(t.base_dir(), PathBuf::from("/srv/out"));
        let t = Template::parse_path("{job}.csv").expect("valid");
        assert_eq!(t.base_dir(), PathBuf::new());
    }

    #[test]
    fn a_rendered_path_cannot_escape_its_base() {
        let t = Template::parse_path("/srv/out/{scheduled:..}/x").expect("parses");
        let err = t
            .render_path(&ctx(), Path::new("/"))
            .expect_err("'..' from a format must be refused");
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(
            err.to_string().contains("leaves its base directory"),
            "{err}"
        );

        let ok = Template::parse_path("out/{scheduled:%Y/%m}/{job}.csv").expect("parses");
        assert_eq!(
            ok.render_path(&ctx(), Path::new("/base"))
                .expect("stays inside"),
            PathBuf::from("/base/out/2026/03/nightly.csv")
        );
    }
}
