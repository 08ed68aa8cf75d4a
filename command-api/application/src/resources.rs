//! What can be booked: resources (practitioners, rooms, equipment) with their weekly templates
//! and blocks, the services offered, and the free places they leave.

use chrono::Duration;
use domain::scheduling::{Interval, Priority};
use event_store::idempotency::Reservation;
use event_store::schedule::{self, Resource, Service};
use uuid::Uuid;

use crate::booking::{release_lead, service_named, strategy};
use crate::caller::{AuthUser, Refused};
use crate::planner::{self, Ask, Placement};
use crate::services::{Services, UseCaseError};

/// Stores `resource` (its `version` is ignored), created or replaced. Returns it as stored
/// and whether it is new.
///
/// # Errors
///
/// The database's error.
pub async fn put_resource(
    services: &Services,
    user: &AuthUser,
    resource: &Resource,
) -> Result<(Resource, bool), UseCaseError> {
    let stored =
        schedule::put_resource(&services.pool, resource, &user.id, (services.clock)()).await?;
    tracing::info!(resource_id = %stored.0.id, version = stored.0.version, "resource stored");
    Ok(stored)
}

/// Which resources a listing asks for; `None` for any.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResourceFilter<'a> {
    pub kind: Option<&'a str>,
    pub specialty: Option<&'a str>,
    pub room_type: Option<&'a str>,
}

/// The resources `filter` asks for.
///
/// # Errors
///
/// The database's error.
pub async fn resources(
    services: &Services,
    filter: ResourceFilter<'_>,
) -> Result<Vec<Resource>, UseCaseError> {
    Ok(schedule::resources(
        &services.pool,
        filter.kind,
        filter.specialty,
        filter.room_type,
        None,
    )
    .await?)
}

/// A time a resource cannot be booked, and why (`holiday`, `leave` or `one-off`).
#[derive(Debug, Clone)]
pub struct Block {
    pub resource: String,
    pub during: Interval,
    pub reason: String,
}

/// Blocks a resource for a time, reserving the request's key (if any) in the same
/// transaction. Returns the block's id.
///
/// # Errors
///
/// [`Refused::NotFound`] for no such resource; `KeyTaken` (as [`UseCaseError::Scheduling`])
/// when a repeat lost the key to the first request.
pub async fn block(
    services: &Services,
    user: &AuthUser,
    block: &Block,
    reservation: Option<&Reservation>,
) -> Result<Uuid, UseCaseError> {
    let known = schedule::resources(
        &services.pool,
        None,
        None,
        None,
        Some(std::slice::from_ref(&block.resource)),
    )
    .await?;
    if known.is_empty() {
        return Err(UseCaseError::Refused(Refused::NotFound));
    }
    let block_id = Uuid::new_v4();
    let added = schedule::add_block(
        &services.pool,
        block_id,
        (&block.resource, &block.during, &block.reason),
        &user.id,
        (services.clock)(),
        reservation,
    )
    .await?;
    if !added {
        // A repeat that lost the key to the first request: its first answer is the answer.
        return Err(UseCaseError::Scheduling(
            event_store::command::CommandError::KeyTaken,
        ));
    }
    Ok(block_id)
}

/// Stores `service` (its `version` is ignored), created or replaced. Returns it as stored and
/// whether it is new.
///
/// # Errors
///
/// The database's error.
pub async fn put_service(
    services: &Services,
    user: &AuthUser,
    service: &Service,
) -> Result<(Service, bool), UseCaseError> {
    Ok(schedule::put_service(&services.pool, service, &user.id, (services.clock)()).await?)
}

/// What an availability query asks for.
#[derive(Debug, Clone)]
pub struct Wanted {
    /// The service's code.
    pub service: String,
    pub practitioner: Option<String>,
    pub range: Interval,
    /// Minutes; `None` for the service's own.
    pub minutes: Option<u32>,
    pub priority: Priority,
    pub limit: usize,
}

/// The free places for `wanted`: the templates minus blocks and claimed time. Returns the
/// service, the minutes each place lasts, and the places.
///
/// # Errors
///
/// [`UseCaseError::Unknown`] for no such service; the database's error.
pub async fn availability(
    services: &Services,
    wanted: &Wanted,
) -> Result<(Service, u32, Vec<Placement>), UseCaseError> {
    let service = service_named(services, &wanted.service, "service").await?;
    let minutes = wanted.minutes.unwrap_or(service.minutes as u32);
    let ask = Ask {
        service: &service,
        practitioner: wanted.practitioner.as_deref(),
        range: wanted.range,
        duration: Duration::minutes(i64::from(minutes)),
        priority: wanted.priority,
        now: (services.clock)(),
        release_lead: release_lead(&services.scheduling),
        strategy: strategy(&services.scheduling),
        ignoring: None,
        patient: None,
        salt: 0,
    };
    let slots = planner::availability(&services.pool, &ask, wanted.limit).await?;
    Ok((service, minutes, slots))
}

/// The block `block_id`: its resource, time and reason.
///
/// # Errors
///
/// [`Refused::NotFound`] for no such block.
pub async fn read_block(
    services: &Services,
    block_id: Uuid,
) -> Result<(String, Interval, String), UseCaseError> {
    schedule::block(&services.pool, block_id)
        .await?
        .ok_or(UseCaseError::Refused(Refused::NotFound))
}
