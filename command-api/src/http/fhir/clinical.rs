//! The medical record's items as FHIR resources: `AllergyIntolerance`, `MedicationStatement`,
//! `Immunization` and `Condition`, read and searched per patient through the same use cases as
//! `/v1/patients/{id}/{kind}` (access-checked and recorded).
//!
//! An item lives in its patient's medical record, so its FHIR id names both: the patient's
//! UUID and the item's, as 64 hexadecimal digits (FHIR's longest id). A read then needs no
//! lookup, and a resource created a moment ago reads at once.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, NaiveDate, Utc};
use domain::medical_record::items::{
    Allergy, Document, Encounter, Immunization, Medication, MedicationSource, Observation,
    ObservationValue, Problem, Procedure, Route,
};
use domain::medical_record::values::{Concept, Measurement};
use domain::medical_record::{Item, ItemContent, ItemId, ItemKind};
use domain::patient::PatientId;
use domain::{FieldError, FieldErrors};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::clinical_input;
use super::patient::base_url;
use super::{
    expected_version, found, match_entry, outcome, patient_param, resource, Issue, Write,
    CHANGE_REASON, DEFAULT_REASON,
};
use crate::auth::{permission, Authorized};
use crate::http::input;
use crate::http::patient_commands::metadata;
use crate::http::{ApiError, AppState};
use application::records;

/// The FHIR resource type of each kind served, with its search parameters: (name, type, what
/// it matches).
pub const RESOURCES: &[(&str, ItemKind)] = &[
    ("AllergyIntolerance", ItemKind::Allergy),
    ("MedicationStatement", ItemKind::Medication),
    ("Immunization", ItemKind::Immunization),
    ("Condition", ItemKind::Problem),
    ("Observation", ItemKind::Observation),
    ("Procedure", ItemKind::Procedure),
    ("Encounter", ItemKind::Encounter),
    ("DocumentReference", ItemKind::Document),
];

pub const SEARCH_PARAMS: &[(&str, &str, &str)] = &[
    (
        "patient",
        "reference",
        "the patient (required): Patient/<id> or <id>",
    ),
    (
        "code",
        "token",
        "system|code, code or |code of the substance, medication, vaccine or condition",
    ),
    (
        "clinical-status",
        "token",
        "AllergyIntolerance and Condition: the clinical status",
    ),
    (
        "status",
        "token",
        "MedicationStatement, Immunization, Observation, Procedure and Encounter: the status",
    ),
    (
        "category",
        "token",
        "AllergyIntolerance: food, medication, environment or biologic; Observation: its category (vital-signs, laboratory, ...)",
    ),
    (
        "date",
        "date",
        "the item's date (onset, start, occurrence, effective or performed time, the encounter's start) with eq, ge, le, gt or lt",
    ),
];

pub fn router() -> Router<AppState> {
    let mut router = Router::new();
    for (name, kind) in RESOURCES {
        let kind = *kind;
        // A document's writes carry its bytes ([`super::document`]).
        let (collection, instance) = if kind == ItemKind::Document {
            (
                get(move |s, u, h, q| search(s, u, h, q, kind)),
                get(move |s, u, p| read(s, u, p, kind)),
            )
        } else {
            (
                get(move |s, u, h, q| search(s, u, h, q, kind))
                    .post(move |s, w| create(s, w, name)),
                get(move |s, u, p| read(s, u, p, kind)).put(move |s, p, w| update(s, p, w, name)),
            )
        };
        router = router
            .route(&format!("/{name}"), collection)
            .route(&format!("/{name}/{{id}}"), instance)
            .route(
                &format!("/{name}/{{id}}/_history"),
                get(move |s, u, h, p| history(s, u, h, p, kind)),
            )
            .route(
                &format!("/{name}/{{id}}/_history/{{vid}}"),
                get(move |s, u, p| vread(s, u, p, kind)),
            );
    }
    // Accepted on write, and held as the MedicationStatement it amounts to.
    router
        .route(
            "/MedicationRequest",
            post(|s, w| create(s, w, "MedicationRequest")),
        )
        .route("/Binary/{id}", get(binary))
}

/// `GET /Binary/{id}`: a document's bytes as a FHIR Binary (base64), its id the
/// DocumentReference's; read as the document is (access checked and recorded).
async fn binary(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::ReadMedicalRecord>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    use base64::Engine as _;
    let not_found = || {
        outcome(
            StatusCode::NOT_FOUND,
            &[Issue::new("not-found", "no such Binary").at("id")],
        )
    };
    let Some((patient, item_id)) = parse_fhir_id(&raw) else {
        return Ok(not_found());
    };
    let Some((item, bytes)) =
        found(records::document(state.services(), &user, (patient, item_id)).await)?
    else {
        return Ok(not_found());
    };
    let ItemContent::Document(document) = &item.content else {
        return Ok(not_found());
    };
    Ok(resource(
        StatusCode::OK,
        &json!({
            "resourceType": "Binary",
            "id": raw,
            "contentType": document.content.media_type,
            "securityContext": { "reference": format!("Patient/{patient}") },
            "data": base64::engine::general_purpose::STANDARD.encode(&bytes),
        }),
    ))
}

/// The header a client names the allergies whose warnings it acknowledges in: their FHIR ids
/// (or item ids), comma-separated.
pub const ACKNOWLEDGE: &str = "x-acknowledge-allergy-warnings";

