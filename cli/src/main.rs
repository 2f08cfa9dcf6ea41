//! `apiary`: the Apiary command line. Glue only: parse the arguments, connect,
//! hand over to the subcommand's module, print an error once and exit with the
//! code `exit_codes` documents.

mod args;
mod bots;
mod collect;
mod connect;
mod error;
mod exit_codes;
mod render;
mod sink;
mod tasks;
mod trigger;

use std::io::{self, Write};

use clap::Parser;

use crate::args::{BotsCommand, Cli, Command, TasksCommand};
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
    let result = dispatch(cli, &mut stdout);
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

fn dispatch(cli: Cli, stdout: &mut Sink<impl Write>) -> Result<i32, CliError> {
    let mut daemon = connect::connect(&cli.server)?;
    match cli.command {
        Command::Trigger(task) => trigger::trigger(&mut daemon, &task, stdout),
        Command::Collect(args) => collect::collect(&mut daemon, args.task_id, args.timeout.duration(), stdout),
        Command::Run(args) => collect::run(&mut daemon, &args, stdout),
        Command::Tasks(TasksCommand::Show { json, task_id }) => tasks::show(&mut daemon, task_id, json, stdout),
        Command::Tasks(TasksCommand::Output { task_id }) => tasks::output(&mut daemon, task_id, stdout),
        Command::Bots(BotsCommand::List { json }) => bots::list(&mut daemon, json, stdout),
    }
}
