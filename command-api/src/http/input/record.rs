//! The bodies of medical record items: allergies, medications, immunizations, problems,
//! history entries and what describes a document. A revision sends the whole item again, with
//! a reason.

use application::records::{NewItem, Revision};
use chrono::{DateTime, NaiveDate, Utc};
use domain::medical_record::items::{
    Allergy, AllergyCategory, AllergyClinicalStatus, AllergyCriticality, BodySite, Document,
    DocumentContent, Encounter, EncounterClass, EncounterStatus, HistoryCategory, HistoryEntry,
    Immunization, ImmunizationStatus, ItemKind, Medication, MedicationSource, MedicationStatus,
    Observation, ObservationCategory, ObservationComponent, ObservationStatus, ObservationValue,
    Problem, ProblemStatus, Procedure, ProcedureStatus, Reaction, ReferenceRange, Route, Severity,
    VerificationStatus,
};
use domain::medical_record::values::{
    ordered_dates, systems, Concept, Frequency, Label, Measurement, Note, PeriodUnit, Quantity,
};
use domain::medical_record::{ItemContent, ItemId};
use domain::patient::governance::Principal;
use domain::patient::Reason;
use domain::{FieldError, FieldErrors};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::patient::{date, optional_text, reason, text, Strings};
use super::{join as path, objects, one, optional, parse, AllOk, Body, Field};

/// A coded concept: `text` always; `system` and `code` together.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ConceptBody {
    #[serde(default)]
    pub system: Field<String>,
    #[serde(default)]
    pub code: Field<String>,
    /// The code system's display of the code (FHIR `Coding.display`).
    #[serde(default)]
    pub display: Field<String>,
    #[serde(default)]
    pub text: Field<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ReactionBody {
    pub manifestation: Field<ConceptBody>,
    /// `mild`, `moderate` or `severe`.
    #[serde(default)]
    pub severity: Field<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct AllergyBody {
    pub substance: Field<ConceptBody>,
    /// `food`, `medication`, `environment` or `biologic`, when known.
    #[serde(default)]
    pub category: Field<String>,
    /// `low`, `high` or `unable-to-assess`, when known.
    #[serde(default)]
    pub criticality: Field<String>,
    #[serde(default)]
    pub reactions: Field<Vec<Field<ReactionBody>>>,
    pub clinical_status: Field<String>,
    /// `unconfirmed`, `presumed`, `confirmed` or `refuted`, when known.
    #[serde(default)]
    pub verification_status: Field<String>,
    /// `YYYY-MM-DD`, not in the future.
    #[serde(default)]
    pub onset: Field<String>,
    #[serde(default)]
    pub note: Field<String>,
    /// Why (required on a revision).
    #[serde(default)]
    pub reason: Field<String>,
}

/// A dose: a decimal `value` and a UCUM `unit`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct DoseBody {
    #[serde(default)]
    pub value: Field<String>,
    #[serde(default)]
    pub unit: Field<String>,
}

