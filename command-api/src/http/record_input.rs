//! Reading medical record items from JSON bodies, field by field, into the domain's types. Every
//! bad field is reported by its path; unknown fields are refused.

use application::records::{NewItem, Revision};
use chrono::NaiveDate;
use domain::medical_record::items::{
    Allergy, AllergyCategory, AllergyClinicalStatus, AllergyCriticality, BodySite, Document,
    DocumentContent, HistoryCategory, HistoryEntry, Immunization, ImmunizationStatus, ItemKind,
    Medication, MedicationStatus, Problem, ProblemStatus, Reaction, Route, Severity,
    VerificationStatus,
};
use domain::medical_record::values::{
    ordered_dates, systems, Concept, Frequency, Label, Note, PeriodUnit, Quantity,
};
use domain::medical_record::{ItemContent, ItemId};
use domain::patient::governance::Principal;
use domain::patient::Reason;
use domain::{FieldError, FieldErrors};
use serde_json::{Map, Value};

use crate::http::json::Fields;
use crate::http::patient_input::date;
use crate::http::ApiError;

/// What a create or revise body holds besides the item.
#[derive(Debug)]
pub struct Extras {
    pub reason: Option<Reason>,
    /// Allergy item ids whose warnings the caller acknowledges (medications).
    pub acknowledged: Vec<ItemId>,
}

fn known(kind: ItemKind) -> &'static [&'static str] {
    match kind {
        ItemKind::Allergy => &[
            "substance",
            "category",
            "criticality",
            "reactions",
            "clinical_status",
            "verification_status",
            "onset",
            "note",
            "reason",
        ],
        ItemKind::Medication => &[
            "medication",
            "dose",
            "route",
            "frequency",
            "start",
            "end",
            "status",
            "prescriber",
            "reason_for_use",
            "note",
            "reason",
            "acknowledge_allergy_warnings",
        ],
        ItemKind::Immunization => &[
            "vaccine",
            "occurred_on",
            "lot_number",
            "site",
            "route",
            "performer",
            "status",
            "note",
            "reason",
        ],
        ItemKind::Problem => &[
            "condition",
            "onset",
            "abatement",
            "clinical_status",
            "severity",
            "note",
            "reason",
        ],
        ItemKind::History => &[
            "category",
            "description",
            "relationship",
            "occurred_on",
            "note",
            "reason",
        ],
        ItemKind::Document => &["title", "document_type", "author", "date", "note", "reason"],
    }
}

/// A concept object `{"system", "code", "text"}` under `key`.
fn concept(f: &mut Fields<'_>, key: &str, required: bool) -> Option<Concept> {
    let object = if required {
        f.object(key)?
    } else {
        f.optional_object(key)?
    };
    let path = f.path(key);
    let mut inner = Fields::new(object, &path, &["system", "code", "text"]);
    let system = inner.optional_string("system");
    let code = inner.optional_string("code");
    let text = inner.optional_string("text");
    let parsed = Concept::parse(&path, system, code, text);
    f.absorb(inner.errors);
    match parsed {
        Ok(c) => Some(c),
        Err(errors) => {
            f.absorb(errors);
            None
        }
    }
}

/// A required code of `parse` under `key`.
fn code<T>(
    f: &mut Fields<'_>,
    key: &str,
    parse: fn(&str, &str) -> Result<T, FieldError>,
) -> Option<T> {
    let path = f.path(key);
    f.string(key).and_then(|v| f.check(parse(&path, v)))
}

fn optional_code<T>(
    f: &mut Fields<'_>,
    key: &str,
    parse: fn(&str, &str) -> Result<T, FieldError>,
) -> Option<T> {
    let path = f.path(key);
    f.optional_string(key)
        .and_then(|v| f.check(parse(&path, v)))
}

fn note(f: &mut Fields<'_>) -> Option<Note> {
    optional_code(f, "note", Note::parse)
}

fn principal(f: &mut Fields<'_>, key: &str, required: bool) -> Option<Principal> {
    if required {
        code(f, key, Principal::parse)
    } else {
        optional_code(f, key, Principal::parse)
    }
}

/// `value` is not after `today`.
fn not_in_future(f: &mut Fields<'_>, key: &str, value: Option<NaiveDate>, today: NaiveDate) {
    if value.is_some_and(|d| d > today) {
        let path = f.path(key);
        f.errors
            .push(FieldError::new(path, "must not be in the future"));
    }
}

