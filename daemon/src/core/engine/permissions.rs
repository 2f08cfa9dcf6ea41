//! Permissions per pool, as the core applies them (`auth::Grants`). A request
//! on a task or bot is checked against the pool of that task (its current
//! slice) or bot (any of its `pool` values). A principal that may not read a
//! pool learns nothing of it: a task or bot there gets the very answer an
//! unknown id gets, and listings leave them out. One that may read it but not
//! act is refused by name: the permission and the pool. Without grants (open
//! access) everything is allowed.

use super::*;
use crate::auth::{self, Grants, HIGH_PRIORITY_BELOW, Permission};

/// Who asks, as the hello settled it.
#[derive(Clone, Copy)]
pub(super) struct Caller<'a> {
    /// `None` while access is open.
    pub name: Option<&'a str>,
    /// `None` while access is open: everything is allowed.
    pub grants: Option<&'a Grants>,
}

impl Caller<'_> {
    pub fn allows(&self, permission: Permission, pool: &str) -> bool {
        self.grants.is_none_or(|grants| grants.allows(permission, pool))
    }

    pub fn allows_everywhere(&self, permission: Permission) -> bool {
        self.grants.is_none_or(|grants| grants.allows_everywhere(permission))
    }

    pub fn allows_somewhere(&self, permission: Permission) -> bool {
        self.grants.is_none_or(|grants| grants.allows_somewhere(permission))
    }

    pub fn denied(&self, permission: Permission, pool: &str) -> Reply {
        error(ErrorCode::PermissionDenied, auth::denied(self.name.unwrap_or("(open access)"), permission, pool))
    }

    /// The refusal when the permission is held in no pool at all.
    pub fn denied_everywhere(&self, permission: Permission) -> Reply {
        let name = self.name.unwrap_or("(open access)");
        error(
            ErrorCode::PermissionDenied,
            format!("permission {}: principal {name} lacks it in every pool", permission.name()),
        )
    }
}

/// The pool of a task: that of its current slice.
pub(super) fn task_pool(task: &Task) -> &str {
    pool_of(&task.properties().dimensions)
}

fn pool_of(dimensions: &[StringPair]) -> &str {
    dimensions.iter().find(|pair| pair.key == "pool").map_or("", |pair| pair.value.as_str())
}

/// Whether any of a bot's pools allows `permission`.
pub(super) fn bot_allows(caller: Caller<'_>, bot: &Bot, permission: Permission) -> Result<(), String> {
    if caller.grants.is_none() {
        return Ok(());
    }
    let pools: Vec<String> =
        model::unpack(&bot.dimensions).into_iter().filter(|pair| pair.key == "pool").map(|pair| pair.value).collect();
    if pools.iter().any(|pool| caller.allows(permission, pool)) {
        return Ok(());
    }
    Err(pools.first().cloned().unwrap_or_default())
}

impl Core {
    /// Whether `caller` may create this task: `create_task` in each slice's
    /// pool, and `create_high_priority_task` as well below priority 20.
    pub(super) fn refuse_new_task(&self, caller: Caller<'_>, request: &NewTaskRequest) -> Option<Reply> {
        for slice in &request.task_slices {
            let pool = pool_of(&slice.properties.dimensions);
            if !caller.allows(Permission::CreateTask, pool) {
                return Some(caller.denied(Permission::CreateTask, pool));
            }
            if request.priority < HIGH_PRIORITY_BELOW && !caller.allows(Permission::CreateHighPriorityTask, pool) {
                let denied = auth::denied(caller.name.unwrap_or(""), Permission::CreateHighPriorityTask, pool);
                let message =
                    format!("priority: {} is high priority (below {HIGH_PRIORITY_BELOW}); {denied}", request.priority);
                return Some(error(ErrorCode::PermissionDenied, message));
            }
        }
        None
    }

    /// For a request on one task: `None` when it may go on (or the task is
    /// unknown, which the request itself answers).
    pub(super) fn refuse_on_task(&self, caller: Caller<'_>, raw_id: u64, permission: Permission) -> Option<Reply> {
        // Open access: nothing to look up.
        caller.grants?;
        let task = self.find_task(raw_id).ok()?;
        let pool = task_pool(&task);
        if !caller.allows(Permission::ReadTasks, pool) {
            return Some(self.not_found(raw_id));
        }
        (!caller.allows(permission, pool)).then(|| caller.denied(permission, pool))
    }

    /// For a request on one bot: as `refuse_on_task`, with `read_bots`.
    pub(super) fn refuse_on_bot(&self, caller: Caller<'_>, bot_id: &str, permission: Permission) -> Option<Reply> {
        let bot = self.bots.get(bot_id)?;
        if bot_allows(caller, bot, Permission::ReadBots).is_err() {
            return Some(error(ErrorCode::NotFound, format!("no bot {bot_id:?}")));
        }
        bot_allows(caller, bot, permission).err().map(|pool| caller.denied(permission, &pool))
    }
}