/// `count` times per `period` `period_unit`s, `as_needed` or not.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct FrequencyBody {
    /// 1 to 1000.
    pub count: Field<i64>,
    /// 1 to 1000.
    pub period: Field<i64>,
    pub period_unit: Field<String>,
    #[serde(default)]
    pub as_needed: Field<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct MedicationBody {
    pub medication: Field<ConceptBody>,
    /// `order` (the default: prescribed here), `patient-reported` or `other-record`.
    #[serde(default)]
    pub source: Field<String>,
    #[serde(default)]
    pub dose: Field<DoseBody>,
    #[serde(default)]
    pub route: Field<String>,
    #[serde(default)]
    pub frequency: Field<FrequencyBody>,
    /// Taken as needed with no schedule (with one, `frequency.as_needed` says it).
    #[serde(default)]
    pub as_needed: Field<bool>,
    /// `YYYY-MM-DD`, when known.
    #[serde(default)]
    pub start: Field<String>,
    #[serde(default)]
    pub end: Field<String>,
    /// `active`, `on-hold`, `intended`, `stopped`, `completed`, `not-taken` or `unknown`.
    pub status: Field<String>,
    /// The prescriber's user id, when known.
    #[serde(default)]
    pub prescriber: Field<String>,
    #[serde(default)]
    pub reason_for_use: Field<ConceptBody>,
    #[serde(default)]
    pub note: Field<String>,
    #[serde(default)]
    pub reason: Field<String>,
    /// Ids of the allergies whose warnings the prescriber acknowledges.
    #[serde(default)]
    pub acknowledge_allergy_warnings: Strings,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ImmunizationBody {
    /// Coded in CVX.
    pub vaccine: Field<ConceptBody>,
    pub occurred_on: Field<String>,
    #[serde(default)]
    pub lot_number: Field<String>,
    #[serde(default)]
    pub site: Field<String>,
    #[serde(default)]
    pub route: Field<String>,
    #[serde(default)]
    pub performer: Field<String>,
    pub status: Field<String>,
    #[serde(default)]
    pub note: Field<String>,
    #[serde(default)]
    pub reason: Field<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ProblemBody {
    /// Coded in ICD-10 or SNOMED CT.
    pub condition: Field<ConceptBody>,
    #[serde(default)]
    pub onset: Field<String>,
    #[serde(default)]
    pub abatement: Field<String>,
    pub clinical_status: Field<String>,
    #[serde(default)]
    pub severity: Field<String>,
    #[serde(default)]
    pub note: Field<String>,
    #[serde(default)]
    pub reason: Field<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct HistoryBody {
    pub category: Field<String>,
    pub description: Field<ConceptBody>,
    /// Who in the family (required for family history).
    #[serde(default)]
    pub relationship: Field<String>,
    #[serde(default)]
    pub occurred_on: Field<String>,
    #[serde(default)]
    pub note: Field<String>,
    #[serde(default)]
    pub reason: Field<String>,
}

/// What describes an uploaded document (the `metadata` part of the upload).
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct DocumentBody {
    pub title: Field<String>,
    pub document_type: Field<ConceptBody>,
    pub author: Field<String>,
    pub date: Field<String>,
    #[serde(default)]
    pub note: Field<String>,
    #[serde(default)]
    pub reason: Field<String>,
}

/// A measured value: a decimal `value` (a sign and zero allowed) and its UCUM `unit`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct MeasurementBody {
    pub value: Field<String>,
    #[serde(default)]
    pub unit: Field<String>,
}

/// A range of measured values: `low`, `high` or both.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RangeBody {
    #[serde(default)]
    pub low: Field<MeasurementBody>,
    #[serde(default)]
    pub high: Field<MeasurementBody>,
    /// A reference range's words (`normal for age`).
    #[serde(default)]
    pub text: Field<String>,
}

/// One part of an observation: its code and at most one value.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ComponentBody {
    pub code: Field<ConceptBody>,
    #[serde(default)]
    pub value_quantity: Field<MeasurementBody>,
    #[serde(default)]
    pub value_text: Field<String>,
    #[serde(default)]
    pub value_coded: Field<ConceptBody>,
    #[serde(default)]
    pub value_range: Field<RangeBody>,
}

