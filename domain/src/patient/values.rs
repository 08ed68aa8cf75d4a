//! Validated value types of a patient record. Each has a private field and a fallible `parse`,
//! so a raw string never reaches a command. Types that hold patient data redact their `Debug`
//! output, so a stray `{:?}` in a log line cannot leak it.

use std::fmt;

use chrono::{Datelike, NaiveDate};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;
use uuid::Uuid;

use crate::validation::{FieldError, FieldErrors};

/// The identity of a patient aggregate.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(transparent)]
pub struct PatientId(Uuid);

impl PatientId {
    pub fn new(id: Uuid) -> Self {
        Self(id)
    }

    /// Parses a path segment or field holding a UUID.
    ///
    /// # Errors
    ///
    /// A [`FieldError`] on `field` when `value` is not a UUID.
    pub fn parse(field: &str, value: &str) -> Result<Self, FieldError> {
        Uuid::parse_str(value)
            .map(Self)
            .map_err(|_| FieldError::new(field, "must be a UUID"))
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for PatientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

const MAX_NAME_PART: usize = 100;
const MAX_GIVEN_NAMES: usize = 5;

/// A person's name: a family name and up to five given names. A person known by one name
/// only (a mononym) has it as the family name and no given name.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PersonName {
    given: Vec<String>,
    family: String,
    /// Titles before the name (`Dr.`, `Prof.`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    prefix: Vec<String>,
    /// Parts after the name (`Jr.`, `PhD`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    suffix: Vec<String>,
    /// The name the patient wants to be called by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    preferred: Option<String>,
}

/// The optional parts of a name, as typed.
#[derive(Debug, Clone, Copy, Default)]
pub struct NameExtras<'a> {
    pub prefix: &'a [String],
    pub suffix: &'a [String],
    pub preferred: Option<&'a str>,
}

impl PersonName {
    /// Parses the name parts, reporting every bad part under `field` (`name.given[0]`, ...).
    ///
    /// # Errors
    ///
    /// Every rejected part, when a part is empty, too long, holds control characters or no
    /// letter, or when there are too many given names.
    pub fn parse(field: &str, given: &[String], family: &str) -> Result<Self, FieldErrors> {
        let mut errors = FieldErrors::new();
        if given.len() > MAX_GIVEN_NAMES {
            errors.push(FieldError::new(
                format!("{field}.given"),
                format!("at most {MAX_GIVEN_NAMES} given names are allowed"),
            ));
        }
        let given: Vec<String> = given
            .iter()
            .enumerate()
            .filter_map(|(i, part)| errors.check(name_part(&format!("{field}.given[{i}]"), part)))
            .collect();
        let family = errors.check(name_part(&format!("{field}.family"), family));
        errors.into_result()?;
        Ok(Self {
            given,
            // `into_result` returned early if the family name was rejected.
            family: family.unwrap_or_default(),
            prefix: Vec::new(),
            suffix: Vec::new(),
            preferred: None,
        })
    }

    /// Parses a name with its optional parts: up to three prefixes and suffixes of up to 20
    /// characters each, and a preferred name.
    ///
    /// # Errors
    ///
    /// Every rejected part, as [`PersonName::parse`] does.
    pub fn parse_full(
        field: &str,
        given: &[String],
        family: &str,
        extras: NameExtras<'_>,
    ) -> Result<Self, FieldErrors> {
        let mut errors = FieldErrors::new();
        let name = errors.check_all(Self::parse(field, given, family));
        let mut parts = |key: &str, values: &[String]| -> Vec<String> {
            if values.len() > 3 {
                errors.push(FieldError::new(format!("{field}.{key}"), "at most 3 parts"));
            }
            values
                .iter()
                .enumerate()
                .filter_map(|(i, v)| errors.check(short_part(&format!("{field}.{key}[{i}]"), v)))
                .collect()
        };
        let prefix = parts("prefix", extras.prefix);
        let suffix = parts("suffix", extras.suffix);
        let preferred = extras
            .preferred
            .and_then(|p| errors.check(name_part(&format!("{field}.preferred"), p)));
        errors.into_result()?;
        let name = name.ok_or_else(FieldErrors::new)?;
        Ok(Self {
            prefix,
            suffix,
            preferred,
            ..name
        })
    }

