//! The rest of a patient's record: insurance coverages, emergency contacts and preferences.

use std::fmt;

use chrono::{NaiveDate, NaiveTime};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::contact::Phone;
use super::values::PersonName;
use crate::validation::{FieldError, FieldErrors};

/// A closed set of codes: the enum, its `CODES`, `parse` (naming the accepted codes in the
/// error) and `code`.
#[macro_export]
macro_rules! code_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $code:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ::serde::Serialize, ::serde::Deserialize, ::schemars::JsonSchema)]
        pub enum $name {
            $(#[serde(rename = $code)] $variant),+
        }

        impl $name {
            pub const CODES: &'static [&'static str] = &[$($code),+];

            /// # Errors
            ///
            /// A [`FieldError`] on `field` naming the accepted codes.
            pub fn parse(field: &str, value: &str) -> Result<Self, $crate::FieldError> {
                match value {
                    $($code => Ok(Self::$variant),)+
                    _ => Err($crate::FieldError::new(field, format!("must be one of {}", Self::CODES.join(", ")))),
                }
            }

            pub fn code(&self) -> &'static str {
                match self {
                    $(Self::$variant => $code),+
                }
            }
        }
    };
}

crate::code_enum!(
    /// How a patient prefers to be reached.
    Channel { Sms = "sms", Email = "email", Phone = "phone", Post = "post" }
);

crate::code_enum!(
    /// Who an emergency contact is to the patient.
    Relationship {
        Spouse = "spouse",
        Partner = "partner",
        Parent = "parent",
        Child = "child",
        Sibling = "sibling",
        Relative = "relative",
        Friend = "friend",
        Guardian = "guardian",
        Caregiver = "caregiver",
        Other = "other",
    }
);

crate::code_enum!(
    /// Order in which coverages pay.
    CoveragePriority { Primary = "primary", Secondary = "secondary", Tertiary = "tertiary" }
);

crate::code_enum!(
    /// Who the patient is to the coverage's subscriber.
    SubscriberRelationship { Myself = "self", Spouse = "spouse", Child = "child", Other = "other" }
);

/// A BCP 47 language tag such as `de`, `fr-CH` or `zh-Hant-TW`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct LanguageTag(String);

impl LanguageTag {
    /// # Errors
    ///
    /// A [`FieldError`] on `field` unless `value` is a 2 or 3 letter language, then subtags of
    /// 1 to 8 letters or digits.
    pub fn parse(field: &str, value: &str) -> Result<Self, FieldError> {
        let mut parts = value.trim().split('-');
        let primary = parts.next().unwrap_or_default();
        let valid = (2..=3).contains(&primary.len())
            && primary.bytes().all(|b| b.is_ascii_alphabetic())
            && parts.all(|p| {
                (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric())
            });
        if valid {
            Ok(Self(value.trim().to_owned()))
        } else {
            Err(FieldError::new(
                field,
                "must be a BCP 47 language tag such as de or fr-CH",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// When the patient does not want to be contacted; may wrap midnight (22:00 to 07:00).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct QuietHours {
    pub start: NaiveTime,
    pub end: NaiveTime,
}

impl QuietHours {
    /// # Errors
    ///
    /// Errors on `{field}.start` and `{field}.end` unless both are `HH:MM` and differ.
    pub fn parse(field: &str, start: &str, end: &str) -> Result<Self, FieldErrors> {
        let mut errors = FieldErrors::new();
        let time =
            |name: &str, v: &str, errors: &mut FieldErrors| {
                errors.check(NaiveTime::parse_from_str(v, "%H:%M").map_err(|_| {
                    FieldError::new(format!("{field}.{name}"), "must be a time HH:MM")
                }))
            };
        let start = time("start", start, &mut errors);
        let end = time("end", end, &mut errors);
        if let (Some(s), Some(e)) = (start, end) {
            if s == e {
                errors.push(FieldError::new(
                    format!("{field}.end"),
                    "must differ from the start",
                ));
            }
        }
        match (start, end, errors.is_empty()) {
            (Some(start), Some(end), true) => Ok(Self { start, end }),
            _ => Err(errors),
        }
    }

    /// Whether `time` falls in the quiet hours.
    pub fn contains(&self, time: NaiveTime) -> bool {
        if self.start < self.end {
            self.start <= time && time < self.end
        } else {
            time >= self.start || time < self.end
        }
    }
}

/// How the patient wants to be communicated with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Preferences {
    pub communication_language: Option<LanguageTag>,
    pub preferred_channel: Option<Channel>,
    pub reminder_opt_in: bool,
    pub quiet_hours: Option<QuietHours>,
    pub interpreter_needed: bool,
}

/// Someone to call in an emergency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EmergencyContact {
    pub contact_id: Uuid,
    pub name: PersonName,
    pub relationship: Relationship,
    pub phones: Vec<Phone>,
}

/// At most this many emergency contacts.
pub const MAX_EMERGENCY_CONTACTS: usize = 10;

/// An insurance coverage.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Coverage {
    pub coverage_id: Uuid,
    pub payer: String,
    pub plan: Option<String>,
    pub member_id: String,
    pub group: Option<String>,
    pub subscriber_name: Option<PersonName>,
    pub relationship: SubscriberRelationship,
    pub start: NaiveDate,
    pub end: Option<NaiveDate>,
    pub priority: CoveragePriority,
    /// Set when the coverage was ended; an ended coverage stays on record.
    pub ended: bool,
}

impl fmt::Debug for Coverage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coverage")
            .field("coverage_id", &self.coverage_id)
            .field("priority", &self.priority)
            .finish_non_exhaustive()
    }
}

