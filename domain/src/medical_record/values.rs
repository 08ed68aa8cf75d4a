//! The value types clinical items are built from. Each parses from what a caller sent and
//! names the field it rejects; none repeats the rejected value, which may be clinical data.

use std::fmt;

use chrono::NaiveDate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::validation::is_hidden;
use crate::{FieldError, FieldErrors};

/// The id of one item on a patient's medical record.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(transparent)]
pub struct ItemId(Uuid);

impl ItemId {
    pub fn new(id: Uuid) -> Self {
        Self(id)
    }

    /// # Errors
    ///
    /// A [`FieldError`] on `field` when the value is not a UUID.
    pub fn parse(field: &str, value: &str) -> Result<Self, FieldError> {
        Uuid::parse_str(value)
            .map(Self)
            .map_err(|_| FieldError::new(field, "must be a UUID"))
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for ItemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Free text with a length limit and no hidden characters (line breaks allowed when `lines`).
fn text(field: &str, value: &str, max: usize, lines: bool) -> Result<String, FieldError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if value.chars().count() > max {
        return Err(FieldError::new(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if value
        .chars()
        .any(|c| !(lines && matches!(c, '\n' | '\r' | '\t')) && is_hidden(c))
    {
        return Err(FieldError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(value.to_owned())
}

const MAX_CONCEPT_TEXT: usize = 500;
const MAX_CODE: usize = 64;
const MAX_SYSTEM: usize = 255;
const MAX_NOTE: usize = 10_000;
const MAX_SHORT_TEXT: usize = 200;

/// A coded system URI known to the service, or any absolute URI.
pub mod systems {
    pub const SNOMED_CT: &str = "http://snomed.info/sct";
    pub const ICD_10: &str = "http://hl7.org/fhir/sid/icd-10";
    pub const ICD_10_CM: &str = "http://hl7.org/fhir/sid/icd-10-cm";
    pub const CVX: &str = "http://hl7.org/fhir/sid/cvx";
    pub const RXNORM: &str = "http://www.nlm.nih.gov/research/umls/rxnorm";
    pub const LOINC: &str = "http://loinc.org";
    pub const CPT: &str = "http://www.ama-assn.org/go/cpt";
}

/// A clinical concept: what a person reads (`text`) and, optionally, the code a system
/// assigns it with the code system's display for it (FHIR `CodeableConcept` with one coding).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Concept {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// How the code system displays the code (FHIR `Coding.display`), as the source gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
    pub text: String,
}

impl fmt::Debug for Concept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Concept(<redacted>)")
    }
}

impl Concept {
    /// Parses a concept under `field`: `text` is required; `system` and `code` go together.
    ///
    /// # Errors
    ///
    /// Every rejected part, by its path.
    pub fn parse(
        field: &str,
        system: Option<&str>,
        code: Option<&str>,
        text_value: Option<&str>,
    ) -> Result<Self, FieldErrors> {
        Self::parse_displayed(field, (system, code, None), text_value)
    }

    /// As [`Concept::parse`], with the code system's `display` of the code (only with a code).
    ///
    /// # Errors
    ///
    /// Every rejected part, by its path.
    pub fn parse_displayed(
        field: &str,
        (system, code, display): (Option<&str>, Option<&str>, Option<&str>),
        text_value: Option<&str>,
    ) -> Result<Self, FieldErrors> {
        let mut errors = FieldErrors::new();
        let display = display.and_then(|d| {
            errors.check(text(
                &format!("{field}.display"),
                d,
                MAX_CONCEPT_TEXT,
                false,
            ))
        });
        if display.is_some() && code.is_none() {
            errors.push(FieldError::new(
                format!("{field}.display"),
                "is the display of a code: give the code too",
            ));
        }
        let text_value = match text_value {
            Some(t) => errors.check(text(&format!("{field}.text"), t, MAX_CONCEPT_TEXT, false)),
            None => {
                errors.push(FieldError::new(format!("{field}.text"), "is required"));
                None
            }
        };
        let system = system.and_then(|s| errors.check(parse_system(&format!("{field}.system"), s)));
        let code = code.and_then(|c| errors.check(parse_code(&format!("{field}.code"), c)));
        match (&system, &code) {
            (Some(_), None) => errors.push(FieldError::new(
                format!("{field}.code"),
                "is required with a system",
            )),
            (None, Some(_)) => errors.push(FieldError::new(
                format!("{field}.system"),
                "is required with a code",
            )),
            _ => {}
        }
        errors.into_result()?;
        Ok(Self {
            system,
            code,
            display,
            text: text_value.unwrap_or_default(),
        })
    }

    /// Whether both concepts carry the same code of the same system.
    pub fn same_code(&self, other: &Concept) -> bool {
        matches!(
            (&self.system, &self.code, &other.system, &other.code),
            (Some(s1), Some(c1), Some(s2), Some(c2)) if s1 == s2 && c1.eq_ignore_ascii_case(c2)
        )
    }

    /// Whether both name the same thing: the same code, or (when either is uncoded) the same
    /// text, ignoring case and spacing.
    pub fn same_as(&self, other: &Concept) -> bool {
        if self.code.is_some() && other.code.is_some() {
            return self.same_code(other);
        }
        normalize(&self.text) == normalize(&other.text)
    }

    /// Whether `self` (a substance) is named in `other` (a product): the same code, or the
    /// substance's text as whole words of the product's text ("penicillin" in "Penicillin V
    /// potassium 250 mg").
    pub fn named_in(&self, other: &Concept) -> bool {
        if self.same_code(other) {
            return true;
        }
        let needle: Vec<String> = words(&self.text);
        let haystack: Vec<String> = words(&other.text);
        !needle.is_empty()
            && haystack
                .windows(needle.len())
                .any(|window| window == needle.as_slice())
    }
}

fn normalize(text: &str) -> String {
    words(text).join(" ")
}

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn parse_system(field: &str, value: &str) -> Result<String, FieldError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_SYSTEM
        && value.bytes().all(|b| b.is_ascii_graphic())
        && (value.starts_with("http://")
            || value.starts_with("https://")
            || value.starts_with("urn:oid:")
            || value.starts_with("urn:uuid:"));
    if ok {
        Ok(value.to_owned())
    } else {
        Err(FieldError::new(
            field,
            format!("must be an absolute URI (http, https, urn:oid or urn:uuid) of at most {MAX_SYSTEM} characters"),
        ))
    }
}

fn parse_code(field: &str, value: &str) -> Result<String, FieldError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_CODE
        && value.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        && value.trim() == value;
    if ok {
        Ok(value.to_owned())
    } else {
        Err(FieldError::new(
            field,
            format!("must be 1 to {MAX_CODE} printable ASCII characters"),
        ))
    }
}

/// Clinical free text: a note on an item, up to 10,000 characters, line breaks allowed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Note(String);

impl Note {
    /// # Errors
    ///
    /// A [`FieldError`] when empty, too long or holding control characters.
    pub fn parse(field: &str, value: &str) -> Result<Self, FieldError> {
        text(field, value, MAX_NOTE, true).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Note(<redacted>)")
    }
}

/// A short label: a document title, a lot number, a relationship.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Label(String);

impl Label {
    /// # Errors
    ///
    /// A [`FieldError`] when empty, longer than 200 characters or holding control characters.
    pub fn parse(field: &str, value: &str) -> Result<Self, FieldError> {
        text(field, value, MAX_SHORT_TEXT, false).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Label(<redacted>)")
    }
}

/// An amount with its unit: `{"value": "500", "unit": "mg"}`. The value is a positive decimal
/// kept as written, so nothing is lost to floating point.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Quantity {
    pub value: String,
    pub unit: String,
}

