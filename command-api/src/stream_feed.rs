//! Feeding a read model from the event store's own stream (without Kafka): the events
//! committed after the projector's checkpoint, verified, opened once, and applied a batch per
//! transaction. `serve` without brokers, `rebuild` and the tools feed read models this way.

use std::collections::HashMap;

use event_store::chain::{ChainKey, Finding};
use event_store::stream::{self, Cursor, StoredEvent};
use projections::{ProjectionError, StreamPosition};
use projections::{Projector, ReadModel};

/// Applies every event committed so far, waiting out transactions still running that hold the
/// stream back (one in any database of the cluster can, for a moment); returns how many were
/// applied. What `rebuild` and the tools use to be sure a read model holds everything.
///
/// # Errors
///
/// As [`project_available`].
pub async fn project_all<M: ReadModel>(
    projector: &Projector<M>,
    chain: &ChainKey,
) -> anyhow::Result<usize> {
    // Everything stored when this starts, and no more: writers that go on meanwhile must not
    // keep it from finishing.
    let Some(end) = stream::newest(projector.pool()).await? else {
        return Ok(0);
    };
    let mut total = 0;
    loop {
        let applied = project_available(projector, chain).await?;
        total += applied;
        let at = projector.stream_position().await?;
        let cursor = Cursor {
            transaction_id: at.transaction_id,
            position: at.position,
        };
        if cursor >= end {
            return Ok(total);
        }
        if applied == 0 {
            // An older transaction still running holds the stream back: wait it out.
            tokio::time::sleep(stream::HELD_BACK_POLL).await;
        }
    }
}

/// Applies every event committed after the projector's stream position; returns how many.
/// An event the service did not write ([`stream::unverified`] under `chain`) is parked, never
/// opened or applied.
///
/// # Errors
///
/// The first failure; events before it are applied and checkpointed.
pub async fn project_available<M: ReadModel>(
    projector: &Projector<M>,
    chain: &ChainKey,
) -> anyhow::Result<usize> {
    let at = projector.stream_position().await?;
    let cursor = Cursor {
        transaction_id: at.transaction_id,
        position: at.position,
    };
    let events = stream::read_after(projector.pool(), cursor, 500).await?;
    let mut rejected: HashMap<usize, Finding> =
        stream::unverified(projector.pool(), chain, &events)
            .await?
            .into_iter()
            .collect();
    let mut verified: Vec<StoredEvent> = events
        .iter()
        .enumerate()
        .filter(|(index, _)| !rejected.contains_key(index))
        .map(|(_, event)| event.clone())
        .collect();
    let keys = stream::open(projector.keys(), projector.pool(), &mut verified).await?;
    // Usually the whole batch is applied in one transaction; a batch holding a row that does
    // not verify, or an event the model cannot use, goes event by event, parking that one.
    if rejected.is_empty() {
        let mut batch = Vec::with_capacity(events.len());
        for event in &verified {
            let at = StreamPosition {
                transaction_id: event.transaction_id,
                position: event.position,
            };
            // Events of aggregate types this read model does not read are passed over before
            // mapping, so a new aggregate type never stalls it.
            let wanted = schemas::topics::for_aggregate_type(&event.aggregate_type)
                .is_some_and(|topic| projector.model().topics().contains(&topic));
            let published = if wanted {
                Some(event_store::wire::to_published(event, keys.get(event.key_owner()))?.1)
            } else {
                None
            };
            batch.push((published, at));
        }
        if projector.apply_batch_from_stream(&batch).await? {
            return Ok(events.len());
        }
    }
    let mut verified = verified.iter();
    for (index, stored) in events.iter().enumerate() {
        let at = StreamPosition {
            transaction_id: stored.transaction_id,
            position: stored.position,
        };
        // Events of aggregate types this read model does not read are passed over before
        // mapping, so a new aggregate type never stalls it.
        let wanted = schemas::topics::for_aggregate_type(&stored.aggregate_type)
            .is_some_and(|topic| projector.model().topics().contains(&topic));
        if let Some(finding) = rejected.remove(&index) {
            tracing::error!(
                alert = "event-store-tampering",
                projector = projector.model().name(),
                position = stored.position,
                finding = %finding,
                "a stored event does not verify; parked"
            );
            if wanted {
                let error = ProjectionError::Unverified(finding.to_string());
                projector
                    .park_in_stream(&stored.event_type, at, &error)
                    .await?;
            } else {
                projector.skip_in_stream(at).await?;
            }
            continue;
        }
        let Some(event) = verified.next() else {
            break;
        };
        if wanted {
            let (_, published) =
                event_store::wire::to_published(event, keys.get(event.key_owner()))?;
            projector.apply_from_stream(&published, at).await?;
        } else {
            projector.skip_in_stream(at).await?;
        }
    }
    Ok(events.len())
}