    pub fn prefix(&self) -> &[String] {
        &self.prefix
    }

    pub fn suffix(&self) -> &[String] {
        &self.suffix
    }

    pub fn preferred(&self) -> Option<&str> {
        self.preferred.as_deref()
    }

    pub fn given(&self) -> &[String] {
        &self.given
    }

    pub fn family(&self) -> &str {
        &self.family
    }
}

impl fmt::Debug for PersonName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PersonName(<redacted>)")
    }
}

fn name_part(field: &str, raw: &str) -> Result<String, FieldError> {
    // NFC so that the same name typed on two keyboards is stored the same way.
    let value: String = raw.trim().nfc().collect();
    if value.is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if value.chars().count() > MAX_NAME_PART {
        return Err(FieldError::new(
            field,
            format!("must be at most {MAX_NAME_PART} characters"),
        ));
    }
    if value.chars().any(crate::validation::is_hidden) {
        return Err(FieldError::new(
            field,
            "must not contain control characters",
        ));
    }
    if !value.chars().any(char::is_alphabetic) {
        return Err(FieldError::new(field, "must contain at least one letter"));
    }
    Ok(value)
}

fn short_part(field: &str, raw: &str) -> Result<String, FieldError> {
    let value = raw.trim();
    if value.is_empty()
        || value.chars().count() > 20
        || value.chars().any(crate::validation::is_hidden)
    {
        return Err(FieldError::new(field, "must be 1 to 20 characters"));
    }
    Ok(value.to_owned())
}

/// Marital status, with the FHIR (HL7 v3) codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum MaritalStatus {
    #[serde(rename = "A")]
    Annulled,
    #[serde(rename = "D")]
    Divorced,
    #[serde(rename = "I")]
    Interlocutory,
    #[serde(rename = "L")]
    LegallySeparated,
    #[serde(rename = "M")]
    Married,
    #[serde(rename = "C")]
    CommonLaw,
    #[serde(rename = "P")]
    Polygamous,
    #[serde(rename = "T")]
    DomesticPartner,
    #[serde(rename = "U")]
    Unmarried,
    #[serde(rename = "S")]
    NeverMarried,
    #[serde(rename = "W")]
    Widowed,
    #[serde(rename = "UNK")]
    Unknown,
}

impl MaritalStatus {
    const ALL: [(Self, &'static str); 12] = [
        (Self::Annulled, "A"),
        (Self::Divorced, "D"),
        (Self::Interlocutory, "I"),
        (Self::LegallySeparated, "L"),
        (Self::Married, "M"),
        (Self::CommonLaw, "C"),
        (Self::Polygamous, "P"),
        (Self::DomesticPartner, "T"),
        (Self::Unmarried, "U"),
        (Self::NeverMarried, "S"),
        (Self::Widowed, "W"),
        (Self::Unknown, "UNK"),
    ];

    /// # Errors
    ///
    /// A [`FieldError`] on `field` unless `value` is an HL7 v3 MaritalStatus code.
    pub fn parse(field: &str, value: &str) -> Result<Self, FieldError> {
        Self::ALL
            .iter()
            .find(|(_, code)| *code == value)
            .map(|(status, _)| *status)
            .ok_or_else(|| {
                FieldError::new(field, "must be one of A, D, I, L, M, C, P, T, U, S, W, UNK")
            })
    }

    pub fn code(&self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(status, _)| status == self)
            .map_or("UNK", |(_, code)| code)
    }
}

/// A birth date: not in the future, not before 1900.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BirthDate(NaiveDate);

impl BirthDate {
    /// Parses an ISO 8601 calendar date (`YYYY-MM-DD`), judged against `today`.
    ///
    /// # Errors
    ///
    /// A [`FieldError`] on `field` when the date is malformed, after `today` or before 1900.
    pub fn parse(field: &str, value: &str, today: NaiveDate) -> Result<Self, FieldError> {
        let date = NaiveDate::parse_from_str(value, "%Y-%m-%d")
            .map_err(|_| FieldError::new(field, "must be a date in the form YYYY-MM-DD"))?;
        Self::new(field, date, today)
    }