impl fmt::Debug for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Quantity(<redacted>)")
    }
}

impl Quantity {
    /// # Errors
    ///
    /// Every rejected part: the value must be a positive decimal of at most 12 digits, the
    /// unit 1 to 20 visible characters (UCUM such as `mg`, `mL`, `{tablet}`).
    pub fn parse(
        field: &str,
        value: Option<&str>,
        unit: Option<&str>,
    ) -> Result<Self, FieldErrors> {
        let mut errors = FieldErrors::new();
        let value = match value {
            None => {
                errors.push(FieldError::new(format!("{field}.value"), "is required"));
                None
            }
            Some(v) => {
                let digits = v.bytes().filter(u8::is_ascii_digit).count();
                let well_formed = !v.is_empty()
                    && digits <= 12
                    && v.bytes().filter(|b| *b == b'.').count() <= 1
                    && v.bytes().all(|b| b.is_ascii_digit() || b == b'.')
                    && !v.starts_with('.')
                    && !v.ends_with('.')
                    && v.bytes().any(|b| b.is_ascii_digit() && b != b'0');
                if well_formed {
                    Some(v.to_owned())
                } else {
                    errors.push(FieldError::new(
                        format!("{field}.value"),
                        "must be a positive decimal such as \"500\" or \"2.5\"",
                    ));
                    None
                }
            }
        };
        let unit = match unit {
            None => {
                errors.push(FieldError::new(format!("{field}.unit"), "is required"));
                None
            }
            Some(u)
                if !u.is_empty() && u.len() <= 20 && u.bytes().all(|b| b.is_ascii_graphic()) =>
            {
                Some(u.to_owned())
            }
            Some(_) => {
                errors.push(FieldError::new(
                    format!("{field}.unit"),
                    "must be 1 to 20 visible ASCII characters, such as mg",
                ));
                None
            }
        };
        errors.into_result()?;
        Ok(Self {
            value: value.unwrap_or_default(),
            unit: unit.unwrap_or_default(),
        })
    }
}

