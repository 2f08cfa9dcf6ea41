//! `apiary trigger`: build a `NewTaskRequest` from a request file or from the flags
//! (one slice), then create the task and print its id alone on stdout, or with
//! `--dry-run` have the daemon check it and print it as the daemon would store it.
//!
//! Secret bytes come from `--secret-bytes-file` whichever way the rest came, and
//! are never printed: the request's JSON cannot hold them (serde skips the field),
//! and `--dry-run` only says on stderr that there are some.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use apiary_protocol::cas::CasReference;
use apiary_protocol::ids::{format_task_id, parse_task_id};
use apiary_protocol::limits::MAX_SECRET_BYTES;
use apiary_protocol::{
    NewTaskAck, NewTaskRequest, Request, SecretBytes, StringListPair, StringPair, TaskLineage, TaskProperties,
    TaskSlice,
};
use serde_json::{Value, json};

use crate::args::{OptionalDimension, TaskArgs, TaskFlags};
use crate::connect::{self, Daemon};
use crate::error::CliError;
use crate::exit_codes;
use crate::render;
use crate::request_file;
use crate::sink::Sink;
use apiary_swarming::new_task::SwarmingRequest;

/// The variables that name the task a command runs in, first found first: a task
/// triggered from inside a task becomes its child.
pub(crate) const PARENT_TASK_ENV: [&str; 2] = ["SWARMING_TASK_ID", "APIARY_TASK_ID"];

pub(crate) fn trigger(
    daemon: &mut impl Daemon,
    task: SwarmingRequest,
    dry_run: bool,
    json_output: Option<&Path>,
    out: &mut Sink<impl Write>,
    notes: &mut dyn Write,
) -> Result<i32, CliError> {
    let request = task.request.clone();
    let text = if dry_run {
        if let Some(secret_bytes) = &request.secret_bytes {
            // For people; the bytes themselves are never printed.
            let _ = writeln!(
                notes,
                "apiary: has_secret_bytes: {} bytes, sent to be checked, not shown",
                secret_bytes.0.len()
            );
        }
        let checked = connect::call_validate(daemon, &Request::ValidateTask(request), "check the request")?;
        render::request_text(&checked)
    } else {
        let result = submit(daemon, task.request, &task.lineage, notes)?;
        if let Some(path) = json_output {
            write_json_output(path, &[(request, result)])?;
        }
        format!("{}\n", format_task_id(result.task_id))
    };
    out.write_all(text.as_bytes())?;
    Ok(exit_codes::SUCCESS)
}

/// `apiary spawn-tasks`: creates each request of the file in order, printing each
/// task's id as it is created; with `json_output`, also writes them all there.
/// A refusal stops there: the tasks created before it stay, and their ids are out.
pub(crate) fn spawn_tasks(
    daemon: &mut impl Daemon,
    tasks: Vec<SwarmingRequest>,
    json_output: Option<&Path>,
    out: &mut Sink<impl Write>,
    notes: &mut dyn Write,
) -> Result<i32, CliError> {
    let mut created = Vec::with_capacity(tasks.len());
    for task in tasks {
        let request = task.request.clone();
        let result = match submit(daemon, task.request, &task.lineage, notes) {
            Ok(result) => result,
            Err(refused) => {
                // The tasks created before the refusal stay: the file names them too.
                if let Some(path) = json_output
                    && let Err(unwritten) = write_json_output(path, &created)
                {
                    let _ = writeln!(notes, "apiary: {unwritten}");
                }
                return Err(refused);
            }
        };
        out.write_all(format!("{}\n", format_task_id(result.task_id)).as_bytes())?;
        created.push((request, result));
    }
    if let Some(path) = json_output {
        write_json_output(path, &created)?;
    }
    Ok(exit_codes::SUCCESS)
}

/// Swarming's `SpawnTasksOutput`, as its CLI's `-json-output` writes it: per task its
/// id, the request as sent, and its state when created.
pub(crate) fn tasks_json(created: &[(NewTaskRequest, NewTaskAck)]) -> Value {
    let tasks: Vec<Value> = created
        .iter()
        .map(|(request, result)| {
            let task_id = format_task_id(result.task_id);
            json!({
                "task_id": task_id,
                "request": render::request_json(request),
                "task_result": {"task_id": task_id, "state": result.state.name()},
            })
        })
        .collect();
    json!({ "tasks": tasks })
}

