//! `apiary`: the Apiary command line. Glue only: parse the arguments, read a
//! request file if there is one (so a bad one fails before any connection),
//! connect, hand over to the subcommand's module, print an error once and exit
//! with the code `exit_codes` documents.

mod args;
mod bots;
mod cancel;
mod cas;
mod collect;
mod connect;
mod error;
mod exit_codes;
mod follow;
mod render;
mod reproduce;
mod request_file;
mod sink;
mod tasks;
mod trigger;

use std::io::{self, Write};

use apiary_protocol::TaskQuery;
use apiary_protocol::token::read_token_file;
use clap::Parser;

use crate::args::{BotsCommand, CasCommand, Cli, Command, TasksCommand};
use crate::error::CliError;
use crate::sink::Sink;

fn main() {
    std::process::exit(run())
}

fn run() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // Help and --version go to stdout, usage errors to stderr; neither
            // matters if its reader went away.
            let _ = error.print();
            return if error.use_stderr() { exit_codes::USAGE } else { exit_codes::SUCCESS };
        }
    };
    let mut stdout = Sink::new(io::stdout().lock());
    let result = dispatch(cli, &mut stdout, &mut io::stderr());
    // Whatever was written goes out before any error message.
    let result = result.and_then(|code| stdout.flush().map(|()| code));
    match result {
        Ok(code) => code,
        Err(error) => {
            let _ = stdout.flush();
            let _ = writeln!(io::stderr(), "apiary: {error}");
            error.exit_code()
        }
    }
}

fn dispatch(cli: Cli, stdout: &mut Sink<impl Write>, stderr: &mut dyn Write) -> Result<i32, CliError> {
    let token = match &cli.token_file {
        Some(path) => read_token_file(path).map_err(CliError::TokenFile)?,
        None => String::new(),
    };
    let security = cli.tls.security(&cli.server).map_err(CliError::TlsSetup)?;
    let connect = || connect::connect(&cli.server, &token, &security);
    match cli.command {
        Command::Trigger(args) => {
            let task = trigger::build_request(&args.task)?;
            trigger::trigger(&mut connect()?, task, args.dry_run, args.json_output.as_deref(), stdout, stderr)
        }
        Command::SpawnTasks(args) => {
            let tasks = trigger::build_spawned(&args.json_input)?;
            trigger::spawn_tasks(&mut connect()?, tasks, args.json_output.as_deref(), stdout, stderr)
        }
        Command::Collect(args) => {
            let to =
                collect::CollectTo { output_dir: args.output_dir.as_deref(), json_output: args.json_output.as_deref() };
            let timeout = args.timeout.duration();
            match args.task_ids[..] {
                [task_id] if to.output_dir.is_none() && to.json_output.is_none() => {
                    collect::collect(&mut connect()?, task_id, timeout, args.follow, stdout, stderr)
                }
                _ => collect::collect_many(&mut connect()?, &args.task_ids, timeout, &to, stdout, stderr),
            }
        }
        Command::Run(args) => {
            let request = trigger::build_request(&args.task)?;
            collect::run(&mut connect()?, request, args.timeout.duration(), args.follow, stdout, stderr)
        }
        Command::Cancel(args) => match args.task_id {
            Some(task_id) => cancel::cancel(&mut connect()?, task_id, args.kill_running, stdout),
            None => {
                let query = TaskQuery {
                    tags: args.tags,
                    created_since_unix_ms: args.start,
                    created_until_unix_ms: args.end,
                    ..TaskQuery::default()
                };
                cancel::cancel_by_tags(&mut connect()?, query, args.kill_running, stdout)
            }
        },
        Command::Reproduce(args) => reproduce::reproduce(&mut connect()?, &args, &cli.server, stderr),
        Command::Tasks(TasksCommand::Show { json, task_id }) => tasks::show(&mut connect()?, task_id, json, stdout),
        Command::Tasks(TasksCommand::Output { follow, task_id }) => {
            tasks::output(&mut connect()?, task_id, follow, stdout, stderr)
        }
        Command::Tasks(TasksCommand::List(args)) => tasks::list(&mut connect()?, &args, stdout, stderr),
        Command::Tasks(TasksCommand::Count(args)) => tasks::count(&mut connect()?, &args, stdout),
        Command::Bots(BotsCommand::List { dimensions, json }) => bots::list(&mut connect()?, &dimensions, json, stdout),
        Command::Bots(BotsCommand::Show { json, bot_id }) => bots::show(&mut connect()?, &bot_id, json, stdout),
        Command::Bots(BotsCommand::Quarantine { reason, bot_id }) => {
            bots::quarantine(&mut connect()?, &bot_id, &reason, stdout)
        }
        Command::Bots(BotsCommand::Unquarantine { bot_id }) => {
            bots::unquarantine(&mut connect()?, &bot_id, stdout, stderr)
        }
        Command::Bots(BotsCommand::Terminate { reason, wait, bot_id }) => {
            bots::terminate(&mut connect()?, &bot_id, &reason, wait, stdout)
        }
        Command::Bots(BotsCommand::Events(args)) => bots::events(&mut connect()?, &args, stdout, stderr),
        Command::Bots(BotsCommand::Tasks(args)) => bots::tasks(&mut connect()?, &args, stdout, stderr),
        Command::Bots(BotsCommand::Count { dimensions, json }) => {
            bots::count(&mut connect()?, &dimensions, json, stdout)
        }
        Command::Bots(BotsCommand::Delete { bot_id }) => bots::delete(&mut connect()?, &bot_id, stdout),
        Command::Cas(CasCommand::Archive { dir, paths }) => {
            let from = match &dir {
                Some(dir) => cas::ArchiveFrom::DirectoryContents(dir),
                None => cas::ArchiveFrom::Paths(&paths),
            };
            cas::archive(&mut connect()?, from, stdout, stderr)
        }
        Command::Cas(CasCommand::Download { digest, dir }) => cas::download(&mut connect()?, digest, &dir, stderr),
    }
}
