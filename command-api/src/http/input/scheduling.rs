//! The bodies of scheduling: resources with their weekly templates, blocks, services,
//! bookings, the wait list, and the steps of an appointment.

use application::appointments::{Step, StepInput};
use application::booking::{BookingRequest, Wish};
use application::resources::Block;
use chrono::{DateTime, NaiveTime, Utc, Weekday};
use domain::patient::PatientId;
use domain::scheduling::appointment::CancellationReason;
use domain::scheduling::{Interval, Priority, WeeklyTemplate, Window};
use domain::{FieldError, FieldErrors};
use event_store::schedule::{Resource, Service};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::patient::{optional_text, reason, text, Strings};
use super::{objects, one, optional, parse, AllOk, Field};

/// A weekly window: `weekday` (`mon` to `sun`), `start` and `end` (`HH:MM`).
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct WindowBody {
    pub weekday: Field<String>,
    pub start: Field<String>,
    pub end: Field<String>,
}

/// When a practitioner works, in their time zone.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct TemplateBody {
    /// IANA, e.g. `Europe/Zurich`.
    pub time_zone: Field<String>,
    /// 1 to 1440.
    pub slot_minutes: Field<i64>,
    #[serde(default)]
    pub hours: Field<Vec<Field<WindowBody>>>,
    #[serde(default)]
    pub breaks: Field<Vec<Field<WindowBody>>>,
    /// Hours kept for urgent requests until shortly before they start.
    #[serde(default)]
    pub reserved: Field<Vec<Field<WindowBody>>>,
}

/// `PUT /v1/resources/{id}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ResourceBody {
    /// `practitioner`, `room` or `equipment`.
    pub kind: Field<String>,
    pub name: Field<String>,
    #[serde(default)]
    pub specialty: Field<String>,
    #[serde(default)]
    pub room_type: Field<String>,
    #[serde(default)]
    pub capabilities: Strings,
    /// Required for a practitioner.
    #[serde(default)]
    pub template: Field<TemplateBody>,
}

/// `POST /v1/resources/{id}/blocks`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct BlockBody {
    pub from: Field<String>,
    pub to: Field<String>,
    /// `holiday`, `leave` or `one-off`.
    pub reason: Field<String>,
}

/// `PUT /v1/services/{code}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ServiceBody {
    pub name: Field<String>,
    /// 5 to 480.
    pub minutes: Field<i64>,
    #[serde(default)]
    pub specialty: Field<String>,
    #[serde(default)]
    pub room_type: Field<String>,
    #[serde(default)]
    pub capabilities: Strings,
}

/// `POST /v1/appointments`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct BookingBody {
    pub patient_id: Field<String>,
    pub service: Field<String>,
    /// RFC 3339.
    pub start: Field<String>,
    #[serde(default)]
    pub practitioner: Field<String>,
    /// `routine`, `urgent`, `asap` or `stat`.
    #[serde(default)]
    pub priority: Field<String>,
    /// Held (pending) to be confirmed.
    #[serde(default)]
    pub hold: Field<bool>,
    /// Proposed: claims nothing until confirmed.
    #[serde(default)]
    pub propose: Field<bool>,
}

/// `POST /v1/waitlist`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct WaitlistBody {
    pub patient_id: Field<String>,
    pub service: Field<String>,
    pub from: Field<String>,
    pub to: Field<String>,
    #[serde(default)]
    pub practitioner: Field<String>,
    #[serde(default)]
    pub priority: Field<String>,
}

/// `POST /v1/appointments/{id}/cancel`: a cancellation reason code.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct CancelBody {
    pub reason: Field<String>,
}

/// `POST /v1/appointments/{id}/reschedule`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RescheduleBody {
    pub start: Field<String>,
    #[serde(default)]
    pub practitioner: Field<String>,
    pub reason: Field<String>,
}

objects!(WindowBody, TemplateBody);

/// A slug (an id or code): 1 to 64 lowercase letters, digits or hyphens.
///
/// # Errors
///
/// When it is not one.
pub fn slug(field: &str, value: &str) -> Result<String, FieldError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-');
    if ok {
        Ok(value.to_owned())
    } else {
        Err(FieldError::new(
            field,
            "must be 1 to 64 lowercase letters, digits or hyphens",
        ))
    }
}

fn optional_slug(value: &Field<String>, field: &str) -> Result<Option<String>, FieldErrors> {
    optional_text(value, field, |v| one(slug(field, v)))
}

fn slugs(values: &Strings, field: &str) -> Result<Vec<String>, FieldErrors> {
    values.each(field, |v, at| one(slug(at, v)))
}

fn label(value: &str, field: &str) -> Result<String, FieldErrors> {
    let trimmed = value.trim();
    if trimmed.is_empty()
        || trimmed.chars().count() > 100
        || trimmed.chars().any(domain::validation::is_hidden)
    {
        return Err(FieldError::new(
            field,
            "must be 1 to 100 characters without control characters",
        )
        .into());
    }
    Ok(trimmed.to_owned())
}