fn write_json_output(path: &Path, created: &[(NewTaskRequest, NewTaskAck)]) -> Result<(), CliError> {
    let mut text = serde_json::to_string_pretty(&tasks_json(created)).expect("JSON values always serialize");
    text.push('\n');
    std::fs::write(path, text).map_err(|source| CliError::JsonOutput { name: path.display().to_string(), source })
}

/// Creates the task; also the first half of `apiary run`. Says on `notes` when an
/// idempotent task reused an earlier result instead of running.
pub(crate) fn submit(
    daemon: &mut impl Daemon,
    request: NewTaskRequest,
    lineage: &TaskLineage,
    notes: &mut dyn Write,
) -> Result<NewTaskAck, CliError> {
    let message = if lineage.is_empty() {
        Request::NewTask(request)
    } else {
        Request::NewTaskWithLineage { request, lineage: lineage.clone() }
    };
    let ack = connect::call_created(daemon, &message, "create the task")?;
    if let Some(note) = render::deduped_note(ack.task_id, ack.deduped_from) {
        // Notes are for people; if stderr is gone the task exists all the same.
        let _ = writeln!(notes, "apiary: {note}");
    }
    Ok(ack)
}

/// The request the arguments describe: the request file as it is, or the flags;
/// with the secret bytes of `--secret-bytes-file`, if given, and as the child of
/// the task this runs in, if it runs in one and the file names no parent.
pub(crate) fn build_request(task: &TaskArgs) -> Result<SwarmingRequest, CliError> {
    build_request_in(task, |name| std::env::var(name).ok())
}

fn build_request_in(task: &TaskArgs, env: impl Fn(&str) -> Option<String>) -> Result<SwarmingRequest, CliError> {
    let mut built = match &task.request {
        Some(path) => request_file::read(path)?,
        None => SwarmingRequest { request: request_from_flags(&task.flags)?, ..SwarmingRequest::default() },
    };
    if let Some(path) = &task.secret_bytes_file {
        built.request.secret_bytes = Some(SecretBytes(read_secret_bytes(path)?));
    }
    if built.lineage.parent_task_id.is_none() {
        built.lineage.parent_task_id = parent_from_env(env)?;
    }
    Ok(built)
}

/// The requests of a spawn-tasks file, each the child of the task this runs in
/// (if it runs in one) unless it names its own parent.
pub(crate) fn build_spawned(path: &Path) -> Result<Vec<SwarmingRequest>, CliError> {
    let mut tasks = request_file::read_spawn(path)?;
    let parent = parent_from_env(|name| std::env::var(name).ok())?;
    for task in &mut tasks {
        task.lineage.parent_task_id = task.lineage.parent_task_id.or(parent);
    }
    Ok(tasks)
}

/// The id of the task this command runs in, from the first of `PARENT_TASK_ENV` set.
fn parent_from_env(env: impl Fn(&str) -> Option<String>) -> Result<Option<u64>, CliError> {
    let Some((variable, value)) =
        PARENT_TASK_ENV.iter().find_map(|name| env(name).filter(|value| !value.is_empty()).map(|value| (*name, value)))
    else {
        return Ok(None);
    };
    parse_task_id(&value).map(Some).map_err(|_| CliError::ParentTaskEnv { variable: variable.to_string(), value })
}

/// The whole file, refused when larger than a task's secret bytes may be.
fn read_secret_bytes(path: &Path) -> Result<Vec<u8>, CliError> {
    let name = path.display().to_string();
    let mut bytes = Vec::new();
    // One byte more than the limit, so an oversized file is noticed without reading it all.
    let limit = MAX_SECRET_BYTES as u64 + 1;
    let read = File::open(path).and_then(|file| file.take(limit).read_to_end(&mut bytes));
    read.map_err(|source: io::Error| CliError::SecretBytesUnreadable { name: name.clone(), source })?;
    if bytes.len() > MAX_SECRET_BYTES {
        return Err(CliError::SecretBytesTooLarge { name, max_bytes: MAX_SECRET_BYTES });
    }
    Ok(bytes)
}