fn allergy(f: &mut Fields<'_>, today: NaiveDate) -> Option<Allergy> {
    let substance = concept(f, "substance", true);
    let category = code(f, "category", AllergyCategory::parse);
    let criticality = code(f, "criticality", AllergyCriticality::parse);
    let clinical_status = code(f, "clinical_status", AllergyClinicalStatus::parse);
    let verification_status = code(f, "verification_status", VerificationStatus::parse);
    let onset = date(f, "onset", false);
    not_in_future(f, "onset", onset, today);
    let mut reactions = Vec::new();
    if let Some(items) = f.optional_array("reactions") {
        for (i, item) in items.iter().enumerate() {
            let path = format!("{}[{i}]", f.path("reactions"));
            let Some(object) = item.as_object() else {
                f.errors.push(FieldError::new(path, "must be an object"));
                continue;
            };
            let mut r = Fields::new(object, &path, &["manifestation", "severity"]);
            let manifestation = concept(&mut r, "manifestation", true);
            let severity = optional_code(&mut r, "severity", Severity::parse);
            f.absorb(r.errors);
            if let Some(manifestation) = manifestation {
                reactions.push(Reaction {
                    manifestation,
                    severity,
                });
            }
        }
    }
    let note = note(f);
    Some(Allergy {
        substance: substance?,
        category: category?,
        criticality: criticality?,
        reactions,
        clinical_status: clinical_status?,
        verification_status: verification_status?,
        onset,
        note,
    })
}

fn medication(f: &mut Fields<'_>) -> Option<Medication> {
    let medication = concept(f, "medication", true);
    let dose = f.object("dose").and_then(|object| {
        let path = f.path("dose");
        let mut d = Fields::new(object, &path, &["value", "unit"]);
        let value = d.optional_string("value");
        let unit = d.optional_string("unit");
        let parsed = Quantity::parse(&path, value, unit);
        f.absorb(d.errors);
        f.errors.check_all(parsed)
    });
    let route = code(f, "route", Route::parse);
    let frequency = f.object("frequency").and_then(|object| {
        let path = f.path("frequency");
        let mut q = Fields::new(
            object,
            &path,
            &["count", "period", "period_unit", "as_needed"],
        );
        let count = q.optional_whole("count", 1..=1000);
        let period = q.optional_whole("period", 1..=1000);
        for (key, value) in [("count", count), ("period", period)] {
            if value.is_none() && !q.present(key) {
                let p = q.path(key);
                q.errors.push(FieldError::new(p, "is required"));
            }
        }
        let unit = code(&mut q, "period_unit", PeriodUnit::parse);
        let as_needed = q.optional_bool("as_needed").unwrap_or(false);
        f.absorb(q.errors);
        let parsed = Frequency::new(&path, count?, period?, unit?, as_needed);
        f.errors.check_all(parsed)
    });
    let start = date(f, "start", true);
    let end = date(f, "end", false);
    if let Err(e) = ordered_dates(&f.path("end"), start, end) {
        f.errors.push(e);
    }
    let status = code(f, "status", MedicationStatus::parse);
    let prescriber = principal(f, "prescriber", true);
    let reason = concept(f, "reason_for_use", false);
    let note = note(f);
    Some(Medication {
        medication: medication?,
        dose: dose?,
        route: route?,
        frequency: frequency?,
        start: start?,
        end,
        status: status?,
        prescriber: prescriber?,
        reason_for_use: reason,
        note,
    })
}

fn immunization(f: &mut Fields<'_>, today: NaiveDate) -> Option<Immunization> {
    let vaccine = concept(f, "vaccine", true);
    if let Some(v) = &vaccine {
        let cvx = v.system.as_deref() == Some(systems::CVX)
            && v.code.as_deref().is_some_and(|c| {
                (1..=4).contains(&c.len()) && c.bytes().all(|b| b.is_ascii_digit())
            });
        if !cvx {
            let path = f.path("vaccine");
            f.errors.push(FieldError::new(
                path,
                format!(
                    "must be coded in CVX: system {} and a code of 1 to 4 digits",
                    systems::CVX
                ),
            ));
        }
    }
    let occurred_on = date(f, "occurred_on", true);
    not_in_future(f, "occurred_on", occurred_on, today);
    let lot_number = optional_code(f, "lot_number", Label::parse);
    let site = optional_code(f, "site", BodySite::parse);
    let route = optional_code(f, "route", Route::parse);
    let performer = principal(f, "performer", false);
    let status = code(f, "status", ImmunizationStatus::parse);
    let note = note(f);
    Some(Immunization {
        vaccine: vaccine?,
        occurred_on: occurred_on?,
        lot_number,
        site,
        route,
        performer,
        status: status?,
        note,
    })
}