crate::code_enum!(
    /// The unit of a dosing period.
    PeriodUnit { Hour = "h", Day = "d", Week = "wk", Month = "mo" }
);

/// A measured value: a decimal as written (a sign and zero allowed, as results have them) and
/// its UCUM unit, when it has one.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Measurement {
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

impl fmt::Debug for Measurement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Measurement(<redacted>)")
    }
}

impl Measurement {
    /// # Errors
    ///
    /// `{field}.value` unless a decimal of at most 18 digits (`-2.5`, `0`, `120`);
    /// `{field}.unit` unless 1 to 30 visible ASCII characters.
    pub fn parse(field: &str, value: &str, unit: Option<&str>) -> Result<Self, FieldErrors> {
        let mut errors = FieldErrors::new();
        let digits = value.trim_start_matches(['-', '+']);
        let well_formed = !digits.is_empty()
            && digits.bytes().filter(u8::is_ascii_digit).count() <= 18
            && digits.bytes().filter(|b| *b == b'.').count() <= 1
            && digits.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            && !digits.starts_with('.')
            && !digits.ends_with('.');
        if !well_formed {
            errors.push(FieldError::new(
                format!("{field}.value"),
                "must be a decimal such as \"120\", \"-2.5\" or \"0\"",
            ));
        }
        let unit = unit.and_then(|u| {
            if !u.is_empty() && u.len() <= 30 && u.bytes().all(|b| b.is_ascii_graphic()) {
                Some(u.to_owned())
            } else {
                errors.push(FieldError::new(
                    format!("{field}.unit"),
                    "must be 1 to 30 visible ASCII characters (a UCUM code such as mg/dL)",
                ));
                None
            }
        });
        errors.into_result()?;
        Ok(Self {
            value: value.to_owned(),
            unit,
        })
    }
}

/// How often a dose is taken: `count` times per `period` `period_unit` (FHIR `Timing.repeat`),
/// or only when needed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Frequency {
    pub count: u32,
    pub period: u32,
    pub period_unit: PeriodUnit,
    #[serde(default)]
    pub as_needed: bool,
}

impl Frequency {
    /// # Errors
    ///
    /// When `count` or `period` is not between 1 and 1,000.
    pub fn new(
        field: &str,
        count: u32,
        period: u32,
        period_unit: PeriodUnit,
        as_needed: bool,
    ) -> Result<Self, FieldErrors> {
        let mut errors = FieldErrors::new();
        for (name, value) in [("count", count), ("period", period)] {
            if !(1..=1000).contains(&value) {
                errors.push(FieldError::new(
                    format!("{field}.{name}"),
                    "must be a whole number from 1 to 1000",
                ));
            }
        }
        errors.into_result()?;
        Ok(Self {
            count,
            period,
            period_unit,
            as_needed,
        })
    }
}

/// A date range whose end, if any, is not before its start.
///
/// # Errors
///
/// A [`FieldError`] on `end_field` when the end is before the start.
pub fn ordered_dates(
    end_field: &str,
    start: Option<NaiveDate>,
    end: Option<NaiveDate>,
) -> Result<(), FieldError> {
    match (start, end) {
        (Some(start), Some(end)) if end < start => {
            Err(FieldError::new(end_field, "must not be before the start"))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn concept(system: Option<&str>, code: Option<&str>, text: &str) -> Concept {
        Concept::parse("c", system, code, Some(text)).unwrap()
    }

    #[test]
    fn a_concept_needs_text_and_a_code_with_its_system() {
        let errors = Concept::parse("substance", None, Some("7980"), None).unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["substance.text", "substance.system"]);
        assert!(Concept::parse("s", Some("not a uri"), Some("1"), Some("x")).is_err());
    }

    #[test]
    fn substances_match_by_code_or_by_words() {
        let rx = Some(systems::RXNORM);
        let penicillin = concept(None, None, "Penicillin");
        assert!(penicillin.named_in(&concept(None, None, "Penicillin V potassium 250 MG")));
        assert!(!penicillin.named_in(&concept(None, None, "Penicillamine")));
        assert!(concept(rx, Some("7980"), "x").named_in(&concept(rx, Some("7980"), "y")));
        assert!(concept(None, None, "PEANUT  oil").same_as(&concept(None, None, "peanut oil")));
        assert!(!concept(rx, Some("1"), "a").same_as(&concept(rx, Some("2"), "a")));
    }

    #[test]
    fn quantities_are_positive_decimals_with_units() {
        assert!(Quantity::parse("dose", Some("2.5"), Some("mg")).is_ok());
        for bad in ["0", "-1", "1.", "1e3", "", "0.0"] {
            assert!(
                Quantity::parse("dose", Some(bad), Some("mg")).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn debug_output_never_holds_clinical_text() {
        let c = concept(None, None, "secret condition");
        assert!(!format!("{c:?}").contains("secret"));
        let n = Note::parse("note", "secret note").unwrap();
        assert!(!format!("{n:?}").contains("secret"));
    }
}