/// A laboratory result, vital sign or other measurement: at most one of the `value_*`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ObservationBody {
    /// Coded in LOINC as a rule.
    pub code: Field<ConceptBody>,
    /// `vital-signs`, `laboratory`, `social-history`, `survey`, `exam`, `imaging`,
    /// `procedure`, `therapy` or `activity`.
    #[serde(default)]
    pub category: Field<String>,
    /// `registered`, `preliminary`, `final`, `amended`, `corrected`, `cancelled` or `unknown`.
    pub status: Field<String>,
    /// When it was observed: an RFC 3339 instant or a `YYYY-MM-DD` day, not in the future.
    #[serde(default)]
    pub effective: Field<String>,
    #[serde(default)]
    pub value_quantity: Field<MeasurementBody>,
    #[serde(default)]
    pub value_text: Field<String>,
    #[serde(default)]
    pub value_coded: Field<ConceptBody>,
    #[serde(default)]
    pub value_range: Field<RangeBody>,
    #[serde(default)]
    pub components: Field<Vec<Field<ComponentBody>>>,
    /// `H`, `L`, `N`, `A`... (HL7 v3 ObservationInterpretation).
    #[serde(default)]
    pub interpretation: Field<ConceptBody>,
    #[serde(default)]
    pub reference_range: Field<RangeBody>,
    #[serde(default)]
    pub note: Field<String>,
    /// Why (required on a revision).
    #[serde(default)]
    pub reason: Field<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ProcedureBody {
    /// Coded in SNOMED CT or CPT as a rule.
    pub code: Field<ConceptBody>,
    /// `preparation`, `in-progress`, `not-done`, `on-hold`, `stopped`, `completed` or
    /// `unknown`.
    pub status: Field<String>,
    /// When it was performed (an instant or a day), or began.
    #[serde(default)]
    pub performed_start: Field<String>,
    #[serde(default)]
    pub performed_end: Field<String>,
    /// The user id of who performed it.
    #[serde(default)]
    pub performer: Field<String>,
    /// Why it was performed.
    #[serde(default)]
    pub reason_code: Field<ConceptBody>,
    #[serde(default)]
    pub note: Field<String>,
    #[serde(default)]
    pub reason: Field<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct EncounterBody {
    /// `planned`, `arrived`, `triaged`, `in-progress`, `onleave`, `finished`, `cancelled` or
    /// `unknown`.
    pub status: Field<String>,
    /// `AMB`, `EMER`, `IMP`, `SS`, `HH`, `VR`, `FLD`, `PRENC` or `OBSENC`.
    pub class: Field<String>,
    #[serde(default)]
    pub encounter_type: Field<ConceptBody>,
    #[serde(default)]
    pub start: Field<String>,
    #[serde(default)]
    pub end: Field<String>,
    /// The user id of the practitioner seen.
    #[serde(default)]
    pub practitioner: Field<String>,
    #[serde(default)]
    pub location: Field<String>,
    #[serde(default)]
    pub reason_code: Field<ConceptBody>,
    /// The appointment it fulfilled.
    #[serde(default)]
    pub appointment_id: Field<String>,
    #[serde(default)]
    pub note: Field<String>,
    #[serde(default)]
    pub reason: Field<String>,
}

objects!(
    ConceptBody,
    ReactionBody,
    DoseBody,
    FrequencyBody,
    MeasurementBody,
    RangeBody,
    ComponentBody
);

type Parse<T> = fn(&str, &str) -> Result<T, FieldError>;

/// A required code at `field`, as `parse` reads it.
fn code<T>(value: &Field<String>, field: &str, parse: Parse<T>) -> Result<T, FieldErrors> {
    text(value, field, |v| one(parse(field, v)))
}

fn optional_code<T>(
    value: &Field<String>,
    field: &str,
    parse: Parse<T>,
) -> Result<Option<T>, FieldErrors> {
    optional_text(value, field, |v| one(parse(field, v)))
}

/// A concept at `field`: each part of the right shape, then the rules of a concept.
fn concept(body: &ConceptBody, field: &str) -> Result<Concept, FieldErrors> {
    let (system, code, display, text) = (
        body.system.optional(&path(field, "system")),
        body.code.optional(&path(field, "code")),
        body.display.optional(&path(field, "display")),
        body.text.optional(&path(field, "text")),
    )
        .all_ok()?;
    Concept::parse_displayed(
        field,
        (
            system.map(String::as_str),
            code.map(String::as_str),
            display.map(String::as_str),
        ),
        text.map(String::as_str),
    )
}

fn required_concept(value: &Field<ConceptBody>, field: &str) -> Result<Concept, FieldErrors> {
    value.required(field).and_then(|c| concept(c, field))
}

fn optional_concept(
    value: &Field<ConceptBody>,
    field: &str,
) -> Result<Option<Concept>, FieldErrors> {
    value
        .optional(field)
        .and_then(|c| optional(c, |c| concept(c, field)))
}

fn note(value: &Field<String>, prefix: &str) -> Result<Option<Note>, FieldErrors> {
    optional_code(value, &path(prefix, "note"), Note::parse)
}

/// A date at `field`, not after `today`.
fn past_date(value: &str, field: &str, today: NaiveDate) -> Result<NaiveDate, FieldErrors> {
    let date = date(value, field)?;
    if date > today {
        return Err(FieldError::new(field, "must not be in the future").into());
    }
    Ok(date)
}

fn required_past_date(
    value: &Field<String>,
    field: &str,
    today: NaiveDate,
) -> Result<NaiveDate, FieldErrors> {
    text(value, field, |v| past_date(v, field, today))
}

fn optional_past_date(
    value: &Field<String>,
    field: &str,
    today: NaiveDate,
) -> Result<Option<NaiveDate>, FieldErrors> {
    optional_text(value, field, |v| past_date(v, field, today))
}

fn allergy(body: &AllergyBody, today: NaiveDate) -> Result<Allergy, FieldErrors> {
    let reactions = body.reactions.each("reactions", |r, at| {
        let (manifestation, severity) = (
            required_concept(&r.manifestation, &path(at, "manifestation")),
            optional_code(&r.severity, &path(at, "severity"), Severity::parse),
        )
            .all_ok()?;
        Ok(Reaction {
            manifestation,
            severity,
        })
    });
    let (
        substance,
        category,
        criticality,
        clinical_status,
        verification_status,
        onset,
        reactions,
        note,
    ) = (
        required_concept(&body.substance, "substance"),
        optional_code(&body.category, "category", AllergyCategory::parse),
        optional_code(&body.criticality, "criticality", AllergyCriticality::parse),
        code(
            &body.clinical_status,
            "clinical_status",
            AllergyClinicalStatus::parse,
        ),
        optional_code(
            &body.verification_status,
            "verification_status",
            VerificationStatus::parse,
        ),
        optional_past_date(&body.onset, "onset", today),
        reactions,
        note(&body.note, ""),
    )
        .all_ok()?;
    Ok(Allergy {
        substance,
        category,
        criticality,
        reactions,
        clinical_status,
        verification_status,
        onset,
        note,
    })
}

fn dose(body: &DoseBody) -> Result<Quantity, FieldErrors> {
    let (value, unit) = (
        body.value.optional("dose.value"),
        body.unit.optional("dose.unit"),
    )
        .all_ok()?;
    Quantity::parse("dose", value.map(String::as_str), unit.map(String::as_str))
}

fn frequency(body: &FrequencyBody) -> Result<Frequency, FieldErrors> {
    // A count that is not a whole number, or out of `u32`, is out of 1 to 1000 too: the
    // domain says so.
    let whole = |value: &Field<i64>, field: &str| match value {
        Field::Absent => Err(FieldErrors::from(FieldError::new(field, "is required"))),
        Field::Misshapen => Ok(0),
        Field::Given(n) => Ok(u32::try_from(*n).unwrap_or(0)),
    };
    let (count, period, unit, as_needed) = (
        whole(&body.count, "frequency.count"),
        whole(&body.period, "frequency.period"),
        code(
            &body.period_unit,
            "frequency.period_unit",
            PeriodUnit::parse,
        ),
        body.as_needed.optional("frequency.as_needed"),
    )
        .all_ok()?;
    Frequency::new(
        "frequency",
        count,
        period,
        unit,
        as_needed.copied().unwrap_or(false),
    )
}

fn medication(body: &MedicationBody) -> Result<Medication, FieldErrors> {
    let dates = (
        optional_text(&body.start, "start", |v| date(v, "start")),
        optional_text(&body.end, "end", |v| date(v, "end")),
    )
        .all_ok()
        .and_then(|(start, end)| {
            one(ordered_dates("end", start, end))?;
            Ok((start, end))
        });
    let (
        medication,
        source,
        dose,
        route,
        frequency,
        as_needed,
        (start, end),
        status,
        prescriber,
        reason_for_use,
        note,
    ) = (
        required_concept(&body.medication, "medication"),
        optional_code(&body.source, "source", MedicationSource::parse),
        body.dose.optional("dose").and_then(|d| optional(d, dose)),
        optional_code(&body.route, "route", Route::parse),
        body.frequency
            .optional("frequency")
            .and_then(|f| optional(f, frequency)),
        body.as_needed.optional("as_needed"),
        dates,
        code(&body.status, "status", MedicationStatus::parse),
        optional_code(&body.prescriber, "prescriber", Principal::parse),
        optional_concept(&body.reason_for_use, "reason_for_use"),
        note(&body.note, ""),
    )
        .all_ok()?;
    Ok(Medication {
        medication,
        source: source.unwrap_or(MedicationSource::Order),
        dose,
        route,
        frequency,
        as_needed: as_needed.copied().unwrap_or(false),
        start,
        end,
        status,
        prescriber,
        reason_for_use,
        note,
    })
}

fn immunization(body: &ImmunizationBody, today: NaiveDate) -> Result<Immunization, FieldErrors> {
    let vaccine = required_concept(&body.vaccine, "vaccine").and_then(|v| {
        let cvx = v.system.as_deref() == Some(systems::CVX)
            && v.code.as_deref().is_some_and(|c| {
                (1..=4).contains(&c.len()) && c.bytes().all(|b| b.is_ascii_digit())
            });
        if !cvx {
            return Err(FieldError::new(
                "vaccine",
                format!(
                    "must be coded in CVX: system {} and a code of 1 to 4 digits",
                    systems::CVX
                ),
            )
            .into());
        }
        Ok(v)
    });
    let (vaccine, occurred_on, lot_number, site, route, performer, status, note) = (
        vaccine,
        required_past_date(&body.occurred_on, "occurred_on", today),
        optional_code(&body.lot_number, "lot_number", Label::parse),
        optional_code(&body.site, "site", BodySite::parse),
        optional_code(&body.route, "route", Route::parse),
        optional_code(&body.performer, "performer", Principal::parse),
        code(&body.status, "status", ImmunizationStatus::parse),
        note(&body.note, ""),
    )
        .all_ok()?;
    Ok(Immunization {
        vaccine,
        occurred_on,
        lot_number,
        site,
        route,
        performer,
        status,
        note,
    })
}

fn problem(body: &ProblemBody, today: NaiveDate) -> Result<Problem, FieldErrors> {
    let condition = required_concept(&body.condition, "condition").and_then(|c| {
        let coded = c.code.is_some()
            && [systems::ICD_10, systems::ICD_10_CM, systems::SNOMED_CT]
                .contains(&c.system.as_deref().unwrap_or_default());
        if !coded {
            return Err(FieldError::new(
                "condition",
                format!(
                    "must be coded in ICD-10 ({} or {}) or SNOMED CT ({})",
                    systems::ICD_10,
                    systems::ICD_10_CM,
                    systems::SNOMED_CT
                ),
            )
            .into());
        }
        Ok(c)
    });
    let dates = (
        optional_past_date(&body.onset, "onset", today),
        optional_past_date(&body.abatement, "abatement", today),
    )
        .all_ok()
        .and_then(|(onset, abatement)| {
            one(ordered_dates("abatement", onset, abatement))?;
            Ok((onset, abatement))
        });
    let (condition, (onset, abatement), clinical_status, severity, note) = (
        condition,
        dates,
        code(
            &body.clinical_status,
            "clinical_status",
            ProblemStatus::parse,
        ),
        optional_code(&body.severity, "severity", Severity::parse),
        note(&body.note, ""),
    )
        .all_ok()?;
    Ok(Problem {
        condition,
        onset,
        abatement,
        clinical_status,
        severity,
        note,
    })
}

fn history(body: &HistoryBody, today: NaiveDate) -> Result<HistoryEntry, FieldErrors> {
    let (category, description, relationship, occurred_on, note) = (
        code(&body.category, "category", HistoryCategory::parse),
        required_concept(&body.description, "description"),
        optional_code(&body.relationship, "relationship", Label::parse),
        optional_past_date(&body.occurred_on, "occurred_on", today),
        note(&body.note, ""),
    )
        .all_ok()?;
    if category == HistoryCategory::Family && relationship.is_none() {
        return Err(FieldError::new("relationship", "is required for family history").into());
    }
    Ok(HistoryEntry {
        category,
        description,
        relationship,
        occurred_on,
        note,
    })
}

/// The allergies whose warnings a medication's prescriber acknowledges.
fn acknowledged(ids: &Strings) -> Result<Vec<ItemId>, FieldErrors> {
    ids.each("acknowledge_allergy_warnings", |id, at| {
        one(ItemId::parse(at, id))
    })
}

/// The reason of a body, required on a revision.
fn why(value: &Field<String>, required: bool) -> Result<Option<Reason>, FieldErrors> {
    if required {
        text(value, "reason", |v| reason(v, "reason")).map(Some)
    } else {
        optional_text(value, "reason", |v| reason(v, "reason"))
    }
}

/// An item of `kind` with its reason and acknowledgements, `today` the day it arrives.
fn item(
    kind: ItemKind,
    object: &Map<String, Value>,
    revision: bool,
    today: NaiveDate,
) -> Result<(ItemContent, Option<Reason>, Vec<ItemId>), FieldErrors> {
    /// A body of type `B` whose content `content` reads, with its reason.
    fn with<B: Body, T>(
        object: &Map<String, Value>,
        revision: bool,
        reason_of: fn(&B) -> &Field<String>,
        content: impl FnOnce(&B) -> Result<T, FieldErrors>,
        kind: fn(T) -> ItemContent,
    ) -> Result<(ItemContent, Option<Reason>, Vec<ItemId>), FieldErrors> {
        let (content, reason) = parse(object, "")?
            .then(|body: B| (content(&body), why(reason_of(&body), revision)).all_ok())?;
        Ok((kind(content), reason, Vec::new()))
    }
    Ok(match kind {
        ItemKind::Allergy => with(
            object,
            revision,
            |b: &AllergyBody| &b.reason,
            |b| allergy(b, today),
            ItemContent::Allergy,
        )?,
        ItemKind::Medication => {
            let (m, r, ids) = parse(object, "")?.then(|body: MedicationBody| {
                (
                    medication(&body),
                    why(&body.reason, revision),
                    acknowledged(&body.acknowledge_allergy_warnings),
                )
                    .all_ok()
            })?;
            (ItemContent::Medication(m), r, ids)
        }
        ItemKind::Immunization => with(
            object,
            revision,
            |b: &ImmunizationBody| &b.reason,
            |b| immunization(b, today),
            ItemContent::Immunization,
        )?,
        ItemKind::Problem => with(
            object,
            revision,
            |b: &ProblemBody| &b.reason,
            |b| problem(b, today),
            ItemContent::Problem,
        )?,
        ItemKind::History => with(
            object,
            revision,
            |b: &HistoryBody| &b.reason,
            |b| history(b, today),
            ItemContent::History,
        )?,
        ItemKind::Document => {
            return Err(FieldError::new("", "documents are uploaded as multipart/form-data").into())
        }
        ItemKind::Observation => with(
            object,
            revision,
            |b: &ObservationBody| &b.reason,
            |b| observation(b, today),
            ItemContent::Observation,
        )?,
        ItemKind::Procedure => with(
            object,
            revision,
            |b: &ProcedureBody| &b.reason,
            |b| procedure(b, today),
            ItemContent::Procedure,
        )?,
        ItemKind::Encounter => with(
            object,
            revision,
            |b: &EncounterBody| &b.reason,
            |b| encounter(b, today),
            ItemContent::Encounter,
        )?,
    })
}

/// An instant (RFC 3339, any offset) or a day (its start, UTC) at `field`, not after `today`.
fn moment(value: &str, field: &str, today: NaiveDate) -> Result<DateTime<Utc>, FieldErrors> {
    let parsed = DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| {
            NaiveDate::parse_from_str(value, "%Y-%m-%d")
                .map(|d| d.and_time(chrono::NaiveTime::MIN).and_utc())
        })
        .map_err(|_| {
            FieldError::new(
                field,
                "must be an RFC 3339 instant such as 2026-11-27T09:30:00Z, or a day YYYY-MM-DD",
            )
        })?;
    if parsed.date_naive() > today {
        return Err(FieldError::new(field, "must not be in the future").into());
    }
    Ok(parsed)
}

