//! Bots: polls and parking, assignment, liveness, quarantine, terminate,
//! connections, queries.

use super::permissions::{self, Caller};
use super::*;

/// Bot events a page may hold by default, and at most.
const DEFAULT_EVENT_PAGE: u32 = 100;

/// Bots by standing, as `apiary bots count` and Swarming's bot list count
/// them; a bot may be in several. Alive is not dead; busy runs a task; idle is
/// alive and runs none (quarantined or not).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BotStandings {
    pub alive: u64,
    pub busy: u64,
    pub idle: u64,
    pub dead: u64,
    pub quarantined: u64,
}

impl Core {
    /// Every bot's standing, counted in one pass over the bots (for the metrics).
    pub fn bot_standings(&self) -> BotStandings {
        let mut standings = BotStandings::default();
        for bot in self.bots.values() {
            let busy = bot.current_run.is_some();
            standings.alive += u64::from(!bot.dead);
            standings.busy += u64::from(busy);
            standings.idle += u64::from(!bot.dead && !busy);
            standings.dead += u64::from(bot.dead);
            standings.quarantined += u64::from(bot.quarantine.is_some());
        }
        standings
    }

    pub(super) fn bot_poll(&mut self, conn: ConnId, request_id: u64, poll: BotPoll, out: &mut Output) -> Option<Reply> {
        // Checked once per new bot or new dimensions, not on every poll.
        let unchanged = self.bots.get(&poll.bot_id).is_some_and(|bot| *bot.dimensions == poll.dimensions);
        let new_dimensions = if unchanged {
            None
        } else {
            let valid = validate::validate_bot_id(&poll.bot_id)
                .and_then(|()| validate::validate_reported_dimensions(&poll.bot_id, &poll.dimensions));
            match valid {
                Ok(pairs) => Some(pairs),
                Err(refusal) => return Some(error(ErrorCode::InvalidRequest, refusal.to_string())),
            }
        };
        if let Err(refusal) = check_poll_sizes(&poll) {
            return Some(error(ErrorCode::InvalidRequest, refusal));
        }
        if let Some(refusal) = self.check_not_superseded(&poll) {
            return Some(refusal);
        }
        self.take_over_session(conn, &poll, out);
        self.unpark(&poll.bot_id, out);
        self.bot_seen(conn, &poll, new_dimensions, out);
        let bot = &self.bots[&poll.bot_id];
        if let Some(run_id) = bot.current_run {
            // A bot polls only when idle: the assignment was durable but never
            // reached it (lost with a connection or a daemon restart). Hand it over again.
            return Some(Reply::Assignment(self.assignment(run_id)));
        }
        if bot.terminate_requested {
            self.change_bot_standing(&poll.bot_id, BotChange::ShutDown, out);
            return Some(Reply::Terminate);
        }
        // On a full disk no new run starts: its events would eat the room kept
        // for the runs that are going on.
        let eligible = bot.eligible() && self.storage_trouble.is_none();
        if eligible && let Some((_, key)) = self.queues.best_for_bot(bot.class, &poll.bot_id) {
            return Some(self.assign(key, poll.bot_id, out));
        }
        self.park(conn, request_id, &poll.bot_id, eligible);
        None
    }

    /// One live session per bot id: a poll from a new session while another
    /// connection holds the bot's session takes the id over (the newer one may
    /// be a restart; the older process is told why and must not come back).
    /// The older connection's held poll is dropped unanswered, and the shell
    /// closes it. The session change itself is recorded by `bot_seen`.
    fn take_over_session(&mut self, conn: ConnId, poll: &BotPoll, out: &mut Output) {
        let Some(bot) = self.bots.get(&poll.bot_id) else { return };
        let Some(older) = bot.connection.filter(|&older| older != conn && bot.session_id != poll.session_id) else {
            return;
        };
        let message = format!(
            "bot {:?}: session {:016x} took over this bot id from session {:016x} (another process polls with the \
             same id, or this bot was restarted); this connection is closed and its session ends",
            poll.bot_id, poll.session_id, bot.session_id
        );
        let superseded = bot.session_id;
        self.disconnected(older);
        self.bots.get_mut(&poll.bot_id).expect("known above").superseded_session = Some(superseded);
        out.closings.push(Closing { conn: older, code: ErrorCode::Superseded, message });
    }

