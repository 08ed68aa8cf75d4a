//! Where an appointment can go: free slots of the practitioners a service allows, each with a
//! room and equipment the service needs, from the resources' templates minus their blocks and
//! claimed time (no slot rows). Among several resources that could serve, the configured
//! strategy chooses (best fit by default: the tightest free gap, so long gaps stay whole).

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use domain::scheduling::assignment::{choose, Candidate, Strategy};
use domain::scheduling::calendar::{free_slots, SlotQuery};
use domain::scheduling::{Interval, Priority, WeeklyTemplate};
use event_store::schedule::{self, Resource, Service};
use serde::Serialize;
use sqlx::PgPool;

/// One place an appointment can go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
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
    /// The calendars of the rooms and equipment, over the asked range.
    calendars: HashMap<String, Calendar>,
}

/// A room's or equipment's working intervals and busy times over the asked range, sorted and
/// (the busy times) merged, so the free gap around a slot is found by binary search: working
/// hours are not worked out again, and the busy list not walked, for every slot asked about.
struct Calendar {
    /// `None`: no template, any time is working time.
    working: Option<Vec<Interval>>,
    busy: Vec<Interval>,
}

impl Calendar {
    fn new(template: Option<&WeeklyTemplate>, busy: &[Interval], range: Interval) -> Self {
        let mut sorted = busy.to_vec();
        sorted.sort_by_key(|b| b.start);
        let mut merged: Vec<Interval> = Vec::with_capacity(sorted.len());
        for b in sorted {
            match merged.last_mut() {
                Some(last) if b.start <= last.end => last.end = last.end.max(b.end),
                _ => merged.push(b),
            }
        }
        Self {
            working: template.map(|t| t.working(range)),
            busy: merged,
        }
    }

    /// The free gap (minutes) around `interval`, if it is free then: inside working hours
    /// (within half a day either side without a template) and clear of what keeps it busy.
    fn gap(&self, interval: Interval) -> Option<i64> {
        let open = match &self.working {
            Some(working) => {
                let after = working.partition_point(|w| w.start <= interval.start);
                *working[..after].last().filter(|w| w.contains(&interval))?
            }
            None => Interval::new(
                interval.start - Duration::hours(12),
                interval.end + Duration::hours(12),
            ),
        };
        let next = self.busy.partition_point(|b| b.end <= interval.start);
        if self.busy.get(next).is_some_and(|b| b.start < interval.end) {
            return None;
        }
        let start = match next.checked_sub(1).map(|i| self.busy[i].end) {
            Some(end) => end.max(open.start),
            None => open.start,
        };
        let end = self
            .busy
            .get(next)
            .map_or(open.end, |b| b.start.min(open.end));
        Some((end - start).num_minutes())
    }
}

async fn load(db: &PgPool, ask: &Ask<'_>) -> Result<Loaded, sqlx::Error> {
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
    Ok(Loaded {
        practitioners,
        rooms,
        equipment,
        busy,
        wide,
    })
}

/// What [`load`] read for an ask: the resources and what keeps each busy over `wide`.
#[derive(Clone)]
struct Loaded {
    practitioners: Vec<Resource>,
    rooms: Vec<Resource>,
    equipment: Vec<Vec<Resource>>,
    busy: HashMap<String, Vec<Interval>>,
    wide: Interval,
}

impl Loaded {
    /// The pool, with `also` (resource, interval) counted busy too.
    fn pool(mut self, also: &[(String, Interval)]) -> Pool {
        for (id, interval) in also {
            if interval.start < self.wide.end && self.wide.start < interval.end {
                if let Some(busy) = self.busy.get_mut(id) {
                    busy.push(*interval);
                } else {
                    self.busy.insert(id.clone(), vec![*interval]);
                }
            }
        }
        let calendars = self
            .rooms
            .iter()
            .chain(self.equipment.iter().flatten())
            .map(|r| {
                let blocked = self.busy.get(&r.id).map_or(&[][..], Vec::as_slice);
                (
                    r.id.clone(),
                    Calendar::new(r.template.as_ref(), blocked, self.wide),
                )
            })
            .collect();
        Pool {
            practitioners: self.practitioners,
            rooms: self.rooms,
            equipment: self.equipment,
            busy: self.busy,
            calendars,
        }
    }
}