fn optional_moment(
    value: &Field<String>,
    field: &str,
    today: NaiveDate,
) -> Result<Option<DateTime<Utc>>, FieldErrors> {
    optional_text(value, field, |v| moment(v, field, today))
}

/// A period's start and end, either open.
type Period = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// A period's start and end, the end not before the start.
fn period(
    (start, start_field): (&Field<String>, &str),
    (end, end_field): (&Field<String>, &str),
    today: NaiveDate,
) -> Result<Period, FieldErrors> {
    let (start, end) = (
        optional_moment(start, start_field, today),
        optional_moment(end, end_field, today),
    )
        .all_ok()?;
    if let (Some(start), Some(end)) = (start, end) {
        if end < start {
            return Err(FieldError::new(end_field, "must not be before the start").into());
        }
    }
    Ok((start, end))
}

fn measurement(body: &MeasurementBody, field: &str) -> Result<Measurement, FieldErrors> {
    let (value, unit) = (
        body.value.required(&path(field, "value")),
        body.unit.optional(&path(field, "unit")),
    )
        .all_ok()?;
    Measurement::parse(field, value, unit.map(String::as_str))
}

fn optional_measurement(
    value: &Field<MeasurementBody>,
    field: &str,
) -> Result<Option<Measurement>, FieldErrors> {
    value
        .optional(field)
        .and_then(|m| optional(m, |m| measurement(m, field)))
}

