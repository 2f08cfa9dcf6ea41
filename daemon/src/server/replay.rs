//! Log records back into events: recovery and the snapshot thread replay alike.

use apiary_storage::RecordRef;

use super::ServerError;
use crate::core::Core;
use crate::core::events::{EVENT_RECORD_KIND, Event};

/// Decodes one log record and applies its event.
pub fn apply_record(core: &mut Core, record: &RecordRef<'_>) -> Result<(), ServerError> {
    if record.kind != EVENT_RECORD_KIND {
        return Err(ServerError::Replay { seq: record.seq, reason: format!("unknown record kind {}", record.kind) });
    }
    let event = Event::decode(record.payload)
        .map_err(|error| ServerError::Replay { seq: record.seq, reason: error.to_string() })?;
    core.apply(&event);
    Ok(())
}
