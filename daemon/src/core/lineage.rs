//! Where tasks come from (Swarming's `request_uuid` and `parent_task_id`): which
//! task each request uuid of a requester created, and which tasks that have not
//! ended are children of which.
//!
//! Invariants: `parent_of` and `children` hold the same links, each child once;
//! a link is dropped when its child ends, and a parent's list when it ends. A
//! uuid names its task until retention lets the task go; whether it still
//! answers is decided against its creation time (`limits::REQUEST_UUID_WINDOW_SECS`).

use apiary_protocol::RequestId;

use super::Map;

/// A requester (the principal, or the request's `user` while access is open) and its uuid.
pub type UuidKey = (String, String);
/// A uuid as a snapshot holds it: the key, the task id, its creation time.
pub type UuidEntry = (UuidKey, u64, u64);
/// A link as a snapshot holds it: (child id, parent id).
pub type LinkEntry = (u64, u64);

#[derive(Default)]
pub struct Lineage {
    /// The task each uuid created, and when.
    uuids: Map<UuidKey, (RequestId, u64)>,
    parent_of: Map<RequestId, RequestId>,
    /// Each parent's children that have not ended, in creation order.
    children: Map<RequestId, Vec<RequestId>>,
}

impl Lineage {
    /// `key` created `task_id`; a uuid past its window may name a newer task.
    pub fn record_uuid(&mut self, key: UuidKey, task_id: RequestId, created_ms: u64) {
        let earlier = self.uuids.insert(key, (task_id, created_ms));
        assert!(earlier.is_none_or(|(earlier_id, _)| earlier_id < task_id), "a uuid names its newest task");
    }

    /// The task `key` created, if it did so at `window_ms` before `now_ms` or later.
    pub fn task_of_uuid(&self, key: &UuidKey, now_ms: u64, window_ms: u64) -> Option<RequestId> {
        let &(task_id, created_ms) = self.uuids.get(key)?;
        (created_ms.saturating_add(window_ms) >= now_ms).then_some(task_id)
    }

    pub fn link(&mut self, child: RequestId, parent: RequestId) {
        assert!(self.parent_of.insert(child, parent).is_none(), "a task has one parent");
        self.children.entry(parent).or_default().push(child);
    }

    /// The children of `parent` that have not ended.
    pub fn children_of(&self, parent: RequestId) -> &[RequestId] {
        self.children.get(&parent).map_or(&[], Vec::as_slice)
    }

    /// `task` ended: it is nobody's child and nobody's parent any more.
    pub fn ended(&mut self, task: RequestId) {
        if let Some(parent) = self.parent_of.remove(&task) {
            let siblings = self.children.get_mut(&parent).expect("a child is listed under its parent");
            siblings.retain(|sibling| *sibling != task);
            if siblings.is_empty() {
                self.children.remove(&parent);
            }
        }
        for child in self.children.remove(&task).unwrap_or_default() {
            self.parent_of.remove(&child);
        }
    }

    /// Retention let the tasks below `before` go: their uuids go with them.
    pub fn forget_before(&mut self, before: RequestId) {
        self.uuids.retain(|_, (task_id, _)| *task_id >= before);
    }

    /// The uuids and links as a snapshot holds them, in a stable order.
    pub fn records(&self) -> (Vec<UuidEntry>, Vec<LinkEntry>) {
        let mut uuids: Vec<UuidEntry> = self
            .uuids
            .iter()
            .map(|(key, (task_id, created_ms))| (key.clone(), task_id.as_u64(), *created_ms))
            .collect();
        uuids.sort_unstable_by_key(|(_, task_id, _)| *task_id);
        let mut links: Vec<LinkEntry> =
            self.parent_of.iter().map(|(child, parent)| (child.as_u64(), parent.as_u64())).collect();
        links.sort_unstable();
        (uuids, links)
    }

    pub fn check_invariants(&self) {
        let listed: usize = self.children.values().map(Vec::len).sum();
        assert_eq!(listed, self.parent_of.len(), "every link is listed both ways");
        for (parent, children) in &self.children {
            assert!(!children.is_empty(), "no empty list of children");
            for child in children {
                assert_eq!(self.parent_of.get(child), Some(parent), "child {child} lists its parent");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> RequestId {
        RequestId::from_u64(n << 4).unwrap()
    }

    #[test]
    fn links_go_when_the_child_or_the_parent_ends() {
        let mut lineage = Lineage::default();
        lineage.link(id(2), id(1));
        lineage.link(id(3), id(1));
        lineage.link(id(4), id(3));
        assert_eq!(lineage.children_of(id(1)), [id(2), id(3)]);
        lineage.ended(id(2));
        assert_eq!(lineage.children_of(id(1)), [id(3)]);
        lineage.ended(id(3));
        assert!(lineage.children_of(id(1)).is_empty());
        assert!(lineage.children_of(id(3)).is_empty());
        lineage.check_invariants();
        assert_eq!(lineage.records().1, []);
    }

    #[test]
    fn a_uuid_answers_within_its_window_and_goes_with_retention() {
        let mut lineage = Lineage::default();
        let key = ("alice".to_string(), "u-1".to_string());
        lineage.record_uuid(key.clone(), id(5), 1_000);
        assert_eq!(lineage.task_of_uuid(&key, 1_500, 500), Some(id(5)));
        assert_eq!(lineage.task_of_uuid(&key, 1_501, 500), None);
        assert_eq!(lineage.task_of_uuid(&("bob".to_string(), "u-1".to_string()), 1_000, 500), None);
        lineage.forget_before(id(6));
        assert_eq!(lineage.task_of_uuid(&key, 1_000, 500), None);
    }
}
