//! A task's tags, decided here and nowhere else (docs/state.md, section 4).
//!
//! A task *stores* the tags its request gave and the automatic tags that say
//! who asked and how: `priority:N`, `user:U`, `authenticated:P` and
//! `parent_task_id:T` (`validate::admit` adds them). Those are in its request
//! text, its log record and its snapshot records, and the held-task tag index
//! lists them. Swarming also tags a task with each dimension of each slice,
//! `key:value`: such a tag is *derived* from the slices the task holds anyway,
//! so that a task carries no string per dimension into the text arena, the
//! log and every snapshot.
//!
//! A task *has* its stored tags and its dimension tags, and shows them as
//! admission listed them when every tag was stored: the stored ones, then each
//! dimension tag not among them yet (`shown`). History runs hold ended tasks
//! with the tags they show, so their posting lists find dimension tags as
//! before; records written before tags were derived stored dimension tags too,
//! and show the same list.
//!
//! The held-task tag index lists a task under its stored tags and its
//! dimension tags alike (`TaskStore`), so a query finds both.
//!
//! Invariant: `shown(stored, slices)` is `stored` followed by `derived(stored,
//! slices)`: each of the slices' dimensions as a tag, once, unless stored.

use apiary_protocol::{StringPair, TaskSlice};

/// Adds `key:value` unless the list has it; built without `format!`, which costs
/// a tenth of a submit here.
pub fn add_tag(tags: &mut Vec<String>, key: &str, value: &str) {
    if !tags.iter().any(|tag| is_tag(tag, key, value)) {
        tags.push(tag_of(key, value));
    }
}

/// The tags a task shows: its stored tags, then its dimension tags not among them.
pub fn shown(mut stored: Vec<String>, slices: &[TaskSlice]) -> Vec<String> {
    let derived: Vec<String> = derived(&stored, slices).map(|pair| tag_of(&pair.key, &pair.value)).collect();
    stored.extend(derived);
    stored
}

/// The dimensions whose tags a task shows after its stored tags: each
/// dimension of each slice in order, once, unless a stored tag names it.
pub fn derived<'a>(stored: &'a [String], slices: &'a [TaskSlice]) -> impl Iterator<Item = &'a StringPair> {
    dimensions(slices).enumerate().filter_map(move |(index, pair)| {
        let same = |earlier: &StringPair| earlier.key == pair.key && earlier.value == pair.value;
        let seen =
            dimensions(slices).take(index).any(same) || stored.iter().any(|tag| is_tag(tag, &pair.key, &pair.value));
        (!seen).then_some(pair)
    })
}

/// Every dimension of every slice, in order (repeats included).
pub fn dimensions(slices: &[TaskSlice]) -> impl Iterator<Item = &StringPair> {
    slices.iter().flat_map(|slice| slice.properties.dimensions.iter())
}

/// `key:value`, in a string of exactly its size.
pub fn tag_of(key: &str, value: &str) -> String {
    let mut tag = String::with_capacity(key.len() + 1 + value.len());
    write_tag(&mut tag, key, value);
    tag
}

/// Writes `key:value` into `tag`, replacing what it held (its room is kept).
pub fn write_tag(tag: &mut String, key: &str, value: &str) {
    tag.clear();
    tag.push_str(key);
    tag.push(':');
    tag.push_str(value);
}

fn is_tag(tag: &str, key: &str, value: &str) -> bool {
    tag.len() == key.len() + 1 + value.len()
        && tag.starts_with(key)
        && tag.as_bytes()[key.len()] == b':'
        && tag.ends_with(value)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use apiary_protocol::TaskProperties;

    use super::*;

    fn slice(dimensions: &[(&str, &str)]) -> TaskSlice {
        let dimensions = dimensions.iter().map(|(key, value)| StringPair::new(key, value)).collect();
        TaskSlice {
            properties: Arc::new(TaskProperties { dimensions, ..TaskProperties::default() }),
            ..TaskSlice::default()
        }
    }

    fn strings(tags: &[&str]) -> Vec<String> {
        tags.iter().map(|tag| tag.to_string()).collect()
    }

    #[test]
    fn a_task_shows_its_stored_tags_then_each_dimension_tag_once() {
        let slices = [
            slice(&[("pool", "ci"), ("os", "Linux|Mac"), ("gpu", "nvidia")]),
            slice(&[("pool", "ci"), ("gpu", "4090")]),
        ];
        let stored = strings(&["pool:ci", "team:infra", "priority:42"]);
        assert_eq!(
            shown(stored, &slices),
            ["pool:ci", "team:infra", "priority:42", "os:Linux|Mac", "gpu:nvidia", "gpu:4090"]
        );
        let all_stored = strings(&["pool:ci", "os:Linux|Mac", "gpu:nvidia", "gpu:4090"]);
        assert_eq!(shown(all_stored.clone(), &slices), all_stored, "a record that stored them shows the same list");
    }

    #[test]
    fn a_tag_is_added_once() {
        let mut tags = strings(&["user:ana"]);
        add_tag(&mut tags, "user", "ana");
        add_tag(&mut tags, "user", "an");
        assert_eq!(tags, ["user:ana", "user:an"]);
    }
}