    /// A session that was taken over may not take the id back: it was told to
    /// end, and taking turns with the newer one would be a storm of sessions.
    fn check_not_superseded(&self, poll: &BotPoll) -> Option<Reply> {
        let bot = self.bots.get(&poll.bot_id)?;
        if bot.superseded_session != Some(poll.session_id) {
            return None;
        }
        let message = format!(
            "bot {:?}: session {:016x} was taken over by session {:016x}; it may not come back under this id",
            poll.bot_id, poll.session_id, bot.session_id
        );
        Some(error(ErrorCode::Superseded, message))
    }

    /// Holds a poll: an eligible bot waits for work, a quarantined one only for
    /// the poll's timeout.
    fn park(&mut self, conn: ConnId, request_id: u64, bot_id: &str, eligible: bool) {
        let class = self.bots[bot_id].class;
        let park_number = if eligible {
            let caches = self.bots[bot_id].caches.iter().map(|cache| cache.name.clone()).collect();
            self.queues.park(class, bot_id, caches)
        } else {
            self.next_hold_number()
        };
        self.bots.get_mut(bot_id).expect("known bot").parked =
            Some(ParkedPoll { conn, request_id, park_number, eligible });
        let deadline = self.now_ms + self.config.long_poll_ms;
        self.timers.push(deadline, Timer::PollTimeout { bot_id: bot_id.to_string(), park_number });
    }

    /// Numbers for held polls that are not in a class: counting down from the
    /// top, they never meet the class park numbers counting up.
    fn next_hold_number(&mut self) -> u64 {
        self.hold_numbers_used += 1;
        u64::MAX - self.hold_numbers_used
    }

    /// Records a bot's poll. A new session, new dimensions or software, or a
    /// return from death or shutdown is an event; a new session means the bot
    /// restarted and lost whatever it ran. The health check's verdict rides on
    /// every poll and quarantines or releases the bot.
    fn bot_seen(&mut self, conn: ConnId, poll: &BotPoll, new_dimensions: Option<Vec<StringPair>>, out: &mut Output) {
        let known = self.bots.get(&poll.bot_id);
        let changed = new_dimensions.is_some()
            || known.is_none_or(|bot| {
                bot.session_id != poll.session_id || bot.software != poll.software || bot.dead || bot.shut_down
            });
        let lost_run = known.and_then(|bot| bot.current_run.filter(|_| bot.session_id != poll.session_id));
        if let Some(run_id) = lost_run {
            let mut ending = Ending::new(TaskState::BotDied, "the bot restarted while running the task");
            ending.internal_failure = true;
            self.finish(run_id.request(), Some(run_id), ending, out);
        }
        if changed {
            let dimensions = new_dimensions.unwrap_or_else(|| model::unpack(&self.bots[&poll.bot_id].dimensions));
            let event = BotConnected {
                bot_id: poll.bot_id.clone(),
                session_id: poll.session_id,
                dimensions,
                software: poll.software.clone(),
                at_ms: self.now_ms,
            };
            self.emit(Event::BotConnected(event), out);
        }
        let quarantine = &self.bots[&poll.bot_id].quarantine;
        let by_health_check = quarantine.as_ref().is_some_and(|quarantine| !quarantine.by_server);
        if quarantine.is_none() && !poll.quarantine_reason.is_empty() {
            let change = BotChange::Quarantined { reason: poll.quarantine_reason.clone(), by_server: false };
            self.change_bot_standing(&poll.bot_id, change, out);
        } else if by_health_check && poll.quarantine_reason.is_empty() {
            self.change_bot_standing(&poll.bot_id, BotChange::Unquarantined, out);
        }
        let bot = self.bots.get_mut(&poll.bot_id).expect("seen above");
        if bot.caches != poll.caches {
            bot.caches = poll.caches.clone();
        }
        if bot.health_check_failure != poll.quarantine_reason {
            bot.health_check_failure = poll.quarantine_reason.clone();
        }
        self.note_connection(conn, &poll.bot_id);
    }