    /// Validates an already parsed date against `today`.
    ///
    /// # Errors
    ///
    /// A [`FieldError`] on `field` when the date is after `today` or before 1900.
    pub fn new(field: &str, date: NaiveDate, today: NaiveDate) -> Result<Self, FieldError> {
        if date > today {
            return Err(FieldError::new(field, "must not be in the future"));
        }
        if date.year() < 1900 {
            return Err(FieldError::new(field, "must not be before 1900-01-01"));
        }
        Ok(Self(date))
    }

    pub fn date(&self) -> NaiveDate {
        self.0
    }
}

impl fmt::Debug for BirthDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BirthDate(<redacted>)")
    }
}

/// Administrative gender, with the FHIR codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AdministrativeGender {
    Male,
    Female,
    Other,
    Unknown,
}

impl AdministrativeGender {
    /// Parses a FHIR administrative-gender code.
    ///
    /// # Errors
    ///
    /// A [`FieldError`] on `field` for anything but `male`, `female`, `other` or `unknown`.
    pub fn parse(field: &str, value: &str) -> Result<Self, FieldError> {
        match value {
            "male" => Ok(Self::Male),
            "female" => Ok(Self::Female),
            "other" => Ok(Self::Other),
            "unknown" => Ok(Self::Unknown),
            _ => Err(FieldError::new(
                field,
                "must be one of male, female, other, unknown",
            )),
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::Male => "male",
            Self::Female => "female",
            Self::Other => "other",
            Self::Unknown => "unknown",
        }
    }
}

/// A medical record number assigned by the service: nine digits of a serial number followed by
/// a Luhn check digit, so a mistyped MRN is caught before it finds the wrong patient.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Mrn(String);

impl Mrn {
    /// The largest serial number an MRN can carry.
    pub const MAX_SERIAL: u64 = 999_999_999;

    /// The MRN of a serial number handed out by the service's MRN sequence.
    ///
    /// # Errors
    ///
    /// A [`FieldError`] on `mrn` when the serial is zero or above [`Mrn::MAX_SERIAL`].
    pub fn from_serial(serial: u64) -> Result<Self, FieldError> {
        if serial == 0 || serial > Self::MAX_SERIAL {
            return Err(FieldError::new("mrn", "serial number out of range"));
        }
        let body = format!("{serial:09}");
        let check = luhn_check_digit(&body);
        Ok(Self(format!("{body}{check}")))
    }

    /// Parses an MRN typed by a user.
    ///
    /// # Errors
    ///
    /// A [`FieldError`] on `field` unless `value` is ten digits with a valid check digit.
    pub fn parse(field: &str, value: &str) -> Result<Self, FieldError> {
        let value = value.trim();
        if value.len() != 10 || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(FieldError::new(field, "must be 10 digits"));
        }
        let (body, check) = value.split_at(9);
        if check.as_bytes()[0] != luhn_check_digit(body) as u8 + b'0' {
            return Err(FieldError::new(field, "check digit does not match"));
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Mrn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Mrn(<redacted>)")
    }
}

fn luhn_check_digit(digits: &str) -> u32 {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 0 {
                let doubled = d * 2;
                if doubled > 9 {
                    doubled - 9
                } else {
                    doubled
                }
            } else {
                d
            }
        })
        .sum();
    (10 - sum % 10) % 10
}

const MAX_REASON: usize = 500;

/// Why a change was made: required on corrections, archive and restore, for the audit trail.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Reason(String);

