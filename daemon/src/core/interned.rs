//! Shared task properties (docs/state.md, section 4). Tasks submitted by one
//! workflow mostly ask for the same properties (command, dimensions, env,
//! caches, timeouts); each distinct set is held once and shared by every task
//! (and dedup entry) that asks for it, instead of once per task.
//!
//! Invariant: every entry is held by at least one task or dedup entry after a
//! `forget_unused`; entries are found by content.

use std::sync::Arc;

use apiary_protocol::TaskProperties;

use super::Map;

#[derive(Default)]
pub struct InternedProperties {
    by_content: Map<Arc<TaskProperties>, ()>,
    /// The last properties asked for, and their shared copy: a restore asks for
    /// the same `Arc` a million times, and this spares hashing it each time.
    last: Option<(Arc<TaskProperties>, Arc<TaskProperties>)>,
}

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

    /// Lets go of the properties no task holds any more.
    pub fn forget_unused(&mut self) {
        self.last = None;
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
}