impl Coverage {
    /// Whether the two coverages' periods share a day.
    pub fn overlaps(&self, other: &Coverage) -> bool {
        let end = |c: &Coverage| c.end.unwrap_or(NaiveDate::MAX);
        self.start <= end(other) && other.start <= end(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_parse_and_name_the_accepted_values() {
        assert_eq!(Channel::parse("c", "sms").unwrap(), Channel::Sms);
        let err = Channel::parse("c", "fax").unwrap_err();
        assert_eq!(err.message, "must be one of sms, email, phone, post");
        assert_eq!(
            SubscriberRelationship::parse("r", "self").unwrap().code(),
            "self"
        );
    }

    #[test]
    fn language_tags_follow_bcp_47_shape() {
        for ok in ["de", "fr-CH", "zh-Hant-TW", "gsw"] {
            assert!(LanguageTag::parse("l", ok).is_ok(), "{ok}");
        }
        for bad in ["", "d", "german", "fr_CH", "fr-"] {
            assert!(LanguageTag::parse("l", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn quiet_hours_may_wrap_midnight() {
        let night = QuietHours::parse("q", "22:00", "07:00").unwrap();
        let t = |s| NaiveTime::parse_from_str(s, "%H:%M").unwrap();
        assert!(night.contains(t("23:30")) && night.contains(t("06:59")));
        assert!(!night.contains(t("12:00")));
        assert!(QuietHours::parse("q", "22:00", "22:00").is_err());
        assert!(QuietHours::parse("q", "25:00", "07:00").is_err());
    }

    #[test]
    fn coverages_overlap_when_their_periods_share_a_day() {
        fn d(s: &str) -> NaiveDate {
            NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
        }
        let coverage = |start, end: Option<&str>| Coverage {
            coverage_id: Uuid::nil(),
            payer: "p".into(),
            plan: None,
            member_id: "m".into(),
            group: None,
            subscriber_name: None,
            relationship: SubscriberRelationship::Myself,
            start: d(start),
            end: end.map(d),
            priority: CoveragePriority::Primary,
            ended: false,
        };
        let open = coverage("2026-01-01", None);
        assert!(open.overlaps(&coverage("2030-01-01", None)));
        assert!(!coverage("2025-01-01", Some("2025-12-31")).overlaps(&open));
        assert!(coverage("2025-01-01", Some("2026-01-01")).overlaps(&open));
    }
}
