//! Dimension-indexed queues (ARCHITECTURE.md, decision 5).
//!
//! Pending tasks sit in one queue per distinct canonical task dimension set,
//! ordered by (priority, task id): lower priority first, then submission order,
//! since ids are time-ordered. Each distinct bot dimension set is interned once
//! as a *bot class* that caches the list of queues it can serve; a new queue or
//! a new class updates those lists, never a poll. A poll looks only at its
//! class's queues; a new task looks only at the classes that match its queue,
//! for a parked bot. Neither path scans all tasks or all bots.
//!
//! The `id` dimension names one bot, so it is kept out of classes: otherwise
//! every bot would be a class of its own. A queue whose tasks ask for `id` is
//! listed under the bot ids it names instead of under classes; a bot's poll
//! looks at its class's queues and at the queues that name it.

use std::collections::{BTreeMap, BTreeSet};

use apiary_protocol::{RequestId, StringPair};

use super::Map;
use super::chunked_set::ChunkedSet;

/// Canonical dimensions: entries sorted, the values of each sorted and deduplicated.
/// For a bot, one entry per key with all the values it has. For a task, one entry
/// per dimension it asks for, with its alternatives (`os=Linux|Mac`): a key given
/// twice is two entries, both to be met (as in Swarming), the same entry once.
pub type CanonicalDimensions = Vec<(String, Vec<String>)>;

/// The dimension that names a bot: a bot has it once, with its bot id.
pub const ID_KEY: &str = "id";
/// The dimension that names the pool a task runs in.
const POOL_KEY: &str = "pool";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(u32);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClassId(u32);

/// The task with this key is the next one its queue hands out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueKey {
    pub priority: u8,
    pub task_id: RequestId,
    /// Where the task sits in the task store, so a poll reaches it without a lookup.
    pub position: u32,
}

struct Queue {
    /// The task dimensions other than `id`.
    dimensions: CanonicalDimensions,
    /// The bots the tasks ask for by `id`; empty when any bot of a matching class will do.
    bot_ids: Vec<String>,
    pending: ChunkedSet<QueueKey>,
    /// The bot classes that have `dimensions`: for a queue that names bots,
    /// a named bot must also be of one of these.
    classes: Vec<ClassId>,
}

struct BotClass {
    dimensions: CanonicalDimensions,
    /// The queues this class can serve (not those that name bots).
    queues: Vec<QueueId>,
    /// Bots of this class that count as capacity, and how many of them are busy.
    live_bots: u32,
    busy_bots: u32,
    /// Bots of this class waiting in a long poll, oldest first, by park number.
    parked: BTreeMap<u64, String>,
}

#[derive(Default)]
pub struct Queues {
    queues: Vec<Queue>,
    /// Each queue's `pending.first()`, by queue id, kept at hand and together: a
    /// poll reads the heads of all its class's queues, and a look into each
    /// set, or even a visit to each `Queue`, would cost a cache miss apiece.
    heads: Vec<Option<QueueKey>>,
    queue_ids: Map<CanonicalDimensions, QueueId>,
    /// Task dimensions as requests spell them, before canonical form: most
    /// tasks repeat a spelling seen before, and finding it costs no allocation.
    queue_ids_as_spelled: Map<Vec<StringPair>, QueueId>,
    classes: Vec<BotClass>,
    class_ids: Map<CanonicalDimensions, ClassId>,
    /// The queues that name each bot id.
    queues_naming: Map<String, Vec<QueueId>>,
    /// Waiting bots by each named cache they hold, oldest first: a task with
    /// caches looks only at the bots that hold its first one.
    parked_by_cache: Map<String, BTreeMap<u64, (ClassId, String)>>,
    /// The caches each waiting bot is listed under, by park number.
    parked_caches: Map<u64, Vec<String>>,
    next_park_number: u64,
}

/// Task dimensions in canonical form: `|` splits alternatives; each pair is an entry.
pub fn canonical_task_dimensions(dimensions: &[StringPair]) -> CanonicalDimensions {
    let entries: BTreeSet<(String, Vec<String>)> = dimensions
        .iter()
        .map(|pair| {
            let alternatives: BTreeSet<&str> = pair.value.split('|').collect();
            (pair.key.clone(), alternatives.into_iter().map(str::to_string).collect())
        })
        .collect();
    entries.into_iter().collect()
}