/// The allergies acknowledged in [`ACKNOWLEDGE`], as the native body's item ids.
fn acknowledged(headers: &HeaderMap) -> Option<Value> {
    let raw = headers.get(ACKNOWLEDGE)?.to_str().ok()?;
    let ids: Vec<Value> = raw
        .split(',')
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(|id| {
            let id = id.strip_prefix("AllergyIntolerance/").unwrap_or(id);
            parse_fhir_id(id).map_or_else(|| json!(id), |(_, item)| json!(item.to_string()))
        })
        .collect();
    Some(Value::Array(ids))
}

/// The resource as its native item, its patient and type checked against `resource_type`.
fn native_item(
    resource_type: &str,
    write: &Write<permission::WriteMedicalRecord>,
) -> Result<(clinical_input::NativeItem, PatientId), ApiError> {
    if write.resource["resourceType"] != resource_type {
        return Err(ApiError::Validation(
            FieldError::new(
                "resourceType",
                format!("must be {resource_type} at this address"),
            )
            .into(),
        ));
    }
    let mut native = clinical_input::native(&write.resource).map_err(ApiError::Validation)?;
    let patient = PatientId::parse("patient", &native.patient).map_err(|_| {
        ApiError::Validation(
            FieldError::new(
                format!("{resource_type}.subject"),
                "must reference a patient of this server: Patient/<id>",
            )
            .into(),
        )
    })?;
    if let Some(ids) = acknowledged(&write.headers) {
        if native.kind == ItemKind::Medication {
            native
                .body
                .insert("acknowledge_allergy_warnings".into(), ids);
        }
    }
    Ok((native, patient))
}

/// The FHIR answer of a write refused by an allergy warning: what to acknowledge, by id.
fn allergy_warning(
    patient: PatientId,
    resource_type: &str,
    warnings: &[domain::medical_record::AllergyWarning],
) -> Response {
    let mut issues = vec![Issue::new(
        "business-rule",
        format!(
            "allergy-warning: the medication matches active allergies of the patient; nothing \
             was recorded. Send it again with the header {ACKNOWLEDGE} listing each allergy's id \
             to record it anyway"
        ),
    )
    .at(format!("{resource_type}.medicationCodeableConcept"))];
    issues.extend(warnings.iter().map(|w| {
        let criticality = w
            .criticality
            .map_or(String::new(), |c| format!(", criticality {}", c.code()));
        Issue::warning(
            "business-rule",
            format!(
                "allergy-warning: AllergyIntolerance/{} (version {}{criticality})",
                fhir_id(patient, w.allergy_id),
                w.allergy_version
            ),
        )
    }));
    outcome(StatusCode::CONFLICT, &issues)
}

/// An item's answer: the resource, its version's ETag and, on a create, its Location.
pub(super) fn written(
    state: &AppState,
    headers: &HeaderMap,
    (patient, item): (PatientId, &Item),
    status: StatusCode,
) -> Response {
    let resource_value = to_fhir(patient, item);
    let mut answer = super::versioned(status, &resource_value, u64::from(item.version));
    if status == StatusCode::CREATED {
        let location = format!(
            "{}/{}/{}/_history/{}",
            base_url(state, headers),
            resource_value["resourceType"].as_str().unwrap_or_default(),
            resource_value["id"].as_str().unwrap_or_default(),
            item.version
        );
        super::locate(&mut answer, &location);
    }
    answer
}

/// `POST /{Type}`: records the item, through the same use case as the native API. With
/// `If-None-Exist` (search parameters), an item already matching them answers instead.
async fn create(
    State(state): State<AppState>,
    write: Write<permission::WriteMedicalRecord>,
    resource_type: &'static str,
) -> Result<Response, ApiError> {
    let (native, patient) = native_item(resource_type, &write)?;
    let services = state.services();
    let writer = records::writer(services, &write.user, patient).await?;
    writer.may_author()?;
    if let Some(condition) = write.headers.get("if-none-exist") {
        let query = condition.to_str().unwrap_or_default();
        let mut params: HashMap<String, String> =
            form_urlencoded::parse(query.trim_start_matches('?').as_bytes())
                .into_owned()
                .collect();
        params.insert("patient".into(), patient.to_string());
        let criteria = criteria(&params, native.kind)
            .map_err(|errors| ApiError::InvalidParameters(rename(errors, "If-None-Exist")))?;
        let items = records::list(services, &write.user, (patient, native.kind), false).await?;
        let found: Vec<&Item> = items
            .iter()
            .filter(|i| matches(i, &to_fhir(patient, i), &criteria))
            .collect();
        match found.as_slice() {
            [] => {}
            [one] => {
                return Ok(written(
                    &state,
                    &write.headers,
                    (patient, one),
                    StatusCode::OK,
                ))
            }
            _ => {
                return Ok(outcome(
                    StatusCode::PRECONDITION_FAILED,
                    &[Issue::new(
                        "multiple-matches",
                        "If-None-Exist matches more than one resource",
                    )
                    .at("If-None-Exist")],
                ))
            }
        }
    }
    let item =
        input::record::new_item(native.kind, &native.body, writer.today()).map_err(|errors| {
            ApiError::Validation(clinical_input::fhir_paths(resource_type, &errors))
        })?;
    let item_id = ItemId::new(write.imported_id.unwrap_or_else(Uuid::new_v4));
    let shown = if resource_type == "MedicationRequest" {
        "MedicationStatement"
    } else {
        resource_type
    };
    let record = match writer
        .record(item_id, item, metadata(&write.user, &write.ctx, None))
        .await
    {
        Ok(record) => record,
        Err(application::services::UseCaseError::AllergyWarning { warnings, .. }) => {
            return Ok(allergy_warning(patient, shown, &warnings))
        }
        Err(other) => return Err(other.into()),
    };
    let item = record.item(item_id).ok_or(ApiError::NotFound)?;
    Ok(written(
        &state,
        &write.headers,
        (patient, item),
        StatusCode::CREATED,
    ))
}

