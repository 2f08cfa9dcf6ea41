//! A new task whose slices name input roots is created only once every blob
//! of those trees is in the store: a missing input is refused at submission,
//! naming the digests, rather than found by a bot (Swarming's `missing_cas`,
//! which ends the task CLIENT_ERROR only once it ran). The check runs on the
//! store's thread (`server::cas`); the request then goes to the core.
//!
//! A tree is walked from its root: every directory blob read (checked against
//! its digest, as every read is) and decoded, each distinct directory once, at
//! most `MAX_TREE_ENTRIES` entries and `MAX_DIRECTORY_BYTES` a directory, then
//! the files asked for at once.

use std::collections::{BTreeSet, HashSet};

use apiary_protocol::cas::Digest;
use apiary_protocol::cas::materialize::{MAX_DIRECTORY_BYTES, MAX_TREE_ENTRIES};
use apiary_protocol::cas::reapi::Directory;
use apiary_protocol::{ErrorCode, ErrorReply, NewTaskRequest, Request};
use apiary_storage::cas::{CasError, ContentStore};

/// Digests named in a refusal, at most; the count says how many more.
const NAMED_MISSING: usize = 5;

/// Whether a request creates a task with an input tree (no allocation: every
/// task's creation asks).
pub fn has_input_roots(request: &Request) -> bool {
    match request {
        Request::NewTask(request) | Request::NewTaskWithLineage { request, .. } => {
            request.task_slices.iter().any(|slice| slice.properties.cas_input_root.is_some())
        }
        _ => false,
    }
}

/// The input roots of a task creation, each with the first slice naming it.
pub fn input_roots(request: &Request) -> Vec<(usize, Digest)> {
    let request: &NewTaskRequest = match request {
        Request::NewTask(request) | Request::NewTaskWithLineage { request, .. } => request,
        _ => return Vec::new(),
    };
    let mut roots: Vec<(usize, Digest)> = Vec::new();
    for (index, slice) in request.task_slices.iter().enumerate() {
        let Some(root) = &slice.properties.cas_input_root else { continue };
        if !roots.iter().any(|(_, seen)| *seen == root.digest) {
            roots.push((index, root.digest));
        }
    }
    roots
}

/// The refusal of a task whose input trees are not whole in the store, if they are not.
pub fn refuse_incomplete(store: &mut impl ContentStore, roots: &[(usize, Digest)]) -> Option<ErrorReply> {
    for &(slice, root) in roots {
        let missing = match missing_blobs(store, root) {
            Ok(missing) if missing.is_empty() => continue,
            Ok(missing) => missing,
            Err(reason) => {
                let message = format!("task_slices[{slice}].properties.cas_input_root: tree {root}: {reason}");
                return Some(ErrorReply { code: ErrorCode::InvalidRequest, message });
            }
        };
        let named: Vec<String> = missing.iter().take(NAMED_MISSING).map(Digest::to_string).collect();
        let more = missing.len().saturating_sub(NAMED_MISSING);
        let more = if more > 0 { format!(" and {more} more") } else { String::new() };
        let message = format!(
            "task_slices[{slice}].properties.cas_input_root: the store lacks {} blob(s) of tree {root}: {}{more} \
             (upload the tree first: apiary cas archive)",
            missing.len(),
            named.join(", ")
        );
        return Some(ErrorReply { code: ErrorCode::InvalidRequest, message });
    }
    None
}

/// The blobs of the tree at `root` the store lacks (directories it could not
/// read count as missing, and their contents are not known); an error when
/// the tree is malformed or too large.
fn missing_blobs(store: &mut impl ContentStore, root: Digest) -> Result<Vec<Digest>, String> {
    let mut missing = Vec::new();
    let mut files = BTreeSet::new();
    let mut seen = HashSet::from([root]);
    let mut to_read = vec![root];
    let mut entries: u64 = 0;
    while let Some(digest) = to_read.pop() {
        if digest.size_bytes > MAX_DIRECTORY_BYTES {
            return Err(format!("directory {digest} is over the limit of {MAX_DIRECTORY_BYTES} bytes"));
        }
        let bytes = match store.read(digest, 0, digest.size_bytes as usize) {
            Ok(bytes) => bytes,
            Err(CasError::NotFound(_) | CasError::Corrupt(_)) => {
                missing.push(digest);
                continue;
            }
            Err(error) => return Err(error.to_string()),
        };
        let directory = Directory::decode_checked(&bytes).map_err(|error| format!("directory {digest}: {error}"))?;
        entries += (directory.files.len() + directory.directories.len() + directory.symlinks.len()) as u64;
        if entries > MAX_TREE_ENTRIES {
            return Err(format!("it has more than {MAX_TREE_ENTRIES} entries"));
        }
        for file in &directory.files {
            files.insert(node_digest(file.digest.as_ref(), digest)?);
        }
        for child in &directory.directories {
            let child = node_digest(child.digest.as_ref(), digest)?;
            if seen.insert(child) {
                to_read.push(child);
            }
        }
    }
    let files: Vec<Digest> = files.into_iter().collect();
    missing.extend(store.find_missing(&files));
    missing.sort_unstable();
    Ok(missing)
}

fn node_digest(proto: Option<&apiary_protocol::cas::reapi::DigestProto>, parent: Digest) -> Result<Digest, String> {
    proto
        .ok_or_else(|| format!("directory {parent} has an entry without a digest"))?
        .to_digest()
        .map_err(|error| format!("directory {parent}: {error}"))
}