impl Reason {
    /// # Errors
    ///
    /// A [`FieldError`] on `field` when the reason is empty, too long or holds control
    /// characters other than line breaks.
    pub fn parse(field: &str, value: &str) -> Result<Self, FieldError> {
        let value = value.trim();
        if value.is_empty() {
            return Err(FieldError::new(field, "must not be empty"));
        }
        if value.chars().count() > MAX_REASON {
            return Err(FieldError::new(
                field,
                format!("must be at most {MAX_REASON} characters"),
            ));
        }
        if value
            .chars()
            .any(|c| c != '\n' && crate::validation::is_hidden(c))
        {
            return Err(FieldError::new(
                field,
                "must not contain control characters",
            ));
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Reason(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 27).unwrap()
    }

    #[test]
    fn birth_date_in_the_future_is_rejected() {
        let err = BirthDate::parse("birth_date", "2026-11-28", today()).unwrap_err();
        assert_eq!(err.field, "birth_date");
        assert_eq!(err.message, "must not be in the future");
    }

    #[test]
    fn birth_date_today_and_on_1900_01_01_are_accepted() {
        assert!(BirthDate::parse("birth_date", "2026-11-27", today()).is_ok());
        assert!(BirthDate::parse("birth_date", "1900-01-01", today()).is_ok());
    }

    #[test]
    fn birth_date_before_1900_is_rejected() {
        let err = BirthDate::parse("birth_date", "1899-12-31", today()).unwrap_err();
        assert_eq!(err.message, "must not be before 1900-01-01");
    }

    #[test]
    fn malformed_birth_dates_are_rejected() {
        for bad in ["", "1990-02-30", "12/01/1990", "1990-1-1x"] {
            assert!(
                BirthDate::parse("birth_date", bad, today()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn gender_accepts_the_fhir_codes_only() {
        for code in ["male", "female", "other", "unknown"] {
            assert_eq!(
                AdministrativeGender::parse("gender", code).unwrap().code(),
                code
            );
        }
        assert!(AdministrativeGender::parse("gender", "Male").is_err());
        assert!(AdministrativeGender::parse("gender", "m").is_err());
    }

    #[test]
    fn person_name_reports_every_bad_part() {
        let given = vec!["Ada".to_owned(), " ".to_owned(), "x\u{7}".to_owned()];
        let errors = PersonName::parse("name", &given, "").unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["name.given[1]", "name.given[2]", "name.family"]);
    }

    #[test]
    fn person_name_takes_up_to_five_given_names_or_none_for_a_mononym() {
        let mononym = PersonName::parse("name", &[], "Suharto").unwrap();
        assert!(mononym.given().is_empty());
        let six = vec!["A".to_owned(); 6];
        let err = PersonName::parse("name", &six, "Lovelace").unwrap_err();
        assert_eq!(err.iter().next().unwrap().field, "name.given");
    }

    #[test]
    fn person_name_is_trimmed_and_nfc_normalised() {
        let name =
            PersonName::parse("name", &[" Zoe\u{301} ".to_owned()], "Mu\u{308}ller").unwrap();
        assert_eq!(name.given(), ["Zoé"]);
        assert_eq!(name.family(), "Müller");
    }

    #[test]
    fn person_name_rejects_overlong_and_letterless_parts() {
        let long = "a".repeat(101);
        assert!(PersonName::parse("name", &["Ada".to_owned()], &long).is_err());
        assert!(PersonName::parse("name", &["Ada".to_owned()], "1234").is_err());
    }

    #[test]
    fn debug_output_of_patient_data_is_redacted() {
        let name = PersonName::parse("name", &["Ada".to_owned()], "Lovelace").unwrap();
        let date = BirthDate::parse("birth_date", "1990-01-01", today()).unwrap();
        let printed = format!("{name:?} {date:?} {:?}", Mrn::from_serial(7).unwrap());
        assert!(!printed.contains("Ada") && !printed.contains("1990"));
        assert!(!printed.contains("00000000"));
    }

    #[test]
    fn mrn_round_trips_through_its_check_digit() {
        let mrn = Mrn::from_serial(123_456_789).unwrap();
        assert_eq!(mrn.as_str().len(), 10);
        assert_eq!(Mrn::parse("mrn", mrn.as_str()).unwrap(), mrn);
    }

    #[test]
    fn mrn_with_a_mistyped_digit_is_rejected() {
        let mrn = Mrn::from_serial(42).unwrap();
        let mut typo = mrn.as_str().as_bytes().to_vec();
        typo[7] = if typo[7] == b'9' { b'0' } else { typo[7] + 1 };
        let typo = String::from_utf8(typo).unwrap();
        assert_eq!(
            Mrn::parse("mrn", &typo).unwrap_err().message,
            "check digit does not match"
        );
        assert!(Mrn::parse("mrn", "12345").is_err());
        assert!(Mrn::from_serial(0).is_err());
    }

    #[test]
    fn reason_must_be_present_and_bounded() {
        assert!(Reason::parse("reason", "  ").is_err());
        assert!(Reason::parse("reason", &"r".repeat(501)).is_err());
        assert_eq!(Reason::parse("reason", " typo ").unwrap().as_str(), "typo");
    }
}
