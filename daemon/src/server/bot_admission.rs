//! The shell's side of bot groups (`auth::bot_groups`): before a bot's poll
//! or update reaches the core, its bot id must be one the connection's
//! principal may be, and a poll's dimensions get the group's enforced values.
//! Both are lookups in what the hello settled. A connection keeps the last
//! dimensions it reported and what they became, so a bot that polls with the
//! same dimensions (every poll, nearly always) costs one comparison.

use apiary_protocol::{PackedDimensions, Request};

use super::connection::Connection;
use crate::auth::{self, Access};

/// What a connection last reported and what the daemon made of it.
#[derive(Default)]
pub struct EnforcedDimensions {
    reported: PackedDimensions,
    enforced: PackedDimensions,
}

/// A bot whose reported dimensions were overridden, to be logged once.
pub struct Overridden {
    pub bot_id: String,
    pub group_index: usize,
    pub enforced: String,
}

/// The request as the core may see it, or the refusal (naming the field and
/// the pools of the principal's groups).
pub fn admit(
    connection: &mut Connection,
    access: &Access,
    request: Request,
) -> Result<(Request, Option<Overridden>), String> {
    let groups_configured = matches!(access, Access::Tokens(principals) if principals.bot_groups_configured);
    let principal = connection.principal.as_deref();
    match request {
        Request::BotPoll(mut poll) => {
            let Some(group) = auth::admit_bot(principal, groups_configured, &poll.bot_id)? else {
                return Ok((Request::BotPoll(poll), None));
            };
            let cache = connection.enforced_dimensions.get_or_insert_with(EnforcedDimensions::default);
            if cache.reported == poll.dimensions {
                poll.dimensions = cache.enforced.clone();
                return Ok((Request::BotPoll(poll), None));
            }
            let enforced = group.enforce(&poll.dimensions);
            let overridden = enforced.as_ref().map(|_| Overridden {
                bot_id: poll.bot_id.clone(),
                group_index: group.index,
                enforced: group.describe_dimensions(),
            });
            let enforced = enforced.unwrap_or_else(|| poll.dimensions.clone());
            cache.reported = std::mem::replace(&mut poll.dimensions, enforced.clone());
            cache.enforced = enforced;
            Ok((Request::BotPoll(poll), overridden))
        }
        Request::TaskUpdate(update) => {
            auth::admit_bot(principal, groups_configured, &update.bot_id)?;
            Ok((Request::TaskUpdate(update), None))
        }
        request => Ok((request, None)),
    }
}
