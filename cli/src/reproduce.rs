//! `apiary reproduce`: runs a task's command here, as a bot would run it, so a
//! failure can be looked at up close (Swarming's `reproduce`).
//!
//! The task's request comes from the daemon; its current slice (the one a bot
//! ran or would run) says what to do. Set up as the agent does: a work
//! directory with an empty `out` directory beside it, `relative_cwd` inside it,
//! each named cache as an empty directory at its path, `env` applied (an empty
//! value removes the variable), `env_prefixes` prepended as paths inside the
//! work directory, `APIARY_TASK_ID`, `APIARY_SERVER` and `APIARY_OUTDIR` set
//! with Swarming's `SWARMING_TASK_ID`, `SWARMING_SERVER` and
//! `SWARMING_HEADLESS=1`, and in the command `${APIARY_OUTDIR}` and
//! `${ISOLATED_OUTDIR}` replaced by the output directory, `${EXECUTABLE_SUFFIX}`
//! by nothing, and `${SWARMING_BOT_FILE}` by a file holding `{}` (no bot here
//! has anything to say in it).
//! The task's input tree (`cas_input_root`), if it has one, is downloaded into
//! the work directory first, as a bot writes it.
//! Secret bytes never leave the daemon except to the bot that runs the task,
//! so a task that has some runs without them, and a note says so.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use apiary_protocol::cas::transfer;
use apiary_protocol::ids::format_task_id;
use apiary_protocol::placeholders::{self, Placeholder};
use apiary_protocol::{Request, TaskProperties};

use crate::args::ReproduceArgs;
use crate::connect::{self, Daemon};
use crate::error::CliError;
use crate::exit_codes;

/// Runs the task's command with stdin, stdout and stderr of this process, and
/// returns its exit code (as `collect` would for the task: 255 when it has none
/// in 0..=255).
pub(crate) fn reproduce(
    daemon: &mut impl Daemon,
    args: &ReproduceArgs,
    server: &str,
    notes: &mut dyn Write,
) -> Result<i32, CliError> {
    let action = format!("get task {}", format_task_id(args.task_id));
    let result = connect::call_task(daemon, &Request::GetTask { task_id: args.task_id }, &action)?;
    let slice = result.request.task_slices.get(result.current_task_slice as usize);
    let Some(properties) = slice.map(|slice| &*slice.properties) else {
        return Err(CliError::Reproduce(format!("task {} has no slice to run", format_task_id(result.task_id))));
    };
    if result.has_secret_bytes {
        let _ = writeln!(notes, "apiary: the task's secret bytes stay with the daemon; it runs without them here");
    }
    let (root, keep) = match &args.work_dir {
        Some(dir) => (dir.clone(), true),
        None => (std::env::temp_dir().join(format!("apiary-reproduce-{}", std::process::id())), false),
    };
    let layout =
        Layout { work_dir: root.join("work"), out_dir: root.join("out"), bot_file: root.join("bot_file.json") };
    let ran = fetch_inputs(daemon, properties, &layout.work_dir, notes)
        .and_then(|()| layout.set_up(properties))
        .and_then(|()| run(properties, &layout, result.task_id, server));
    if !keep {
        let _ = std::fs::remove_dir_all(&root);
    } else {
        let _ = writeln!(notes, "apiary: the work directory stays at {}", layout.work_dir.display());
    }
    ran
}

/// Writes the task's input tree, if it has one, into the work directory, as a
/// bot does before the command.
fn fetch_inputs(
    daemon: &mut impl Daemon,
    properties: &TaskProperties,
    work_dir: &Path,
    notes: &mut dyn Write,
) -> Result<(), CliError> {
    let Some(root) = &properties.cas_input_root else { return Ok(()) };
    std::fs::create_dir_all(work_dir)
        .map_err(|source| CliError::WriteFile { path: work_dir.display().to_string(), source })?;
    let counts = transfer::download(&mut connect::CallThrough(daemon), root.digest, work_dir).map_err(|source| {
        CliError::Transfer { action: format!("download the inputs {}", root.digest), source: Box::new(source) }
    })?;
    let _ = writeln!(notes, "apiary: inputs {}: {} files ({} bytes)", root.digest, counts.files, counts.file_bytes);
    Ok(())
}

/// Where the command runs and where its outputs go.
struct Layout {
    work_dir: PathBuf,
    out_dir: PathBuf,
    /// What `${SWARMING_BOT_FILE}` names.
    bot_file: PathBuf,
}