/// Bot dimensions in canonical form, without `id` (the class of a bot): a key
/// given twice has two values.
pub fn canonical_bot_dimensions(dimensions: &[StringPair]) -> CanonicalDimensions {
    canonical(dimensions.iter().filter(|pair| pair.key != ID_KEY).map(|pair| (&pair.key, pair.value.as_str())))
}

/// Splits the `id` alternatives off canonical task dimensions.
pub fn split_bot_ids(mut dimensions: CanonicalDimensions) -> (CanonicalDimensions, Vec<String>) {
    let ids = match dimensions.binary_search_by(|(key, _)| key.as_str().cmp(ID_KEY)) {
        Ok(index) => dimensions.remove(index).1,
        Err(_) => Vec::new(),
    };
    (dimensions, ids)
}

fn canonical<'a>(pairs: impl Iterator<Item = (&'a String, &'a str)>) -> CanonicalDimensions {
    let mut by_key: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (key, value) in pairs {
        by_key.entry(key.as_str()).or_default().insert(value);
    }
    by_key
        .into_iter()
        .map(|(key, values)| (key.to_string(), values.into_iter().map(str::to_string).collect()))
        .collect()
}

/// A bot matches when, for every entry of the task, it has the key with one of the
/// entry's values (a key the task gives twice needs a value of each).
pub fn bot_matches(bot: &CanonicalDimensions, task: &CanonicalDimensions) -> bool {
    task.iter().all(|(key, alternatives)| match bot.binary_search_by(|(bot_key, _)| bot_key.as_str().cmp(key)) {
        Ok(index) => alternatives.iter().any(|value| bot[index].1.binary_search(value).is_ok()),
        Err(_) => false,
    })
}

impl Queues {
    /// The queue for a task's dimensions, created on first use.
    pub fn queue_for_task(&mut self, dimensions: &[StringPair]) -> QueueId {
        if let Some(&id) = self.queue_ids_as_spelled.get(dimensions) {
            return id;
        }
        let id = self.queue_for(canonical_task_dimensions(dimensions));
        self.queue_ids_as_spelled.insert(dimensions.to_vec(), id);
        id
    }

    /// The queue for these canonical task dimensions, created on first use.
    pub fn queue_for(&mut self, dimensions: CanonicalDimensions) -> QueueId {
        if let Some(&id) = self.queue_ids.get(&dimensions) {
            return id;
        }
        let id = QueueId(self.queues.len() as u32);
        self.queue_ids.insert(dimensions.clone(), id);
        let (dimensions, bot_ids) = split_bot_ids(dimensions);
        let mut classes = Vec::new();
        for (index, class) in self.classes.iter_mut().enumerate() {
            if bot_matches(&class.dimensions, &dimensions) {
                if bot_ids.is_empty() {
                    class.queues.push(id);
                }
                classes.push(ClassId(index as u32));
            }
        }
        for bot_id in &bot_ids {
            self.queues_naming.entry(bot_id.clone()).or_default().push(id);
        }
        self.queues.push(Queue { dimensions, bot_ids, pending: ChunkedSet::default(), classes });
        self.heads.push(None);
        id
    }

    /// The class for these canonical bot dimensions, created on first use.
    pub fn class_for(&mut self, dimensions: CanonicalDimensions) -> ClassId {
        if let Some(&id) = self.class_ids.get(&dimensions) {
            return id;
        }
        let id = ClassId(self.classes.len() as u32);
        let mut queues = Vec::new();
        for (index, queue) in self.queues.iter_mut().enumerate() {
            if bot_matches(&dimensions, &queue.dimensions) {
                queue.classes.push(id);
                if queue.bot_ids.is_empty() {
                    queues.push(QueueId(index as u32));
                }
            }
        }
        self.class_ids.insert(dimensions.clone(), id);
        self.classes.push(BotClass { dimensions, queues, live_bots: 0, busy_bots: 0, parked: BTreeMap::new() });
        id
    }

    pub fn push(&mut self, queue: QueueId, key: QueueKey) {
        let inserted = self.queues[queue.0 as usize].pending.insert(key);
        assert!(inserted, "task {} queued twice", key.task_id);
        let head = &mut self.heads[queue.0 as usize];
        if head.is_none_or(|head| key < head) {
            *head = Some(key);
        }
    }

