//! The `${NAME}` placeholders a task's command and `env` values may hold, which the
//! bot replaces before it starts the command: the one list that both the daemon
//! (which refuses a placeholder it does not know, at submission) and the bot (which
//! substitutes) read.
//!
//! Swarming's `run_isolated` is the reference: it replaces `${ISOLATED_OUTDIR}`,
//! `${EXECUTABLE_SUFFIX}` and `${SWARMING_BOT_FILE}` in the command's arguments and in
//! `env` values, and leaves everything else alone. Apiary adds `${APIARY_OUTDIR}`, a
//! second name for `${ISOLATED_OUTDIR}`.

use std::ffi::{OsStr, OsString};

/// What a placeholder stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placeholder {
    /// The task's output directory.
    OutDir,
    /// What executables end with on the bot's platform: empty on Linux, `.exe` on Windows.
    ExecutableSuffix,
    /// The file in which the bot describes itself to the task.
    BotFile,
}

/// Every placeholder, as written in a command, and what it stands for.
pub const KNOWN: [(&str, Placeholder); 4] = [
    ("APIARY_OUTDIR", Placeholder::OutDir),
    ("ISOLATED_OUTDIR", Placeholder::OutDir),
    ("EXECUTABLE_SUFFIX", Placeholder::ExecutableSuffix),
    ("SWARMING_BOT_FILE", Placeholder::BotFile),
];

/// The executable suffix of the platforms Apiary's bot runs on (Unix).
pub const EXECUTABLE_SUFFIX: &str = "";

/// The placeholder named `name` (the text between `${` and `}`), if it is one.
pub fn lookup(name: &str) -> Option<Placeholder> {
    KNOWN.iter().find(|(known, _)| *known == name).map(|(_, placeholder)| *placeholder)
}

/// The names of the `${NAME}` in `text` that are not placeholders, in order. A `$`
/// not followed by `{`, and a `${` without its `}`, are plain text.
pub fn unknown_names(text: &str) -> impl Iterator<Item = &str> {
    references(text).filter_map(|reference| match reference {
        Reference::Text(_) => None,
        Reference::Name(name) => lookup(name).is_none().then_some(name),
    })
}

/// `text` with every known placeholder replaced by its value; unknown ones stay as
/// written (the daemon refuses them before a bot sees them).
pub fn substitute(text: &str, value_of: impl Fn(Placeholder) -> OsString) -> OsString {
    let mut substituted = OsString::with_capacity(text.len());
    for reference in references(text) {
        match reference {
            Reference::Text(plain) => substituted.push(plain),
            Reference::Name(name) => match lookup(name) {
                Some(placeholder) => substituted.push(value_of(placeholder)),
                None => {
                    substituted.push("${");
                    substituted.push(OsStr::new(name));
                    substituted.push("}");
                }
            },
        }
    }
    substituted
}

/// One piece of a text: plain, or the name inside a `${...}`.
#[derive(Debug, PartialEq, Eq)]
enum Reference<'a> {
    Text(&'a str),
    Name(&'a str),
}

/// Splits `text` into plain pieces and `${NAME}` references.
fn references(text: &str) -> impl Iterator<Item = Reference<'_>> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let Some(start) = rest.find("${") else {
            return Some(Reference::Text(std::mem::take(&mut rest)));
        };
        if start > 0 {
            let (plain, after) = rest.split_at(start);
            rest = after;
            return Some(Reference::Text(plain));
        }
        match rest[2..].find('}') {
            Some(end) => {
                let name = &rest[2..2 + end];
                rest = &rest[2 + end + 1..];
                Some(Reference::Name(name))
            }
            None => Some(Reference::Text(std::mem::take(&mut rest))),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value_of(placeholder: Placeholder) -> OsString {
        match placeholder {
            Placeholder::OutDir => "/w/1/out".into(),
            Placeholder::ExecutableSuffix => EXECUTABLE_SUFFIX.into(),
            Placeholder::BotFile => "/w/1/bot_file.json".into(),
        }
    }

    #[test]
    fn known_placeholders_are_replaced_and_others_kept() {
        let text =
            "${ISOLATED_OUTDIR}/a:${APIARY_OUTDIR}|tool${EXECUTABLE_SUFFIX}|${SWARMING_BOT_FILE}|${HOME}|$PATH|${open";
        assert_eq!(
            substitute(text, value_of),
            OsString::from("/w/1/out/a:/w/1/out|tool|/w/1/bot_file.json|${HOME}|$PATH|${open")
        );
        assert_eq!(substitute("", value_of), OsString::new());
        assert_eq!(substitute("plain", value_of), OsString::from("plain"));
    }

    #[test]
    fn unknown_names_are_listed_in_order() {
        let names: Vec<&str> = unknown_names("${HOME}/${ISOLATED_OUTDIR}/${}${X}$Y${unclosed").collect();
        assert_eq!(names, ["HOME", "", "X"]);
        assert_eq!(unknown_names("${EXECUTABLE_SUFFIX}").count(), 0);
    }
}