impl Layout {
    fn set_up(&self, properties: &TaskProperties) -> Result<(), CliError> {
        let create = |path: &Path| {
            std::fs::create_dir_all(path)
                .map_err(|source| CliError::WriteFile { path: path.display().to_string(), source })
        };
        create(&self.work_dir)?;
        create(&self.out_dir)?;
        std::fs::write(&self.bot_file, "{}\n")
            .map_err(|source| CliError::WriteFile { path: self.bot_file.display().to_string(), source })?;
        create(&self.inside("relative_cwd", &properties.relative_cwd)?)?;
        for cache in &properties.caches {
            create(&self.inside("caches.path", &cache.path)?)?;
        }
        Ok(())
    }

    /// A command's element or `env` value with the placeholders replaced, as a bot replaces them.
    fn substitute(&self, element: &str) -> OsString {
        placeholders::substitute(element, |placeholder| match placeholder {
            Placeholder::OutDir => self.out_dir.clone().into_os_string(),
            Placeholder::ExecutableSuffix => OsString::from(placeholders::EXECUTABLE_SUFFIX),
            Placeholder::BotFile => self.bot_file.clone().into_os_string(),
        })
    }

    /// `relative` within the work directory; the daemon checked it, but this
    /// process writes where it says, so it checks again.
    fn inside(&self, field: &str, relative: &str) -> Result<PathBuf, CliError> {
        let path = Path::new(relative);
        if !path.components().all(|component| matches!(component, Component::Normal(_) | Component::CurDir)) {
            return Err(CliError::Reproduce(format!("{field}: {relative:?} is not a path inside the work directory")));
        }
        Ok(self.work_dir.join(path))
    }
}

fn run(properties: &TaskProperties, layout: &Layout, task_id: u64, server: &str) -> Result<i32, CliError> {
    let Some((program, arguments)) = properties.command.split_first() else {
        return Err(CliError::Reproduce("command: the task's command is empty".to_string()));
    };
    let mut command = Command::new(layout.substitute(program));
    command.args(arguments.iter().map(|argument| layout.substitute(argument)));
    command.current_dir(layout.inside("relative_cwd", &properties.relative_cwd)?);
    for pair in &properties.env {
        match pair.value.is_empty() {
            true => command.env_remove(&pair.key),
            false => command.env(&pair.key, layout.substitute(&pair.value)),
        };
    }
    for prefix in &properties.env_prefixes {
        let current = properties
            .env
            .iter()
            .find(|pair| pair.key == prefix.key)
            .map(|pair| layout.substitute(&pair.value))
            .or_else(|| std::env::var_os(&prefix.key));
        let mut parts: Vec<PathBuf> = Vec::new();
        for relative in &prefix.value {
            parts.push(layout.inside("env_prefixes", relative)?);
        }
        parts.extend(current.filter(|value| !value.is_empty()).map(PathBuf::from));
        let joined = std::env::join_paths(parts)
            .map_err(|error| CliError::Reproduce(format!("env_prefixes: {}: {error}", prefix.key)))?;
        command.env(&prefix.key, joined);
    }
    command.env("APIARY_TASK_ID", format_task_id(task_id));
    command.env("APIARY_SERVER", server);
    command.env("APIARY_OUTDIR", &layout.out_dir);
    command.env("SWARMING_TASK_ID", format_task_id(task_id));
    command.env("SWARMING_SERVER", server);
    command.env("SWARMING_HEADLESS", "1");
    command.env_remove("SWARMING_BOT_ID");
    command.env_remove("APIARY_BOT_ID");
    command.env_remove("APIARY_SECRET_BYTES_PATH");
    let status =
        command.status().map_err(|source| CliError::Reproduce(format!("cannot start {program:?}: {source}")))?;
    Ok(exit_codes::for_task_exit_code(status.code().map(i64::from)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        let root = PathBuf::from("/r");
        Layout { work_dir: root.join("work"), out_dir: root.join("out"), bot_file: root.join("bot_file.json") }
    }

    #[test]
    fn placeholders_are_replaced_as_a_bot_replaces_them() {
        let layout = layout();
        assert_eq!(layout.substitute("${APIARY_OUTDIR}/a:${ISOLATED_OUTDIR}/b"), "/r/out/a:/r/out/b");
        assert_eq!(layout.substitute("tool${EXECUTABLE_SUFFIX}"), "tool");
        assert_eq!(layout.substitute("--state=${SWARMING_BOT_FILE}"), "--state=/r/bot_file.json");
        assert_eq!(layout.substitute("$HOME ${UNKNOWN}"), "$HOME ${UNKNOWN}");
    }

    #[test]
    fn paths_outside_the_work_directory_are_refused_by_field() {
        let layout = layout();
        assert_eq!(layout.inside("relative_cwd", "a/./b").unwrap(), PathBuf::from("/r/work/a/b"));
        for bad in ["../x", "/etc", "a/../../x"] {
            let error = layout.inside("caches.path", bad).unwrap_err();
            assert!(error.to_string().starts_with("cannot reproduce the task: caches.path:"), "{error}");
        }
    }
}