    pub fn remove(&mut self, queue: QueueId, key: QueueKey) -> bool {
        let pending = &mut self.queues[queue.0 as usize].pending;
        let removed = pending.remove(&key);
        let head = &mut self.heads[queue.0 as usize];
        if *head == Some(key) {
            *head = pending.first().copied();
        }
        removed
    }

    /// The best pending task this bot can take, and its queue.
    pub fn best_for_bot(&self, class: ClassId, bot_id: &str) -> Option<(QueueId, QueueKey)> {
        let naming = self.queues_naming(bot_id).iter().filter(|&&queue| self.serves(class, queue));
        self.classes[class.0 as usize]
            .queues
            .iter()
            .chain(naming)
            .filter_map(|&queue| self.heads[queue.0 as usize].map(|key| (queue, key)))
            .min_by_key(|&(_, key)| key)
    }

    /// The queues whose tasks ask for this bot by `id`.
    pub fn queues_naming(&self, bot_id: &str) -> &[QueueId] {
        self.queues_naming.get(bot_id).map_or(&[], Vec::as_slice)
    }

    /// The bots this queue's tasks ask for by `id`; empty when any will do.
    pub fn bot_ids(&self, queue: QueueId) -> &[String] {
        &self.queues[queue.0 as usize].bot_ids
    }

    /// Whether bots of this class have the queue's dimensions (other than `id`).
    pub fn serves(&self, class: ClassId, queue: QueueId) -> bool {
        self.queues[queue.0 as usize].classes.contains(&class)
    }

    /// Parks a polling bot that holds these named caches; returns the number
    /// that unparks it.
    pub fn park(&mut self, class: ClassId, bot_id: &str, caches: Vec<String>) -> u64 {
        let number = self.next_park_number;
        self.next_park_number += 1;
        self.classes[class.0 as usize].parked.insert(number, bot_id.to_string());
        for cache in &caches {
            self.parked_by_cache.entry(cache.clone()).or_default().insert(number, (class, bot_id.to_string()));
        }
        if !caches.is_empty() {
            self.parked_caches.insert(number, caches);
        }
        number
    }

    pub fn unpark(&mut self, class: ClassId, park_number: u64) {
        let removed = self.classes[class.0 as usize].parked.remove(&park_number);
        assert!(removed.is_some(), "park number {park_number} was not parked");
        for cache in self.parked_caches.remove(&park_number).unwrap_or_default() {
            let waiting = self.parked_by_cache.get_mut(&cache).expect("a listed cache");
            waiting.remove(&park_number);
            if waiting.is_empty() {
                self.parked_by_cache.remove(&cache);
            }
        }
    }

    /// The longest-parked bot of a class that can serve this queue, if any (it
    /// stays parked: the caller unparks it when it hands it work). For a queue
    /// that names bots, only the named ones count: the caller looks at those.
    pub fn parked_bot_for_queue(&self, queue: QueueId) -> Option<&str> {
        self.queues[queue.0 as usize]
            .classes
            .iter()
            .filter_map(|&class| self.classes[class.0 as usize].parked.first_key_value())
            .min_by_key(|&(&number, _)| number)
            .map(|(_, bot_id)| bot_id.as_str())
    }

    /// The longest-parked bot of a class that can serve this queue and holds
    /// every one of these named caches, if any (it stays parked, as above).
    pub fn parked_bot_with_caches(&self, queue: QueueId, caches: &[&str]) -> Option<&str> {
        let (first, rest) = caches.split_first()?;
        let holds = |number: &u64| {
            rest.iter().all(|cache| self.parked_by_cache.get(*cache).is_some_and(|bots| bots.contains_key(number)))
        };
        self.parked_by_cache
            .get(*first)?
            .iter()
            .find(|(number, (class, _))| self.serves(*class, queue) && holds(number))
            .map(|(_, (_, bot_id))| bot_id.as_str())
    }

    /// Counts a bot in (+1) or out (-1) of its class's capacity, idle or busy.
    pub fn count_bot(&mut self, class: ClassId, live: i32, busy: i32) {
        let class = &mut self.classes[class.0 as usize];
        class.live_bots = class.live_bots.checked_add_signed(live).expect("live bot count stays positive");
        class.busy_bots = class.busy_bots.checked_add_signed(busy).expect("busy bot count stays positive");
        assert!(class.busy_bots <= class.live_bots, "busy bots are live bots");
    }

