//! `apiary bots list`: every bot the daemon knows, sorted by bot id.

use std::io::Write;

use crate::connect::{self, Daemon};
use crate::error::CliError;
use crate::exit_codes;
use crate::render;
use crate::sink::Sink;

pub(crate) fn list(daemon: &mut impl Daemon, json: bool, out: &mut Sink<impl Write>) -> Result<i32, CliError> {
    let mut bots = connect::call_bots(daemon, "list bots")?;
    bots.sort_by(|a, b| a.bot_id.cmp(&b.bot_id));
    let text = if json { render::json_text(&render::bots_json(&bots)) } else { render::bots_table(&bots) };
    out.write_all(text.as_bytes())?;
    Ok(exit_codes::SUCCESS)
}

#[cfg(test)]
mod tests {
    use apiary_protocol::{BotInfo, Reply, Request};

    use super::*;
    use crate::connect::fake::FakeDaemon;

    #[test]
    fn bots_are_listed_in_bot_id_order() {
        let bot = |bot_id: &str| BotInfo {
            bot_id: bot_id.to_string(),
            dimensions: Vec::new(),
            current_run_id: None,
            first_seen_unix_ms: 0,
            last_seen_unix_ms: 0,
            connected: true,
            software: String::new(),
        };
        let mut daemon = FakeDaemon::answering(vec![Reply::Bots(vec![bot("b"), bot("a")])]);
        let mut out = Sink::new(Vec::new());
        list(&mut daemon, true, &mut out).unwrap();
        assert_eq!(daemon.requests, [Request::ListBots]);
        let printed: serde_json::Value = serde_json::from_slice(&out.into_inner()).unwrap();
        assert_eq!(printed[0]["bot_id"], "a");
        assert_eq!(printed[1]["bot_id"], "b");
    }
}
