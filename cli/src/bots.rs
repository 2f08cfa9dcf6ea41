//! `apiary bots ...`: the bots the daemon knows (`list`, `show`, `count`), what
//! happened to one (`events`, `tasks`), and managing one (`quarantine`,
//! `unquarantine`, `terminate`, `delete`).

use std::io::Write;

use apiary_protocol::{BotEventQuery, Request, StringPair};

use crate::args::{BotEventsArgs, BotTasksArgs};
use crate::connect::{self, Daemon};
use crate::error::CliError;
use crate::exit_codes;
use crate::render::{self, BotAction};
use crate::sink::Sink;

/// Every bot that has all of `dimensions` (all bots when empty), sorted by bot id.
pub(crate) fn list(
    daemon: &mut impl Daemon,
    dimensions: &[StringPair],
    json: bool,
    out: &mut Sink<impl Write>,
) -> Result<i32, CliError> {
    let request = Request::ListBots { dimensions: dimensions.to_vec() };
    let mut bots = connect::call_bots(daemon, &request, "list bots")?;
    bots.sort_by(|a, b| a.bot_id.cmp(&b.bot_id));
    let text = if json { render::json_text(&render::bots_json(&bots)) } else { render::bots_table(&bots) };
    out.write_all(text.as_bytes())?;
    Ok(exit_codes::SUCCESS)
}

pub(crate) fn show(
    daemon: &mut impl Daemon,
    bot_id: &str,
    json: bool,
    out: &mut Sink<impl Write>,
) -> Result<i32, CliError> {
    let request = Request::GetBot { bot_id: bot_id.to_string() };
    let bot = connect::call_bot(daemon, &request, &format!("get bot {bot_id:?}"))?;
    let text = if json { render::json_text(&render::bot_json(&bot)) } else { render::bot_text(&bot) };
    out.write_all(text.as_bytes())?;
    Ok(exit_codes::SUCCESS)
}

/// Gives the bot no more work; a task it runs goes on.
pub(crate) fn quarantine(
    daemon: &mut impl Daemon,
    bot_id: &str,
    reason: &str,
    out: &mut Sink<impl Write>,
) -> Result<i32, CliError> {
    let request = Request::QuarantineBot { bot_id: bot_id.to_string(), reason: reason.to_string() };
    let bot = connect::call_bot(daemon, &request, &format!("quarantine bot {bot_id:?}"))?;
    out.write_all(render::bot_action_text(BotAction::Quarantined { reason }, &bot).as_bytes())?;
    Ok(exit_codes::SUCCESS)
}

/// Gives the bot work again. If it stays quarantined (its own health check fails),
/// a note on `notes` (stderr) says why.
pub(crate) fn unquarantine(
    daemon: &mut impl Daemon,
    bot_id: &str,
    out: &mut Sink<impl Write>,
    notes: &mut dyn Write,
) -> Result<i32, CliError> {
    let request = Request::UnquarantineBot { bot_id: bot_id.to_string() };
    let bot = connect::call_bot(daemon, &request, &format!("unquarantine bot {bot_id:?}"))?;
    out.write_all(render::bot_action_text(BotAction::Unquarantined, &bot).as_bytes())?;
    if let Some(reason) = &bot.quarantine_reason {
        // For people; stdout already says what was done.
        let _ = writeln!(notes, "apiary: {} is still quarantined: {reason}", bot.bot_id);
    }
    Ok(exit_codes::SUCCESS)
}

