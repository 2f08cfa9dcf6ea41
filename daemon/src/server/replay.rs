//! Log records back into events: recovery and the snapshot thread replay alike.

use apiary_storage::RecordRef;

use super::ServerError;
use crate::core::Core;
use crate::core::events::{EVENT_RECORD_KIND, Event};
use crate::core::legacy_events::{self, LEGACY_EVENT_RECORD_KIND};

/// Decodes one log record and applies its event.
pub fn apply_record(core: &mut Core, record: &RecordRef<'_>) -> Result<(), ServerError> {
    let decoded = match record.kind {
        EVENT_RECORD_KIND => Event::decode(record.payload),
        LEGACY_EVENT_RECORD_KIND => legacy_events::decode(record.payload),
        kind => return Err(ServerError::Replay { seq: record.seq, reason: format!("unknown record kind {kind}") }),
    };
    let event = decoded.map_err(|error| ServerError::Replay { seq: record.seq, reason: error.to_string() })?;
    core.apply(&event);
    Ok(())
}