fn problem(f: &mut Fields<'_>, today: NaiveDate) -> Option<Problem> {
    let condition = concept(f, "condition", true);
    if let Some(c) = &condition {
        let coded = c.code.is_some()
            && [systems::ICD_10, systems::ICD_10_CM, systems::SNOMED_CT]
                .contains(&c.system.as_deref().unwrap_or_default());
        if !coded {
            let path = f.path("condition");
            f.errors.push(FieldError::new(
                path,
                format!(
                    "must be coded in ICD-10 ({} or {}) or SNOMED CT ({})",
                    systems::ICD_10,
                    systems::ICD_10_CM,
                    systems::SNOMED_CT
                ),
            ));
        }
    }
    let onset = date(f, "onset", false);
    not_in_future(f, "onset", onset, today);
    let abatement = date(f, "abatement", false);
    not_in_future(f, "abatement", abatement, today);
    if let Err(e) = ordered_dates(&f.path("abatement"), onset, abatement) {
        f.errors.push(e);
    }
    let clinical_status = code(f, "clinical_status", ProblemStatus::parse);
    let severity = optional_code(f, "severity", Severity::parse);
    let note = note(f);
    Some(Problem {
        condition: condition?,
        onset,
        abatement,
        clinical_status: clinical_status?,
        severity,
        note,
    })
}

fn history(f: &mut Fields<'_>, today: NaiveDate) -> Option<HistoryEntry> {
    let category = code(f, "category", HistoryCategory::parse);
    let description = concept(f, "description", true);
    let relationship = optional_code(f, "relationship", Label::parse);
    if category == Some(HistoryCategory::Family)
        && relationship.is_none()
        && !f.present("relationship")
    {
        let path = f.path("relationship");
        f.errors
            .push(FieldError::new(path, "is required for family history"));
    }
    let occurred_on = date(f, "occurred_on", false);
    not_in_future(f, "occurred_on", occurred_on, today);
    let note = note(f);
    Some(HistoryEntry {
        category: category?,
        description: description?,
        relationship,
        occurred_on,
        note,
    })
}

/// A document's descriptive fields; its content comes from the upload (or, on revision, from
/// the current version).
pub fn document(
    object: &Map<String, Value>,
    prefix: &str,
    content: DocumentContent,
    today: NaiveDate,
) -> Result<(Document, Extras), FieldErrors> {
    let mut f = Fields::new(object, prefix, known(ItemKind::Document));
    let title = code(&mut f, "title", Label::parse);
    let document_type = concept(&mut f, "document_type", true);
    let author = principal(&mut f, "author", true);
    let date_value = date(&mut f, "date", true);
    not_in_future(&mut f, "date", date_value, today);
    let note = note(&mut f);
    let extras = extras(&mut f, false, false);
    f.errors.into_result()?;
    let missing = FieldErrors::new;
    Ok((
        Document {
            title: title.ok_or_else(missing)?,
            document_type: document_type.ok_or_else(missing)?,
            author: author.ok_or_else(missing)?,
            date: date_value.ok_or_else(missing)?,
            content,
            note,
        },
        extras,
    ))
}

fn extras(f: &mut Fields<'_>, reason_required: bool, acknowledgements: bool) -> Extras {
    let path = f.path("reason");
    let reason = if reason_required {
        f.string("reason")
    } else {
        f.optional_string("reason")
    }
    .and_then(|v| f.check(Reason::parse(&path, v)));
    let mut acknowledged = Vec::new();
    if acknowledgements && f.present("acknowledge_allergy_warnings") {
        let path = f.path("acknowledge_allergy_warnings");
        for (i, id) in f
            .optional_string_array("acknowledge_allergy_warnings")
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            if let Some(id) = f.check(ItemId::parse(&format!("{path}[{i}]"), id)) {
                acknowledged.push(id);
            }
        }
    }
    Extras {
        reason,
        acknowledged,
    }
}