    /// Live bots of the classes that can run this queue's tasks, and how many
    /// of them are busy (for a queue that names bots, the caller counts those).
    pub fn capacity(&self, queue: QueueId) -> (u32, u32) {
        self.queues[queue.0 as usize].classes.iter().fold((0, 0), |(live, busy), &class| {
            let class = &self.classes[class.0 as usize];
            (live + class.live_bots, busy + class.busy_bots)
        })
    }

    /// How many tasks are ahead of `key` in its queue (a query, not a hot path).
    pub fn position(&self, queue: QueueId, key: QueueKey) -> u64 {
        self.queues[queue.0 as usize].pending.rank(&key) as u64
    }

    pub fn class_counts(&self, class: ClassId) -> (u32, u32) {
        let class = &self.classes[class.0 as usize];
        (class.live_bots, class.busy_bots)
    }

    pub fn queues_of_class(&self, class: ClassId) -> &[QueueId] {
        &self.classes[class.0 as usize].queues
    }

    pub fn pending_tasks(&self, queue: QueueId) -> Vec<RequestId> {
        self.queues[queue.0 as usize].pending.iter().map(|key| key.task_id).collect()
    }

    pub fn class_ids(&self) -> impl Iterator<Item = ClassId> + use<> {
        (0..self.classes.len() as u32).map(ClassId)
    }

    /// Whether bots of this class have these (task-style) dimensions.
    pub fn class_matches(&self, class: ClassId, dimensions: &CanonicalDimensions) -> bool {
        bot_matches(&self.classes[class.0 as usize].dimensions, dimensions)
    }

    pub fn contains(&self, queue: QueueId, key: QueueKey) -> bool {
        self.queues[queue.0 as usize].pending.contains(&key)
    }

    pub fn total_pending(&self) -> usize {
        self.queues.iter().map(|queue| queue.pending.len()).sum()
    }

    /// Pending tasks per pool (a task names exactly one), sorted by pool; a
    /// pool whose queues are empty counts 0. One pass over the queues.
    pub fn pending_by_pool(&self) -> Vec<(&str, u64)> {
        let mut by_pool: Map<&str, u64> = Map::default();
        for queue in &self.queues {
            let pool = match queue.dimensions.binary_search_by(|(key, _)| key.as_str().cmp(POOL_KEY)) {
                Ok(index) => queue.dimensions[index].1.first().map_or("", String::as_str),
                Err(_) => "",
            };
            *by_pool.entry(pool).or_default() += queue.pending.len() as u64;
        }
        let mut pools: Vec<(&str, u64)> = by_pool.into_iter().collect();
        pools.sort_unstable();
        pools
    }

    pub fn total_parked(&self) -> usize {
        self.classes.iter().map(|class| class.parked.len()).sum()
    }

    /// The named caches a waiting bot is listed under.
    pub fn parked_caches(&self, park_number: u64) -> &[String] {
        self.parked_caches.get(&park_number).map_or(&[], Vec::as_slice)
    }