/// One slice (more with `--optional-dimension`), dimensions, environment and
/// caches in the order given; a flag not given takes the protocol's default (see `args`).
fn request_from_flags(flags: &TaskFlags) -> Result<NewTaskRequest, CliError> {
    let properties = TaskProperties {
        command: flags.command.clone(),
        dimensions: flags.dimensions.clone(),
        env: flags.env.clone(),
        env_prefixes: group_env_prefixes(&flags.env_prefixes),
        relative_cwd: flags.relative_cwd.clone(),
        caches: flags.named_caches.clone(),
        execution_timeout_secs: flags.hard_timeout_secs,
        io_timeout_secs: flags.io_timeout_secs,
        grace_period_secs: flags.grace_period_secs,
        idempotent: flags.idempotent,
        cas_input_root: flags
            .cas_input_root
            .map(|digest| Box::new(CasReference { cas_instance: String::new(), digest })),
    };
    let slice = TaskSlice {
        properties: Arc::new(properties),
        expiration_secs: flags.expiration_secs,
        wait_for_capacity: flags.wait_for_capacity,
    };
    Ok(NewTaskRequest {
        name: flags.name.clone(),
        priority: flags.priority,
        tags: flags.tags.clone(),
        user: flags.user.clone(),
        task_slices: with_optional_dimensions(slice, &flags.optional_dimensions)?,
        bot_ping_tolerance_secs: flags.bot_ping_tolerance_secs,
        secret_bytes: None,
    })
}

/// The slices Swarming's client builds for optional dimensions: grouped by how
/// long they are wanted, shortest wait last. Slice `i` has the base dimensions
/// plus every optional one wanted at least as long as its group, and waits until
/// its group's time is up; the base slice waits for what is left of the
/// expiration. With one optional dimension: `[base + it, for SECS]`, then
/// `[base, for EXPIRATION - SECS]`.
fn with_optional_dimensions(base: TaskSlice, optional: &[OptionalDimension]) -> Result<Vec<TaskSlice>, CliError> {
    let mut waits: Vec<u32> = optional.iter().map(|wanted| wanted.expiration_secs).collect();
    waits.sort_unstable();
    waits.dedup();
    let Some(&longest_secs) = waits.last() else { return Ok(vec![base]) };
    if longest_secs >= base.expiration_secs {
        return Err(CliError::OptionalDimensionTooLong { longest_secs, expiration_secs: base.expiration_secs });
    }
    let mut slices = Vec::with_capacity(waits.len() + 1);
    let mut waited_secs = 0;
    for &wait_secs in &waits {
        let mut properties = TaskProperties::clone(&base.properties);
        let wanted = optional.iter().filter(|wanted| wanted.expiration_secs >= wait_secs);
        properties.dimensions.extend(wanted.map(|wanted| wanted.dimension.clone()));
        slices.push(TaskSlice {
            properties: Arc::new(properties),
            expiration_secs: wait_secs - waited_secs,
            wait_for_capacity: base.wait_for_capacity,
        });
        waited_secs = wait_secs;
    }
    let expiration_secs = base.expiration_secs - longest_secs;
    slices.push(TaskSlice { expiration_secs, ..base });
    Ok(slices)
}