/// Has the bot exit once its current task (if any) has ended; with `wait`,
/// returns once it has shut down, asking every `SHUT_DOWN_POLL`.
pub(crate) fn terminate(
    daemon: &mut impl Daemon,
    bot_id: &str,
    reason: &str,
    wait: bool,
    out: &mut Sink<impl Write>,
) -> Result<i32, CliError> {
    let request = Request::TerminateBot { bot_id: bot_id.to_string(), reason: reason.to_string() };
    let mut bot = connect::call_bot(daemon, &request, &format!("terminate bot {bot_id:?}"))?;
    out.write_all(render::bot_action_text(BotAction::TerminateRequested, &bot).as_bytes())?;
    if !wait {
        return Ok(exit_codes::SUCCESS);
    }
    out.flush()?;
    let get = Request::GetBot { bot_id: bot_id.to_string() };
    let action = format!("wait for bot {bot_id:?} to shut down");
    while !bot.shut_down {
        std::thread::sleep(SHUT_DOWN_POLL);
        bot = connect::call_bot(daemon, &get, &action)?;
    }
    out.write_all(format!("{bot_id} has shut down\n").as_bytes())?;
    Ok(exit_codes::SUCCESS)
}

/// How often `terminate --wait` asks whether the bot has shut down.
const SHUT_DOWN_POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// One page of the tasks the bot ran, newest first.
pub(crate) fn tasks(
    daemon: &mut impl Daemon,
    args: &BotTasksArgs,
    out: &mut Sink<impl Write>,
    notes: &mut dyn Write,
) -> Result<i32, CliError> {
    let request =
        Request::ListBotTasks { bot_id: args.bot_id.clone(), limit: args.limit.unwrap_or(0), cursor: args.cursor };
    let action = format!("list the tasks of bot {:?}", args.bot_id);
    let (tasks, next_cursor) = connect::call_tasks(daemon, &request, &action)?;
    if args.json {
        out.write_all(render::json_text(&render::tasks_page_json(&tasks, next_cursor)).as_bytes())?;
        return Ok(exit_codes::SUCCESS);
    }
    out.write_all(render::tasks_table(&tasks).as_bytes())?;
    if let Some(cursor) = next_cursor {
        let _ = writeln!(notes, "more: {}", render::next_bot_tasks_command(&args.bot_id, args.limit, cursor));
    }
    Ok(exit_codes::SUCCESS)
}

/// How many bots have all of `dimensions`, and how many of them are busy, dead, ...
pub(crate) fn count(
    daemon: &mut impl Daemon,
    dimensions: &[StringPair],
    json: bool,
    out: &mut Sink<impl Write>,
) -> Result<i32, CliError> {
    let request = Request::CountBots { dimensions: dimensions.to_vec() };
    let counts = connect::call_bot_counts(daemon, &request, "count bots")?;
    let text =
        if json { render::json_text(&render::bot_counts_json(&counts)) } else { render::bot_counts_text(&counts) };
    out.write_all(text.as_bytes())?;
    Ok(exit_codes::SUCCESS)
}

/// Forgets a dead or disconnected bot; the daemon refuses a connected one.
pub(crate) fn delete(daemon: &mut impl Daemon, bot_id: &str, out: &mut Sink<impl Write>) -> Result<i32, CliError> {
    let request = Request::DeleteBot { bot_id: bot_id.to_string() };
    connect::call_delete_bot(daemon, &request, &format!("delete bot {bot_id:?}"))?;
    out.write_all(format!("deleted {bot_id}\n").as_bytes())?;
    Ok(exit_codes::SUCCESS)
}

/// One page of the bot's events, newest first. In text, the command for the next
/// page goes to `notes` (stderr); in JSON it is the `next_cursor` field.
pub(crate) fn events(
    daemon: &mut impl Daemon,
    args: &BotEventsArgs,
    out: &mut Sink<impl Write>,
    notes: &mut dyn Write,
) -> Result<i32, CliError> {
    let query = event_query(args);
    let action = format!("list the events of bot {:?}", args.bot_id);
    let (mut events, next_cursor) = connect::call_bot_events(daemon, &Request::ListBotEvents(query.clone()), &action)?;
    // Numbers grow with each event: the daemon's order, made sure of.
    events.sort_by_key(|event| std::cmp::Reverse(event.number));
    if args.json {
        out.write_all(render::json_text(&render::bot_events_json(&events, next_cursor)).as_bytes())?;
        return Ok(exit_codes::SUCCESS);
    }
    out.write_all(render::bot_events_table(&events).as_bytes())?;
    if let Some(cursor) = next_cursor {
        let _ = writeln!(notes, "more: {}", render::next_bot_events_command(&query, cursor));
    }
    Ok(exit_codes::SUCCESS)
}