/// Field errors renamed to one `name` (a header's), keeping their messages.
fn rename(errors: FieldErrors, name: &str) -> FieldErrors {
    let mut renamed = FieldErrors::new();
    for e in errors.iter() {
        renamed.push(FieldError::new(name, format!("{}: {}", e.field, e.message)));
    }
    renamed
}

/// `PUT /{Type}/{id}` with `If-Match`: revises the item to the resource sent (412 when the
/// version is stale), for the reason in `X-Change-Reason`.
async fn update(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    write: Write<permission::WriteMedicalRecord>,
    resource_type: &'static str,
) -> Result<Response, ApiError> {
    let expected = expected_version(&write.headers)?;
    let Some((patient, item_id)) = parse_fhir_id(&raw) else {
        return Err(ApiError::NotFound);
    };
    if write.resource["id"].as_str() != Some(raw.as_str()) {
        return Err(ApiError::Validation(
            FieldError::new(
                format!("{resource_type}.id"),
                "must be the id in the address",
            )
            .into(),
        ));
    }
    let (mut native, named) = native_item(resource_type, &write)?;
    if named != patient {
        return Err(ApiError::Validation(
            FieldError::new(
                format!("{resource_type}.subject"),
                "cannot move the resource to another patient",
            )
            .into(),
        ));
    }
    let reason = write
        .headers
        .get(CHANGE_REASON)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(DEFAULT_REASON);
    native.body.insert("reason".into(), json!(reason));
    let services = state.services();
    let writer = records::writer(services, &write.user, patient).await?;
    writer.may_author()?;
    let revision =
        input::record::revision(native.kind, &native.body, writer.today()).map_err(|errors| {
            ApiError::Validation(clinical_input::fhir_paths(resource_type, &errors))
        })?;
    let record = match writer
        .revise(
            (item_id, expected),
            revision,
            metadata(&write.user, &write.ctx, None),
        )
        .await
    {
        Ok(record) => record,
        Err(application::services::UseCaseError::AllergyWarning { warnings, .. }) => {
            return Ok(allergy_warning(patient, resource_type, &warnings))
        }
        Err(other) => return Err(other.into()),
    };
    let item = record.item(item_id).ok_or(ApiError::NotFound)?;
    Ok(written(
        &state,
        &write.headers,
        (patient, item),
        StatusCode::OK,
    ))
}

/// The FHIR resource type of `kind`.
pub fn resource_type(kind: ItemKind) -> Option<&'static str> {
    RESOURCES
        .iter()
        .find(|(_, k)| *k == kind)
        .map(|(name, _)| *name)
}

/// The FHIR id of item `item` of patient `patient` (and of what else is held per patient under
/// an id of its own: coverages, consents).
pub fn fhir_id(patient: PatientId, item: ItemId) -> String {
    format!("{}{}", patient.as_uuid().simple(), item.as_uuid().simple())
}

/// The patient and item a FHIR id names, if it is one of ours.
pub fn parse_fhir_id(id: &str) -> Option<(PatientId, ItemId)> {
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let patient = Uuid::parse_str(&id[..32]).ok()?;
    let item = Uuid::parse_str(&id[32..]).ok()?;
    Some((PatientId::new(patient), ItemId::new(item)))
}

/// `GET /{Type}/{id}`.
async fn read(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::ReadMedicalRecord>,
    Path(raw): Path<String>,
    kind: ItemKind,
) -> Result<Response, ApiError> {
    let not_found = || {
        outcome(
            StatusCode::NOT_FOUND,
            &[Issue::new("not-found", "no such resource").at("id")],
        )
    };
    let Some((patient, item_id)) = parse_fhir_id(&raw) else {
        return Ok(not_found());
    };
    let Some(item) = found(records::item(state.services(), &user, (patient, kind, item_id)).await)?
    else {
        return Ok(not_found());
    };
    let answer = super::versioned(
        StatusCode::OK,
        &to_fhir(patient, &item),
        u64::from(item.version),
    );
    Ok(answer)
}