    /// A bot spoke: it is alive and this is its connection now.
    pub(super) fn note_connection(&mut self, conn: ConnId, bot_id: &str) {
        let bot = self.bots.get_mut(bot_id).expect("bot is known");
        bot.last_seen_ms = self.now_ms;
        if !bot.death_timer_armed && !bot.dead {
            bot.death_timer_armed = true;
            let deadline = self.now_ms + self.config.bot_death_timeout_ms;
            self.timers.push(deadline, Timer::BotDeath { bot_id: bot_id.to_string() });
        }
        if bot.connection != Some(conn) {
            if let Some(old) = bot.connection.replace(conn) {
                self.bot_by_connection.remove(&old);
            }
            self.bot_by_connection.insert(conn, bot_id.to_string());
        }
    }

    /// A bot reporting on its run while marked dead was only out of reach: it
    /// comes back as it was.
    pub(super) fn revive_if_dead(&mut self, bot_id: &str, out: &mut Output) {
        let bot = &self.bots[bot_id];
        if bot.dead {
            let event = BotConnected {
                bot_id: bot_id.to_string(),
                session_id: bot.session_id,
                dimensions: model::unpack(&bot.dimensions),
                software: bot.software.clone(),
                at_ms: self.now_ms,
            };
            self.emit(Event::BotConnected(event), out);
        }
    }

    /// Answers a bot's held poll with "no work", if it has one.
    pub(super) fn unpark(&mut self, bot_id: &str, out: &mut Output) {
        let Some(bot) = self.bots.get_mut(bot_id) else { return };
        if let Some(parked) = bot.parked.take() {
            if parked.eligible {
                self.queues.unpark(bot.class, parked.park_number);
            }
            out.replies.push(Outgoing { conn: parked.conn, request_id: parked.request_id, reply: Reply::NoWork });
        }
    }

    pub(super) fn disconnected(&mut self, conn: ConnId) {
        let Some(bot_id) = self.bot_by_connection.remove(&conn) else { return };
        let bot = self.bots.get_mut(&bot_id).expect("connection map names known bots");
        bot.connection = None;
        if let Some(parked) = bot.parked.take()
            && parked.eligible
        {
            self.queues.unpark(bot.class, parked.park_number);
        }
    }

    /// Emits a change of a bot's standing; a held poll is answered so the bot
    /// polls again under its new standing.
    pub(super) fn change_bot_standing(&mut self, bot_id: &str, change: BotChange, out: &mut Output) {
        self.change_bot_standing_by(bot_id, change, None, out);
    }

    /// A change a principal asked for is recorded with its name.
    fn change_bot_standing_by(&mut self, bot_id: &str, change: BotChange, by: Option<&str>, out: &mut Output) {
        self.unpark(bot_id, out);
        let (bot_id, at_ms) = (bot_id.to_string(), self.now_ms);
        let event = match by {
            None => Event::BotChanged { bot_id, change, at_ms },
            Some(by) => Event::BotChangedBy { bot_id, change, at_ms, by: by.to_string() },
        };
        self.emit(event, out);
    }

    /// The bot death timer: a bot not heard from for the timeout is missing.
    pub(super) fn bot_death_due(&mut self, bot_id: &str, out: &mut Output) {
        let Some(bot) = self.bots.get_mut(bot_id) else { return };
        bot.death_timer_armed = false;
        if bot.dead {
            return;
        }
        let deadline = bot.last_seen_ms + self.config.bot_death_timeout_ms;
        if deadline > self.now_ms {
            bot.death_timer_armed = true;
            self.timers.push(deadline, Timer::BotDeath { bot_id: bot_id.to_string() });
            return;
        }
        let class = bot.class;
        self.change_bot_standing(bot_id, BotChange::Missing, out);
        self.move_on_from_lost_capacity(class, bot_id, out);
    }