fn event_query(args: &BotEventsArgs) -> BotEventQuery {
    BotEventQuery {
        bot_id: args.bot_id.clone(),
        limit: args.limit.unwrap_or(0),
        cursor: args.cursor,
        since_unix_ms: args.since,
        until_unix_ms: args.until,
    }
}

#[cfg(test)]
mod tests {
    use apiary_protocol::{BotEvent, BotEventKind, BotInfo, ClientError, ErrorCode, Reply};
    use clap::Parser;

    use super::*;
    use crate::args::{BotsCommand, Cli, Command};
    use crate::connect::fake::FakeDaemon;

    fn bot(bot_id: &str) -> BotInfo {
        crate::connect::fake::idle_bot(bot_id)
    }

    #[test]
    fn bots_are_listed_in_bot_id_order() {
        let mut daemon = FakeDaemon::answering(vec![Reply::Bots(vec![bot("b"), bot("a")])]);
        let mut out = Sink::new(Vec::new());
        list(&mut daemon, &[], true, &mut out).unwrap();
        assert_eq!(daemon.requests, [Request::ListBots { dimensions: Vec::new() }]);
        let printed: serde_json::Value = serde_json::from_slice(&out.into_inner()).unwrap();
        assert_eq!(printed[0]["bot_id"], "a");
        assert_eq!(printed[1]["bot_id"], "b");
    }

    #[test]
    fn dimension_filters_are_sent_as_given_alternatives_and_all() {
        let cli = Cli::try_parse_from(["apiary", "bots", "list", "-d", "os=linux|mac", "--dimension", "pool=ci"]);
        let Command::Bots(BotsCommand::List { dimensions, json }) = cli.unwrap().command else {
            panic!("not a bots list")
        };
        assert!(!json);
        let mut daemon = FakeDaemon::answering(vec![Reply::Bots(vec![bot("a")])]);
        list(&mut daemon, &dimensions, false, &mut Sink::new(Vec::new())).unwrap();
        let expected = vec![StringPair::new("os", "linux|mac"), StringPair::new("pool", "ci")];
        assert_eq!(daemon.requests, [Request::ListBots { dimensions: expected }]);
        let error = Cli::try_parse_from(["apiary", "bots", "list", "-d", "linux"]).unwrap_err();
        assert_eq!(error.exit_code(), exit_codes::USAGE);
    }

    #[test]
    fn show_json_is_one_element_of_the_list() {
        let mut daemon = FakeDaemon::answering(vec![Reply::Bot(Box::new(bot("a")))]);
        let mut out = Sink::new(Vec::new());
        show(&mut daemon, "a", true, &mut out).unwrap();
        assert_eq!(daemon.requests, [Request::GetBot { bot_id: "a".to_string() }]);
        let printed: serde_json::Value = serde_json::from_slice(&out.into_inner()).unwrap();
        assert_eq!(printed, render::bots_json(&[bot("a")])[0]);
    }

    #[test]
    fn show_text_and_an_unknown_bot() {
        let mut daemon = FakeDaemon::answering(vec![Reply::Bot(Box::new(bot("a")))]);
        let mut out = Sink::new(Vec::new());
        show(&mut daemon, "a", false, &mut out).unwrap();
        assert_eq!(String::from_utf8(out.into_inner()).unwrap(), render::bot_text(&bot("a")));
        let mut daemon = FakeDaemon::default();
        daemon.replies.push_back(Err(ClientError::Refused { code: ErrorCode::NotFound, message: "no bot".into() }));
        let error = show(&mut daemon, "gone", false, &mut Sink::new(Vec::new())).unwrap_err();
        assert_eq!(error.exit_code(), exit_codes::REFUSED);
        assert!(error.to_string().starts_with("cannot get bot \"gone\": "), "{error}");
    }

