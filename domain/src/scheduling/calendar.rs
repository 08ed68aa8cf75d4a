//! Calendars without slot rows: a resource's weekly template (working hours, breaks, slot
//! length, windows reserved for urgent requests) in its own time zone, its blocks (holidays,
//! leave, one-off), and the busy intervals of what is booked or held. Free slots are computed
//! from these on demand.

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveTime, TimeZone, Utc, Weekday};
use chrono_tz::Tz;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{FieldError, FieldErrors};

/// A half-open interval of time `[start, end)`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
pub struct Interval {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl Interval {
    pub fn new(start: DateTime<Utc>, end: DateTime<Utc>) -> Self {
        Self { start, end }
    }

    pub fn overlaps(&self, other: &Interval) -> bool {
        self.start < other.end && other.start < self.end
    }

    pub fn contains(&self, other: &Interval) -> bool {
        self.start <= other.start && other.end <= self.end
    }

    pub fn duration(&self) -> Duration {
        self.end - self.start
    }
}

/// A weekly window in local time: `weekday` from `start` to `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Window {
    /// Written as the API takes it: `mon` ... `sun`.
    #[serde(with = "weekday_code")]
    #[schemars(with = "String", regex(pattern = "^(mon|tue|wed|thu|fri|sat|sun)$"))]
    pub weekday: Weekday,
    pub start: NaiveTime,
    pub end: NaiveTime,
}

/// The week of one resource, in its time zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WeeklyTemplate {
    /// IANA time zone name, e.g. `Europe/Zurich`.
    #[serde(with = "tz_name")]
    #[schemars(with = "String")]
    pub time_zone: Tz,
    /// Length of one slot; bookings start on the slot grid of a working window.
    pub slot_minutes: u32,
    /// Working hours.
    pub hours: Vec<Window>,
    /// Breaks inside the working hours.
    #[serde(default)]
    pub breaks: Vec<Window>,
    /// Windows kept for urgent and emergency requests.
    #[serde(default)]
    pub reserved: Vec<Window>,
}

mod weekday_code {
    use chrono::Weekday;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(day: &Weekday, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&day.to_string().to_lowercase())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Weekday, D::Error> {
        let name = String::deserialize(d)?;
        name.parse()
            .map_err(|_| serde::de::Error::custom("not a weekday"))
    }
}