/// At most one value, from the `value_*` fields under `prefix`.
fn observation_value(
    (quantity, text_value, coded, range): (
        &Field<MeasurementBody>,
        &Field<String>,
        &Field<ConceptBody>,
        &Field<RangeBody>,
    ),
    prefix: &str,
) -> Result<Option<ObservationValue>, FieldErrors> {
    let (quantity, text_value, coded, range) = (
        optional_measurement(quantity, &path(prefix, "value_quantity")),
        optional_code(text_value, &path(prefix, "value_text"), Note::parse),
        optional_concept(coded, &path(prefix, "value_coded")),
        range.optional(&path(prefix, "value_range")).and_then(|r| {
            optional(r, |r| {
                let field = path(prefix, "value_range");
                let (low, high) = (
                    optional_measurement(&r.low, &path(&field, "low")),
                    optional_measurement(&r.high, &path(&field, "high")),
                )
                    .all_ok()?;
                if low.is_none() && high.is_none() {
                    return Err(FieldError::new(field, "needs low, high or both").into());
                }
                Ok(ObservationValue::Range { low, high })
            })
        }),
    )
        .all_ok()?;
    let mut values: Vec<ObservationValue> = Vec::new();
    values.extend(quantity.map(ObservationValue::Quantity));
    values.extend(text_value.map(|text| ObservationValue::Text { text }));
    values.extend(coded.map(ObservationValue::Coded));
    values.extend(range);
    if values.len() > 1 {
        return Err(FieldError::new(
            path(prefix, "value_quantity"),
            "give one of value_quantity, value_text, value_coded and value_range",
        )
        .into());
    }
    Ok(values.pop())
}

