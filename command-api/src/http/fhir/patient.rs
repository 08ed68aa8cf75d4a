//! `Patient`: read and search, from the same patient aggregate and search read model as
//! `/v1/patients`, each read and each search hit recorded as an access.

use std::collections::HashMap;

use application::policy::Action;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use domain::patient::contact::{Address, Phone};
use domain::patient::record::EmergencyContact;
use domain::patient::{
    PatientCommand, PatientId, PatientRecord, PatientStatus, PersonName, RecordChange,
};
use domain::{FieldError, FieldErrors};
use serde_json::{json, Map, Value};

use super::{found, match_entry, outcome, resource, Issue, Write, BASE};
use crate::auth::{access, permission, Authorized};
use crate::http::patient_commands::metadata;
use crate::http::{ApiError, AppState};
use application::finding;

/// The system of the medical record numbers this service assigns.
pub const MRN_SYSTEM: &str = "urn:patient-service:mrn";

/// The search parameters of `Patient`, as the CapabilityStatement lists them: (name, type,
/// what it matches).
pub const SEARCH_PARAMS: &[(&str, &str, &str)] = &[
    ("_id", "token", "the patient's id"),
    (
        "identifier",
        "token",
        "system|value of an identifier; the MRN under urn:patient-service:mrn",
    ),
    (
        "name",
        "string",
        "words of a name, matched fuzzily against family and given names",
    ),
    (
        "family",
        "string",
        "start of the family name, ignoring case and accents",
    ),
    (
        "given",
        "string",
        "start of a given name, ignoring case and accents",
    ),
    (
        "birthdate",
        "date",
        "the birth date, YYYY-MM-DD: a day (eq), or an end of a range (ge, gt, le, lt; give both ends as two birthdate parameters)",
    ),
    (
        "gender",
        "token",
        "the administrative gender: male, female, other or unknown",
    ),
    (
        "telecom",
        "token",
        "a phone number (E.164) or email address, with or without phone| or email|",
    ),
    ("address-postalcode", "string", "the postal code"),
];

/// `_count` and `_offset`, the paging parameters.
const PAGING: &[(&str, &str)] = &[("_count", "limit"), ("_offset", "offset")];

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/Patient", get(search).post(create))
        .route("/Patient/$match", post(match_patients))
        .route("/Patient/{id}", get(read))
        .route("/Patient/{id}/_history", get(history))
        .route("/Patient/{id}/_history/{vid}", get(vread))
}

/// The most versions a patient's history lists (newest first).
const MAX_HISTORY: u64 = 100;

/// Patient `raw` checked (and the read recorded), with its current version; or the answer
/// that it cannot be read.
async fn readable(
    state: &AppState,
    user: &crate::auth::AuthUser,
    raw: &str,
) -> Result<Result<(PatientId, u64), Response>, ApiError> {
    let not_found = || {
        outcome(
            StatusCode::NOT_FOUND,
            &[Issue::new("not-found", "no Patient has this id").at("id")],
        )
    };
    let Ok(id) = PatientId::parse("id", raw) else {
        return Ok(Err(not_found()));
    };
    let (patient, version) = finding::read(state.services(), user, id).await?;
    if patient.record().is_none() {
        return Ok(Err(outcome(
            StatusCode::GONE,
            &[Issue::new("deleted", "this patient was erased")],
        )));
    }
    Ok(Ok((id, version)))
}