/// `--env-prefix` pairs as Swarming writes them: one entry per variable, in the
/// order each was first given, with its paths in the order given.
fn group_env_prefixes(pairs: &[StringPair]) -> Vec<StringListPair> {
    let mut grouped: Vec<StringListPair> = Vec::new();
    for pair in pairs {
        match grouped.iter_mut().find(|group| group.key == pair.key) {
            Some(group) => group.value.push(pair.value.clone()),
            None => grouped.push(StringListPair { key: pair.key.clone(), value: vec![pair.value.clone()] }),
        }
    }
    grouped
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use apiary_protocol::{ClientError, ErrorCode, NamedCache, Reply, TaskState};
    use clap::Parser;

    use super::*;
    use crate::args::{Cli, Command, TriggerArgs};
    use crate::connect::fake::{FakeDaemon, created};

    fn trigger_args(args: &[&str]) -> TriggerArgs {
        let cli = Cli::try_parse_from(["apiary", "trigger"].iter().chain(args)).unwrap();
        match cli.command {
            Command::Trigger(trigger) => trigger,
            other => panic!("not a trigger: {other:?}"),
        }
    }

    fn request_for(args: &[&str]) -> NewTaskRequest {
        built(&trigger_args(args).task).unwrap().request
    }

    /// What `build_request` makes of the arguments outside any task.
    fn built(task: &TaskArgs) -> Result<SwarmingRequest, CliError> {
        build_request_in(task, |_| None)
    }

    fn plain(request: NewTaskRequest) -> SwarmingRequest {
        SwarmingRequest { request, ..SwarmingRequest::default() }
    }

    #[test]
    fn without_flags_the_request_takes_the_protocol_defaults() {
        let request = request_for(&["--", "true"]);
        let expected_slice = TaskSlice {
            properties: Arc::new(TaskProperties { command: vec!["true".to_string()], ..TaskProperties::default() }),
            ..TaskSlice::default()
        };
        assert_eq!(request, NewTaskRequest { task_slices: vec![expected_slice], ..NewTaskRequest::default() });
    }

    #[test]
    fn every_flag_lands_in_its_field() {
        let request = request_for(&[
            "--dimension",
            "pool=b",
            "--dimension",
            "os=linux",
            "--dimension",
            "pool=a",
            "--priority",
            "9",
            "--name",
            "build",
            "--user",
            "ana",
            "--tag",
            "ci:yes",
            "--env",
            "B=2",
            "--env",
            "A=1",
            "--expiration",
            "10",
            "--hard-timeout",
            "20",
            "--io-timeout",
            "30",
            "--grace-period",
            "40",
            "--wait-for-capacity",
            "--idempotent",
            "--bot-ping-tolerance",
            "50",
            "--",
            "make",
            "-j8",
        ]);
        assert_eq!(request.bot_ping_tolerance_secs, 50);
        assert_eq!(request.name, "build");
        assert_eq!(request.user, "ana");
        assert_eq!(request.priority, 9);
        assert_eq!(request.tags, ["ci:yes"]);
        let [slice] = request.task_slices.as_slice() else { panic!("not one slice") };
        assert_eq!(slice.expiration_secs, 10);
        assert!(slice.wait_for_capacity);
        let properties = &slice.properties;
        assert_eq!(properties.command, ["make", "-j8"]);
        assert_eq!(
            properties.dimensions,
            [StringPair::new("pool", "b"), StringPair::new("os", "linux"), StringPair::new("pool", "a")]
        );
        assert_eq!(properties.env, [StringPair::new("B", "2"), StringPair::new("A", "1")]);
        assert_eq!(properties.execution_timeout_secs, 20);
        assert_eq!(properties.io_timeout_secs, 30);
        assert_eq!(properties.grace_period_secs, 40);
        assert!(properties.idempotent);
    }

    fn slice_dimensions(slice: &TaskSlice) -> Vec<String> {
        slice.properties.dimensions.iter().map(|pair| format!("{}={}", pair.key, pair.value)).collect()
    }

    #[test]
    fn one_optional_dimension_makes_a_slice_with_it_then_one_without_as_swarmings_client() {
        let request = request_for(&[
            "-d",
            "pool=ci",
            "--optional-dimension",
            "gpu=nvidia:60",
            "--expiration",
            "600",
            "--",
            "true",
        ]);
        let slices = &request.task_slices;
        assert_eq!(slices.len(), 2);
        assert_eq!(
            (slice_dimensions(&slices[0]), slices[0].expiration_secs),
            (vec!["pool=ci".into(), "gpu=nvidia".into()], 60)
        );
        assert_eq!((slice_dimensions(&slices[1]), slices[1].expiration_secs), (vec!["pool=ci".to_string()], 540));
        assert_eq!(slices[0].properties.command, slices[1].properties.command);
    }

    #[test]
    fn optional_dimensions_are_grouped_by_wait_the_longest_wanted_in_every_earlier_slice() {
        let request = request_for(&[
            "-d",
            "pool=ci",
            "--optional-dimension",
            "os=Ubuntu-22.04:300",
            "--optional-dimension",
            "gpu=nvidia:60",
            "--optional-dimension",
            "cache=warm:60",
            "--expiration",
            "1000",
            "--",
            "true",
        ]);
        let waits: Vec<u32> = request.task_slices.iter().map(|slice| slice.expiration_secs).collect();
        assert_eq!(waits, [60, 240, 700], "the slices' waits add up to --expiration");
        let dimensions: Vec<Vec<String>> = request.task_slices.iter().map(slice_dimensions).collect();
        assert_eq!(dimensions[0], ["pool=ci", "os=Ubuntu-22.04", "gpu=nvidia", "cache=warm"]);
        assert_eq!(dimensions[1], ["pool=ci", "os=Ubuntu-22.04"]);
        assert_eq!(dimensions[2], ["pool=ci"]);
    }

    #[test]
    fn an_optional_dimension_as_long_as_the_expiration_or_malformed_is_a_usage_error() {
        let args = trigger_args(&["--optional-dimension", "gpu=nvidia:3600", "--", "true"]);
        let error = build_request(&args.task).unwrap_err();
        assert_eq!(error.exit_code(), exit_codes::USAGE);
        assert!(error.to_string().contains("--optional-dimension: 3600 s"), "{error}");
        for bad in ["gpu=nvidia", "gpu:60", "=x:60", "gpu=nvidia:0", "gpu=nvidia:soon"] {
            let parsed = Cli::try_parse_from(["apiary", "trigger", "--optional-dimension", bad, "--", "true"]);
            assert_eq!(parsed.unwrap_err().exit_code(), exit_codes::USAGE, "{bad}");
        }
        // A value may hold a colon: the seconds follow the last one.
        let request = request_for(&["--optional-dimension", "url=http://x:60", "--expiration", "100", "--", "true"]);
        assert_eq!(slice_dimensions(&request.task_slices[0]), ["url=http://x"]);
    }

    #[test]
    fn env_prefixes_are_grouped_by_variable_in_first_seen_order() {
        let request = request_for(&[
            "--env-prefix",
            "PATH=bin",
            "--env-prefix",
            "PYTHONPATH=lib/py",
            "--env-prefix",
            "PATH=tools/bin",
            "--env-prefix",
            "PATH=bin",
            "--",
            "true",
        ]);
        let expected = [
            StringListPair { key: "PATH".to_string(), value: vec!["bin".into(), "tools/bin".into(), "bin".into()] },
            StringListPair { key: "PYTHONPATH".to_string(), value: vec!["lib/py".into()] },
        ];
        assert_eq!(request.task_slices[0].properties.env_prefixes, expected);
        assert!(request_for(&["--", "true"]).task_slices[0].properties.env_prefixes.is_empty());
    }

    #[test]
    fn cwd_named_caches_and_an_emptied_variable_land_in_their_fields() {
        let request = request_for(&[
            "--cwd",
            "src/app",
            "--named-cache",
            "git=cache/git",
            "--named-cache",
            "pip=.pip",
            "--env",
            "HOME=",
            "--",
            "make",
        ]);
        let properties = &request.task_slices[0].properties;
        assert_eq!(properties.relative_cwd, "src/app");
        let cache = |name: &str, path: &str| NamedCache { name: name.to_string(), path: path.to_string() };
        assert_eq!(properties.caches, [cache("git", "cache/git"), cache("pip", ".pip")]);
        assert_eq!(properties.env, [StringPair::new("HOME", "")]);
        let defaults = request_for(&["--", "true"]);
        assert_eq!(defaults.task_slices[0].properties.relative_cwd, "");
        assert!(defaults.task_slices[0].properties.caches.is_empty());
        assert_eq!(defaults.secret_bytes, None);
    }

    #[test]
    fn secret_bytes_come_from_their_file_unchanged_with_flags_or_a_request_file() {
        let secret: Vec<u8> = (0..=255).chain([0, 0xff]).collect();
        let (path, mut file) = temp_file("secret.bin");
        file.write_all(&secret).unwrap();
        let secret_path = path.to_str().unwrap();
        let request = request_for(&["--secret-bytes-file", secret_path, "--name", "n", "--", "true"]);
        assert_eq!(request.secret_bytes.as_ref().map(|secret| secret.0.as_slice()), Some(secret.as_slice()));
        assert_eq!(request.name, "n");

        let (request_path, mut request_file) = temp_file("with-secret.json");
        request_file.write_all(br#"{"task_slices": [{"properties": {"command": ["true"]}}]}"#).unwrap();
        let request = request_for(&["--request", request_path.to_str().unwrap(), "--secret-bytes-file", secret_path]);
        assert_eq!(request.secret_bytes.as_ref().map(|secret| secret.0.as_slice()), Some(secret.as_slice()));
        assert_eq!(request.task_slices[0].properties.command, ["true"]);
        std::fs::remove_file(&path).unwrap();
        std::fs::remove_file(&request_path).unwrap();
    }

    #[test]
    fn a_secret_file_over_the_limit_is_refused_naming_the_flag_and_the_limit() {
        let (path, mut file) = temp_file("big-secret.bin");
        file.write_all(&vec![7u8; MAX_SECRET_BYTES]).unwrap();
        let at_limit = request_for(&["--secret-bytes-file", path.to_str().unwrap(), "--", "true"]);
        assert_eq!(at_limit.secret_bytes.map(|bytes| bytes.0.len()), Some(MAX_SECRET_BYTES));
        file.write_all(b"!").unwrap();
        let args = trigger_args(&["--secret-bytes-file", path.to_str().unwrap(), "--", "true"]);
        let error = built(&args.task).unwrap_err();
        assert_eq!(error.exit_code(), exit_codes::USAGE);
        assert_eq!(
            error.to_string(),
            format!(
                "--secret-bytes-file {}: the file is larger than 20480 bytes, the limit on a task's secret bytes",
                path.display()
            )
        );
        std::fs::remove_file(&path).unwrap();
        let error = built(&args.task).unwrap_err();
        assert_eq!(error.exit_code(), exit_codes::USAGE);
        assert!(error.to_string().starts_with("cannot read --secret-bytes-file "), "{error}");
    }

    #[test]
    fn dry_run_never_prints_secret_bytes_and_says_there_are_some() {
        let (path, mut file) = temp_file("dry-secret.bin");
        file.write_all(b"hunter2").unwrap();
        let args = trigger_args(&["--dry-run", "--secret-bytes-file", path.to_str().unwrap(), "--", "true"]);
        let request = built(&args.task).unwrap().request;
        // Even a daemon that echoed the secret back would not get it printed.
        let mut daemon = FakeDaemon::answering(vec![Reply::ValidRequest(Box::new(request.clone()))]);
        let (mut out, mut notes) = (Sink::new(Vec::new()), Vec::new());
        trigger(&mut daemon, plain(request.clone()), true, None, &mut out, &mut notes).unwrap();
        assert_eq!(daemon.requests, [Request::ValidateTask(request)]);
        let printed = String::from_utf8(out.into_inner()).unwrap();
        assert!(!printed.contains("secret") && !printed.contains("hunter2"), "{printed}");
        assert_eq!(
            String::from_utf8(notes).unwrap(),
            "apiary: has_secret_bytes: 7 bytes, sent to be checked, not shown\n"
        );
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn wait_for_capacity_and_idempotent_are_off_unless_given() {
        let request = request_for(&["--wait-for-capacity", "--", "true"]);
        assert!(request.task_slices[0].wait_for_capacity);
        assert!(!request.task_slices[0].properties.idempotent);
        let request = request_for(&["--idempotent", "--", "true"]);
        assert!(!request.task_slices[0].wait_for_capacity);
        assert!(request.task_slices[0].properties.idempotent);
    }

    #[test]
    fn a_request_file_is_sent_as_it_is() {
        let mut file = temp_file("swarming.json");
        let json = br#"{"name": "n", "priority": 100, "tags": ["k:v"], "user": "u",
            "task_slices": [{"properties": {"command": ["echo"]}, "expiration_secs": 60},
                            {"properties": {"command": ["echo"]}, "wait_for_capacity": true}]}"#;
        file.1.write_all(json).unwrap();
        let path = file.0.to_str().unwrap();
        let request = request_for(&["--request", path]);
        assert_eq!(request, request_file::parse("x", json).unwrap().request);
        assert_eq!(request.task_slices.len(), 2);
        assert_eq!(request.priority, 100);
        let mut daemon =
            FakeDaemon::answering(vec![Reply::Created(created(0x018b_cfe5_6880_0010, TaskState::Pending, None))]);
        let mut out = Sink::new(Vec::new());
        trigger(&mut daemon, plain(request.clone()), false, None, &mut out, &mut Vec::new()).unwrap();
        assert_eq!(daemon.requests, [Request::NewTask(request)]);
        std::fs::remove_file(&file.0).unwrap();
    }

    #[test]
    fn a_request_file_with_an_unsupported_field_is_refused_before_anything_is_sent() {
        let mut file = temp_file("cipd.json");
        file.1.write_all(br#"{"task_slices": [{"properties": {"cipd_input": {"server": "s"}}}]}"#).unwrap();
        let error = built(&trigger_args(&["--request", file.0.to_str().unwrap()]).task).unwrap_err();
        assert_eq!(error.exit_code(), exit_codes::USAGE);
        assert!(error.to_string().contains("task_slices[0].properties.cipd_input: asks for CIPD packages"), "{error}");
        std::fs::remove_file(&file.0).unwrap();
    }

    #[test]
    fn inside_a_task_the_new_task_is_its_child_unless_the_file_names_a_parent() {
        let args = trigger_args(&["--", "true"]);
        let env = |swarming: Option<&'static str>, apiary: Option<&'static str>| {
            move |name: &str| match name {
                "SWARMING_TASK_ID" => swarming.map(str::to_string),
                "APIARY_TASK_ID" => apiary.map(str::to_string),
                _ => None,
            }
        };
        let parent = |env| build_request_in(&args.task, env).map(|built| built.lineage.parent_task_id);
        assert_eq!(parent(env(None, None)).unwrap(), None);
        assert_eq!(parent(env(None, Some("018bcfe568800011"))).unwrap(), Some(0x018b_cfe5_6880_0011));
        assert_eq!(
            parent(env(Some("018bcfe568800021"), Some("018bcfe568800011"))).unwrap(),
            Some(0x018b_cfe5_6880_0021)
        );
        let error = parent(env(Some("x"), None)).unwrap_err();
        assert_eq!(error.exit_code(), exit_codes::USAGE);
        assert_eq!(
            error.to_string(),
            "$SWARMING_TASK_ID is \"x\", not a task id; a task triggered inside a task becomes its child: \
             unset $SWARMING_TASK_ID to trigger an unrelated task"
        );

        let mut file = temp_file("parented.json");
        file.1.write_all(br#"{"parent_task_id": "018bcfe568800031", "request_uuid": "u-1"}"#).unwrap();
        let args = trigger_args(&["--request", file.0.to_str().unwrap()]);
        let built = build_request_in(&args.task, env(Some("018bcfe568800021"), None)).unwrap();
        assert_eq!(
            built.lineage,
            TaskLineage { request_uuid: "u-1".into(), parent_task_id: Some(0x018b_cfe5_6880_0031) }
        );
        std::fs::remove_file(&file.0).unwrap();
    }

    #[test]
    fn a_task_with_lineage_is_sent_with_it_and_json_output_writes_it_down() {
        let lineage = TaskLineage { request_uuid: "u-1".into(), parent_task_id: Some(0x018b_cfe5_6880_0011) };
        let task = SwarmingRequest {
            request: request_for(&["--name", "n", "--", "true"]),
            lineage: lineage.clone(),
            ..SwarmingRequest::default()
        };
        let mut daemon =
            FakeDaemon::answering(vec![Reply::Created(created(0x018b_cfe5_6880_0020, TaskState::Pending, None))]);
        let (json_path, _) = temp_file("trigger-output.json");
        let mut out = Sink::new(Vec::new());
        trigger(&mut daemon, task.clone(), false, Some(&json_path), &mut out, &mut Vec::new()).unwrap();
        assert_eq!(daemon.requests, [Request::NewTaskWithLineage { request: task.request.clone(), lineage }]);
        assert_eq!(out.into_inner(), b"018bcfe568800020\n");
        let written: Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
        assert_eq!(written["tasks"][0]["task_id"], "018bcfe568800020");
        assert_eq!(written["tasks"][0]["task_result"]["state"], "PENDING");
        assert_eq!(written["tasks"][0]["request"]["name"], "n");
        // What --json-output writes, `--request` reads back as the same request.
        let request_again = request_file::parse("o", written["tasks"][0]["request"].to_string().as_bytes()).unwrap();
        assert_eq!(request_again.request, task.request);
        std::fs::remove_file(&json_path).unwrap();
    }

    #[test]
    fn spawn_tasks_creates_each_request_in_order_and_prints_each_id() {
        let tasks = vec![
            plain(request_for(&["--name", "a", "--", "true"])),
            plain(request_for(&["--name", "b", "--", "true"])),
        ];
        let mut daemon = FakeDaemon::answering(vec![
            Reply::Created(created(0x018b_cfe5_6880_0010, TaskState::Pending, None)),
            Reply::Created(created(0x018b_cfe5_6880_0020, TaskState::Pending, None)),
        ]);
        let (json_path, _) = temp_file("spawn-output.json");
        let mut out = Sink::new(Vec::new());
        spawn_tasks(&mut daemon, tasks.clone(), Some(&json_path), &mut out, &mut Vec::new()).unwrap();
        assert_eq!(out.into_inner(), b"018bcfe568800010\n018bcfe568800020\n");
        assert_eq!(daemon.requests.len(), 2);
        let written: Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
        let names: Vec<&str> =
            written["tasks"].as_array().unwrap().iter().map(|t| t["request"]["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["a", "b"]);
        std::fs::remove_file(&json_path).unwrap();
    }

    #[test]
    fn a_refusal_midway_keeps_the_tasks_created_before_it_in_the_json_output() {
        let tasks = vec![
            plain(request_for(&["--name", "a", "--", "true"])),
            plain(request_for(&["--name", "b", "--", "true"])),
        ];
        let mut daemon =
            FakeDaemon::answering(vec![Reply::Created(created(0x018b_cfe5_6880_0010, TaskState::Pending, None))]);
        let refusal = ClientError::Refused { code: ErrorCode::InvalidRequest, message: "name: too long".into() };
        daemon.replies.push_back(Err(refusal));
        let (json_path, _) = temp_file("spawn-refused.json");
        let mut out = Sink::new(Vec::new());
        let error = spawn_tasks(&mut daemon, tasks, Some(&json_path), &mut out, &mut Vec::new()).unwrap_err();
        assert_eq!(error.exit_code(), exit_codes::REFUSED);
        assert_eq!(out.into_inner(), b"018bcfe568800010\n");
        let written: Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
        assert_eq!(written["tasks"].as_array().unwrap().len(), 1);
        assert_eq!(written["tasks"][0]["task_id"], "018bcfe568800010");
    }

    /// A file of its own in the temporary directory, removed when its path is dropped.
    fn temp_file(name: &str) -> (tempfile::TempPath, std::fs::File) {
        let (file, path) = tempfile::Builder::new().prefix(name).tempfile().unwrap().into_parts();
        (path, file)
    }

    #[test]
    fn trigger_sends_the_request_and_prints_the_id_alone() {
        let request = request_for(&["--", "true"]);
        let mut daemon =
            FakeDaemon::answering(vec![Reply::Created(created(0x018b_cfe5_6880_0010, TaskState::Pending, None))]);
        let (mut out, mut notes) = (Sink::new(Vec::new()), Vec::new());
        assert_eq!(
            trigger(&mut daemon, plain(request.clone()), false, None, &mut out, &mut notes).unwrap(),
            exit_codes::SUCCESS
        );
        assert_eq!(out.into_inner(), b"018bcfe568800010\n");
        assert_eq!(daemon.requests, [Request::NewTask(request)]);
        assert!(notes.is_empty());
    }

    #[test]
    fn a_deduplicated_task_says_so_on_stderr_only() {
        let ack = created(0x018b_cfe5_6880_0010, TaskState::Completed, Some(0x018b_cfe5_0000_0011));
        let mut daemon = FakeDaemon::answering(vec![Reply::Created(ack)]);
        let (mut out, mut notes) = (Sink::new(Vec::new()), Vec::new());
        trigger(&mut daemon, plain(request_for(&["--idempotent", "--", "true"])), false, None, &mut out, &mut notes)
            .unwrap();
        assert_eq!(out.into_inner(), b"018bcfe568800010\n");
        assert_eq!(
            String::from_utf8(notes).unwrap(),
            "apiary: task 018bcfe568800010 reuses the result of run 018bcfe500000011 (idempotent)\n"
        );
    }

    #[test]
    fn dry_run_validates_instead_and_prints_the_checked_request() {
        let trigger_args = trigger_args(&["--dry-run", "--name", "n", "--", "true"]);
        assert!(trigger_args.dry_run);
        let request = built(&trigger_args.task).unwrap().request;
        let checked = NewTaskRequest { user: "filled-in".to_string(), ..request.clone() };
        let mut daemon = FakeDaemon::answering(vec![Reply::ValidRequest(Box::new(checked.clone()))]);
        let mut out = Sink::new(Vec::new());
        trigger(&mut daemon, plain(request.clone()), true, None, &mut out, &mut Vec::new()).unwrap();
        assert_eq!(daemon.requests, [Request::ValidateTask(request)]);
        let printed = String::from_utf8(out.into_inner()).unwrap();
        assert!(printed.starts_with("{\n  \"name\": \"n\","), "{printed}");
        assert_eq!(request_file::parse("stdout", printed.as_bytes()).unwrap().request, checked);
    }

    #[test]
    fn dry_run_takes_a_request_file_too() {
        let trigger_args = trigger_args(&["--dry-run", "--request", "-"]);
        assert!(trigger_args.dry_run);
        assert_eq!(trigger_args.task.request.as_deref(), Some(std::path::Path::new("-")));
    }

    #[test]
    fn a_wrong_reply_is_an_error() {
        let mut daemon = FakeDaemon::answering(vec![Reply::NoWork]);
        let lineage = TaskLineage::default();
        let error = submit(&mut daemon, request_for(&["--", "true"]), &lineage, &mut Vec::new()).unwrap_err();
        assert_eq!(error.to_string(), "cannot create the task: the daemon answered with no work");
        assert_eq!(error.exit_code(), exit_codes::CONNECTION_FAILED);
    }
}
