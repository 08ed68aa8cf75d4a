//! Where an appointment can go: free slots of the practitioners a service allows, each with a
//! room and equipment the service needs, from the resources' templates minus their blocks and
//! claimed time (no slot rows). Among several resources that could serve, the configured
//! strategy chooses (best fit by default: the tightest free gap, so long gaps stay whole).

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use domain::scheduling::assignment::{choose, Candidate, Strategy};
use domain::scheduling::calendar::{free_slots, subtract, SlotQuery};
use domain::scheduling::{Interval, Priority, WeeklyTemplate};
use event_store::schedule::{self, Resource, Service};
use serde::Serialize;
use sqlx::PgPool;

/// One place an appointment can go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Placement {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub practitioner: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub equipment: Vec<String>,
    /// In a window kept for urgent requests.
    pub reserved: bool,
}

impl Placement {
    pub fn interval(&self) -> Interval {
        Interval::new(self.start, self.end)
    }

    /// Every resource it uses, the practitioner first.
    pub fn resources(&self) -> Vec<String> {
        let mut out = vec![self.practitioner.clone()];
        out.extend(self.room.clone());
        out.extend(self.equipment.iter().cloned());
        out
    }
}

/// What is asked.
#[derive(Debug, Clone)]
pub struct Ask<'a> {
    pub service: &'a Service,
    /// One practitioner, or any of the service's specialty.
    pub practitioner: Option<&'a str>,
    pub range: Interval,
    pub duration: Duration,
    pub priority: Priority,
    pub now: DateTime<Utc>,
    pub release_lead: Duration,
    pub strategy: Strategy,
    /// Claims of this appointment do not count as busy (a reschedule).
    pub ignoring: Option<uuid::Uuid>,
    /// The patient's own appointments count as busy too.
    pub patient: Option<domain::patient::PatientId>,
    /// Breaks ties between equally good rooms and equipment differently per request, so
    /// concurrent bookings at one time do not all reach for the same room.
    pub salt: u64,
}

/// The resources a service can use, and what keeps each busy within a range.
struct Pool {
    practitioners: Vec<Resource>,
    rooms: Vec<Resource>,
    /// Per capability needed, the equipment that has it.
    equipment: Vec<Vec<Resource>>,
    busy: HashMap<String, Vec<Interval>>,
}

async fn pool_for(db: &PgPool, ask: &Ask<'_>) -> Result<Pool, sqlx::Error> {
    let explicit = ask.practitioner.map(|p| vec![p.to_owned()]);
    let practitioners = schedule::resources(
        db,
        Some("practitioner"),
        if explicit.is_some() {
            None
        } else {
            ask.service.specialty.as_deref()
        },
        None,
        explicit.as_deref(),
    )
    .await?;
    let rooms = match &ask.service.room_type {
        Some(room_type) => {
            schedule::resources(db, Some("room"), None, Some(room_type), None).await?
        }
        None => Vec::new(),
    };
    let all_equipment = if ask.service.capabilities.is_empty() {
        Vec::new()
    } else {
        schedule::resources(db, Some("equipment"), None, None, None).await?
    };
    let equipment: Vec<Vec<Resource>> = ask
        .service
        .capabilities
        .iter()
        .map(|c| {
            all_equipment
                .iter()
                .filter(|e| e.capabilities.contains(c))
                .cloned()
                .collect()
        })
        .collect();
    let ids: Vec<String> = practitioners
        .iter()
        .chain(&rooms)
        .chain(equipment.iter().flatten())
        .map(|r| r.id.clone())
        .collect();
    // A little either side, so gaps around the range's edges are measured whole.
    let wide = Interval::new(
        ask.range.start - Duration::days(1),
        ask.range.end + Duration::days(1),
    );
    let mut busy: HashMap<String, Vec<Interval>> = HashMap::new();
    for (id, interval) in schedule::blocks(db, &ids, &wide).await? {
        busy.entry(id).or_default().push(interval);
    }
    let mut keys: Vec<String> = ids.iter().map(|id| schedule::resource_key(id)).collect();
    keys.extend(ask.patient.map(schedule::patient_key));
    let mut patient_busy = Vec::new();
    for (key, interval, holder) in schedule::claimed_by(db, &keys, &wide, ask.now).await? {
        if Some(holder) == ask.ignoring {
            continue;
        }
        if let Some(id) = key.strip_prefix("resource:") {
            busy.entry(id.to_owned()).or_default().push(interval);
        } else {
            patient_busy.push(interval);
        }
    }
    // The patient being elsewhere keeps every resource from them then.
    if !patient_busy.is_empty() {
        for id in &ids {
            busy.entry(id.clone())
                .or_default()
                .extend(patient_busy.iter().copied());
        }
    }
    Ok(Pool {
        practitioners,
        rooms,
        equipment,
        busy,
    })
}