/// `GET /Patient/{id}/_history/{vid}`: the patient as they were at that version.
async fn vread(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::ReadPatient>,
    Path((raw, vid)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (id, current) = match readable(&state, &user, &raw).await? {
        Ok(found) => found,
        Err(answer) => return Ok(answer),
    };
    super::vread(&vid, current, |version| async move {
        let then = state.store.load_version(id, version).await?;
        Ok(then
            .as_ref()
            .and_then(|p| p.record())
            .map(|record| to_fhir(record, version)))
    })
    .await
}

/// `GET /Patient/{id}/_history`: a history Bundle of the patient's versions, newest first
/// (the latest [`MAX_HISTORY`]).
async fn history(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::ReadPatient>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let (id, current) = match readable(&state, &user, &raw).await? {
        Ok(found) => found,
        Err(answer) => return Ok(answer),
    };
    let mut versions = Vec::new();
    for (version, patient) in state.store.versions(id, MAX_HISTORY as usize).await? {
        if let Some(record) = patient.record().filter(|_| version <= current) {
            let version_number = u32::try_from(version).unwrap_or(u32::MAX);
            versions.push((to_fhir(record, version), version_number, None));
        }
    }
    let base = base_url(&state, &headers);
    Ok(resource(
        StatusCode::OK,
        &super::history_bundle(&base, "Patient", &id.to_string(), versions.into_iter()),
    ))
}

/// The header a registrar gives the reason in when the patient is not the likely duplicate
/// the matcher found.
pub const DUPLICATE_OVERRIDE: &str = "x-duplicate-override-reason";

/// A FHIR Patient as the native registration body. Elements the registration does not hold
/// (contacts, links, photos, ...) are left out; the MRN is assigned here, never taken.
pub(super) fn registration(patient: &Value) -> Map<String, Value> {
    let mut body = Map::new();
    let names = patient["name"].as_array().cloned().unwrap_or_default();
    let official = names
        .iter()
        .find(|n| n["use"] == "official")
        .or_else(|| names.first());
    if let Some(official) = official {
        let mut name = Map::new();
        for key in ["given", "prefix", "suffix"] {
            if let Some(parts) = official.get(key) {
                name.insert(key.into(), parts.clone());
            }
        }
        if let Some(family) = official.get("family") {
            name.insert("family".into(), family.clone());
        }
        let preferred = names
            .iter()
            .find(|n| n["use"] == "usual")
            .and_then(|n| n["given"][0].as_str());
        if let Some(preferred) = preferred {
            name.insert("preferred".into(), json!(preferred));
        }
        body.insert("name".into(), Value::Object(name));
    }
    for (fhir, native) in [("birthDate", "birth_date"), ("gender", "gender")] {
        if let Some(value) = patient.get(fhir) {
            body.insert(native.into(), value.clone());
        }
    }
    if let Some(code) = patient["maritalStatus"]["coding"][0]["code"].as_str() {
        body.insert("marital_status".into(), json!(code));
    }
    let languages: Vec<Value> = patient["communication"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter_map(|c| c["language"]["coding"][0]["code"].as_str())
                .map(|code| json!(code))
                .collect()
        })
        .unwrap_or_default();
    if !languages.is_empty() {
        body.insert("languages".into(), Value::Array(languages));
    }
    let identifiers: Vec<Value> = patient["identifier"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter(|i| i["system"] != MRN_SYSTEM)
                .map(|i| {
                    let kind = i["type"]["coding"][0]["code"].as_str();
                    json!({
                        "system": i["system"],
                        "value": i["value"],
                        // Social security and national person numbers are shown masked.
                        "national": matches!(kind, Some("SS" | "NI" | "NN" | "SB")),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    if !identifiers.is_empty() {
        body.insert("identifiers".into(), Value::Array(identifiers));
    }
    let mut contact = Map::new();
    let telecom = patient["telecom"].as_array().cloned().unwrap_or_default();
    // The native record has one preferred entry per list: the one ranked first, else the
    // first given.
    let of = |systems: &[&str]| -> (Vec<Value>, usize) {
        let chosen: Vec<Value> = telecom
            .iter()
            .filter(|t| systems.iter().any(|s| t["system"] == *s))
            .cloned()
            .collect();
        let preferred = chosen.iter().position(|t| t["rank"] == 1).unwrap_or(0);
        (chosen, preferred)
    };
    let (phone_points, preferred_phone) = of(&["phone", "sms"]);
    let phones: Vec<Value> = phone_points
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut phone = json!({ "number": t["value"], "preferred": i == preferred_phone });
            if let Some(phone_use @ ("home" | "work" | "mobile")) = t["use"].as_str() {
                phone["use"] = json!(phone_use);
            }
            phone
        })
        .collect();
    let (email_points, preferred_email) = of(&["email"]);
    let emails: Vec<Value> = email_points
        .iter()
        .enumerate()
        .map(|(i, t)| json!({ "address": t["value"], "preferred": i == preferred_email }))
        .collect();
    let addresses: Vec<Value> = patient["address"]
        .as_array()
        .map(|all| {
            all.iter()
                .map(|a| {
                    let mut address = Map::new();
                    if let Some(address_use @ ("home" | "work" | "temp" | "billing")) =
                        a["use"].as_str()
                    {
                        address.insert("use".into(), json!(address_use));
                    }
                    for (fhir, native) in [
                        ("line", "lines"),
                        ("city", "city"),
                        ("state", "state"),
                        ("postalCode", "postal_code"),
                        ("country", "country"),
                    ] {
                        if let Some(value) = a.get(fhir) {
                            address.insert(native.into(), value.clone());
                        }
                    }
                    Value::Object(address)
                })
                .collect()
        })
        .unwrap_or_default();
    for (key, list) in [
        ("phones", phones),
        ("emails", emails),
        ("addresses", addresses),
    ] {
        if !list.is_empty() {
            contact.insert(key.into(), Value::Array(list));
        }
    }
    if !contact.is_empty() {
        body.insert("contact".into(), Value::Object(contact));
    }
    body
}

/// The native registration's field names as FHIRPath, for errors.
pub(super) fn patient_paths(errors: &FieldErrors) -> FieldErrors {
    let mut renamed = FieldErrors::new();
    for e in errors.iter() {
        let field = e.field.as_str();
        let path = if let Some(rest) = field.strip_prefix("name.") {
            format!("Patient.name.{}", rest.replace("preferred", "given"))
        } else if field == "birth_date" {
            "Patient.birthDate".to_owned()
        } else if field == "marital_status" {
            "Patient.maritalStatus".to_owned()
        } else if field.starts_with("languages") {
            "Patient.communication.language".to_owned()
        } else if let Some(rest) = field.strip_prefix("identifiers") {
            format!("Patient.identifier{rest}")
        } else if field.starts_with("contact.phones") || field.starts_with("contact.emails") {
            "Patient.telecom".to_owned()
        } else if let Some(rest) = field.strip_prefix("contact.addresses") {
            format!(
                "Patient.address{}",
                rest.replace("postal_code", "postalCode")
                    .replace("lines", "line")
            )
        } else if field.is_empty() {
            "Patient".to_owned()
        } else {
            format!("Patient.{field}")
        };
        renamed.push(FieldError::new(path, e.message.clone()));
    }
    renamed
}

/// The answer to a registration the matcher holds back: 409, and a warning per likely
/// duplicate.
fn possible_duplicate(likely: &[application::matching::Match]) -> Response {
    let mut issues = vec![Issue::new(
        "duplicate",
        format!(
            "possible-duplicate: the patient may be registered already; nothing was \
             recorded. Send it again with the header {DUPLICATE_OVERRIDE} saying why it \
             is another person to register it anyway"
        ),
    )];
    issues.extend(likely.iter().map(|m| {
        Issue::warning(
            "duplicate",
            format!("possible-duplicate: Patient/{} ({})", m.id, m.grade.code()),
        )
    }));
    outcome(StatusCode::CONFLICT, &issues)
}

/// `POST /Patient`: registers the patient through the native registration (the matcher
/// included: a likely duplicate is 409 naming it, unless `X-Duplicate-Override-Reason` says
/// why not).
async fn create(
    State(state): State<AppState>,
    write: Write<permission::RegisterPatient>,
) -> Result<Response, ApiError> {
    if write.resource["resourceType"] != "Patient" {
        return Err(ApiError::Validation(
            FieldError::new("resourceType", "must be Patient at this address").into(),
        ));
    }
    // A conditional create: the patient its search finds answers instead.
    if let Some(condition) = write.headers.get("if-none-exist") {
        let condition = condition.to_str().unwrap_or_default();
        if let Some(found) = already_there(&state, &write.user, condition).await? {
            return Ok(found);
        }
    }
    let mut body = registration(&write.resource);
    if let Some(reason) = write
        .headers
        .get(DUPLICATE_OVERRIDE)
        .and_then(|v| v.to_str().ok())
    {
        body.insert("duplicate_override".into(), json!({ "reason": reason }));
    }
    let now = (state.clock)();
    let input = crate::http::input::patient::registration(&body, now.date_naive())
        .map_err(|errors| patient_paths(&errors));
    let contacts = super::patient_contacts::emergency_contacts(&write.resource);
    let (input, contacts) = match (input, contacts) {
        (Ok(input), Ok(contacts)) => (input, contacts),
        (input, contacts) => {
            let mut errors = FieldErrors::new();
            for bad in [input.err(), contacts.err()].into_iter().flatten() {
                for e in bad.iter() {
                    errors.push(e.clone());
                }
            }
            return Err(ApiError::Validation(errors));
        }
    };
    let id = PatientId::new(write.imported_id.unwrap_or_else(uuid::Uuid::new_v4));
    // The registration and its emergency contacts are stored together: in the transaction
    // the request is part of, or in a unit of their own.
    let (scoped, own) = state.in_some_unit();
    let registered = application::registration::register(
        (&scoped.store, &scoped.pool),
        id,
        input,
        metadata(&write.user, &write.ctx, None),
        now,
    )
    .await;
    let refused = match registered {
        Ok(registered) => Ok(registered),
        Err(application::registration::RegistrationError::PossibleDuplicate(likely)) => {
            Err(ApiError::PossibleDuplicate(likely))
        }
        Err(application::registration::RegistrationError::Command(e)) => Err(e.into()),
        Err(application::registration::RegistrationError::Database(e)) => Err(e.into()),
    };
    let (patient, version) = match refused {
        Ok(registered) => registered,
        // Found by the matcher before the command, or by the store's guard during it.
        Err(ApiError::PossibleDuplicate(likely)) => return Ok(possible_duplicate(&likely)),
        Err(other) => return Err(other),
    };
    let (mut patient, mut version) = (patient, version);
    for contact in contacts {
        (patient, version) = application::patients::change(
            scoped.services(),
            &write.user,
            (
                Action::ChangeEmergencyContacts,
                PatientCommand::Change(RecordChange::AddEmergencyContact { contact, at: now }),
            ),
            (id, Some(version)),
            metadata(&write.user, &write.ctx, None),
        )
        .await?;
    }
    if let Some(unit) = own {
        match unit.commit().await.map_err(ApiError::from) {
            Ok(_) => {}
            Err(ApiError::PossibleDuplicate(likely)) => return Ok(possible_duplicate(&likely)),
            Err(other) => return Err(other),
        }
    }
    let record = patient.record().ok_or(ApiError::NotFound)?;
    let mut answer = super::versioned(StatusCode::CREATED, &to_fhir(record, version), version);
    let location = format!(
        "{}/Patient/{id}/_history/{version}",
        base_url(&state, &write.headers)
    );
    super::locate(&mut answer, &location);
    Ok(answer)
}

/// The FHIR base URL the caller reached: the start of absolute URLs.
pub fn base_url(state: &AppState, headers: &HeaderMap) -> String {
    format!("{}{BASE}", crate::http::origin(state, headers))
}

/// `GET /Patient/{id}`.
async fn read(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::ReadPatient>,
    Path(raw_id): Path<String>,
) -> Result<Response, ApiError> {
    let Ok(id) = PatientId::parse("id", &raw_id) else {
        return Ok(outcome(
            StatusCode::NOT_FOUND,
            &[Issue::new("not-found", "no Patient has this id").at("id")],
        ));
    };
    let (patient, version) = finding::read(state.services(), &user, id).await?;
    let Some(record) = patient.record() else {
        // Forgotten: only the fact of erasure is left.
        return Ok(outcome(
            StatusCode::GONE,
            &[Issue::new("deleted", "this patient was erased")],
        ));
    };
    let answer = super::versioned(StatusCode::OK, &to_fhir(record, version), version);
    Ok(answer)
}

/// A search's parameters: `birthdate` may be given twice (a range), every other parameter
/// once.
fn search_params(
    query: &[(String, String)],
) -> Result<(HashMap<String, String>, Vec<String>), ApiError> {
    let mut params: HashMap<String, String> = HashMap::new();
    let mut birthdates: Vec<String> = Vec::new();
    let mut repeated = FieldErrors::new();
    for (key, value) in query {
        if key == "birthdate" {
            birthdates.push(value.clone());
        } else if params.insert(key.clone(), value.clone()).is_some() {
            repeated.push(FieldError::new(key.clone(), "may be given once"));
        }
    }
    repeated
        .into_result()
        .map_err(ApiError::InvalidParameters)?;
    if let Some(first) = birthdates.first() {
        params.insert("birthdate".into(), first.clone());
    }
    Ok((params, birthdates))
}

/// The search read model's criteria of a FHIR Patient search.
fn criteria_of(
    state: &AppState,
    (params, birthdates): (&HashMap<String, String>, &[String]),
) -> Result<projections::patient_search::Criteria, ApiError> {
    let native = native_params(params, birthdates)?;
    super::super::patients::parse_criteria(&native, (state.clock)().date_naive())
        .map_err(fhir_names)
}

/// The patient a conditional create's `If-None-Exist` (Patient search parameters) finds:
/// `Ok(None)` when none does, the answer (the one found, or 412 when several are) otherwise.
async fn already_there(
    state: &AppState,
    user: &crate::auth::AuthUser,
    condition: &str,
) -> Result<Option<Response>, ApiError> {
    let query: Vec<(String, String)> =
        form_urlencoded::parse(condition.trim_start_matches('?').as_bytes())
            .into_owned()
            .collect();
    let (params, birthdates) = search_params(&query)?;
    let criteria = criteria_of(state, (&params, &birthdates)).map_err(|e| match e {
        ApiError::InvalidParameters(errors) => {
            let mut named = FieldErrors::new();
            for e in errors.iter() {
                named.push(FieldError::new(
                    format!("If-None-Exist: {}", e.field),
                    e.message.clone(),
                ));
            }
            ApiError::InvalidParameters(named)
        }
        other => other,
    })?;
    let page = finding::search(state.services(), user, criteria).await?;
    match page.items.as_slice() {
        [] => Ok(None),
        [one] if !page.has_more => {
            let (patient, version) =
                finding::read(state.services(), user, PatientId::new(one.id)).await?;
            let record = patient.record().ok_or(ApiError::Gone)?;
            Ok(Some(super::versioned(
                StatusCode::OK,
                &to_fhir(record, version),
                version,
            )))
        }
        _ => Ok(Some(outcome(
            StatusCode::PRECONDITION_FAILED,
            &[Issue::new(
                "multiple-matches",
                "If-None-Exist matches more than one patient",
            )
            .at("If-None-Exist")],
        ))),
    }
}

/// `GET /Patient?...`: a searchset Bundle, paged by `_count` and `_offset`.
async fn search(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::SearchPatients>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    if access::is_external(&user, state.home_organization.as_deref()) {
        return Err(ApiError::Forbidden);
    }
    let base = base_url(&state, &headers);
    let mut self_query: Vec<(String, String)> =
        form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    self_query.sort();
    let (params, birthdates) = search_params(&self_query)?;
    if let Some(raw) = params.get("_id") {
        return by_id(&state, &user, &params, raw, &base, &self_query).await;
    }
    let criteria = criteria_of(&state, (&params, &birthdates))?;
    let (limit, offset) = (criteria.limit, criteria.offset);
    let page = finding::search(state.services(), &user, criteria).await?;
    let mut entries = Vec::with_capacity(page.items.len());
    for hit in &page.items {
        // The search recorded each hit as an access; the whole record is read from the store.
        if let Some((patient, version)) = state.store.load(PatientId::new(hit.id)).await? {
            if let Some(record) = patient.record() {
                entries.push(match_entry(&base, to_fhir(record, version)));
            }
        }
    }
    let paging = super::Paging {
        count: limit as usize,
        offset: offset as usize,
        has_more: page.has_more,
    };
    Ok(resource(
        StatusCode::OK,
        &super::page_bundle((&base, "Patient"), &self_query, paging, page.total, entries),
    ))
}

/// `_id` (alone, or with `_count`): the patient as a one-entry searchset, or none.
async fn by_id(
    state: &AppState,
    user: &crate::auth::AuthUser,
    params: &HashMap<String, String>,
    raw: &str,
    base: &str,
    self_query: &[(String, String)],
) -> Result<Response, ApiError> {
    let mut errors = FieldErrors::new();
    for key in params
        .keys()
        .filter(|k| !matches!(k.as_str(), "_id" | "_count"))
    {
        errors.push(FieldError::new(key.clone(), "cannot be combined with _id"));
    }
    errors.into_result().map_err(ApiError::InvalidParameters)?;
    let mut entries = Vec::new();
    if let Ok(id) = PatientId::parse("_id", raw) {
        if let Some((patient, version)) = found(finding::read(state.services(), user, id).await)? {
            if let Some(record) = patient.record() {
                entries.push(match_entry(base, to_fhir(record, version)));
            }
        }
    }
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(self_query.iter().cloned())
        .finish();
    Ok(resource(
        StatusCode::OK,
        &json!({
            "resourceType": "Bundle",
            "type": "searchset",
            "total": entries.len(),
            "link": [{ "relation": "self", "url": format!("{base}/Patient?{query}") }],
            "entry": entries,
        }),
    ))
}

/// FHIR's search parameters as the native search's; an unknown one is refused by name.
fn native_params(
    params: &HashMap<String, String>,
    birthdates: &[String],
) -> Result<HashMap<String, String>, ApiError> {
    let mut errors = FieldErrors::new();
    let mut native = HashMap::new();
    // Each `birthdate`: a day (`eq`, or no prefix), or one end of a range.
    for value in birthdates {
        let (prefix, day) = match value.get(..2) {
            Some(p @ ("eq" | "ge" | "gt" | "le" | "lt")) => (p, &value[2..]),
            _ => ("eq", value.as_str()),
        };
        let Ok(date) = chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d") else {
            errors.push(FieldError::new(
                "birthdate",
                "must be YYYY-MM-DD, with eq, ge, gt, le or lt before it",
            ));
            continue;
        };
        let (key, date) = match prefix {
            "ge" => ("born_from", Some(date)),
            "gt" => ("born_from", date.succ_opt()),
            "le" => ("born_to", Some(date)),
            "lt" => ("born_to", date.pred_opt()),
            _ => ("birth_date", Some(date)),
        };
        if let Some(date) = date {
            if native
                .insert(key.to_owned(), date.format("%Y-%m-%d").to_string())
                .is_some()
            {
                errors.push(FieldError::new(
                    "birthdate",
                    "names each end of the range once",
                ));
            }
        }
    }
    for (key, value) in params {
        let renamed = match key.as_str() {
            "family" | "given" | "name" | "gender" => Some((key.clone(), value.clone())),
            "birthdate" => None,
            "identifier" => match value.split_once('|') {
                Some((MRN_SYSTEM, mrn)) => Some(("mrn".into(), mrn.to_owned())),
                _ => Some(("identifier".into(), value.clone())),
            },
            "telecom" => {
                let (system, number) = match value.split_once('|') {
                    Some((system, number)) => (Some(system), number),
                    None => (None, value.as_str()),
                };
                match system {
                    Some("email") => Some(("email".into(), number.to_owned())),
                    Some("phone") => Some(("phone".into(), number.to_owned())),
                    None if number.contains('@') => Some(("email".into(), number.to_owned())),
                    None => Some(("phone".into(), number.to_owned())),
                    Some(_) => {
                        errors.push(FieldError::new(
                            key.clone(),
                            "the system must be phone or email",
                        ));
                        None
                    }
                }
            }
            "address-postalcode" => Some(("postal_code".into(), value.clone())),
            other => match PAGING.iter().find(|(fhir, _)| *fhir == other) {
                Some((_, native)) => Some(((*native).to_owned(), value.clone())),
                None => {
                    errors.push(FieldError::new(
                        key.clone(),
                        "is not a search parameter of Patient here (see /fhir/R4/metadata)",
                    ));
                    None
                }
            },
        };
        if let Some((k, v)) = renamed {
            native.insert(k, v);
        }
    }
    errors.into_result().map_err(ApiError::InvalidParameters)?;
    Ok(native)
}

/// The native search's parameter names in its errors, back as FHIR's.
fn fhir_names(error: ApiError) -> ApiError {
    let ApiError::InvalidParameters(errors) = error else {
        return error;
    };
    let mut renamed = FieldErrors::new();
    for e in errors.iter() {
        let field = match e.field.as_str() {
            "birth_date" | "born_from" | "born_to" => "birthdate",
            "mrn" => "identifier",
            "phone" | "email" => "telecom",
            "postal_code" => "address-postalcode",
            "limit" => "_count",
            "offset" => "_offset",
            other => other,
        };
        let message = if e.field.is_empty() {
            "give at least one of name, family, given, birthdate, gender, identifier, telecom, address-postalcode".to_owned()
        } else {
            e.message.clone()
        };
        renamed.push(FieldError::new(field, message));
    }
    ApiError::InvalidParameters(renamed)
}

fn human_name(name: &PersonName, name_use: &str) -> Value {
    let mut value = json!({ "use": name_use, "family": name.family() });
    if !name.given().is_empty() {
        value["given"] = json!(name.given());
    }
    if !name.prefix().is_empty() {
        value["prefix"] = json!(name.prefix());
    }
    if !name.suffix().is_empty() {
        value["suffix"] = json!(name.suffix());
    }
    value
}

fn phone(phone: &Phone) -> Value {
    let mut value = json!({
        "system": "phone",
        "value": phone.number.as_str(),
        "use": phone.phone_use.code(),
    });
    if phone.preferred {
        value["rank"] = json!(1);
    }
    value
}

fn address(address: &Address) -> Value {
    let mut value = Map::new();
    value.insert("use".into(), json!(address.address_use.code()));
    if !address.lines.is_empty() {
        value.insert("line".into(), json!(address.lines));
    }
    for (key, part) in [
        ("city", address.city.as_deref()),
        ("state", address.state.as_deref()),
        ("postalCode", address.postal_code.as_deref()),
        ("country", address.country.as_ref().map(|c| c.as_str())),
    ] {
        if let Some(part) = part {
            value.insert(key.into(), json!(part));
        }
    }
    Value::Object(value)
}

fn emergency_contact(contact: &EmergencyContact) -> Value {
    let mut value = json!({
        "relationship": [{
            "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v2-0131",
                "code": "C",
                "display": "Emergency Contact",
            }],
            "text": contact.relationship.code(),
        }],
        "name": human_name(&contact.name, "usual"),
    });
    if !contact.phones.is_empty() {
        value["telecom"] = Value::Array(contact.phones.iter().map(phone).collect());
    }
    value
}