/// An RFC 3339 instant.
///
/// # Errors
///
/// When it is not one.
pub fn instant(value: &str, field: &str) -> Result<DateTime<Utc>, FieldError> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            FieldError::new(
                field,
                "must be an RFC 3339 instant such as 2026-11-30T09:00:00Z",
            )
        })
}

fn required_instant(value: &Field<String>, field: &str) -> Result<DateTime<Utc>, FieldErrors> {
    text(value, field, |v| one(instant(v, field)))
}

fn weekday(value: &str, field: &str) -> Result<Weekday, FieldErrors> {
    Ok(match value {
        "mon" => Weekday::Mon,
        "tue" => Weekday::Tue,
        "wed" => Weekday::Wed,
        "thu" => Weekday::Thu,
        "fri" => Weekday::Fri,
        "sat" => Weekday::Sat,
        "sun" => Weekday::Sun,
        _ => {
            return Err(
                FieldError::new(field, "must be one of mon, tue, wed, thu, fri, sat, sun").into(),
            )
        }
    })
}

fn windows(
    bodies: &Field<Vec<Field<WindowBody>>>,
    field: &str,
) -> Result<Vec<Window>, FieldErrors> {
    bodies.each(field, |w, at| {
        let time = |key: &str, value: &Field<String>| {
            let field = format!("{at}.{key}");
            text(value, &field, |v| {
                one(NaiveTime::parse_from_str(v, "%H:%M")
                    .map_err(|_| FieldError::new(&field, "must be a time such as 08:30")))
            })
        };
        let (weekday, start, end) = (
            text(&w.weekday, &format!("{at}.weekday"), |v| {
                weekday(v, &format!("{at}.weekday"))
            }),
            time("start", &w.start),
            time("end", &w.end),
        )
            .all_ok()?;
        Ok(Window {
            weekday,
            start,
            end,
        })
    })
}

/// A whole number of minutes from `range`, required at `field`.
fn minutes(
    value: &Field<i64>,
    field: &str,
    range: std::ops::RangeInclusive<u32>,
) -> Result<u32, FieldErrors> {
    let refused = || {
        FieldErrors::from(FieldError::new(
            field,
            format!(
                "must be a whole number from {} to {}",
                range.start(),
                range.end()
            ),
        ))
    };
    match value {
        Field::Given(n) => u32::try_from(*n)
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(refused),
        Field::Absent => Err(FieldError::new(field, "is required").into()),
        Field::Misshapen => Err(refused()),
    }
}

fn template(body: &TemplateBody) -> Result<WeeklyTemplate, FieldErrors> {
    let (zone, slot, hours, breaks, reserved) = (
        body.time_zone.required("template.time_zone"),
        minutes(&body.slot_minutes, "template.slot_minutes", 1..=1440),
        windows(&body.hours, "template.hours"),
        windows(&body.breaks, "template.breaks"),
        windows(&body.reserved, "template.reserved"),
    )
        .all_ok()?;
    WeeklyTemplate::new(zone, slot, hours, breaks, reserved).map_err(|errors| {
        let mut prefixed = FieldErrors::new();
        for e in errors.into_vec() {
            prefixed.push(FieldError::new(format!("template.{}", e.field), e.message));
        }
        prefixed
    })
}

fn one_of(value: &Field<String>, field: &str, allowed: &[&str]) -> Result<String, FieldErrors> {
    text(value, field, |v| {
        if allowed.contains(&v) {
            Ok(v.to_owned())
        } else {
            Err(FieldError::new(field, format!("must be one of {}", allowed.join(", "))).into())
        }
    })
}

/// Resource `id` as a body describes it.
///
/// # Errors
///
/// Every bad field, by its path.
pub fn resource(id: String, object: &Map<String, Value>) -> Result<Resource, FieldErrors> {
    parse(object, "")?.then(|body: ResourceBody| {
        let template = body
            .template
            .optional("template")
            .and_then(|t| optional(t, template));
        let (kind, name, specialty, room_type, capabilities, template) = (
            one_of(&body.kind, "kind", &["practitioner", "room", "equipment"]),
            text(&body.name, "name", |v| label(v, "name")),
            optional_slug(&body.specialty, "specialty"),
            optional_slug(&body.room_type, "room_type"),
            slugs(&body.capabilities, "capabilities"),
            template,
        )
            .all_ok()?;
        // A practitioner without a template (an imported one, or one whose hours are not
        // known yet) is held, and cannot be booked until given one.
        Ok(Resource {
            id,
            kind,
            name,
            specialty,
            room_type,
            capabilities,
            template,
            version: 0,
        })
    })
}

