//! Decoding a run of equal task properties once. A workflow submits many
//! tasks with the same properties (command, dimensions, env, caches), and the
//! daemon keeps one shared copy of each distinct set (`core::interned`). Each
//! thread remembers the properties it decoded last: a slice whose archived
//! properties equal them gets that same `Arc`, without allocating its strings
//! again, and the daemon's interning recognises it by address.
//!
//! The archived layout is Arc's own: this changes decoding only.

use std::cell::RefCell;
use std::sync::Arc;

use rkyv::rancor::Fallible;
use rkyv::rc::{ArcFlavor, ArchivedRc};
use rkyv::with::{ArchiveWith, DeserializeWith, SerializeWith};
use rkyv::{Archive, Deserialize, Place, Serialize};

use crate::messages::{ArchivedTaskProperties, TaskProperties};

thread_local! {
    /// One set per thread, so memory stays bounded whatever is decoded.
    static RECENT: RefCell<Option<Arc<TaskProperties>>> = const { RefCell::new(None) };
}

/// The `with` wrapper of `TaskSlice::properties`.
pub struct RecentProperties;

impl ArchiveWith<Arc<TaskProperties>> for RecentProperties {
    type Archived = <Arc<TaskProperties> as Archive>::Archived;
    type Resolver = <Arc<TaskProperties> as Archive>::Resolver;

    fn resolve_with(field: &Arc<TaskProperties>, resolver: Self::Resolver, out: Place<Self::Archived>) {
        field.resolve(resolver, out);
    }
}

impl<S: Fallible + ?Sized> SerializeWith<Arc<TaskProperties>, S> for RecentProperties
where
    Arc<TaskProperties>: Serialize<S>,
{
    fn serialize_with(field: &Arc<TaskProperties>, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        field.serialize(serializer)
    }
}

impl<D: Fallible + ?Sized> DeserializeWith<ArchivedRc<ArchivedTaskProperties, ArcFlavor>, Arc<TaskProperties>, D>
    for RecentProperties
where
    ArchivedRc<ArchivedTaskProperties, ArcFlavor>: Deserialize<Arc<TaskProperties>, D>,
{
    fn deserialize_with(
        archived: &ArchivedRc<ArchivedTaskProperties, ArcFlavor>,
        deserializer: &mut D,
    ) -> Result<Arc<TaskProperties>, D::Error> {
        let same = RECENT.with_borrow(|recent| recent.as_ref().filter(|recent| **archived == ***recent).cloned());
        if let Some(same) = same {
            return Ok(same);
        }
        let decoded = archived.deserialize(deserializer)?;
        RECENT.set(Some(Arc::clone(&decoded)));
        Ok(decoded)
    }
}

#[cfg(test)]
mod tests {
    use crate::cas::{CasReference, Digest};
    use crate::frame::{FrameReader, encode_request};
    use crate::messages::{NamedCache, NewTaskRequest, Request, StringListPair, StringPair, TaskProperties, TaskSlice};
    use std::sync::Arc;

    fn decoded(properties: &TaskProperties) -> Arc<TaskProperties> {
        let slice = TaskSlice { properties: Arc::new(properties.clone()), ..TaskSlice::default() };
        let request =
            Request::NewTask(NewTaskRequest { task_slices: vec![slice.clone(), slice], ..Default::default() });
        let mut bytes = Vec::new();
        encode_request(1, &request, &mut bytes).unwrap();
        let mut reader = FrameReader::new();
        reader.extend(&bytes);
        let Request::NewTask(mut request) = reader.next_frame().unwrap().unwrap().decode_request().unwrap() else {
            panic!()
        };
        let second = request.task_slices.pop().unwrap().properties;
        let first = request.task_slices.pop().unwrap().properties;
        assert!(Arc::ptr_eq(&first, &second), "one request's slices share their properties");
        first
    }

    #[test]
    fn equal_properties_decoded_in_a_row_are_one_arc_and_any_difference_is_seen() {
        let base = TaskProperties {
            command: vec!["make".into()],
            dimensions: vec![StringPair::new("pool", "ci")],
            ..TaskProperties::default()
        };
        let first = decoded(&base);
        assert_eq!(*first, base);
        assert!(Arc::ptr_eq(&first, &decoded(&base)), "the same properties again: the same Arc");
        let changes: Vec<fn(&mut TaskProperties)> = vec![
            |p| p.command.push("all".into()),
            |p| p.dimensions[0].value = "gpu".into(),
            |p| p.env.push(StringPair::new("A", "1")),
            |p| p.env_prefixes.push(StringListPair { key: "PATH".into(), value: vec!["bin".into()] }),
            |p| p.relative_cwd = "src".into(),
            |p| p.execution_timeout_secs += 1,
            |p| p.io_timeout_secs += 1,
            |p| p.grace_period_secs += 1,
            |p| p.idempotent = true,
            |p| p.caches.push(NamedCache { name: "git".into(), path: "cache/git".into() }),
            |p| p.cas_input_root = Some(Box::new(CasReference { cas_instance: "x".into(), digest: Digest::of(b"") })),
        ];
        for change in changes {
            let mut changed = base.clone();
            change(&mut changed);
            assert_eq!(*decoded(&changed), changed);
            assert_eq!(*decoded(&base), base, "and back");
        }
        let mut rooted = base.clone();
        rooted.cas_input_root = Some(Box::new(CasReference { cas_instance: String::new(), digest: Digest::of(b"x") }));
        assert_eq!(*decoded(&rooted), rooted);
        rooted.cas_input_root.as_mut().unwrap().digest.size_bytes += 1;
        assert_eq!(*decoded(&rooted), rooted, "a digest's size told apart");
    }
}