/// A patient's record as a FHIR R4 `Patient`.
pub fn to_fhir(record: &PatientRecord, version: u64) -> Value {
    let mut patient = Map::new();
    patient.insert("resourceType".into(), json!("Patient"));
    patient.insert("id".into(), json!(record.patient_id.to_string()));
    patient.insert("meta".into(), json!({ "versionId": version.to_string() }));
    let mut identifiers = vec![json!({
        "use": "usual",
        "type": { "coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
            "code": "MR",
            "display": "Medical record number",
        }] },
        "system": MRN_SYSTEM,
        "value": record.mrn.as_str(),
    })];
    identifiers.extend(
        record
            .identifiers
            .iter()
            // National identifiers masked but for their end, as the native API shows them.
            .map(|i| json!({ "system": i.system, "value": i.display_value() })),
    );
    patient.insert("identifier".into(), Value::Array(identifiers));
    patient.insert(
        "active".into(),
        json!(record.status == PatientStatus::Active),
    );
    let mut names = vec![human_name(&record.name, "official")];
    if let Some(preferred) = record.name.preferred() {
        names.push(json!({ "use": "usual", "given": [preferred] }));
    }
    patient.insert("name".into(), Value::Array(names));
    let mut telecom: Vec<Value> = record.contact.phones.iter().map(phone).collect();
    telecom.extend(record.contact.emails.iter().map(|e| {
        let mut value = json!({ "system": "email", "value": e.address.as_str() });
        if e.preferred {
            value["rank"] = json!(1);
        }
        value
    }));
    if !telecom.is_empty() {
        patient.insert("telecom".into(), Value::Array(telecom));
    }
    patient.insert("gender".into(), json!(record.gender.code()));
    if let Some(birth_date) = &record.birth_date {
        patient.insert(
            "birthDate".into(),
            json!(birth_date.date().format("%Y-%m-%d").to_string()),
        );
    }
    if !record.contact.addresses.is_empty() {
        patient.insert(
            "address".into(),
            Value::Array(record.contact.addresses.iter().map(address).collect()),
        );
    }
    if let Some(marital) = &record.marital_status {
        patient.insert(
            "maritalStatus".into(),
            json!({ "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
                "code": marital.code(),
            }] }),
        );
    }
    if !record.emergency_contacts.is_empty() {
        patient.insert(
            "contact".into(),
            Value::Array(
                record
                    .emergency_contacts
                    .iter()
                    .map(emergency_contact)
                    .collect(),
            ),
        );
    }
    let preferred_language = record
        .preferences
        .communication_language
        .as_ref()
        .map(|l| l.as_str());
    let mut languages: Vec<&str> = record.languages.iter().map(|l| l.as_str()).collect();
    if let Some(preferred) = preferred_language {
        if !languages.contains(&preferred) {
            languages.insert(0, preferred);
        }
    }
    if !languages.is_empty() {
        patient.insert(
            "communication".into(),
            Value::Array(
                languages
                    .iter()
                    .map(|tag| {
                        json!({
                            "language": { "coding": [{ "system": "urn:ietf:bcp:47", "code": tag }] },
                            "preferred": Some(*tag) == preferred_language,
                        })
                    })
                    .collect(),
            ),
        );
    }
    // Merges: a merged-away duplicate is replaced by its survivor, which replaces it.
    let mut links: Vec<Value> = record
        .merged_into
        .iter()
        .map(|survivor| {
            json!({ "other": { "reference": format!("Patient/{survivor}") }, "type": "replaced-by" })
        })
        .collect();
    links.extend(record.absorptions.iter().map(|a| {
        json!({ "other": { "reference": format!("Patient/{}", a.source_id) }, "type": "replaces" })
    }));
    if !links.is_empty() {
        patient.insert("link".into(), Value::Array(links));
    }
    Value::Object(patient)
}