/// What a clinical search asks for, parsed.
struct Criteria {
    patient: PatientId,
    code: Option<(Option<String>, String)>,
    clinical_status: Option<String>,
    status: Option<String>,
    category: Option<String>,
    dates: Vec<(&'static str, NaiveDate)>,
    count: usize,
    offset: usize,
}

/// Whether search parameter `name` applies to the resource type of `kind`.
pub fn applies(kind: ItemKind, name: &str) -> bool {
    match name {
        "clinical-status" => matches!(kind, ItemKind::Allergy | ItemKind::Problem),
        "status" => !matches!(kind, ItemKind::Allergy | ItemKind::Problem),
        "category" => matches!(kind, ItemKind::Allergy | ItemKind::Observation),
        _ => true,
    }
}

fn criteria(params: &HashMap<String, String>, kind: ItemKind) -> Result<Criteria, FieldErrors> {
    let mut errors = FieldErrors::new();
    for key in params.keys() {
        let known = SEARCH_PARAMS.iter().any(|(name, _, _)| name == key)
            || matches!(key.as_str(), "_count" | "_offset");
        if !known || !applies(kind, key) {
            errors.push(FieldError::new(
                key.clone(),
                "is not a search parameter of this resource here (see /fhir/R4/metadata)",
            ));
        }
    }
    let patient = patient_param(params, &["patient"], &mut errors);
    let code = params.get("code").and_then(|raw| {
        let parsed = match raw.split_once('|') {
            Some(("", code)) => Some((None, code.to_owned())),
            Some((system, code)) => Some((Some(system.to_owned()), code.to_owned())),
            None => Some((None, raw.clone())),
        };
        let ok = parsed.as_ref().is_some_and(|(_, code)| {
            !code.is_empty() && code.len() <= 64 && !code.chars().any(char::is_control)
        });
        if !ok {
            errors.push(FieldError::new(
                "code",
                "must be system|code, |code or code",
            ));
        }
        parsed.filter(|_| ok)
    });
    let mut dates = Vec::new();
    if let Some(raw) = params.get("date") {
        let (prefix, value) = match raw.get(..2) {
            Some(p @ ("eq" | "ge" | "le" | "gt" | "lt")) => (p, &raw[2..]),
            _ => ("eq", raw.as_str()),
        };
        let prefix: &'static str = match prefix {
            "ge" => "ge",
            "le" => "le",
            "gt" => "gt",
            "lt" => "lt",
            _ => "eq",
        };
        match NaiveDate::parse_from_str(value, "%Y-%m-%d") {
            Ok(date) => dates.push((prefix, date)),
            Err(_) => errors.push(FieldError::new(
                "date",
                "must be YYYY-MM-DD, with eq, ge, le, gt or lt before it",
            )),
        }
    }
    let whole =
        |key: &str, default: usize, max: usize, errors: &mut FieldErrors| match params.get(key) {
            None => default,
            Some(raw) => match raw.parse::<usize>() {
                Ok(n) if n <= max && (key != "_count" || n >= 1) => n,
                _ => {
                    errors.push(FieldError::new(
                        key,
                        format!("must be a whole number up to {max}"),
                    ));
                    default
                }
            },
        };
    let count = whole("_count", 50, 100, &mut errors);
    let offset = whole("_offset", 0, 100_000, &mut errors);
    let status = |key: &str| params.get(key).cloned();
    let (clinical_status, status_value, category) = (
        status("clinical-status"),
        status("status"),
        status("category"),
    );
    errors.into_result()?;
    Ok(Criteria {
        patient: patient.unwrap_or_else(|| PatientId::new(Uuid::nil())),
        code,
        clinical_status,
        status: status_value,
        category,
        dates,
        count,
        offset,
    })
}

/// The date a `date` search compares: an allergy's or problem's onset, a medication's start,
/// an immunization's day.
fn item_date(content: &ItemContent) -> Option<NaiveDate> {
    match content {
        ItemContent::Allergy(a) => a.onset,
        ItemContent::Medication(m) => m.start,
        ItemContent::Immunization(i) => Some(i.occurred_on),
        ItemContent::Problem(p) => p.onset,
        ItemContent::Observation(o) => o.effective.map(|t| t.date_naive()),
        ItemContent::Procedure(p) => p.performed_start.map(|t| t.date_naive()),
        ItemContent::Encounter(e) => e.start.map(|t| t.date_naive()),
        ItemContent::Document(d) => Some(d.date),
        ItemContent::History(_) => None,
    }
}

/// Whether `item`, shown as `resource`, is one `criteria` asks for.
fn matches(item: &Item, resource: &Value, criteria: &Criteria) -> bool {
    let concept = match &item.content {
        ItemContent::Allergy(a) => Some(&a.substance),
        ItemContent::Medication(m) => Some(&m.medication),
        ItemContent::Immunization(i) => Some(&i.vaccine),
        ItemContent::Problem(p) => Some(&p.condition),
        ItemContent::Observation(o) => Some(&o.code),
        ItemContent::Procedure(p) => Some(&p.code),
        ItemContent::Encounter(e) => e.encounter_type.as_ref(),
        ItemContent::Document(d) => Some(&d.document_type),
        ItemContent::History(_) => None,
    };
    let code_ok = criteria.code.as_ref().is_none_or(|(system, code)| {
        concept.is_some_and(|c| {
            c.code
                .as_deref()
                .is_some_and(|own| own.eq_ignore_ascii_case(code))
                && system
                    .as_deref()
                    .is_none_or(|s| c.system.as_deref() == Some(s))
        })
    });
    let token = |element: &str| {
        resource[element]["coding"][0]["code"]
            .as_str()
            .or_else(|| resource[element].as_str())
            .map(str::to_owned)
    };
    let clinical_ok = criteria
        .clinical_status
        .as_ref()
        .is_none_or(|s| token("clinicalStatus").as_deref() == Some(s.as_str()));
    let status_ok = criteria
        .status
        .as_ref()
        .is_none_or(|s| token("status").as_deref() == Some(s.as_str()));
    let category_ok = criteria.category.as_ref().is_none_or(|c| {
        // A code (AllergyIntolerance) or CodeableConcepts (Observation).
        resource["category"].as_array().is_some_and(|all| {
            all.iter()
                .any(|v| v == c.as_str() || v["coding"][0]["code"] == c.as_str())
        })
    });
    let date_ok = criteria.dates.iter().all(|(prefix, date)| {
        item_date(&item.content).is_some_and(|own| match *prefix {
            "ge" => own >= *date,
            "le" => own <= *date,
            "gt" => own > *date,
            "lt" => own < *date,
            _ => own == *date,
        })
    });
    code_ok && clinical_ok && status_ok && category_ok && date_ok
}