mod tz_name {
    use chrono_tz::Tz;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(tz: &Tz, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(tz.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Tz, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// The longest slot and window accepted.
const MAX_SLOT_MINUTES: u32 = 8 * 60;

impl WeeklyTemplate {
    /// Checks a template: a known time zone, a slot of 5 to 480 minutes, windows that end
    /// after they start, working windows that do not overlap, and breaks and reserved windows
    /// inside working hours.
    ///
    /// # Errors
    ///
    /// Every rule broken, by field.
    pub fn new(
        time_zone: &str,
        slot_minutes: u32,
        hours: Vec<Window>,
        breaks: Vec<Window>,
        reserved: Vec<Window>,
    ) -> Result<Self, FieldErrors> {
        let mut errors = FieldErrors::new();
        let tz = time_zone.parse::<Tz>().ok();
        if tz.is_none() {
            errors.push(FieldError::new(
                "time_zone",
                "must be an IANA time zone such as Europe/Zurich",
            ));
        }
        if !(5..=MAX_SLOT_MINUTES).contains(&slot_minutes) {
            errors.push(FieldError::new(
                "slot_minutes",
                format!("must be from 5 to {MAX_SLOT_MINUTES}"),
            ));
        }
        for (field, windows) in [
            ("hours", &hours),
            ("breaks", &breaks),
            ("reserved", &reserved),
        ] {
            for (i, w) in windows.iter().enumerate() {
                if w.end <= w.start {
                    errors.push(FieldError::new(
                        format!("{field}[{i}].end"),
                        "must be after the start",
                    ));
                }
            }
        }
        for (i, a) in hours.iter().enumerate() {
            if hours[..i]
                .iter()
                .any(|b| a.weekday == b.weekday && a.start < b.end && b.start < a.end)
            {
                errors.push(FieldError::new(
                    format!("hours[{i}]"),
                    "overlaps another working window of the same day",
                ));
            }
        }
        for (field, windows) in [("breaks", &breaks), ("reserved", &reserved)] {
            for (i, w) in windows.iter().enumerate() {
                let inside = hours
                    .iter()
                    .any(|h| h.weekday == w.weekday && h.start <= w.start && w.end <= h.end);
                if !inside {
                    errors.push(FieldError::new(
                        format!("{field}[{i}]"),
                        "must lie inside working hours",
                    ));
                }
            }
        }
        errors.into_result()?;
        Ok(Self {
            time_zone: tz.unwrap_or(Tz::UTC),
            slot_minutes,
            hours,
            breaks,
            reserved,
        })
    }

    fn local(&self, date: NaiveDate, time: NaiveTime) -> Option<DateTime<Utc>> {
        // In a gap (clocks forward) the window starts when the clock resumes; on a repeat
        // (clocks back) at its first occurrence.
        let local = date.and_time(time);
        self.time_zone
            .from_local_datetime(&local)
            .earliest()
            .or_else(|| {
                self.time_zone
                    .from_local_datetime(&(local + Duration::hours(1)))
                    .earliest()
            })
            .map(|t| t.with_timezone(&Utc))
    }

    /// The windows of `kind` (hours, breaks, reserved) as instants overlapping `range`.
    fn instances(&self, windows: &[Window], range: Interval) -> Vec<Interval> {
        let first = range.start.with_timezone(&self.time_zone).date_naive() - Duration::days(1);
        let last = range.end.with_timezone(&self.time_zone).date_naive() + Duration::days(1);
        let mut out = Vec::new();
        let mut date = first;
        while date <= last {
            for w in windows.iter().filter(|w| w.weekday == date.weekday()) {
                if let (Some(start), Some(end)) =
                    (self.local(date, w.start), self.local(date, w.end))
                {
                    let interval = Interval::new(start, end);
                    if start < end && interval.overlaps(&range) {
                        out.push(interval);
                    }
                }
            }
            date += Duration::days(1);
        }
        out.sort();
        out
    }

    /// The working intervals overlapping `range`: working hours minus breaks, each split at
    /// the breaks, in order.
    pub fn working(&self, range: Interval) -> Vec<Interval> {
        let breaks = self.instances(&self.breaks, range);
        let mut out = Vec::new();
        for hours in self.instances(&self.hours, range) {
            out.extend(subtract(hours, &breaks));
        }
        out
    }

    /// Whether `slot` overlaps a window reserved for urgent requests.
    pub fn is_reserved(&self, slot: &Interval) -> bool {
        // Asked for every candidate slot: without reserved windows, no time zone arithmetic.
        if self.reserved.is_empty() {
            return false;
        }
        self.instances(&self.reserved, *slot)
            .iter()
            .any(|r| r.overlaps(slot))
    }
}

/// `interval` without the parts `holes` cover. Holes that miss it cost a comparison, nothing
/// more: availability calls this for every candidate slot and room.
pub fn subtract(interval: Interval, holes: &[Interval]) -> Vec<Interval> {
    let mut pieces = vec![interval];
    for hole in holes {
        if !pieces.iter().any(|p| p.overlaps(hole)) {
            continue;
        }
        let mut next = Vec::with_capacity(pieces.len() + 1);
        for piece in pieces {
            if !piece.overlaps(hole) {
                next.push(piece);
                continue;
            }
            if piece.start < hole.start {
                next.push(Interval::new(piece.start, hole.start));
            }
            if hole.end < piece.end {
                next.push(Interval::new(hole.end, piece.end));
            }
        }
        pieces = next;
    }
    pieces
}

/// A free slot of a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    pub interval: Interval,
    /// In a window kept for urgent requests.
    pub reserved: bool,
    /// Length of the free gap the slot lies in: what best-fit assignment compares.
    pub gap_minutes: i64,
}

crate::code_enum!(
    /// How soon a request must be seen.
    Priority { Routine = "routine", Urgent = "urgent", Emergency = "emergency" }
);

/// What a search for free slots asks.
#[derive(Debug, Clone, Copy)]
pub struct SlotQuery {
    pub range: Interval,
    pub duration: Duration,
    pub priority: Priority,
    /// The current instant: slots starting before it are past.
    pub now: DateTime<Utc>,
    /// Reserved capacity starting within this lead time of `now` is released to routine
    /// requests.
    pub release_lead: Duration,
}

/// The free slots of one resource: slot-grid starts inside working intervals, of the asked
/// duration, clear of `blocked` (blocks, bookings, holds). Reserved windows serve routine
/// requests only once they start within the release lead time.
pub fn free_slots(template: &WeeklyTemplate, blocked: &[Interval], query: &SlotQuery) -> Vec<Slot> {
    let step = Duration::minutes(i64::from(template.slot_minutes.max(1)));
    let mut out = Vec::new();
    if query.duration <= Duration::zero() {
        return out;
    }
    for working in template.working(query.range) {
        for gap in subtract(working, blocked) {
            // Starts on the grid of the working interval.
            let offset = gap.start - working.start;
            let steps = (offset.num_seconds() + step.num_seconds() - 1) / step.num_seconds();
            let mut start = working.start + step * i32::try_from(steps).unwrap_or(i32::MAX);
            while start + query.duration <= gap.end {
                let slot = Interval::new(start, start + query.duration);
                if slot.start >= query.now && query.range.contains(&slot) {
                    let reserved = template.is_reserved(&slot);
                    let released = slot.start - query.now <= query.release_lead;
                    if !reserved || query.priority != Priority::Routine || released {
                        out.push(Slot {
                            interval: slot,
                            reserved,
                            gap_minutes: gap.duration().num_minutes(),
                        });
                    }
                }
                start += step;
            }
        }
    }
    out
}

/// Monday to Friday from `start` to `end`.
pub fn weekdays(start: NaiveTime, end: NaiveTime) -> Vec<Window> {
    [
        Weekday::Mon,
        Weekday::Tue,
        Weekday::Wed,
        Weekday::Thu,
        Weekday::Fri,
    ]
    .into_iter()
    .map(|weekday| Window {
        weekday,
        start,
        end,
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(h: u32, m: u32) -> NaiveTime {
        NaiveTime::from_hms_opt(h, m, 0).unwrap()
    }

    fn at(day: u32, h: u32, m: u32) -> DateTime<Utc> {
        // November 2026: the 23rd is a Monday; Zurich is UTC+1.
        Utc.with_ymd_and_hms(2026, 11, day, h, m, 0).unwrap()
    }

    fn template() -> WeeklyTemplate {
        WeeklyTemplate::new(
            "Europe/Zurich",
            30,
            weekdays(t(8, 0), t(12, 0)),
            vec![Window {
                weekday: Weekday::Mon,
                start: t(10, 0),
                end: t(10, 30),
            }],
            vec![Window {
                weekday: Weekday::Mon,
                start: t(11, 0),
                end: t(12, 0),
            }],
        )
        .unwrap()
    }

    fn query(priority: Priority, now: DateTime<Utc>) -> SlotQuery {
        SlotQuery {
            range: Interval::new(at(23, 0, 0), at(24, 0, 0)),
            duration: Duration::minutes(30),
            priority,
            now,
            release_lead: Duration::hours(2),
        }
    }

    #[test]
    fn slots_follow_the_local_template_minus_breaks_blocks_and_reserved_windows() {
        let booked = [Interval::new(at(23, 8, 0), at(23, 8, 30))]; // 09:00 local
        let slots = free_slots(
            &template(),
            &booked,
            &query(Priority::Routine, at(20, 0, 0)),
        );
        let starts: Vec<String> = slots
            .iter()
            .map(|s| {
                s.interval
                    .start
                    .with_timezone(&chrono_tz::Europe::Zurich)
                    .format("%H:%M")
                    .to_string()
            })
            .collect();
        // 08:00-12:00 local, break 10:00-10:30, 09:00 booked, 11:00-12:00 reserved.
        assert_eq!(starts, ["08:00", "08:30", "09:30", "10:30"]);
        let urgent = free_slots(&template(), &booked, &query(Priority::Urgent, at(20, 0, 0)));
        assert_eq!(urgent.len(), 6);
        assert!(urgent.iter().filter(|s| s.reserved).count() == 2);
    }

    #[test]
    fn reserved_capacity_is_released_within_the_lead_time() {
        // Now is 09:30 local: the reserved 11:00 and 11:30 slots start within two hours.
        let slots = free_slots(&template(), &[], &query(Priority::Routine, at(23, 8, 30)));
        assert!(slots.iter().any(|s| s.reserved), "{slots:?}");
        assert!(slots.iter().all(|s| s.interval.start >= at(23, 8, 30)));
    }

    #[test]
    fn longer_appointments_need_contiguous_free_time_on_the_grid() {
        let q = SlotQuery {
            duration: Duration::minutes(60),
            ..query(Priority::Urgent, at(20, 0, 0))
        };
        let slots = free_slots(&template(), &[], &q);
        let local: Vec<String> = slots
            .iter()
            .map(|s| {
                s.interval
                    .start
                    .with_timezone(&chrono_tz::Europe::Zurich)
                    .format("%H:%M")
                    .to_string()
            })
            .collect();
        assert_eq!(local, ["08:00", "08:30", "09:00", "10:30", "11:00"]);
    }

    #[test]
    fn weekdays_are_written_as_the_api_takes_them() {
        let w = Window {
            weekday: Weekday::Mon,
            start: t(8, 0),
            end: t(9, 0),
        };
        let json = serde_json::to_value(w).unwrap();
        assert_eq!(json["weekday"], "mon");
        assert_eq!(serde_json::from_value::<Window>(json).unwrap(), w);
        let old: Window =
            serde_json::from_str(r#"{"weekday":"Mon","start":"08:00:00","end":"09:00:00"}"#)
                .unwrap();
        assert_eq!(old, w);
    }

    #[test]
    fn templates_are_checked() {
        let errors = WeeklyTemplate::new(
            "Mars/Olympus",
            2,
            vec![
                Window {
                    weekday: Weekday::Mon,
                    start: t(9, 0),
                    end: t(8, 0),
                },
                Window {
                    weekday: Weekday::Tue,
                    start: t(8, 0),
                    end: t(12, 0),
                },
                Window {
                    weekday: Weekday::Tue,
                    start: t(11, 0),
                    end: t(13, 0),
                },
            ],
            vec![Window {
                weekday: Weekday::Wed,
                start: t(10, 0),
                end: t(10, 30),
            }],
            vec![],
        )
        .unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "time_zone",
                "slot_minutes",
                "hours[0].end",
                "hours[2]",
                "breaks[0]"
            ]
        );
    }

    #[test]
    fn daylight_saving_moves_the_utc_hours_not_the_local_ones() {
        // 2027-03-29 is the Monday after Zurich moves to UTC+2.
        let tmpl = template();
        let range = Interval::new(
            Utc.with_ymd_and_hms(2027, 3, 29, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(2027, 3, 30, 0, 0, 0).unwrap(),
        );
        let working = tmpl.working(range);
        assert_eq!(
            working[0].start,
            Utc.with_ymd_and_hms(2027, 3, 29, 6, 0, 0).unwrap()
        );
    }
}