    fn refused(code: ErrorCode) -> FakeDaemon {
        let mut daemon = FakeDaemon::default();
        daemon.replies.push_back(Err(ClientError::Refused { code, message: "no bot \"gone\"".into() }));
        daemon
    }

    fn printed(out: Sink<Vec<u8>>) -> String {
        String::from_utf8(out.into_inner()).unwrap()
    }

    #[test]
    fn quarantine_sends_the_reason_and_prints_it() {
        let quarantined = BotInfo { quarantine_reason: Some("disk full".to_string()), ..bot("a") };
        let mut daemon = FakeDaemon::answering(vec![Reply::Bot(Box::new(quarantined))]);
        let mut out = Sink::new(Vec::new());
        assert_eq!(quarantine(&mut daemon, "a", "disk full", &mut out).unwrap(), exit_codes::SUCCESS);
        let expected = Request::QuarantineBot { bot_id: "a".to_string(), reason: "disk full".to_string() };
        assert_eq!(daemon.requests, [expected]);
        assert_eq!(printed(out), "quarantined a: disk full\n");
    }

    #[test]
    fn unquarantine_prints_one_line_and_notes_a_failing_health_check() {
        let mut daemon = FakeDaemon::answering(vec![Reply::Bot(Box::new(bot("a")))]);
        let (mut out, mut notes) = (Sink::new(Vec::new()), Vec::new());
        unquarantine(&mut daemon, "a", &mut out, &mut notes).unwrap();
        assert_eq!(daemon.requests, [Request::UnquarantineBot { bot_id: "a".to_string() }]);
        assert_eq!(printed(out), "unquarantined a\n");
        assert!(notes.is_empty());

        let still = BotInfo { quarantine_reason: Some("health check failed (exit 1)".to_string()), ..bot("a") };
        let mut daemon = FakeDaemon::answering(vec![Reply::Bot(Box::new(still))]);
        let (mut out, mut notes) = (Sink::new(Vec::new()), Vec::new());
        unquarantine(&mut daemon, "a", &mut out, &mut notes).unwrap();
        assert_eq!(printed(out), "unquarantined a\n");
        assert_eq!(String::from_utf8(notes).unwrap(), "apiary: a is still quarantined: health check failed (exit 1)\n");
    }

    #[test]
    fn terminate_says_when_the_bot_exits() {
        let mut daemon =
            FakeDaemon::answering(vec![Reply::Bot(Box::new(BotInfo { terminate_requested: true, ..bot("a") }))]);
        let mut out = Sink::new(Vec::new());
        terminate(&mut daemon, "a", "", false, &mut out).unwrap();
        assert_eq!(daemon.requests, [Request::TerminateBot { bot_id: "a".to_string(), reason: String::new() }]);
        assert_eq!(printed(out), "terminate requested: a exits at its next poll\n");
    }

    #[test]
    fn managing_an_unknown_bot_exits_88() {
        let error = quarantine(&mut refused(ErrorCode::NotFound), "gone", "r", &mut Sink::new(Vec::new()));
        let error = error.unwrap_err();
        assert_eq!(error.exit_code(), exit_codes::REFUSED);
        assert!(error.to_string().starts_with("cannot quarantine bot \"gone\": "), "{error}");
        let mut daemon = refused(ErrorCode::NotFound);
        let error = unquarantine(&mut daemon, "gone", &mut Sink::new(Vec::new()), &mut Vec::new()).unwrap_err();
        assert_eq!(error.exit_code(), exit_codes::REFUSED);
        let error =
            terminate(&mut refused(ErrorCode::NotFound), "gone", "", false, &mut Sink::new(Vec::new())).unwrap_err();
        assert_eq!(error.exit_code(), exit_codes::REFUSED);
        let mut daemon = refused(ErrorCode::NotFound);
        let args = events_args(&["gone"]);
        let error = events(&mut daemon, &args, &mut Sink::new(Vec::new()), &mut Vec::new()).unwrap_err();
        assert_eq!(error.exit_code(), exit_codes::REFUSED);
    }