    /// Checks the cached lists and heads against a recount (for tests and `check_invariants`).
    pub fn check_invariants(&self) {
        for (index, queue) in self.queues.iter().enumerate() {
            assert_eq!(self.heads[index], queue.pending.first().copied(), "queue {index} knows its head");
            queue.pending.check_invariants();
            for bot_id in &queue.bot_ids {
                assert!(self.queues_naming(bot_id).contains(&QueueId(index as u32)), "queue {index} listed by id");
            }
        }
        for (cache, waiting) in &self.parked_by_cache {
            for (number, (class, bot_id)) in waiting {
                let parked = self.classes[class.0 as usize].parked.get(number);
                assert_eq!(parked, Some(bot_id), "bot {bot_id} listed under cache {cache} is parked");
                assert!(self.parked_caches(*number).contains(cache), "park number {number} lists cache {cache}");
            }
        }
        for (class_index, class) in self.classes.iter().enumerate() {
            for (queue_index, queue) in self.queues.iter().enumerate() {
                let matches = bot_matches(&class.dimensions, &queue.dimensions);
                let listed_in_class = class.queues.contains(&QueueId(queue_index as u32));
                let listed_in_queue = queue.classes.contains(&ClassId(class_index as u32));
                let by_class = matches && queue.bot_ids.is_empty();
                assert_eq!(by_class, listed_in_class, "class {class_index} / queue {queue_index} list");
                assert_eq!(matches, listed_in_queue, "queue {queue_index} / class {class_index} list");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<StringPair> {
        list.iter().map(|(key, value)| StringPair::new(key, value)).collect()
    }

    #[test]
    fn alternatives_and_multi_valued_bots_match() {
        let task = canonical_task_dimensions(&pairs(&[("pool", "ci"), ("os", "Linux|Mac")]));
        let mac = canonical_bot_dimensions(&pairs(&[("pool", "ci"), ("os", "Mac"), ("os", "Mac-14")]));
        let windows = canonical_bot_dimensions(&pairs(&[("pool", "ci"), ("os", "Windows")]));
        let no_pool = canonical_bot_dimensions(&pairs(&[("os", "Linux")]));
        assert!(bot_matches(&mac, &task));
        assert!(!bot_matches(&windows, &task));
        assert!(!bot_matches(&no_pool, &task));
    }

    #[test]
    fn a_key_given_twice_asks_for_both_values() {
        let task = canonical_task_dimensions(&pairs(&[("pool", "ci"), ("gpu", "nvidia"), ("gpu", "nvidia-4090")]));
        assert_eq!(task.len(), 3, "one entry per pair");
        let both = canonical_bot_dimensions(&pairs(&[("pool", "ci"), ("gpu", "nvidia-4090"), ("gpu", "nvidia")]));
        let one = canonical_bot_dimensions(&pairs(&[("pool", "ci"), ("gpu", "nvidia")]));
        assert!(bot_matches(&both, &task));
        assert!(!bot_matches(&one, &task));
        let either = canonical_task_dimensions(&pairs(&[("pool", "ci"), ("gpu", "amd|nvidia"), ("gpu", "nvidia")]));
        assert!(bot_matches(&one, &either));
        let spelled_apart =
            canonical_task_dimensions(&pairs(&[("gpu", "nvidia"), ("pool", "ci"), ("gpu", "nvidia-4090")]));
        assert_eq!(task, spelled_apart, "the same dimensions in another order are the same queue");
    }

    #[test]
    fn polls_take_the_best_head_of_matching_queues() {
        let mut queues = Queues::default();
        let class = queues.class_for(canonical_bot_dimensions(&pairs(&[("pool", "ci"), ("os", "Linux")])));
        let linux = queues.queue_for(canonical_task_dimensions(&pairs(&[("pool", "ci"), ("os", "Linux")])));
        let any = queues.queue_for(canonical_task_dimensions(&pairs(&[("pool", "ci")])));
        let mac = queues.queue_for(canonical_task_dimensions(&pairs(&[("pool", "ci"), ("os", "Mac")])));
        let id = |n: u64| RequestId::first_of_millisecond(n);
        queues.push(linux, QueueKey { priority: 100, task_id: id(3), position: 3 });
        queues.push(any, QueueKey { priority: 100, task_id: id(2), position: 2 });
        queues.push(mac, QueueKey { priority: 1, task_id: id(1), position: 1 });
        assert_eq!(
            queues.best_for_bot(class, "bot-1"),
            Some((any, QueueKey { priority: 100, task_id: id(2), position: 2 }))
        );
        queues.push(linux, QueueKey { priority: 50, task_id: id(4), position: 4 });
        assert_eq!(
            queues.best_for_bot(class, "bot-1"),
            Some((linux, QueueKey { priority: 50, task_id: id(4), position: 4 }))
        );
        queues.check_invariants();
    }

    #[test]
    fn parked_bots_are_found_through_their_class() {
        let mut queues = Queues::default();
        let linux = queues.queue_for(canonical_task_dimensions(&pairs(&[("pool", "ci"), ("os", "Linux")])));
        let class = queues.class_for(canonical_bot_dimensions(&pairs(&[("pool", "ci"), ("os", "Linux")])));
        assert_eq!(queues.parked_bot_for_queue(linux), None);
        let number = queues.park(class, "bot-1", Vec::new());
        queues.park(class, "bot-2", vec!["git".to_string()]);
        assert_eq!(queues.parked_bot_with_caches(linux, &["git"]), Some("bot-2"));
        assert_eq!(queues.parked_bot_with_caches(linux, &["git", "pip"]), None);
        assert_eq!(queues.parked_bot_for_queue(linux), Some("bot-1"));
        queues.unpark(class, number);
        assert_eq!(queues.parked_bot_for_queue(linux), Some("bot-2"));
        queues.check_invariants();
    }
}