/// `GET /{Type}?patient=...`: a searchset Bundle of the patient's items of that type (marked
/// entered-in-error ones too, with that status, as FHIR keeps them).
async fn search(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::ReadMedicalRecord>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
    kind: ItemKind,
) -> Result<Response, ApiError> {
    let criteria = criteria(&params, kind).map_err(ApiError::InvalidParameters)?;
    let items = records::list(state.services(), &user, (criteria.patient, kind), true).await?;
    // Each item is shown once: the search reads the resource it would answer.
    let matched: Vec<Value> = items
        .iter()
        .map(|item| (item, to_fhir(criteria.patient, item)))
        .filter(|(item, resource)| matches(item, resource, &criteria))
        .map(|(_, resource)| resource)
        .collect();
    let base = base_url(&state, &headers);
    let name = resource_type(kind).unwrap_or("Basic");
    let total = matched.len();
    let entries: Vec<Value> = matched
        .into_iter()
        .skip(criteria.offset)
        .take(criteria.count)
        .map(|resource| match_entry(&base, resource))
        .collect();
    let query: Vec<(String, String)> = params.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let paging = super::Paging {
        count: criteria.count,
        offset: criteria.offset,
        has_more: criteria.offset + criteria.count < total,
    };
    Ok(resource(
        StatusCode::OK,
        &super::page_bundle((&base, name), &query, paging, Some(total as u64), entries),
    ))
}

/// A concept as a CodeableConcept.
pub fn codeable(concept: &Concept) -> Value {
    let mut value = json!({ "text": concept.text });
    if let (Some(system), Some(code)) = (&concept.system, &concept.code) {
        let mut coding = json!({ "system": system, "code": code });
        if let Some(display) = &concept.display {
            coding["display"] = json!(display);
        }
        value["coding"] = json!([coding]);
    }
    value
}

/// A code of one of FHIR's code systems as a CodeableConcept.
fn coded(system: &str, code: &str) -> Value {
    json!({ "coding": [{ "system": system, "code": code }] })
}

fn note(object: &mut Map<String, Value>, note: Option<&str>) {
    if let Some(text) = note {
        object.insert("note".into(), json!([{ "text": text }]));
    }
}

fn day(date: NaiveDate) -> Value {
    json!(date.format("%Y-%m-%d").to_string())
}

/// Item `item` of patient `patient` as its FHIR resource.
pub fn to_fhir(patient: PatientId, item: &Item) -> Value {
    let mut object = Map::new();
    let kind = item.content.kind();
    object.insert(
        "resourceType".into(),
        json!(resource_type(kind).unwrap_or("Basic")),
    );
    object.insert("id".into(), json!(fhir_id(patient, item.item_id)));
    object.insert(
        "meta".into(),
        json!({
            "versionId": item.version.to_string(),
            "lastUpdated": item.updated_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }),
    );
    let subject = json!({ "reference": format!("Patient/{patient}") });
    let in_error = item.entered_in_error.is_some();
    match &item.content {
        ItemContent::Allergy(a) => allergy(&mut object, a, subject, in_error),
        ItemContent::Medication(m) => medication(&mut object, m, subject, in_error),
        ItemContent::Immunization(i) => immunization(&mut object, i, subject, in_error),
        ItemContent::Problem(p) => condition(&mut object, p, subject, in_error),
        ItemContent::Observation(o) => observation(&mut object, o, subject, in_error),
        ItemContent::Procedure(p) => procedure(&mut object, p, subject, in_error),
        ItemContent::Encounter(e) => encounter(&mut object, e, subject, in_error),
        ItemContent::Document(d) => {
            document(&mut object, d, subject, (in_error, &item.recorded_at))
        }
        ItemContent::History(_) => {}
    }
    match kind {
        ItemKind::Allergy | ItemKind::Problem => {
            object.insert("recordedDate".into(), json!(item.recorded_at.to_rfc3339()));
        }
        ItemKind::Medication => {
            object.insert("dateAsserted".into(), json!(item.recorded_at.to_rfc3339()));
        }
        ItemKind::Immunization => {
            object.insert("recorded".into(), json!(item.recorded_at.to_rfc3339()));
        }
        ItemKind::Observation => {
            object.insert("issued".into(), json!(item.recorded_at.to_rfc3339()));
        }
        ItemKind::History | ItemKind::Document | ItemKind::Procedure | ItemKind::Encounter => {}
    }
    Value::Object(object)
}

fn allergy(object: &mut Map<String, Value>, a: &Allergy, patient: Value, in_error: bool) {
    const CLINICAL: &str = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical";
    const VERIFICATION: &str =
        "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification";
    if in_error {
        // ait-2: no clinical status on an entry in error.
        object.insert(
            "verificationStatus".into(),
            coded(VERIFICATION, "entered-in-error"),
        );
    } else {
        object.insert(
            "clinicalStatus".into(),
            coded(CLINICAL, a.clinical_status.code()),
        );
        if let Some(verification) = a.verification_status {
            object.insert(
                "verificationStatus".into(),
                coded(VERIFICATION, verification.code()),
            );
        }
    }
    if let Some(category) = a.category {
        object.insert("category".into(), json!([category.code()]));
    }
    if let Some(criticality) = a.criticality {
        object.insert("criticality".into(), json!(criticality.code()));
    }
    object.insert("code".into(), codeable(&a.substance));
    object.insert("patient".into(), patient);
    if let Some(onset) = a.onset {
        object.insert("onsetDateTime".into(), day(onset));
    }
    if !a.reactions.is_empty() {
        let reactions: Vec<Value> = a
            .reactions
            .iter()
            .map(|r| {
                let mut reaction = json!({ "manifestation": [codeable(&r.manifestation)] });
                if let Some(severity) = r.severity {
                    reaction["severity"] = json!(severity.code());
                }
                reaction
            })
            .collect();
        object.insert("reaction".into(), Value::Array(reactions));
    }
    note(object, a.note.as_ref().map(|n| n.as_str()));
}

