//! Shared task properties and slice lists (docs/state.md, section 4). Tasks
//! submitted by one workflow mostly ask for the same properties (command,
//! dimensions, env, caches, timeouts) and the same slices; each distinct set
//! and list is held once and shared by every task (and dedup entry) that asks
//! for it, instead of once per task.
//!
//! Invariant: every entry is held by at least one task or dedup entry after a
//! `forget_unused` (or is the set the event loop decoded last: the protocol's
//! `RecentProperties` keeps it, one set); properties are found by content, slice
//! lists by their slices' shared properties and settings. A request whose
//! properties equal the previous request's arrives with the very same `Arc`,
//! which `last` recognises without hashing.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use apiary_protocol::{TaskProperties, TaskSlice};
use hashbrown::Equivalent;

use super::Map;

#[derive(Default)]
pub struct InternedProperties {
    by_content: Map<Arc<TaskProperties>, ()>,
    /// The last properties asked for, and their shared copy: a restore asks for
    /// the same `Arc` a million times, and this spares hashing it each time.
    last: Option<(Arc<TaskProperties>, Arc<TaskProperties>)>,
    slice_lists: Map<SliceList, ()>,
    /// The list being interned, kept for its room from one call to the next
    /// (empty between them, so it holds no properties).
    scratch: Vec<TaskSlice>,
}

/// A list of slices whose properties are interned: equal lists have the same
/// properties by address, so comparing and hashing never reads them.
struct SliceList(Arc<[TaskSlice]>);

/// The fields of a slice that tell lists apart, once properties are interned.
fn slice_identity(slice: &TaskSlice) -> (*const TaskProperties, u32, bool) {
    (Arc::as_ptr(&slice.properties), slice.expiration_secs, slice.wait_for_capacity)
}

/// Looks a list up without making it shared first.
struct SliceListRef<'a>(&'a [TaskSlice]);

impl Hash for SliceListRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_usize(self.0.len());
        for slice in self.0 {
            slice_identity(slice).hash(state);
        }
    }
}

impl Hash for SliceList {
    fn hash<H: Hasher>(&self, state: &mut H) {
        SliceListRef(&self.0).hash(state);
    }
}

impl Equivalent<SliceList> for SliceListRef<'_> {
    fn equivalent(&self, key: &SliceList) -> bool {
        self.0.iter().map(slice_identity).eq(key.0.iter().map(slice_identity))
    }
}

impl PartialEq for SliceList {
    fn eq(&self, other: &SliceList) -> bool {
        SliceListRef(&self.0).equivalent(other)
    }
}

impl Eq for SliceList {}

impl InternedProperties {
    /// The shared copy of `properties`, which becomes it if it is new.
    pub fn intern(&mut self, properties: &Arc<TaskProperties>) -> Arc<TaskProperties> {
        if let Some((asked, shared)) = &self.last
            && Arc::ptr_eq(asked, properties)
        {
            return Arc::clone(shared);
        }
        let shared = match self.by_content.get_key_value(properties) {
            Some((shared, ())) => Arc::clone(shared),
            None => {
                self.by_content.insert(Arc::clone(properties), ());
                Arc::clone(properties)
            }
        };
        self.last = Some((Arc::clone(properties), Arc::clone(&shared)));
        shared
    }

    /// The shared copy of a list of slices, their properties shared too.
    pub fn intern_slices(&mut self, slices: &[TaskSlice]) -> Arc<[TaskSlice]> {
        let mut interned = std::mem::take(&mut self.scratch);
        interned.extend(
            slices.iter().map(|slice| TaskSlice { properties: self.intern(&slice.properties), ..slice.clone() }),
        );
        let shared = match self.slice_lists.get_key_value(&SliceListRef(&interned)) {
            Some((shared, ())) => Arc::clone(&shared.0),
            None => {
                let shared: Arc<[TaskSlice]> = Arc::from(interned.as_slice());
                self.slice_lists.insert(SliceList(Arc::clone(&shared)), ());
                shared
            }
        };
        interned.clear();
        self.scratch = interned;
        shared
    }

    /// Lets go of the slice lists and properties no task holds any more.
    pub fn forget_unused(&mut self) {
        self.last = None;
        self.slice_lists.retain(|list, ()| Arc::strong_count(&list.0) > 1);
        self.by_content.retain(|properties, ()| Arc::strong_count(properties) > 1);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_content.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_properties_are_held_once_until_no_task_holds_them() {
        let mut interned = InternedProperties::default();
        let one = Arc::new(TaskProperties { command: vec!["make".into()], ..TaskProperties::default() });
        let same = Arc::new(TaskProperties::clone(&one));
        let other = Arc::new(TaskProperties { command: vec!["test".into()], ..TaskProperties::default() });
        let first = interned.intern(&one);
        let second = interned.intern(&same);
        assert!(Arc::ptr_eq(&first, &second), "equal properties share one copy");
        let third = interned.intern(&other);
        assert_eq!(interned.len(), 2);
        drop((same, first));
        interned.forget_unused();
        assert_eq!(interned.len(), 2, "`second` and `one` still hold the shared copy");
        drop((one, second));
        interned.forget_unused();
        assert_eq!(interned.len(), 1, "only `other` is still held");
        drop(third);
    }

    #[test]
    fn equal_slice_lists_are_held_once_until_no_task_holds_them() {
        let mut interned = InternedProperties::default();
        let slice = |command: &str, expiration_secs| TaskSlice {
            properties: Arc::new(TaskProperties { command: vec![command.into()], ..TaskProperties::default() }),
            expiration_secs,
            wait_for_capacity: false,
        };
        let first = interned.intern_slices(&[slice("make", 60), slice("test", 60)]);
        let same = interned.intern_slices(&[slice("make", 60), slice("test", 60)]);
        assert!(Arc::ptr_eq(&first, &same), "equal lists share one copy");
        assert!(Arc::ptr_eq(&first[0].properties, &same[0].properties), "and their properties");
        let other_expiration = interned.intern_slices(&[slice("make", 60), slice("test", 120)]);
        let shorter = interned.intern_slices(&[slice("make", 60)]);
        assert!(!Arc::ptr_eq(&first, &other_expiration) && !Arc::ptr_eq(&first, &shorter));
        assert_eq!(interned.slice_lists.len(), 3);
        drop((first, same, other_expiration));
        interned.forget_unused();
        assert_eq!(interned.slice_lists.len(), 1, "only `shorter` is still held");
        assert_eq!(interned.len(), 1, "and only its properties");
        drop(shorter);
    }
}