    /// Pending tasks that no live bot can serve any more (and that do not wait
    /// for capacity) move to their next servable slice, or end NO_RESOURCE.
    fn move_on_from_lost_capacity(&mut self, class: ClassId, bot_id: &str, out: &mut Output) {
        let stranded: Vec<RequestId> = self
            .queues
            .queues_of_class(class)
            .iter()
            .chain(self.queues.queues_naming(bot_id))
            .copied()
            .filter(|&queue| self.capacity(queue).0 == 0)
            .flat_map(|queue| self.queues.pending_tasks(queue))
            .filter(|task_id| {
                let task = &self.tasks[task_id];
                !task.slices[task.slice_index as usize].wait_for_capacity
            })
            .collect();
        for task_id in stranded {
            let task = &self.tasks[&task_id];
            // Ending one task may have canceled another of the list: its child.
            if task.state != TaskState::Pending {
                continue;
            }
            let (slices, from) = (task.slices.clone(), task.slice_index as usize + 1);
            if let Some(next_slice) = self.first_servable_slice(&slices, from) {
                let at_ms = self.now_ms;
                self.emit(Event::SliceAdvanced { task_id: task_id.as_u64(), slice_index: next_slice, at_ms }, out);
                self.hand_to_parked_bot(task_id, out);
            } else {
                let reason = "every bot that could run the task is gone";
                self.finish(task_id, None, Ending::new(TaskState::NoResource, reason), out);
            }
        }
    }

    /// A new task goes straight to the longest-parked bot that can run it.
    pub(super) fn hand_to_parked_bot(&mut self, task_id: RequestId, out: &mut Output) {
        let Some((queue, key)) = self.queue_entry(task_id) else { return };
        let task = &self.tasks[&task_id];
        // Among waiting bots, one that already holds the task's named caches
        // wins (for tasks that name their bots, those are the only choice).
        let caches: Vec<&str> = task.properties().caches.iter().map(|cache| cache.name.as_str()).collect();
        let by_class = self.queues.bot_ids(queue).is_empty();
        let with_caches = if by_class { self.queues.parked_bot_with_caches(queue, &caches) } else { None };
        let Some(bot_id) = with_caches.or_else(|| self.parked_bot_for(queue)).map(str::to_string) else {
            return;
        };
        let bot = self.bots.get_mut(&bot_id).expect("parked bots are known");
        let parked = bot.parked.take().expect("a parked bot has its poll");
        self.queues.unpark(bot.class, parked.park_number);
        let reply = self.assign(key, bot_id, out);
        out.replies.push(Outgoing { conn: parked.conn, request_id: parked.request_id, reply });
    }

    /// The longest-waiting parked bot that can run the queue's tasks.
    pub(super) fn parked_bot_for(&self, queue: QueueId) -> Option<&str> {
        let bot_ids = self.queues.bot_ids(queue);
        if bot_ids.is_empty() {
            return self.queues.parked_bot_for_queue(queue);
        }
        self.named_bots(queue)
            .filter_map(|bot| bot.parked.filter(|parked| parked.eligible).map(|parked| (parked.park_number, bot)))
            .min_by_key(|&(park_number, _)| park_number)
            .map(|(_, bot)| bot.bot_id.as_str())
    }

    /// Live bots that can run the queue's tasks, and how many of them are busy.
    pub(super) fn capacity(&self, queue: QueueId) -> (u32, u32) {
        if self.queues.bot_ids(queue).is_empty() {
            return self.queues.capacity(queue);
        }
        self.named_bots(queue).fold((0, 0), |(live, busy), bot| {
            let (bot_live, bot_busy) = bot.capacity_share();
            (live + bot_live as u32, busy + bot_busy as u32)
        })
    }

    /// The known bots a queue names by `id` that have its other dimensions.
    fn named_bots(&self, queue: QueueId) -> impl Iterator<Item = &Bot> {
        self.queues
            .bot_ids(queue)
            .iter()
            .filter_map(|bot_id| self.bots.get(bot_id))
            .filter(move |bot| self.queues.serves(bot.class, queue))
    }

