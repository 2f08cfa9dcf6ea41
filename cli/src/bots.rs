//! `apiary bots list` and `apiary bots show`: the bots the daemon knows.

use std::io::Write;

use apiary_protocol::{Request, StringPair};

use crate::connect::{self, Daemon};
use crate::error::CliError;
use crate::exit_codes;
use crate::render;
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

#[cfg(test)]
mod tests {
    use apiary_protocol::{BotInfo, ClientError, ErrorCode, Reply};
    use clap::Parser;

    use super::*;
    use crate::args::{BotsCommand, Cli, Command};
    use crate::connect::fake::FakeDaemon;

    fn bot(bot_id: &str) -> BotInfo {
        BotInfo {
            bot_id: bot_id.to_string(),
            dimensions: vec![StringPair::new("pool", "ci")],
            current_run_id: None,
            first_seen_unix_ms: 0,
            last_seen_unix_ms: 0,
            connected: true,
            software: String::new(),
        }
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
        let mut daemon = FakeDaemon::answering(vec![Reply::Bot(bot("a"))]);
        let mut out = Sink::new(Vec::new());
        show(&mut daemon, "a", true, &mut out).unwrap();
        assert_eq!(daemon.requests, [Request::GetBot { bot_id: "a".to_string() }]);
        let printed: serde_json::Value = serde_json::from_slice(&out.into_inner()).unwrap();
        assert_eq!(printed, render::bots_json(&[bot("a")])[0]);
    }

    #[test]
    fn show_text_and_an_unknown_bot() {
        let mut daemon = FakeDaemon::answering(vec![Reply::Bot(bot("a"))]);
        let mut out = Sink::new(Vec::new());
        show(&mut daemon, "a", false, &mut out).unwrap();
        assert_eq!(String::from_utf8(out.into_inner()).unwrap(), render::bot_text(&bot("a")));
        let mut daemon = FakeDaemon::default();
        daemon.replies.push_back(Err(ClientError::Refused { code: ErrorCode::NotFound, message: "no bot".into() }));
        let error = show(&mut daemon, "gone", false, &mut Sink::new(Vec::new())).unwrap_err();
        assert_eq!(error.exit_code(), exit_codes::REFUSED);
        assert!(error.to_string().starts_with("cannot get bot \"gone\": "), "{error}");
    }
}