/// The match-grade extension of a `$match` result.
const MATCH_GRADE: &str = "http://hl7.org/fhir/StructureDefinition/match-grade";

/// The matcher's weight (a log-likelihood ratio, in bits) as a probability that the two are
/// one person, from even odds: 0.8 at the `possible` threshold, 0.99 at `probable`.
fn match_probability(weight: f64) -> f64 {
    let probability = 1.0 / (1.0 + (-weight).exp2());
    (probability * 1000.0).round() / 1000.0
}

/// `POST /Patient/$match`: the registered patients a Patient (in a Parameters `resource`) may
/// be, best first, graded by the matcher; `count` (1 to 100, 10 by default) and
/// `onlyCertainMatches`. Each one shown is recorded as an access.
async fn match_patients(
    State(state): State<AppState>,
    write: Write<permission::MatchPatients>,
) -> Result<Response, ApiError> {
    let parameters = &write.resource;
    if parameters["resourceType"] != "Parameters" {
        return Err(ApiError::Validation(
            FieldError::new("resourceType", "must be Parameters").into(),
        ));
    }
    let parameter = |name: &str| {
        parameters["parameter"]
            .as_array()
            .and_then(|all| all.iter().find(|p| p["name"] == name))
    };
    let mut errors = FieldErrors::new();
    let patient = parameter("resource")
        .map(|p| &p["resource"])
        .filter(|r| r["resourceType"] == "Patient");
    if patient.is_none() {
        errors.push(FieldError::new(
            "Parameters.parameter.resource",
            "is required: the Patient to match",
        ));
    }
    let count = match parameter("count").map(|p| &p["valueInteger"]) {
        None => 10,
        Some(n) => match n.as_u64().filter(|n| (1..=100).contains(n)) {
            Some(n) => n as usize,
            None => {
                errors.push(FieldError::new(
                    "Parameters.parameter.count",
                    "must be a valueInteger from 1 to 100",
                ));
                10
            }
        },
    };
    let only_certain = parameter("onlyCertainMatches")
        .and_then(|p| p["valueBoolean"].as_bool())
        .unwrap_or(false);
    errors.into_result().map_err(ApiError::InvalidParameters)?;
    let mut body = registration(patient.unwrap_or(&Value::Null));
    // A candidate is described, not registered: its identifiers are not compared.
    body.remove("identifiers");
    let today = (state.clock)().date_naive();
    let candidate = crate::http::input::patient::candidate(&body, today)
        .map_err(|errors| ApiError::Validation(patient_paths(&errors)))?;
    let found = finding::matches(state.services(), &write.user, &candidate).await?;
    let base = base_url(&state, &write.headers);
    let mut entries = Vec::new();
    for (found, _) in found
        .iter()
        .filter(|(m, _)| !only_certain || m.grade.code() == "certain")
        .take(count)
    {
        if let Some((patient, version)) = state.store.load(PatientId::new(found.id)).await? {
            if let Some(record) = patient.record() {
                let mut entry = match_entry(&base, to_fhir(record, version));
                entry["search"] = json!({
                    "mode": "match",
                    "score": match_probability(found.score),
                    "extension": [{ "url": MATCH_GRADE, "valueCode": found.grade.code() }],
                });
                entries.push(entry);
            }
        }
    }
    Ok(resource(
        StatusCode::OK,
        &json!({
            "resourceType": "Bundle",
            "type": "searchset",
            "total": entries.len(),
            "entry": entries,
        }),
    ))
}