    /// Starts a run of the task at `key` on the bot (its id goes into the event).
    fn assign(&mut self, key: QueueKey, bot_id: String, out: &mut Output) -> Reply {
        let task = self.tasks.at_position(key.position);
        let run_id = key.task_id.run(task.try_number + 1);
        let event = TaskAssigned {
            run_id: run_id.as_u64(),
            slice_index: task.slice_index,
            session_id: self.bots[&bot_id].session_id,
            bot_id,
            at_ms: self.now_ms,
        };
        self.emit(Event::TaskAssigned(event), out);
        Reply::Assignment(self.assignment(run_id))
    }

    fn assignment(&self, run_id: RunId) -> Assignment {
        let task = &self.tasks[&run_id.request()];
        Assignment {
            run_id: run_id.as_u64(),
            task_name: self.name_of(task).into_owned(),
            slice_index: task.slice_index,
            properties: Arc::clone(task.properties()),
            secret_bytes: task.secret_bytes.as_deref().cloned(),
        }
    }

    // ------------------------------------------------------------- requests

    /// The bots matching `filter` that `caller` may see (`read_bots` in one of their pools).
    pub(super) fn list_bots(&self, filter: &[StringPair], caller: Caller<'_>) -> Reply {
        let mut bots: Vec<BotInfo> = match self.matching_bots(filter, caller) {
            Ok(bots) => bots.into_iter().map(Bot::info).collect(),
            Err(refusal) => return error(ErrorCode::InvalidRequest, refusal),
        };
        // The listing has no pages yet: one too large for a frame is refused, by name.
        let bytes: usize = bots.iter().map(wire_size::bot_info_bytes).sum();
        if bytes > MAX_PAGE_BYTES {
            let message = format!(
                "bots: the {} matching bots take {bytes} bytes, over the reply limit of {MAX_PAGE_BYTES}; \
                 ask for fewer with dimensions",
                bots.len()
            );
            return error(ErrorCode::InvalidRequest, message);
        }
        bots.sort_unstable_by(|a, b| a.bot_id.cmp(&b.bot_id));
        Reply::Bots(bots)
    }

    /// Quarantine, unquarantine and terminate requests from people.
    pub(super) fn bot_request(
        &mut self,
        bot_id: &str,
        change: BotChange,
        principal: Option<&str>,
        out: &mut Output,
    ) -> Reply {
        let Some(bot) = self.bots.get(bot_id) else { return error(ErrorCode::NotFound, format!("no bot {bot_id:?}")) };
        let needed = match &change {
            BotChange::Quarantined { reason, .. } => {
                if reason.is_empty() || reason.len() > MAX_REASON_BYTES {
                    let message = format!("reason: must be 1 to {MAX_REASON_BYTES} bytes");
                    return error(ErrorCode::InvalidRequest, message);
                }
                bot.quarantine.as_ref().is_none_or(|quarantine| !quarantine.by_server || quarantine.reason != *reason)
            }
            // Only the bot's own passing check lifts its health check's quarantine.
            BotChange::Unquarantined => bot.quarantine.as_ref().is_some_and(|quarantine| quarantine.by_server),
            // Kept for a bot that is away (shut down, missing, disconnected): it
            // is told at its next poll.
            BotChange::TerminateRequested => !bot.terminate_requested,
            BotChange::TerminateRequestedBecause { reason } => {
                if reason.len() > MAX_REASON_BYTES {
                    let message = format!("reason: {} bytes is over the limit of {MAX_REASON_BYTES}", reason.len());
                    return error(ErrorCode::InvalidRequest, message);
                }
                !bot.terminate_requested
            }
            BotChange::Missing | BotChange::ShutDown | BotChange::Deleted => unreachable!("not a request"),
        };
        let unquarantined = needed && matches!(change, BotChange::Unquarantined);
        if needed {
            self.change_bot_standing_by(bot_id, change, principal, out);
        }
        let health_check_failure = &self.bots[bot_id].health_check_failure;
        if unquarantined && !health_check_failure.is_empty() {
            // The bot's own check failed at its last poll: it stays quarantined for
            // that reason, and the reply says so.
            let change = BotChange::Quarantined { reason: health_check_failure.clone(), by_server: false };
            self.change_bot_standing(bot_id, change, out);
        }
        Reply::Bot(Box::new(self.bots[bot_id].info()))
    }