fn observation(body: &ObservationBody, today: NaiveDate) -> Result<Observation, FieldErrors> {
    let components = body.components.each("components", |c, at| {
        let (code, value) = (
            required_concept(&c.code, &path(at, "code")),
            observation_value(
                (
                    &c.value_quantity,
                    &c.value_text,
                    &c.value_coded,
                    &c.value_range,
                ),
                at,
            ),
        )
            .all_ok()?;
        Ok(ObservationComponent { code, value })
    });
    let reference_range = body
        .reference_range
        .optional("reference_range")
        .and_then(|r| {
            optional(r, |r| {
                let (low, high, text) = (
                    optional_measurement(&r.low, "reference_range.low"),
                    optional_measurement(&r.high, "reference_range.high"),
                    optional_code(&r.text, "reference_range.text", Note::parse),
                )
                    .all_ok()?;
                Ok(ReferenceRange { low, high, text })
            })
        });
    let (
        code,
        category,
        status,
        effective,
        value,
        components,
        interpretation,
        reference_range,
        note,
    ) = (
        required_concept(&body.code, "code"),
        optional_code(&body.category, "category", ObservationCategory::parse),
        code(&body.status, "status", ObservationStatus::parse),
        optional_moment(&body.effective, "effective", today),
        observation_value(
            (
                &body.value_quantity,
                &body.value_text,
                &body.value_coded,
                &body.value_range,
            ),
            "",
        ),
        components,
        optional_concept(&body.interpretation, "interpretation"),
        reference_range,
        note(&body.note, ""),
    )
        .all_ok()?;
    Ok(Observation {
        code,
        category,
        status,
        effective,
        value,
        components,
        interpretation,
        reference_range,
        note,
    })
}