/// SNOMED CT's concepts of the routes served.
fn route_concept(route: Route) -> Value {
    let snomed = match route {
        Route::Oral => ("26643006", "Oral route"),
        Route::Sublingual => ("37839007", "Sublingual route"),
        Route::Intravenous => ("47625008", "Intravenous route"),
        Route::Intramuscular => ("78421000", "Intramuscular route"),
        Route::Subcutaneous => ("34206005", "Subcutaneous route"),
        Route::Intradermal => ("372464004", "Intradermal route"),
        Route::Topical => ("6064005", "Topical route"),
        Route::Transdermal => ("45890007", "Transdermal route"),
        Route::Inhalation => ("447694001", "Respiratory tract route"),
        Route::Intranasal => ("46713006", "Nasal route"),
        Route::Rectal => ("37161004", "Rectal route"),
        Route::Vaginal => ("16857009", "Vaginal route"),
        Route::Ophthalmic => ("54485002", "Ophthalmic route"),
        Route::Otic => ("10547007", "Otic route"),
    };
    json!({
        "coding": [{ "system": "http://snomed.info/sct", "code": snomed.0, "display": snomed.1 }],
        "text": route.code(),
    })
}

fn medication(object: &mut Map<String, Value>, m: &Medication, patient: Value, in_error: bool) {
    let status = if in_error {
        "entered-in-error"
    } else {
        m.status.code()
    };
    object.insert("status".into(), json!(status));
    object.insert("medicationCodeableConcept".into(), codeable(&m.medication));
    object.insert("subject".into(), patient.clone());
    match (m.start, m.end) {
        (None, None) => {}
        (start, end) => {
            let mut period = Map::new();
            if let Some(start) = start {
                period.insert("start".into(), day(start));
            }
            if let Some(end) = end {
                period.insert("end".into(), day(end));
            }
            object.insert("effectivePeriod".into(), Value::Object(period));
        }
    }
    match m.source {
        MedicationSource::PatientReported => {
            object.insert("informationSource".into(), patient);
        }
        MedicationSource::Order => {
            if let Some(prescriber) = &m.prescriber {
                object.insert(
                    "informationSource".into(),
                    json!({ "display": prescriber.as_str() }),
                );
            }
        }
        MedicationSource::OtherRecord => {}
    }
    if let Some(reason) = &m.reason_for_use {
        object.insert("reasonCode".into(), json!([codeable(reason)]));
    }
    note(object, m.note.as_ref().map(|n| n.as_str()));
    let mut dosage = Map::new();
    if let Some(frequency) = &m.frequency {
        dosage.insert(
            "timing".into(),
            json!({ "repeat": {
                "frequency": frequency.count,
                "period": frequency.period,
                "periodUnit": frequency.period_unit.code(),
            } }),
        );
        dosage.insert("asNeededBoolean".into(), json!(frequency.as_needed));
    } else if m.as_needed {
        dosage.insert("asNeededBoolean".into(), json!(true));
    }
    if let Some(route) = m.route {
        dosage.insert("route".into(), route_concept(route));
    }
    if let Some(dose) = &m.dose {
        let value: serde_json::Number = dose
            .value
            .parse()
            .unwrap_or_else(|_| serde_json::Number::from(0));
        dosage.insert(
            "doseAndRate".into(),
            json!([{ "doseQuantity": {
                "value": value,
                "unit": dose.unit,
                "system": "http://unitsofmeasure.org",
                "code": dose.unit,
            } }]),
        );
    }
    if !dosage.is_empty() {
        object.insert("dosage".into(), json!([dosage]));
    }
}

fn immunization(object: &mut Map<String, Value>, i: &Immunization, patient: Value, in_error: bool) {
    let status = if in_error {
        "entered-in-error"
    } else {
        i.status.code()
    };
    object.insert("status".into(), json!(status));
    object.insert("vaccineCode".into(), codeable(&i.vaccine));
    object.insert("patient".into(), patient);
    object.insert("occurrenceDateTime".into(), day(i.occurred_on));
    if let Some(lot) = &i.lot_number {
        object.insert("lotNumber".into(), json!(lot.as_str()));
    }
    if let Some(site) = i.site {
        object.insert("site".into(), json!({ "text": site.code() }));
    }
    if let Some(route) = i.route {
        object.insert("route".into(), route_concept(route));
    }
    if let Some(performer) = &i.performer {
        object.insert(
            "performer".into(),
            json!([{ "actor": { "display": performer.as_str() } }]),
        );
    }
    note(object, i.note.as_ref().map(|n| n.as_str()));
}

/// A measured value as a FHIR Quantity (UCUM).
fn quantity(m: &Measurement) -> Value {
    let value: serde_json::Number = m
        .value
        .parse()
        .unwrap_or_else(|_| serde_json::Number::from(0));
    let mut quantity = json!({ "value": value });
    if let Some(unit) = &m.unit {
        quantity["unit"] = json!(unit);
        quantity["system"] = json!("http://unitsofmeasure.org");
        quantity["code"] = json!(unit);
    }
    quantity
}