    /// How many bots match `filter` among those `caller` may see, and their standing.
    pub(super) fn count_bots(&self, filter: &[StringPair], caller: Caller<'_>) -> Reply {
        let bots = match self.matching_bots(filter, caller) {
            Ok(bots) => bots,
            Err(refusal) => return error(ErrorCode::InvalidRequest, refusal),
        };
        let mut counts = BotCounts::default();
        for bot in bots {
            counts.count += 1;
            counts.busy += u32::from(bot.current_run.is_some());
            counts.dead += u32::from(bot.dead);
            counts.quarantined += u32::from(bot.quarantine.is_some());
            counts.connected += u32::from(bot.connection.is_some());
            counts.terminating += u32::from(bot.terminate_requested);
            counts.shut_down += u32::from(bot.shut_down);
        }
        Reply::BotCounts(counts)
    }

    /// The tasks the bot was given, newest first, found through its
    /// `task_assigned` events (so as far back as they are kept); only those
    /// `caller` may read. The cursor is the number of the last event listed.
    pub(super) fn list_bot_tasks(&self, bot_id: &str, limit: u32, cursor: Option<u64>, caller: Caller<'_>) -> Reply {
        let Some(bot) = self.bots.get(bot_id) else { return error(ErrorCode::NotFound, format!("no bot {bot_id:?}")) };
        if limit > MAX_TASK_PAGE {
            return error(ErrorCode::InvalidRequest, format!("limit: {limit} is over the limit of {MAX_TASK_PAGE}"));
        }
        let limit = if limit == 0 { DEFAULT_TASK_PAGE } else { limit } as usize;
        let assigned = bot.events.iter().rev().filter(|event| {
            event.kind == BotEventKind::TaskAssigned && cursor.is_none_or(|cursor| event.number < cursor)
        });
        let (mut tasks, mut bytes, mut last_number) = (Vec::new(), 0, None);
        for event in assigned {
            let Some(run_id) = event.run_id else { continue };
            // A task let go by retention, or in a damaged history run, is left out.
            let Ok(task) = self.task_by_id(run_id.request()) else { continue };
            if !caller.allows_everywhere(Permission::ReadTasks)
                && !caller.allows(Permission::ReadTasks, permissions::task_pool(&task))
            {
                continue;
            }
            let result = self.result(&task);
            bytes += wire_size::task_result_bytes(&result);
            if tasks.len() == limit || (bytes > MAX_PAGE_BYTES && !tasks.is_empty()) {
                return Reply::Tasks { tasks, next_cursor: last_number };
            }
            tasks.push(result);
            last_number = Some(event.number);
        }
        Reply::Tasks { tasks, next_cursor: None }
    }

    /// Forgets a bot that is dead or not connected, and holds no run.
    pub(super) fn delete_bot(&mut self, bot_id: &str, principal: Option<&str>, out: &mut Output) -> Reply {
        let Some(bot) = self.bots.get(bot_id) else { return error(ErrorCode::NotFound, format!("no bot {bot_id:?}")) };
        if let Some(run_id) = bot.current_run {
            let message = format!("bot {bot_id} still holds run {run_id}; it can be deleted once that run ended");
            return error(ErrorCode::InvalidRequest, message);
        }
        if bot.connection.is_some() && !bot.dead {
            let message = format!(
                "bot {bot_id} is connected; only a dead or disconnected bot can be deleted \
                 (stop it first, e.g. with `apiary bots terminate`)"
            );
            return error(ErrorCode::InvalidRequest, message);
        }
        if let Some(parked) = self.bots[bot_id].parked {
            // A dead bot's poll still held: answered "no work" and dropped first.
            self.unpark(bot_id, out);
            debug_assert!(self.bots[bot_id].parked.is_none(), "{parked:?} was dropped");
        }
        self.change_bot_standing_by(bot_id, BotChange::Deleted, principal, out);
        Reply::BotDeleted
    }