fn procedure(body: &ProcedureBody, today: NaiveDate) -> Result<Procedure, FieldErrors> {
    let (code, status, (performed_start, performed_end), performer, reason, note) = (
        required_concept(&body.code, "code"),
        code(&body.status, "status", ProcedureStatus::parse),
        period(
            (&body.performed_start, "performed_start"),
            (&body.performed_end, "performed_end"),
            today,
        ),
        optional_code(&body.performer, "performer", Principal::parse),
        optional_concept(&body.reason_code, "reason_code"),
        note(&body.note, ""),
    )
        .all_ok()?;
    Ok(Procedure {
        code,
        status,
        performed_start,
        performed_end,
        performer,
        reason,
        note,
    })
}

fn encounter(body: &EncounterBody, today: NaiveDate) -> Result<Encounter, FieldErrors> {
    let appointment = optional_text(&body.appointment_id, "appointment_id", |v| {
        uuid::Uuid::parse_str(v)
            .map_err(|_| FieldError::new("appointment_id", "must be a UUID").into())
    });
    // A planned encounter may lie ahead: only its times are not checked against today.
    let horizon = if body
        .status
        .optional("status")
        .ok()
        .flatten()
        .map(String::as_str)
        == Some("planned")
    {
        NaiveDate::MAX
    } else {
        today
    };
    let (
        status,
        class,
        encounter_type,
        (start, end),
        practitioner,
        location,
        reason,
        appointment_id,
        note,
    ) = (
        code(&body.status, "status", EncounterStatus::parse),
        code(&body.class, "class", EncounterClass::parse),
        optional_concept(&body.encounter_type, "encounter_type"),
        period((&body.start, "start"), (&body.end, "end"), horizon),
        optional_code(&body.practitioner, "practitioner", Principal::parse),
        optional_code(&body.location, "location", Label::parse),
        optional_concept(&body.reason_code, "reason_code"),
        appointment,
        note(&body.note, ""),
    )
        .all_ok()?;
    Ok(Encounter {
        status,
        class,
        encounter_type,
        start,
        end,
        practitioner,
        location,
        reason,
        appointment_id,
        note,
    })
}

/// A new item of `kind` (not a document).
///
/// # Errors
///
/// Every bad field, by its path.
pub fn new_item(
    kind: ItemKind,
    object: &Map<String, Value>,
    today: NaiveDate,
) -> Result<NewItem, FieldErrors> {
    let (content, reason, acknowledged) = item(kind, object, false, today)?;
    Ok(NewItem {
        content,
        reason,
        acknowledged,
    })
}

