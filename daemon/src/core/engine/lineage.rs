//! Request uuids and parent tasks (Swarming's `request_uuid` and
//! `parent_task_id`): a uuid seen before answers with the task it created; a
//! child that has not started when its parent ends is canceled.

use apiary_protocol::TaskLineage;
use apiary_protocol::ids::format_task_id;
use apiary_protocol::limits::{MAX_REQUEST_UUID_BYTES, REQUEST_UUID_WINDOW_SECS};

use super::*;
use crate::core::lineage::UuidKey;

/// Where a task being created comes from.
pub(super) struct Origin {
    /// The principal, or the request's user while access is open: a uuid is the requester's own.
    pub(super) requester: String,
    pub(super) request_uuid: String,
    pub(super) parent: Option<RequestId>,
}

impl Origin {
    pub(super) fn linked(self, task_id: RequestId, created_ms: u64) -> TaskLinked {
        TaskLinked {
            task_id: task_id.as_u64(),
            requester: if self.request_uuid.is_empty() { String::new() } else { self.requester },
            request_uuid: self.request_uuid,
            parent_task_id: self.parent.map(RequestId::as_u64),
            created_ms,
        }
    }
}

impl Core {
    /// `NewTask` with a request uuid or a parent, answered as `NewTask` is. The
    /// same uuid from the same requester within `REQUEST_UUID_WINDOW_SECS` answers
    /// with the task it first created, as it is now, and creates nothing
    /// (Swarming's rule).
    pub(super) fn new_task_with_lineage(
        &mut self,
        request: NewTaskRequest,
        lineage: TaskLineage,
        principal: Option<&str>,
        out: &mut Output,
    ) -> Reply {
        if lineage.request_uuid.len() > MAX_REQUEST_UUID_BYTES {
            let bytes = lineage.request_uuid.len();
            let message = format!("request_uuid: {bytes} bytes is over the limit of {MAX_REQUEST_UUID_BYTES}");
            return error(ErrorCode::InvalidRequest, message);
        }
        let requester = principal.map_or_else(|| request.user.clone(), str::to_string);
        let key = (requester, lineage.request_uuid);
        if !key.1.is_empty()
            && let Some(earlier) = self.earlier_task_of_uuid(&key)
        {
            return earlier;
        }
        let parent = match lineage.parent_task_id.map(|raw_id| self.living_parent(raw_id)).transpose() {
            Ok(parent) => parent,
            Err(message) => return error(ErrorCode::InvalidRequest, message),
        };
        let (requester, request_uuid) = key;
        let origin = Origin { requester, request_uuid, parent };
        match self.create_task(request, principal, Some(origin), out) {
            Ok(task_id) => self.acknowledgement(&self.tasks[&task_id]),
            Err(refusal) => *refusal,
        }
    }

    /// The acknowledgement of the task a uuid created, while the uuid answers and
    /// the task is known.
    fn earlier_task_of_uuid(&self, key: &UuidKey) -> Option<Reply> {
        let window_ms = u64::from(REQUEST_UUID_WINDOW_SECS) * 1000;
        let task_id = self.lineage.task_of_uuid(key, self.now_ms, window_ms)?;
        let task = self.task_by_id(task_id).ok()?;
        Some(self.acknowledgement(&task))
    }

    /// The parent's request id: a task (or run) that exists and has not ended;
    /// else why not.
    fn living_parent(&self, raw_id: u64) -> Result<RequestId, String> {
        let shown = format_task_id(raw_id);
        match self.find_task(raw_id) {
            Ok(task) if task.state.is_terminal() => Err(format!(
                "parent_task_id: task {shown} has already ended ({}); its child would be canceled at once",
                task.state.name()
            )),
            Ok(task) => Ok(task.id),
            Err(_) => Err(format!("parent_task_id: there is no task {shown}")),
        }
    }

    /// `parent` ended: those of its `children` that have not started are canceled
    /// (and theirs in turn); children already running go on.
    pub(super) fn cancel_children(&mut self, parent: RequestId, children: &[RequestId], out: &mut Output) {
        for &child in children {
            if self.tasks.get(&child).is_some_and(|task| task.state == TaskState::Pending) {
                let reason = format!("its parent task {} ended", format_task_id(parent.as_u64()));
                self.finish(child, None, Ending::new(TaskState::Canceled, reason), out);
            }
        }
    }
}