    /// The known bots with every dimension of `filter` that `caller` may see.
    /// The error is why the filter is refused.
    fn matching_bots(&self, filter: &[StringPair], caller: Caller<'_>) -> Result<Vec<&Bot>, String> {
        for (index, pair) in filter.iter().enumerate() {
            if let Err(refusal) = validate::validate_bot_dimensions(std::slice::from_ref(pair)) {
                let message = refusal.to_string().replacen("dimensions[0]", &format!("dimensions[{index}]"), 1);
                return Err(message);
            }
        }
        let (filter, bot_ids) = queues::split_bot_ids(queues::canonical_task_dimensions(filter));
        let named = |bot: &&Bot| {
            (bot_ids.is_empty() || bot_ids.contains(&bot.bot_id))
                && permissions::bot_allows(caller, bot, Permission::ReadBots).is_ok()
        };
        Ok(self.bots.values().filter(|bot| named(bot) && self.queues.class_matches(bot.class, &filter)).collect())
    }

    pub(super) fn list_bot_events(&self, query: BotEventQuery) -> Reply {
        let Some(bot) = self.bots.get(&query.bot_id) else {
            return error(ErrorCode::NotFound, format!("no bot {:?}", query.bot_id));
        };
        // Capped, not refused: a script asking for "all" gets the largest page and a cursor.
        let limit = if query.limit == 0 { DEFAULT_EVENT_PAGE } else { query.limit.min(MAX_TASK_PAGE) } as usize;
        let wanted = |event: &&BotEventRecord| {
            query.cursor.is_none_or(|cursor| event.number < cursor)
                && query.since_unix_ms.is_none_or(|since| event.at_ms >= since)
                && query.until_unix_ms.is_none_or(|until| event.at_ms < until)
        };
        let mut matching = bot.events.iter().rev().filter(wanted).map(BotEventRecord::to_event);
        let mut events: Vec<BotEvent> = Vec::new();
        let mut bytes = 0;
        // Stops at `limit` events, or early by bytes (at least one event), so the page fits a frame.
        let more = loop {
            let Some(event) = matching.next() else { break false };
            bytes += wire_size::bot_event_bytes(&event);
            if events.len() == limit || (bytes > MAX_PAGE_BYTES && !events.is_empty()) {
                break true;
            }
            events.push(event);
        };
        let next_cursor = events.last().filter(|_| more).map(|event| event.number);
        Reply::BotEvents { events, next_cursor }
    }
}

/// The texts a bot's poll brings that the daemon keeps and shows: each within
/// its limit, so a bot's description always fits in a reply.
fn check_poll_sizes(poll: &BotPoll) -> Result<(), String> {
    let over = |field: &str, len: usize, limit: usize| format!("{field}: {len} bytes is over the limit of {limit}");
    if poll.quarantine_reason.len() > MAX_REASON_BYTES {
        return Err(over("quarantine_reason", poll.quarantine_reason.len(), MAX_REASON_BYTES));
    }
    if poll.software.len() > MAX_SOFTWARE_BYTES {
        return Err(over("software", poll.software.len(), MAX_SOFTWARE_BYTES));
    }
    if poll.caches.len() > MAX_BOT_CACHES {
        return Err(format!("caches: {} entries is over the limit of {MAX_BOT_CACHES}", poll.caches.len()));
    }
    match poll.caches.iter().position(|cache| cache.name.len() > MAX_CACHE_NAME_BYTES) {
        Some(index) => Err(over(&format!("caches[{index}].name"), poll.caches[index].name.len(), MAX_CACHE_NAME_BYTES)),
        None => Ok(()),
    }
}
