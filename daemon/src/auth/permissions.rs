//! Permissions per pool, with Swarming's meaning. A principal holds each
//! permission in some pools, or in every pool (`"*"`). The core asks
//! `Grants::allows` of the task's or bot's pool for each request: a lookup in
//! a small map of bit sets, settled at the hello, never I/O.

use std::collections::BTreeMap;

/// The pool name that stands for every pool in `[[permissions]]`.
pub const EVERY_POOL: &str = "*";

/// Priorities below this are high priority: creating such a task needs
/// `create_high_priority_task` as well as `create_task` (as in Swarming).
pub const HIGH_PRIORITY_BELOW: u8 = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    /// Trigger tasks in the pool.
    CreateTask,
    /// Trigger tasks with a priority below `HIGH_PRIORITY_BELOW`.
    CreateHighPriorityTask,
    /// Cancel the pool's tasks, and kill them when they run.
    CancelTask,
    /// List the pool's tasks, read them and their output.
    ReadTasks,
    /// List the pool's bots and their events.
    ReadBots,
    /// Quarantine, unquarantine and terminate the pool's bots.
    ManageBots,
    /// Forget the pool's dead or disconnected bots (Swarming's `swarming.pools.deleteBot`).
    DeleteBot,
    /// Read the content-addressed store (which blobs it has, their bytes). The
    /// store is not per pool: held in any pool, it allows the whole store.
    ReadCas,
    /// Upload to the content-addressed store; held in any pool, as `ReadCas`.
    WriteCas,
}

impl Permission {
    pub const ALL: [Permission; 9] = [
        Permission::CreateTask,
        Permission::CreateHighPriorityTask,
        Permission::CancelTask,
        Permission::ReadTasks,
        Permission::ReadBots,
        Permission::ManageBots,
        Permission::DeleteBot,
        Permission::ReadCas,
        Permission::WriteCas,
    ];

    /// Its name in the configuration file and in refusals.
    pub fn name(self) -> &'static str {
        match self {
            Permission::CreateTask => "create_task",
            Permission::CreateHighPriorityTask => "create_high_priority_task",
            Permission::CancelTask => "cancel_task",
            Permission::ReadTasks => "read_tasks",
            Permission::ReadBots => "read_bots",
            Permission::ManageBots => "manage_bots",
            Permission::DeleteBot => "delete_bot",
            Permission::ReadCas => "read_cas",
            Permission::WriteCas => "write_cas",
        }
    }

    pub fn parse(name: &str) -> Option<Permission> {
        Permission::ALL.into_iter().find(|permission| permission.name() == name)
    }

    fn bit(self) -> u16 {
        1 << self as u8
    }
}

/// What one principal may do, pool by pool.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grants {
    every_pool: u16,
    by_pool: BTreeMap<String, u16>,
}

impl Grants {
    /// Whether it grants nothing anywhere.
    pub fn is_empty(&self) -> bool {
        self.every_pool == 0 && self.by_pool.values().all(|bits| *bits == 0)
    }

    /// Everything everywhere: what a principal may do while no permissions are configured.
    pub fn everything() -> Grants {
        Grants {
            every_pool: Permission::ALL.iter().fold(0, |bits, permission| bits | permission.bit()),
            ..Grants::default()
        }
    }

    pub fn grant(&mut self, permission: Permission, pool: &str) {
        let bits =
            if pool == EVERY_POOL { &mut self.every_pool } else { self.by_pool.entry(pool.to_string()).or_default() };
        *bits |= permission.bit();
    }

    pub fn allows(&self, permission: Permission, pool: &str) -> bool {
        let in_pool = self.by_pool.get(pool).copied().unwrap_or(0);
        (self.every_pool | in_pool) & permission.bit() != 0
    }

    /// Whether the permission is held in at least one pool.
    pub fn allows_somewhere(&self, permission: Permission) -> bool {
        self.every_pool & permission.bit() != 0 || self.by_pool.values().any(|bits| bits & permission.bit() != 0)
    }

    /// The pools named in the configuration where the permission is held (not `"*"`).
    pub fn pools_with(&self, permission: Permission) -> Vec<String> {
        self.by_pool.iter().filter(|(_, bits)| *bits & permission.bit() != 0).map(|(pool, _)| pool.clone()).collect()
    }

    /// Whether the permission is held in every pool (nothing need be filtered).
    pub fn allows_everywhere(&self, permission: Permission) -> bool {
        self.every_pool & permission.bit() != 0
    }
}

/// The refusal for a missing permission: it names the permission and the pool.
pub fn denied(principal: &str, permission: Permission, pool: &str) -> String {
    format!("permission {}: principal {principal} lacks it in pool {pool:?}", permission.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_hold_per_pool_or_everywhere() {
        let mut grants = Grants::default();
        grants.grant(Permission::CreateTask, "ci");
        grants.grant(Permission::ReadTasks, EVERY_POOL);
        assert!(grants.allows(Permission::CreateTask, "ci") && !grants.allows(Permission::CreateTask, "prod"));
        assert!(grants.allows(Permission::ReadTasks, "prod") && grants.allows_everywhere(Permission::ReadTasks));
        assert!(grants.allows_somewhere(Permission::CreateTask) && !grants.allows_everywhere(Permission::CreateTask));
        assert!(!grants.allows_somewhere(Permission::ManageBots));
        assert!(Permission::ALL.iter().all(|&permission| Grants::everything().allows(permission, "any")));
        assert!(Permission::ALL.iter().all(|&permission| Permission::parse(permission.name()) == Some(permission)));
        assert_eq!(
            denied("bob", Permission::CancelTask, "ci"),
            "permission cancel_task: principal bob lacks it in pool \"ci\""
        );
    }
}