    fn events_args(args: &[&str]) -> BotEventsArgs {
        let cli = Cli::try_parse_from(["apiary", "bots", "events"].iter().chain(args)).unwrap();
        match cli.command {
            Command::Bots(BotsCommand::Events(args)) => args,
            other => panic!("not bots events: {other:?}"),
        }
    }

    fn event(number: u64, kind: BotEventKind, run_id: Option<u64>, message: &str) -> BotEvent {
        BotEvent {
            number,
            at_unix_ms: 1_700_000_000_000 + number * 1000,
            kind,
            dimensions: vec![StringPair::new("id", "a")],
            run_id,
            message: message.to_string(),
        }
    }

    fn events_with(args: &[&str], reply: Reply) -> (FakeDaemon, String, String) {
        let mut daemon = FakeDaemon::answering(vec![reply]);
        let (mut out, mut notes) = (Sink::new(Vec::new()), Vec::new());
        assert_eq!(events(&mut daemon, &events_args(args), &mut out, &mut notes).unwrap(), exit_codes::SUCCESS);
        (daemon, printed(out), String::from_utf8(notes).unwrap())
    }

    #[test]
    fn events_send_the_filters_and_point_to_the_next_page() {
        let page = vec![
            event(1, BotEventKind::Connected, None, ""),
            event(2, BotEventKind::TaskAssigned, Some(0x21), "build"),
        ];
        let reply = Reply::BotEvents { events: page, next_cursor: Some(0x1) };
        let args = ["--limit", "2", "--since", "1700000000", "--until", "2023-11-14T23:00:00Z", "bot a"];
        let (daemon, out, notes) = events_with(&args, reply);
        let query = BotEventQuery {
            bot_id: "bot a".to_string(),
            limit: 2,
            cursor: None,
            since_unix_ms: Some(1_700_000_000_000),
            until_unix_ms: Some(1_700_002_800_000),
        };
        assert_eq!(daemon.requests, [Request::ListBotEvents(query)]);
        assert_eq!(
            out,
            "TS                        EVENT          TASK              MESSAGE\n\
             2023-11-14T22:13:22.000Z  task_assigned  0000000000000021  build\n\
             2023-11-14T22:13:21.000Z  bot_connected  -                 -\n"
        );
        assert_eq!(
            notes,
            "more: apiary bots events --cursor 0000000000000001 --limit 2 --since 2023-11-14T22:13:20.000Z \
             --until 2023-11-14T23:00:00.000Z 'bot a'\n"
        );
    }

    #[test]
    fn the_last_page_of_events_has_no_pointer_and_a_cursor_is_sent_back() {
        let reply = Reply::BotEvents { events: Vec::new(), next_cursor: None };
        let (daemon, out, notes) = events_with(&["--cursor", "00000000000000AB", "a"], reply);
        let query = BotEventQuery { bot_id: "a".to_string(), cursor: Some(0xab), ..BotEventQuery::default() };
        assert_eq!(daemon.requests, [Request::ListBotEvents(query)]);
        assert_eq!(out, "TS  EVENT  TASK  MESSAGE\n");
        assert!(notes.is_empty());
    }

    #[test]
    fn events_json_is_one_object_with_the_cursor_and_nothing_on_stderr() {
        let page = vec![event(7, BotEventKind::Quarantined, None, "health check failed (exit 3): disk\nfull")];
        let (_, out, notes) = events_with(&["--json", "a"], Reply::BotEvents { events: page, next_cursor: Some(7) });
        let printed: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            printed,
            serde_json::json!({
                "events": [{
                    "number": 7,
                    "ts": "2023-11-14T22:13:27.000Z",
                    "event": "bot_quarantined",
                    "dimensions": {"id": ["a"]},
                    "task_id": null,
                    "message": "health check failed (exit 3): disk\nfull",
                }],
                "next_cursor": "0000000000000007",
            })
        );
        assert!(notes.is_empty());
    }
}