/// The item of `kind` (not a document) a create or revise body describes, and its extras.
/// Revisions need a reason.
///
/// # Errors
///
/// [`ApiError::Validation`] naming every bad field.
pub fn item(
    kind: ItemKind,
    object: &Map<String, Value>,
    revision: bool,
    today: NaiveDate,
) -> Result<(ItemContent, Extras), ApiError> {
    let mut f = Fields::new(object, "", known(kind));
    let content = match kind {
        ItemKind::Allergy => allergy(&mut f, today).map(ItemContent::Allergy),
        ItemKind::Medication => medication(&mut f).map(ItemContent::Medication),
        ItemKind::Immunization => immunization(&mut f, today).map(ItemContent::Immunization),
        ItemKind::Problem => problem(&mut f, today).map(ItemContent::Problem),
        ItemKind::History => history(&mut f, today).map(ItemContent::History),
        ItemKind::Document => {
            f.errors.push(FieldError::new(
                "",
                "documents are uploaded as multipart/form-data",
            ));
            None
        }
    };
    let extras = extras(&mut f, revision, kind == ItemKind::Medication);
    f.finish()?;
    let content = content.ok_or_else(|| ApiError::Validation(FieldErrors::new()))?;
    Ok((content, extras))
}

/// A new item of `kind` (not a document).
///
/// # Errors
///
/// [`ApiError::Validation`] naming every bad field.
pub fn new_item(
    kind: ItemKind,
    object: &Map<String, Value>,
    today: NaiveDate,
) -> Result<NewItem, ApiError> {
    let (content, extras) = item(kind, object, false, today)?;
    Ok(NewItem {
        content,
        reason: extras.reason,
        acknowledged: extras.acknowledged,
    })
}

/// A revision of an item of `kind` (not a document): its new content and why.
///
/// # Errors
///
/// [`ApiError::Validation`] naming every bad field.
pub fn revision(
    kind: ItemKind,
    object: &Map<String, Value>,
    today: NaiveDate,
) -> Result<Revision, ApiError> {
    let (content, extras) = item(kind, object, true, today)?;
    let reason = extras
        .reason
        .ok_or_else(|| ApiError::Validation(FieldErrors::new()))?;
    Ok(Revision {
        content,
        reason,
        acknowledged: extras.acknowledged,
    })
}

/// A revision of what describes a document whose content is `current`; it needs a reason.
///
/// # Errors
///
/// [`ApiError::Validation`] naming every bad field.
pub fn document_revision(
    object: &Map<String, Value>,
    current: DocumentContent,
    today: NaiveDate,
) -> Result<Revision, ApiError> {
    let (document, extras) = document(object, "", current, today).map_err(ApiError::Validation)?;
    let reason = extras
        .reason
        .ok_or_else(|| ApiError::Validation(FieldError::new("reason", "is required").into()))?;
    Ok(Revision {
        content: ItemContent::Document(document),
        reason,
        acknowledged: extras.acknowledged,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 27).unwrap()
    }

    fn fields_of(result: Result<(ItemContent, Extras), ApiError>) -> Vec<String> {
        match result {
            Err(ApiError::Validation(errors)) => errors.iter().map(|e| e.field.clone()).collect(),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn every_bad_field_of_a_medication_is_named() {
        let body = json!({
            "medication": {"text": ""},
            "dose": {"value": "-5", "unit": "mg"},
            "route": "by-mouth",
            "frequency": {"count": 0, "period": 1, "period_unit": "d"},
            "start": "2026-11-02",
            "end": "2026-11-01",
            "status": "running",
            "prescriber": "dr who",
            "colour": "red",
        });
        let fields = fields_of(item(
            ItemKind::Medication,
            body.as_object().unwrap(),
            false,
            today(),
        ));
        for expected in [
            "colour",
            "medication.text",
            "dose.value",
            "route",
            "frequency.count",
            "end",
            "status",
            "prescriber",
        ] {
            assert!(
                fields.iter().any(|f| f == expected),
                "{expected} not in {fields:?}"
            );
        }
    }

    #[test]
    fn problems_need_icd_10_or_snomed_and_immunizations_cvx() {
        let problem = json!({"condition": {"system": "http://loinc.org", "code": "1", "text": "x"},
                             "clinical_status": "active"});
        assert_eq!(
            fields_of(item(
                ItemKind::Problem,
                problem.as_object().unwrap(),
                false,
                today()
            )),
            ["condition"]
        );
        let vaccine =
            json!({"vaccine": {"text": "flu"}, "occurred_on": "2030-01-01", "status": "completed"});
        assert_eq!(
            fields_of(item(
                ItemKind::Immunization,
                vaccine.as_object().unwrap(),
                false,
                today()
            )),
            ["vaccine", "occurred_on"]
        );
    }

    #[test]
    fn a_revision_needs_a_reason() {
        let body = json!({"category": "social", "description": {"text": "Non-smoker"}});
        assert!(item(ItemKind::History, body.as_object().unwrap(), false, today()).is_ok());
        assert_eq!(
            fields_of(item(
                ItemKind::History,
                body.as_object().unwrap(),
                true,
                today()
            )),
            ["reason"]
        );
    }
}