async fn pool_for(db: &PgPool, ask: &Ask<'_>) -> Result<Pool, sqlx::Error> {
    Ok(load(db, ask).await?.pool(&[]))
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
            let calendar = pool.calendars.get(&r.id)?;
            calendar.gap(interval).map(|gap_minutes| Candidate {
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
    Ok(place_in(&pool_for(db, ask).await?, ask))
}

/// Placements this process is booking now: their resources and time, counted busy by the
/// next placements until their booking commits or fails.
static IN_FLIGHT: std::sync::LazyLock<std::sync::Mutex<Vec<Flight>>> =
    std::sync::LazyLock::new(Default::default);

/// A placement in flight: its hold's token, its resources and its time.
type Flight = (u64, Vec<String>, Interval);

/// A placement being booked: counted busy by this process's other placements while held.
#[derive(Debug)]
#[must_use = "the placement is held only while this lives"]
pub struct Held {
    token: u64,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut flights = IN_FLIGHT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        flights.retain(|(token, _, _)| *token != self.token);
    }
}

/// [`place`], steered clear of the placements this process is booking at the same time: the
/// resources they chose count as busy when any other would do, so concurrent bookings of one
/// time (which the database lets only one of win per resource) do not reach for the same
/// room and have to place again. The placement is held until the returned [`Held`] drops (the
/// booking stored or refused). Only a choice is steered: the claims' exclusion constraint
/// still decides, across processes too.
///
/// # Errors
///
/// The database error.
pub async fn place_held(
    db: &PgPool,
    ask: &Ask<'_>,
) -> Result<Option<(Placement, Held)>, sqlx::Error> {
    Ok(hold(load(db, ask).await?, ask))
}

/// The placement [`place_held`] chooses on what `loaded` read, held.
fn hold(loaded: Loaded, ask: &Ask<'_>) -> Option<(Placement, Held)> {
    static TOKENS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut flights = IN_FLIGHT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let others: Vec<(String, Interval)> = flights
        .iter()
        .flat_map(|(_, resources, interval)| resources.iter().map(|r| (r.clone(), *interval)))
        .collect();
    let steered = place_in(&loaded.clone().pool(&others), ask);
    let placement = steered.or_else(|| place_in(&loaded.pool(&[]), ask))?;
    let token = TOKENS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    flights.push((token, placement.resources(), placement.interval()));
    Some((placement, Held { token }))
}

/// Where `ask` goes among `pool`'s free resources, if anywhere.
fn place_in(pool: &Pool, ask: &Ask<'_>) -> Option<Placement> {
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
            pool,
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
    choose(ask.strategy, &candidates).map(|c| placements[c.resource].clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use domain::scheduling::calendar::{subtract, weekdays};

    fn at(day: u32, h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, day, h, m, 0).unwrap()
    }

    /// The gap as worked out before calendars: the day's working hours, minus every busy time.
    fn walked(
        template: Option<&WeeklyTemplate>,
        busy: &[Interval],
        interval: Interval,
    ) -> Option<i64> {
        let day = Interval::new(
            interval.start - Duration::hours(12),
            interval.end + Duration::hours(12),
        );
        let working = template.map_or_else(|| vec![day], |t| t.working(day));
        let open = working.into_iter().find(|w| w.contains(&interval))?;
        subtract(open, busy)
            .into_iter()
            .find(|g| g.contains(&interval))
            .map(|g| g.duration().num_minutes())
    }

    fn zurich_office_hours() -> WeeklyTemplate {
        WeeklyTemplate {
            time_zone: chrono_tz::Europe::Zurich,
            slot_minutes: 15,
            hours: weekdays(
                chrono::NaiveTime::from_hms_opt(8, 0, 0).unwrap(),
                chrono::NaiveTime::from_hms_opt(17, 0, 0).unwrap(),
            ),
            breaks: Vec::new(),
            reserved: Vec::new(),
        }
    }

    fn resource(id: &str, kind: &str) -> Resource {
        Resource {
            id: id.into(),
            kind: kind.into(),
            name: id.into(),
            specialty: (kind == "practitioner").then(|| "general".into()),
            room_type: (kind == "room").then(|| "exam".into()),
            capabilities: Vec::new(),
            template: (kind == "practitioner").then(zurich_office_hours),
            version: 1,
        }
    }

    #[test]
    fn placements_booked_at_once_in_one_process_steer_clear_of_each_others_rooms() {
        // Two practitioners and two rooms; two bookings of one time, one per practitioner,
        // that would reach for the same room (the same tie-breaking salt).
        let service = Service {
            code: "consult".into(),
            name: "Consultation".into(),
            minutes: 30,
            specialty: Some("general".into()),
            room_type: Some("exam".into()),
            capabilities: Vec::new(),
            version: 1,
        };
        let start = at(23, 9, 0);
        let ask = |practitioner| Ask {
            service: &service,
            practitioner: Some(practitioner),
            range: Interval::new(start, start + Duration::minutes(30)),
            duration: Duration::minutes(30),
            priority: Priority::Routine,
            now: at(20, 8, 0),
            release_lead: Duration::zero(),
            strategy: Strategy::BestFit,
            ignoring: None,
            patient: None,
            salt: 7,
        };
        let loaded = |practitioner: &str| Loaded {
            practitioners: vec![resource(practitioner, "practitioner")],
            rooms: vec![resource("room-1", "room"), resource("room-2", "room")],
            equipment: Vec::new(),
            busy: HashMap::new(),
            wide: Interval::new(at(22, 0, 0), at(25, 0, 0)),
        };

        let (first, first_held) = hold(loaded("dr-a"), &ask("dr-a")).unwrap();
        let (second, second_held) = hold(loaded("dr-b"), &ask("dr-b")).unwrap();

        assert!(first.room.is_some());
        assert_ne!(
            first.room, second.room,
            "the second steered clear of the first"
        );
        // Released (stored or refused), a placement no longer counts.
        drop((first_held, second_held));
        let (again, _held) = hold(loaded("dr-b"), &ask("dr-b")).unwrap();
        assert_eq!(again.room, first.room);
        // When every room is in flight, one is chosen anyway: the database decides.
        let (_, _third) = hold(loaded("dr-c"), &ask("dr-c")).unwrap();
        let (fourth, _) = hold(loaded("dr-d"), &ask("dr-d")).unwrap();
        assert!(fourth.room.is_some());
    }

    #[test]
    fn a_calendars_gap_is_the_gap_of_the_working_day_minus_every_busy_time() {
        let template = WeeklyTemplate {
            time_zone: chrono_tz::Europe::Zurich,
            slot_minutes: 15,
            hours: weekdays(
                chrono::NaiveTime::from_hms_opt(8, 0, 0).unwrap(),
                chrono::NaiveTime::from_hms_opt(17, 0, 0).unwrap(),
            ),
            breaks: weekdays(
                chrono::NaiveTime::from_hms_opt(12, 0, 0).unwrap(),
                chrono::NaiveTime::from_hms_opt(13, 0, 0).unwrap(),
            ),
            reserved: Vec::new(),
        };
        // Overlapping, touching and out-of-order busy times over a week.
        let busy = vec![
            Interval::new(at(24, 9, 0), at(24, 9, 30)),
            Interval::new(at(24, 8, 15), at(24, 8, 45)),
            Interval::new(at(24, 9, 30), at(24, 10, 0)),
            Interval::new(at(24, 9, 15), at(24, 9, 45)),
            Interval::new(at(25, 14, 0), at(25, 15, 0)),
            Interval::new(at(26, 6, 0), at(26, 20, 0)),
        ];
        let range = Interval::new(at(22, 0, 0), at(29, 0, 0));
        for template in [Some(&template), None] {
            let calendar = Calendar::new(template, &busy, range);
            for day in 23..28 {
                for quarter in 0..96 {
                    let start = at(day, 0, 0) + Duration::minutes(15 * quarter);
                    let interval = Interval::new(start, start + Duration::minutes(30));
                    assert_eq!(
                        calendar.gap(interval),
                        walked(template, &busy, interval),
                        "{interval:?}, template {}",
                        template.is_some()
                    );
                }
            }
        }
    }
}