/// The JSON Schema of the body an item of `kind` is recorded and revised with (a document's
/// is its upload's `metadata` part, or its revision's body).
pub fn item_schema(kind: ItemKind) -> Value {
    match kind {
        ItemKind::Allergy => super::schema::<AllergyBody>(),
        ItemKind::Medication => super::schema::<MedicationBody>(),
        ItemKind::Immunization => super::schema::<ImmunizationBody>(),
        ItemKind::Problem => super::schema::<ProblemBody>(),
        ItemKind::History => super::schema::<HistoryBody>(),
        ItemKind::Document => super::schema::<DocumentBody>(),
        ItemKind::Observation => super::schema::<ObservationBody>(),
        ItemKind::Procedure => super::schema::<ProcedureBody>(),
        ItemKind::Encounter => super::schema::<EncounterBody>(),
    }
}

/// A revision of an item of `kind` (not a document): its new content and why.
///
/// # Errors
///
/// Every bad field, by its path; a missing reason.
pub fn revision(
    kind: ItemKind,
    object: &Map<String, Value>,
    today: NaiveDate,
) -> Result<Revision, FieldErrors> {
    let (content, reason, acknowledged) = item(kind, object, true, today)?;
    let reason =
        reason.ok_or_else(|| FieldErrors::from(FieldError::new("reason", "is required")))?;
    Ok(Revision {
        content,
        reason,
        acknowledged,
    })
}

/// What describes a document (under `prefix`: `metadata` in an upload), its content being
/// `content`; and the reason given, if any.
///
/// # Errors
///
/// Every bad field, by its path.
pub fn document(
    object: &Map<String, Value>,
    prefix: &str,
    content: DocumentContent,
    today: NaiveDate,
) -> Result<(Document, Option<Reason>), FieldErrors> {
    parse(object, prefix)?.then(|body: DocumentBody| {
        let at = |key: &str| path(prefix, key);
        let (title, document_type, author, date, note, reason) = (
            code(&body.title, &at("title"), Label::parse),
            required_concept(&body.document_type, &at("document_type")),
            code(&body.author, &at("author"), Principal::parse),
            required_past_date(&body.date, &at("date"), today),
            note(&body.note, prefix),
            optional_text(&body.reason, &at("reason"), |v| reason(v, &at("reason"))),
        )
            .all_ok()?;
        Ok((
            Document {
                title,
                document_type,
                author,
                date,
                content,
                note,
            },
            reason,
        ))
    })
}

/// A revision of what describes a document whose content is `current`; it needs a reason.
///
/// # Errors
///
/// Every bad field, by its path; a missing reason.
pub fn document_revision(
    object: &Map<String, Value>,
    current: DocumentContent,
    today: NaiveDate,
) -> Result<Revision, FieldErrors> {
    let (document, reason) = document(object, "", current, today)?;
    let reason =
        reason.ok_or_else(|| FieldErrors::from(FieldError::new("reason", "is required")))?;
    Ok(Revision {
        content: ItemContent::Document(document),
        reason,
        acknowledged: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 27).unwrap()
    }

    fn fields_of<T: std::fmt::Debug>(result: Result<T, FieldErrors>) -> Vec<String> {
        match result {
            Err(errors) => errors.iter().map(|e| e.field.clone()).collect(),
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
            "source": "hearsay",
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
            "source",
            "prescriber",
        ] {
            assert!(
                fields.iter().any(|f| f == expected),
                "{expected} not in {fields:?}"
            );
        }
    }

    #[test]
    fn a_medication_needs_only_what_it_is_and_its_status_and_an_allergy_its_substance() {
        let reported = json!({
            "medication": {"text": "Ibuprofen 200 MG Oral Tablet"},
            "status": "active",
            "source": "patient-reported",
        });
        let (content, ..) = item(
            ItemKind::Medication,
            reported.as_object().unwrap(),
            false,
            today(),
        )
        .unwrap();
        let ItemContent::Medication(m) = content else {
            panic!("not a medication")
        };
        assert_eq!(m.source, MedicationSource::PatientReported);
        assert_eq!(
            (m.dose, m.route, m.frequency, m.start, m.prescriber),
            (None, None, None, None, None)
        );
        let order = json!({"medication": {"text": "Metformin"}, "status": "intended"});
        let (content, ..) = item(
            ItemKind::Medication,
            order.as_object().unwrap(),
            false,
            today(),
        )
        .unwrap();
        assert!(
            matches!(content, ItemContent::Medication(m) if m.source == MedicationSource::Order)
        );
        let allergy = json!({"substance": {"text": "Peanut"}, "clinical_status": "active"});
        let (content, ..) = item(
            ItemKind::Allergy,
            allergy.as_object().unwrap(),
            false,
            today(),
        )
        .unwrap();
        let ItemContent::Allergy(a) = content else {
            panic!("not an allergy")
        };
        assert_eq!(
            (a.category, a.criticality, a.verification_status),
            (None, None, None)
        );
        assert!(a.is_active());
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