/// The free gap (minutes) around `interval` on a resource, if it is free then: inside its
/// working hours (any time without a template) and clear of what keeps it busy.
fn gap(template: Option<&WeeklyTemplate>, busy: &[Interval], interval: Interval) -> Option<i64> {
    let day = Interval::new(
        interval.start - Duration::hours(12),
        interval.end + Duration::hours(12),
    );
    let working = match template {
        Some(t) => t.working(day),
        None => vec![day],
    };
    let open = working.into_iter().find(|w| w.contains(&interval))?;
    subtract(open, busy)
        .into_iter()
        .find(|g| g.contains(&interval))
        .map(|g| g.duration().num_minutes())
}

/// The resource of `candidates` (rooms, or equipment with one capability) `strategy` picks
/// for `interval`, if any is free.
fn pick(
    pool: &Pool,
    candidates: &[Resource],
    interval: Interval,
    strategy: Strategy,
    salt: u64,
) -> Option<String> {
    let rotation = if candidates.is_empty() {
        0
    } else {
        (salt % candidates.len() as u64) as usize
    };
    let options: Vec<Candidate> = candidates
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let busy = pool.busy.get(&r.id).map_or(&[][..], Vec::as_slice);
            gap(r.template.as_ref(), busy, interval).map(|gap_minutes| Candidate {
                // Rotated: the order ties are broken in.
                resource: (i + candidates.len() - rotation) % candidates.len(),
                start: 0,
                gap_minutes,
            })
        })
        .collect();
    choose(strategy, &options).map(|c| {
        candidates[(c.resource + rotation) % candidates.len()]
            .id
            .clone()
    })
}

fn complete(
    pool: &Pool,
    practitioner: &str,
    interval: Interval,
    reserved: bool,
    strategy: Strategy,
    salt: u64,
) -> Option<Placement> {
    let room = if pool.rooms.is_empty() {
        None
    } else {
        Some(pick(pool, &pool.rooms, interval, strategy, salt)?)
    };
    let mut equipment = Vec::new();
    for candidates in &pool.equipment {
        let chosen = pick(pool, candidates, interval, strategy, salt)?;
        if !equipment.contains(&chosen) {
            equipment.push(chosen);
        }
    }
    Some(Placement {
        start: interval.start,
        end: interval.end,
        practitioner: practitioner.to_owned(),
        room,
        equipment,
        reserved,
    })
}

/// Every free slot in the range: per start and practitioner, with a room and equipment
/// chosen; in start order, at most `limit`.
///
/// # Errors
///
/// The database error.
pub async fn availability(
    db: &PgPool,
    ask: &Ask<'_>,
    limit: usize,
) -> Result<Vec<Placement>, sqlx::Error> {
    let pool = pool_for(db, ask).await?;
    let query = SlotQuery {
        range: ask.range,
        duration: ask.duration,
        priority: ask.priority,
        now: ask.now,
        release_lead: ask.release_lead,
    };
    // The practitioners' free slots first (cheap), in start order; rooms and equipment are
    // found only for as many as are answered.
    let mut slots = Vec::new();
    for practitioner in &pool.practitioners {
        let Some(template) = &practitioner.template else {
            continue;
        };
        let busy = pool
            .busy
            .get(&practitioner.id)
            .map_or(&[][..], Vec::as_slice);
        for slot in free_slots(template, busy, &query) {
            slots.push((slot, practitioner.id.as_str()));
        }
    }
    slots.sort_by(|(a, p), (b, q)| (a.interval.start, p).cmp(&(b.interval.start, q)));
    let mut out = Vec::new();
    for (slot, practitioner) in slots {
        if out.len() == limit {
            break;
        }
        if let Some(p) = complete(
            &pool,
            practitioner,
            slot.interval,
            slot.reserved,
            ask.strategy,
            ask.salt,
        ) {
            out.push(p);
        }
    }
    Ok(out)
}

/// Where an appointment starting at `ask.range.start` goes: among the practitioners free
/// then, the one `ask.strategy` picks, with a room and equipment.
///
/// # Errors
///
/// The database error.
pub async fn place(db: &PgPool, ask: &Ask<'_>) -> Result<Option<Placement>, sqlx::Error> {
    let pool = pool_for(db, ask).await?;
    let interval = Interval::new(ask.range.start, ask.range.start + ask.duration);
    let query = SlotQuery {
        range: interval,
        duration: ask.duration,
        priority: ask.priority,
        now: ask.now,
        release_lead: ask.release_lead,
    };
    let mut candidates = Vec::new();
    let mut placements = Vec::new();
    for practitioner in &pool.practitioners {
        let Some(template) = &practitioner.template else {
            continue;
        };
        let busy = pool
            .busy
            .get(&practitioner.id)
            .map_or(&[][..], Vec::as_slice);
        let Some(slot) = free_slots(template, busy, &query)
            .into_iter()
            .find(|s| s.interval == interval)
        else {
            continue;
        };
        if let Some(p) = complete(
            &pool,
            &practitioner.id,
            interval,
            slot.reserved,
            ask.strategy,
            ask.salt,
        ) {
            candidates.push(Candidate {
                resource: placements.len(),
                start: 0,
                gap_minutes: slot.gap_minutes,
            });
            placements.push(p);
        }
    }
    Ok(choose(ask.strategy, &candidates).map(|c| placements[c.resource].clone()))
}