/// An observation's (or component's) value as its `value[x]` element.
fn value_element(object: &mut Map<String, Value>, value: &ObservationValue) {
    let (key, element) = match value {
        ObservationValue::Quantity(m) => ("valueQuantity", quantity(m)),
        ObservationValue::Text { text } => ("valueString", json!(text.as_str())),
        ObservationValue::Coded(c) => ("valueCodeableConcept", codeable(c)),
        ObservationValue::Range { low, high } => {
            let mut range = Map::new();
            if let Some(low) = low {
                range.insert("low".into(), quantity(low));
            }
            if let Some(high) = high {
                range.insert("high".into(), quantity(high));
            }
            ("valueRange", Value::Object(range))
        }
    };
    object.insert(key.into(), element);
}

fn instant(at: DateTime<Utc>) -> Value {
    json!(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

fn observation(object: &mut Map<String, Value>, o: &Observation, patient: Value, in_error: bool) {
    let status = if in_error {
        "entered-in-error"
    } else {
        o.status.code()
    };
    object.insert("status".into(), json!(status));
    if let Some(category) = o.category {
        object.insert(
            "category".into(),
            json!([coded(
                "http://terminology.hl7.org/CodeSystem/observation-category",
                category.code()
            )]),
        );
    }
    object.insert("code".into(), codeable(&o.code));
    object.insert("subject".into(), patient);
    if let Some(at) = o.effective {
        object.insert("effectiveDateTime".into(), instant(at));
    }
    if let Some(value) = &o.value {
        value_element(object, value);
    }
    if let Some(interpretation) = &o.interpretation {
        object.insert("interpretation".into(), json!([codeable(interpretation)]));
    }
    note(object, o.note.as_ref().map(|n| n.as_str()));
    if let Some(range) = &o.reference_range {
        let mut element = Map::new();
        if let Some(low) = &range.low {
            element.insert("low".into(), quantity(low));
        }
        if let Some(high) = &range.high {
            element.insert("high".into(), quantity(high));
        }
        if let Some(text) = &range.text {
            element.insert("text".into(), json!(text.as_str()));
        }
        object.insert("referenceRange".into(), json!([element]));
    }
    if !o.components.is_empty() {
        let components: Vec<Value> = o
            .components
            .iter()
            .map(|c| {
                let mut component = Map::new();
                component.insert("code".into(), codeable(&c.code));
                if let Some(value) = &c.value {
                    value_element(&mut component, value);
                }
                Value::Object(component)
            })
            .collect();
        object.insert("component".into(), Value::Array(components));
    }
}

fn procedure(object: &mut Map<String, Value>, p: &Procedure, patient: Value, in_error: bool) {
    let status = if in_error {
        "entered-in-error"
    } else {
        p.status.code()
    };
    object.insert("status".into(), json!(status));
    object.insert("code".into(), codeable(&p.code));
    object.insert("subject".into(), patient);
    match (p.performed_start, p.performed_end) {
        (Some(start), None) => {
            object.insert("performedDateTime".into(), instant(start));
        }
        (None, None) => {}
        (start, end) => {
            let mut period = Map::new();
            if let Some(start) = start {
                period.insert("start".into(), instant(start));
            }
            if let Some(end) = end {
                period.insert("end".into(), instant(end));
            }
            object.insert("performedPeriod".into(), Value::Object(period));
        }
    }
    if let Some(performer) = &p.performer {
        object.insert(
            "performer".into(),
            json!([{ "actor": { "display": performer.as_str() } }]),
        );
    }
    if let Some(reason) = &p.reason {
        object.insert("reasonCode".into(), json!([codeable(reason)]));
    }
    note(object, p.note.as_ref().map(|n| n.as_str()));
}

fn encounter(object: &mut Map<String, Value>, e: &Encounter, patient: Value, in_error: bool) {
    let status = if in_error {
        "entered-in-error"
    } else {
        e.status.code()
    };
    object.insert("status".into(), json!(status));
    object.insert(
        "class".into(),
        json!({ "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": e.class.code() }),
    );
    if let Some(kind) = &e.encounter_type {
        object.insert("type".into(), json!([codeable(kind)]));
    }
    object.insert("subject".into(), patient);
    if let Some(practitioner) = &e.practitioner {
        object.insert(
            "participant".into(),
            json!([{ "individual": { "display": practitioner.as_str() } }]),
        );
    }
    if let Some(appointment) = e.appointment_id {
        object.insert(
            "appointment".into(),
            json!([{ "reference": format!("Appointment/{appointment}") }]),
        );
    }
    if e.start.is_some() || e.end.is_some() {
        let mut period = Map::new();
        if let Some(start) = e.start {
            period.insert("start".into(), instant(start));
        }
        if let Some(end) = e.end {
            period.insert("end".into(), instant(end));
        }
        object.insert("period".into(), Value::Object(period));
    }
    if let Some(reason) = &e.reason {
        object.insert("reasonCode".into(), json!([codeable(reason)]));
    }
    if let Some(location) = &e.location {
        object.insert(
            "location".into(),
            json!([{ "location": { "display": location.as_str() } }]),
        );
    }
}

fn document(
    object: &mut Map<String, Value>,
    d: &Document,
    patient: Value,
    (in_error, recorded_at): (bool, &DateTime<Utc>),
) {
    object.insert(
        "status".into(),
        json!(if in_error {
            "entered-in-error"
        } else {
            "current"
        }),
    );
    object.insert("type".into(), codeable(&d.document_type));
    object.insert("subject".into(), patient);
    object.insert("date".into(), instant(*recorded_at));
    object.insert("author".into(), json!([{ "display": d.author.as_str() }]));
    object.insert("description".into(), json!(d.title.as_str()));
    let id = object["id"].as_str().unwrap_or_default().to_owned();
    object.insert(
        "content".into(),
        json!([{ "attachment": {
            "contentType": d.content.media_type,
            "size": d.content.size,
            "url": format!("Binary/{id}"),
            "title": d.title.as_str(),
            "creation": d.date.format("%Y-%m-%d").to_string(),
        } }]),
    );
}

fn condition(object: &mut Map<String, Value>, p: &Problem, patient: Value, in_error: bool) {
    const CLINICAL: &str = "http://terminology.hl7.org/CodeSystem/condition-clinical";
    const VERIFICATION: &str = "http://terminology.hl7.org/CodeSystem/condition-ver-status";
    if in_error {
        // con-5: no clinical status on an entry in error.
        object.insert(
            "verificationStatus".into(),
            coded(VERIFICATION, "entered-in-error"),
        );
    } else {
        object.insert(
            "clinicalStatus".into(),
            coded(CLINICAL, p.clinical_status.code()),
        );
    }
    object.insert(
        "category".into(),
        json!([coded(
            "http://terminology.hl7.org/CodeSystem/condition-category",
            "problem-list-item"
        )]),
    );
    if let Some(severity) = p.severity {
        object.insert("severity".into(), json!({ "text": severity.code() }));
    }
    object.insert("code".into(), codeable(&p.condition));
    object.insert("subject".into(), patient);
    if let Some(onset) = p.onset {
        object.insert("onsetDateTime".into(), day(onset));
    }
    if let Some(abatement) = p.abatement {
        object.insert("abatementDateTime".into(), day(abatement));
    }
    note(object, p.note.as_ref().map(|n| n.as_str()));
}

/// Every version of item `item_id` of `kind`, oldest first, as items: from the versions read
/// model (which follows the store within moments), the current version from the store itself.
async fn item_versions(
    state: &AppState,
    user: &crate::auth::AuthUser,
    (patient, kind, item_id): (PatientId, ItemKind, ItemId),
) -> Result<Vec<Item>, application::services::UseCaseError> {
    let current = records::item(state.services(), user, (patient, kind, item_id)).await?;
    let versions = records::versions(
        state.services(),
        user,
        (patient, kind, item_id),
        "medical-record-versions",
    )
    .await
    .unwrap_or_default();
    let recorded_at = versions
        .first()
        .map_or(current.recorded_at, |v| v.changed_at);
    let mut items: Vec<Item> = versions
        .iter()
        .filter(|v| u32::try_from(v.version).is_ok_and(|n| n < current.version))
        .filter_map(|v| {
            records::item_at(
                (kind, item_id),
                v.version,
                &v.item,
                (recorded_at, v.changed_at),
            )
        })
        .collect();
    items.push(current);
    Ok(items)
}

/// `GET /{Type}/{id}/_history/{vid}`: the item as it stood at that version.
async fn vread(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::ReadMedicalRecord>,
    Path((raw, vid)): Path<(String, String)>,
    kind: ItemKind,
) -> Result<Response, ApiError> {
    let not_found = |what: &str| {
        outcome(
            StatusCode::NOT_FOUND,
            &[Issue::new("not-found", format!("no such {what}"))],
        )
    };
    let (Some((patient, item_id)), Ok(vid)) = (parse_fhir_id(&raw), vid.parse::<u32>()) else {
        return Ok(not_found("version"));
    };
    let Some(items) = found(item_versions(&state, &user, (patient, kind, item_id)).await)? else {
        return Ok(not_found("resource"));
    };
    let Some(item) = items.iter().find(|i| i.version == vid) else {
        return Ok(not_found("version"));
    };
    let answer = super::versioned(
        StatusCode::OK,
        &to_fhir(patient, item),
        u64::from(item.version),
    );
    Ok(answer)
}

/// `GET /{Type}/{id}/_history`: a history Bundle of every version, newest first.
async fn history(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::ReadMedicalRecord>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    kind: ItemKind,
) -> Result<Response, ApiError> {
    let Some((patient, item_id)) = parse_fhir_id(&raw) else {
        return Ok(outcome(
            StatusCode::NOT_FOUND,
            &[Issue::new("not-found", "no such resource")],
        ));
    };
    let Some(items) = found(item_versions(&state, &user, (patient, kind, item_id)).await)? else {
        return Ok(outcome(
            StatusCode::NOT_FOUND,
            &[Issue::new("not-found", "no such resource")],
        ));
    };
    let base = base_url(&state, &headers);
    let name = resource_type(kind).unwrap_or("Basic");
    Ok(resource(
        StatusCode::OK,
        &super::history_bundle(
            &base,
            name,
            &raw,
            items
                .iter()
                .rev()
                .map(|i| (to_fhir(patient, i), i.version, Some(i.updated_at))),
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_the_patient_and_the_item_and_nothing_else_parses() {
        let patient = PatientId::new(Uuid::from_u128(7));
        let item = ItemId::new(Uuid::from_u128(9));
        let id = fhir_id(patient, item);
        assert_eq!(id.len(), 64);
        assert_eq!(parse_fhir_id(&id), Some((patient, item)));
        assert_eq!(parse_fhir_id(&id[1..]), None);
        assert_eq!(parse_fhir_id(&format!("{}-", &id[1..])), None);
    }
}