/// A block of resource `resource`.
///
/// # Errors
///
/// Every bad field, by its path; an end not after the start.
pub fn block(resource: String, object: &Map<String, Value>) -> Result<Block, FieldErrors> {
    parse(object, "")?.then(|body: BlockBody| {
        let (from, to, reason) = (
            required_instant(&body.from, "from"),
            required_instant(&body.to, "to"),
            one_of(&body.reason, "reason", &["holiday", "leave", "one-off"]),
        )
            .all_ok()?;
        if to <= from {
            return Err(FieldError::new("to", "must be after from").into());
        }
        Ok(Block {
            resource,
            during: Interval::new(from, to),
            reason,
        })
    })
}

/// Service `code` as a body describes it.
///
/// # Errors
///
/// Every bad field, by its path.
pub fn service(code: String, object: &Map<String, Value>) -> Result<Service, FieldErrors> {
    parse(object, "")?.then(|body: ServiceBody| {
        let (name, minutes, specialty, room_type, capabilities) = (
            text(&body.name, "name", |v| label(v, "name")),
            minutes(&body.minutes, "minutes", 5..=480),
            optional_slug(&body.specialty, "specialty"),
            optional_slug(&body.room_type, "room_type"),
            slugs(&body.capabilities, "capabilities"),
        )
            .all_ok()?;
        Ok(Service {
            code,
            name,
            minutes: i32::try_from(minutes).unwrap_or(i32::MAX),
            specialty,
            room_type,
            capabilities,
            version: 0,
        })
    })
}

fn priority(value: &Field<String>) -> Result<Priority, FieldErrors> {
    Ok(
        optional_text(value, "priority", |p| one(Priority::parse("priority", p)))?
            .unwrap_or(Priority::Routine),
    )
}

/// A booking.
///
/// # Errors
///
/// Every bad field, by its path; a booking both held and proposed.
pub fn booking(object: &Map<String, Value>) -> Result<BookingRequest, FieldErrors> {
    parse(object, "")?.then(|body: BookingBody| {
        let (patient, service, start, practitioner, priority, hold, propose) = (
            text(&body.patient_id, "patient_id", |v| {
                one(PatientId::parse("patient_id", v))
            }),
            body.service.required("service").cloned(),
            required_instant(&body.start, "start"),
            optional_slug(&body.practitioner, "practitioner"),
            priority(&body.priority),
            body.hold.optional("hold"),
            body.propose.optional("propose"),
        )
            .all_ok()?;
        let hold = hold.copied().unwrap_or(false);
        let propose = propose.copied().unwrap_or(false);
        if hold && propose {
            return Err(FieldError::new(
                "propose",
                "a proposal holds nothing: send hold or propose, not both",
            )
            .into());
        }
        Ok(BookingRequest {
            patient,
            service,
            start,
            practitioner,
            priority,
            hold,
            propose,
        })
    })
}

/// A wish for the wait list, `now` being when it arrives.
///
/// # Errors
///
/// Every bad field, by its path; a window that is over.
pub fn wish(object: &Map<String, Value>, now: DateTime<Utc>) -> Result<Wish, FieldErrors> {
    parse(object, "")?.then(|body: WaitlistBody| {
        let window = (
            required_instant(&body.from, "from"),
            required_instant(&body.to, "to"),
        )
            .all_ok()
            .and_then(|(from, to)| {
                if to <= from || to <= now {
                    return Err(
                        FieldError::new("to", "must be after from and in the future").into(),
                    );
                }
                Ok(Interval::new(from, to))
            });
        let (patient, service, window, practitioner, priority) = (
            text(&body.patient_id, "patient_id", |v| {
                one(PatientId::parse("patient_id", v))
            }),
            body.service.required("service").cloned(),
            window,
            optional_slug(&body.practitioner, "practitioner"),
            priority(&body.priority),
        )
            .all_ok()?;
        Ok(Wish {
            patient,
            service,
            window,
            practitioner,
            priority,
        })
    })
}

/// What the body of an appointment's step gives it.
///
/// # Errors
///
/// Every bad field, by its path.
pub fn step(step: Step, object: &Map<String, Value>) -> Result<StepInput, FieldErrors> {
    match step {
        Step::Cancel => parse(object, "")?.then(|body: CancelBody| {
            Ok(StepInput::Cancel(text(&body.reason, "reason", |v| {
                one(CancellationReason::parse("reason", v))
            })?))
        }),
        Step::EnterInError => parse(object, "")?.then(|body: super::patient::ReasonBody| {
            Ok(StepInput::EnterInError(text(
                &body.reason,
                "reason",
                |v| reason(v, "reason"),
            )?))
        }),
        Step::Reschedule => parse(object, "")?.then(|body: RescheduleBody| {
            let (start, practitioner, reason) = (
                required_instant(&body.start, "start"),
                optional_slug(&body.practitioner, "practitioner"),
                text(&body.reason, "reason", |v| reason(v, "reason")),
            )
                .all_ok()?;
            Ok(StepInput::Reschedule {
                start,
                practitioner,
                reason,
            })
        }),
        // These steps take nothing from the body, and have never looked at it.
        Step::Confirm | Step::Arrive | Step::CheckIn | Step::Fulfil | Step::NoShow => {
            Ok(StepInput::None)
        }
    }
}
