//! `/v1/patients`: register, read, correct, archive, restore and search.
//!
//! Writes go to the event store (so a read by id is current at once); search reads the
//! `patient_search` read model, which follows the events within moments.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use chrono::{DateTime, Utc};
use domain::patient::{
    ArchivePatient, BirthDate, Patient, PatientCommand, PatientId, RestorePatient,
};
use domain::FieldErrors;
use event_store::command::CommandMetadata;
use projections::patient_search::{self, Criteria};
use schemars::JsonSchema;
use serde::Serialize;
use std::collections::HashMap;

use crate::auth::{access, permission, Action, Authorized};
use crate::http::idempotency::idempotent;
use crate::http::input;
use crate::http::json::JsonObject;
use crate::http::openapi::{self as doc, Kind, Param, Routes};
use crate::http::params::{url_encode, whole_number};
use crate::http::patient_commands::{
    change, metadata, patient_id, reason_only, replay, respond, CommandRequest, PatientAnswer,
};
use crate::http::{if_match, ApiError, AppState, RequestContext};
use application::finding;
use application::reach::changeable_by;
use application::registration::Registration;

const SEARCH_QUERY: &[Param] = &[
    ("name", Kind::Text, false),
    ("phone", Kind::Text, false),
    ("email", Kind::Text, false),
    ("identifier", Kind::Text, false),
    ("postal_code", Kind::Text, false),
    ("family", Kind::Text, false),
    ("given", Kind::Text, false),
    ("birth_date", Kind::Date, false),
    ("born_from", Kind::Date, false),
    ("born_to", Kind::Date, false),
    ("gender", Kind::Text, false),
    ("mrn", Kind::Text, false),
    ("include_archived", Kind::Flag, false),
    ("limit", Kind::Whole(1, MAX_LIMIT as i64), false),
    ("offset", Kind::Whole(0, 10_000), false),
];

pub fn router() -> Routes {
    use input::governance::MergeBody;
    use input::patient::{CandidateBody, CorrectionBody, ReasonBody, RegistrationBody};
    Routes::new()
        .route(
            "/v1/patients",
            post(register).get(search),
            [
                doc::post("Register a patient")
                    .needs(Action::RegisterPatient)
                    .body::<RegistrationBody>()
                    .idempotent()
                    .returns::<PatientAnswer>(),
                doc::get("Search patients (at least one criterion)")
                    .needs(Action::SearchPatients)
                    .query(SEARCH_QUERY)
                    .answers(200, "A page of matching patients, best first")
                    .returns::<SearchPage>(),
            ],
        )
        .route(
            "/v1/patients/$match",
            post(match_candidates),
            [doc::post("The registered patients a candidate may be")
                .needs(Action::MatchPatients)
                .body::<CandidateBody>()
                .answers(200, "The candidates, graded and best first")
                .returns::<Candidates>()],
        )
        .route(
            "/v1/patients/retention-candidates",
            get(retention_candidates),
            [doc::get("Patients past the retention period")
                .needs(Action::ReviewRetention)
                .query(&[
                    ("limit", Kind::Whole(1, 1000), false),
                    ("offset", Kind::Whole(0, 1_000_000), false),
                ])
                .returns::<RetentionPage>()],
        )
        .route(
            "/v1/patients/{id}",
            get(read),
            [
                doc::get("A patient's record, current or as it was at an instant")
                    .needs(Action::ReadPatient)
                    .query(&[("as_of", Kind::Instant, false)])
                    .returns::<PatientAnswer>(),
            ],
        )
        .route(
            "/v1/patients/{id}/correct-demographics",
            post(correct_demographics),
            [doc::post("Correct a patient's demographics")
                .needs(Action::CorrectDemographics)
                .body::<CorrectionBody>()
                .if_match()
                .idempotent()
                .answers(200, "The record as corrected")
                .returns::<PatientAnswer>()],
        )
        .route(
            "/v1/patients/{id}/archive",
            post(archive),
            [doc::post("Archive a patient")
                .needs(Action::ArchivePatient)
                .body::<ReasonBody>()
                .if_match()
                .idempotent()
                .answers(200, "The record as archived")
                .returns::<PatientAnswer>()],
        )
        .route(
            "/v1/patients/{id}/restore",
            post(restore),
            [doc::post("Restore an archived patient")
                .needs(Action::RestorePatient)
                .body::<ReasonBody>()
                .if_match()
                .idempotent()
                .answers(200, "The record as restored")
                .returns::<PatientAnswer>()],
        )
        .route(
            "/v1/patients/{id}/merge",
            post(merge),
            [doc::post("Merge a duplicate into the surviving patient")
                .needs(Action::MergePatients)
                .body::<MergeBody>()
                .if_match()
                .idempotent()
                .answers(200, "The duplicate's record, merged")
                .returns::<PatientAnswer>()],
        )
        .route(
            "/v1/patients/{id}/unmerge",
            post(unmerge),
            [doc::post("Undo a merge")
                .needs(Action::MergePatients)
                .body::<ReasonBody>()
                .if_match()
                .idempotent()
                .answers(200, "The record, unmerged")
                .returns::<PatientAnswer>()],
        )
}

/// `POST /v1/patients`: registers a patient; 201 with `Location` and `ETag`; 409 with the
/// candidates when the matcher finds a likely duplicate and no override reason was given.
#[tracing::instrument(skip_all, fields(user_id = %user.id))]
async fn register(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::RegisterPatient>,
    ctx: RequestContext,
    headers: HeaderMap,
    body: JsonObject,
) -> Result<Response, ApiError> {
    let now = (state.clock)();
    let input = input::patient::registration(&body.object, now.date_naive());
    idempotent(
        &state,
        &user,
        &headers,
        ("POST", "/v1/patients", &body.raw),
        replay,
        |key| async {
            let input = input?;
            let id = PatientId::new(uuid::Uuid::new_v4());
            let reservation = key.map(|k| k.answering(StatusCode::CREATED));
            let (patient, version) =
                register_patient(&state, id, input, metadata(&user, &ctx, reservation), now)
                    .await?;
            respond(StatusCode::CREATED, &patient, version)
        },
    )
    .await
}

/// Registers `input` as patient `id` through the use case
/// ([`application::registration::register`]), answering its refusals as problems.
///
/// # Errors
///
/// [`ApiError::PossibleDuplicate`] with the candidates, or the command's error.
async fn register_patient(
    state: &AppState,
    id: PatientId,
    input: Registration,
    metadata: CommandMetadata,
    now: DateTime<Utc>,
) -> Result<(Patient, u64), ApiError> {
    use application::registration::{register, RegistrationError};
    register((&state.store, &state.pool), id, input, metadata, now)
        .await
        .map_err(|e| match e {
            RegistrationError::PossibleDuplicate(likely) => ApiError::PossibleDuplicate(likely),
            RegistrationError::Command(e) => e.into(),
            RegistrationError::Database(e) => e.into(),
        })
}

/// `POST /v1/patients/$match`: the registered patients a candidate may be, graded `certain`,
/// `probable` or `possible`, best first.
#[tracing::instrument(skip_all, fields(user_id = %user.id))]
async fn match_candidates(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::MatchPatients>,
    body: JsonObject,
) -> Result<Response, ApiError> {
    let record = input::patient::candidate(&body.object, (state.clock)().date_naive())?;
    let found = finding::matches(state.services(), &user, &record).await?;
    let candidates = found
        .into_iter()
        .map(|(m, patient)| Candidate {
            grade: m.grade,
            score: m.score,
            status: m.status,
            patient,
            href: format!("/v1/patients/{}", m.id),
        })
        .collect();
    Ok(Json(Candidates { candidates }).into_response())
}

/// `GET /v1/patients/{id}`: the current record, from the event store, with its `ETag`.
/// `?as_of=2026-11-27T12:00:00Z` answers the record as it was at that instant, rebuilt from
/// the events recorded until then.
#[tracing::instrument(skip_all, fields(user_id = %user.id, patient_id))]
async fn read(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::ReadPatient>,
    Path(raw_id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let id = patient_id(&raw_id)?;
    tracing::Span::current().record("patient_id", tracing::field::display(id));
    let mut errors = FieldErrors::new();
    for key in params.keys().filter(|k| k.as_str() != "as_of") {
        errors.push(domain::FieldError::new(key.clone(), "unknown parameter"));
    }
    let as_of = params.get("as_of").and_then(|v| {
        let parsed = DateTime::parse_from_rfc3339(v).map(|t| t.with_timezone(&Utc));
        errors.check(parsed.map_err(|_| {
            domain::FieldError::new(
                "as_of",
                "must be an RFC 3339 instant such as 2026-11-27T12:00:00Z",
            )
        }))
    });
    errors.into_result().map_err(ApiError::InvalidParameters)?;
    let services = state.services();
    let (patient, version) = match as_of {
        Some(as_of) => finding::read_as_of(services, &user, id, as_of).await?,
        None => finding::read(services, &user, id).await?,
    };
    respond(StatusCode::OK, &patient, version)
}

fn correction(body: &JsonObject, now: DateTime<Utc>) -> Result<PatientCommand, ApiError> {
    Ok(PatientCommand::CorrectDemographics(
        input::patient::correction(&body.object, now)?,
    ))
}

/// `POST /v1/patients/{id}/correct-demographics` with `If-Match`: corrects name, birth date or
/// gender, with a reason.
#[tracing::instrument(skip_all, fields(user_id = %req.user.id, patient_id))]
async fn correct_demographics(
    State(state): State<AppState>,
    req: CommandRequest<permission::CorrectDemographics>,
) -> Result<Response, ApiError> {
    let command = correction(&req.body, (state.clock)());
    change(&state, &req, "correct-demographics", command).await
}

/// `POST /v1/patients/{id}/archive` with `If-Match` and a reason.
#[tracing::instrument(skip_all, fields(user_id = %req.user.id, patient_id))]
async fn archive(
    State(state): State<AppState>,
    req: CommandRequest<permission::ArchivePatient>,
) -> Result<Response, ApiError> {
    let at = (state.clock)();
    let command =
        reason_only(&req.body).map(|reason| PatientCommand::Archive(ArchivePatient { reason, at }));
    // An archived patient keeps no appointments ahead, nor a place on the wait list: the
    // process manager `application::background::archived` reacts to the event, so a crash
    // right after the commit cannot lose that.
    change(&state, &req, "archive", command).await
}

/// `POST /v1/patients/{id}/restore` with `If-Match` and a reason.
#[tracing::instrument(skip_all, fields(user_id = %req.user.id, patient_id))]
async fn restore(
    State(state): State<AppState>,
    req: CommandRequest<permission::RestorePatient>,
) -> Result<Response, ApiError> {
    let at = (state.clock)();
    let command =
        reason_only(&req.body).map(|reason| PatientCommand::Restore(RestorePatient { reason, at }));
    change(&state, &req, "restore", command).await
}

/// The search parameters that narrow a search; at least one is required.
const CRITERIA: &[&str] = &[
    "family",
    "given",
    "birth_date",
    "born_from",
    "born_to",
    "gender",
    "mrn",
    "name",
    "phone",
    "email",
    "identifier",
    "postal_code",
];

const SEARCH_PARAMS: &[&str] = &[
    "name",
    "phone",
    "email",
    "identifier",
    "postal_code",
    "family",
    "given",
    "birth_date",
    "born_from",
    "born_to",
    "gender",
    "mrn",
    "include_archived",
    "limit",
    "offset",
];
const MAX_LIMIT: u32 = 100;

/// A page of search hits, and the link to the next page while there is one.
#[derive(Serialize, JsonSchema)]
struct SearchPage {
    items: Vec<patient_search::PatientSummary>,
    next: Option<String>,
}

/// The registered patients a candidate may be, best first.
#[derive(Serialize, JsonSchema)]
struct Candidates {
    candidates: Vec<Candidate>,
}

#[derive(Serialize, JsonSchema)]
struct Candidate {
    grade: domain::matching::Grade,
    score: f64,
    /// `active` or `archived`.
    status: String,
    /// Absent when the search model has not caught up with the patient yet.
    patient: Option<patient_search::PatientSummary>,
    href: String,
}

/// A page of the patients past the retention period.
#[derive(Serialize, JsonSchema)]
struct RetentionPage {
    policy: RetentionPolicy,
    items: Vec<patient_search::RetentionCandidate>,
    next: Option<String>,
}

#[derive(Serialize, JsonSchema)]
struct RetentionPolicy {
    archived_days: u32,
    /// Archived at or before this instant.
    cutoff: DateTime<Utc>,
}

/// `GET /v1/patients?family=&given=&birth_date=&mrn=&include_archived=&limit=&offset=`.
#[tracing::instrument(skip_all, fields(user_id = %user.id))]
async fn search(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::SearchPatients>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    if access::is_external(&user, state.home_organization.as_deref()) {
        // Other organizations reach patients one by one, through their consent (refused
        // before their parameters are looked at).
        return Err(ApiError::Forbidden);
    }
    let criteria = parse_criteria(&params, (state.clock)().date_naive())?;
    let (limit, offset) = (criteria.limit, criteria.offset);
    let page = finding::search(state.services(), &user, criteria).await?;
    let next = page.has_more.then(|| {
        let mut query: Vec<(String, String)> = params
            .iter()
            .filter(|(k, _)| k.as_str() != "offset" && k.as_str() != "limit")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        query.sort();
        query.push(("limit".into(), limit.to_string()));
        query.push(("offset".into(), (offset + limit).to_string()));
        let encoded: Vec<String> = query
            .iter()
            .map(|(k, v)| format!("{k}={}", url_encode(v)))
            .collect();
        format!("/v1/patients?{}", encoded.join("&"))
    });
    Ok(Json(SearchPage {
        items: page.items,
        next,
    })
    .into_response())
}

pub(super) fn parse_criteria(
    params: &HashMap<String, String>,
    today: chrono::NaiveDate,
) -> Result<Criteria, ApiError> {
    let mut errors = FieldErrors::new();
    for key in params.keys() {
        if !SEARCH_PARAMS.contains(&key.as_str()) {
            errors.push(domain::FieldError::new(key.clone(), "unknown parameter"));
        }
    }
    let text = |key: &str, errors: &mut FieldErrors| -> Option<String> {
        let value = params.get(key)?.trim();
        if value.is_empty() || value.chars().count() > 100 || value.chars().any(char::is_control) {
            errors.push(domain::FieldError::new(key, "must be 1 to 100 characters"));
            return None;
        }
        Some(value.to_owned())
    };
    let family = text("family", &mut errors);
    let given = text("given", &mut errors);
    let birth_date = params
        .get("birth_date")
        .and_then(|v| errors.check(BirthDate::parse("birth_date", v, today)))
        .map(|d| d.date());
    let day = |key: &str, errors: &mut FieldErrors| -> Option<chrono::NaiveDate> {
        let value = params.get(key)?;
        let parsed = chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d").ok();
        if parsed.is_none() {
            errors.push(domain::FieldError::new(key, "must be a date: YYYY-MM-DD"));
        }
        parsed
    };
    let (born_from, born_to) = (day("born_from", &mut errors), day("born_to", &mut errors));
    let gender = params.get("gender").and_then(|v| {
        errors
            .check(domain::patient::AdministrativeGender::parse("gender", v))
            .map(|g| g.code().to_owned())
    });
    let mrn = params
        .get("mrn")
        .and_then(|v| errors.check(domain::patient::Mrn::parse("mrn", v)))
        .map(|m| m.as_str().to_owned());
    let name = text("name", &mut errors);
    let phone = params.get("phone").and_then(|v| {
        errors
            .check(domain::patient::contact::PhoneNumber::parse("phone", v))
            .map(|p| p.as_str().to_owned())
    });
    let email = params.get("email").and_then(|v| {
        errors
            .check(domain::patient::contact::EmailAddress::parse("email", v))
            .map(|e| e.as_str().to_owned())
    });
    let postal_code = params
        .get("postal_code")
        .and_then(|v| errors.check(domain::patient::contact::postal_code("postal_code", v)));
    let identifier = params
        .get("identifier")
        .and_then(|v| {
            let parsed = v.split_once('|').and_then(|(system, value)| {
                domain::patient::contact::Identifier::parse("identifier", system, value, false).ok()
            });
            if parsed.is_none() {
                errors.push(domain::FieldError::new(
                    "identifier",
                    "must be system|value: a URI or OID without spaces, then 1 to 100 visible characters",
                ));
            }
            parsed.map(|id| (id.system, id.value))
        });
    let include_archived = match params.get("include_archived").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            errors.push(domain::FieldError::new(
                "include_archived",
                "must be true or false",
            ));
            false
        }
    };
    let limit = whole_number(params, "limit", 20, 1..=MAX_LIMIT, &mut errors);
    let offset = whole_number(params, "offset", 0, 0..=10_000, &mut errors);
    if !params.keys().any(|k| CRITERIA.contains(&k.as_str())) {
        errors.push(domain::FieldError::new(
            "",
            format!("give at least one of {}", CRITERIA.join(", ")),
        ));
    }
    errors.into_result().map_err(ApiError::InvalidParameters)?;
    Ok(Criteria {
        family,
        given,
        birth_date,
        born_from,
        born_to,
        gender,
        mrn,
        name,
        phone,
        email,
        identifier,
        postal_code,
        include_archived,
        exclude_research_opt_outs: false,
        limit,
        offset,
    })
}

/// `POST /v1/patients/{id}/merge` with `If-Match` and `{target_id, reason}`: this patient is a
/// duplicate of `target_id`, which survives and gains the identifiers and contact points it
/// lacks. Both records keep the fact; `unmerge` undoes it.
///
/// The two aggregates change one after the other: the source first (its `If-Match` is
/// checked), then the survivor; if the survivor refuses, the source is unmerged again.
#[tracing::instrument(skip_all, fields(user_id = %req.user.id, patient_id))]
async fn merge(
    State(state): State<AppState>,
    req: CommandRequest<permission::MergePatients>,
) -> Result<Response, ApiError> {
    let source = patient_id(req.raw_id())?;
    tracing::Span::current().record("patient_id", tracing::field::display(source));
    changeable_by(state.services(), &req.user, Action::MergePatients, source).await?;
    let now = (state.clock)();
    let input = input::governance::merge(&req.body.object);
    let path = format!("/v1/patients/{source}/merge");
    idempotent(
        &state,
        &req.user,
        req.headers(),
        ("POST", &path, &req.body.raw),
        replay,
        |key| async {
            let expected = if_match(req.headers())?;
            let (target, reason) = input?;
            let meta = metadata(
                &req.user,
                req.ctx(),
                key.map(|k| k.answering(StatusCode::OK)),
            );
            let merge = application::merging::Merge {
                source,
                expected_version: expected,
                target,
                reason,
            };
            let (merged, version) =
                application::merging::merge(state.services(), &req.user, merge, meta, now).await?;
            respond(StatusCode::OK, &merged, version)
        },
    )
    .await
}

/// `POST /v1/patients/{id}/unmerge` with `If-Match` and `{reason}`: undoes this patient's
/// merge; the survivor gives back what it gained from it.
#[tracing::instrument(skip_all, fields(user_id = %req.user.id, patient_id))]
async fn unmerge(
    State(state): State<AppState>,
    req: CommandRequest<permission::MergePatients>,
) -> Result<Response, ApiError> {
    let source = patient_id(req.raw_id())?;
    tracing::Span::current().record("patient_id", tracing::field::display(source));
    changeable_by(state.services(), &req.user, Action::MergePatients, source).await?;
    let now = (state.clock)();
    let reason = reason_only(&req.body);
    let path = format!("/v1/patients/{source}/unmerge");
    idempotent(
        &state,
        &req.user,
        req.headers(),
        ("POST", &path, &req.body.raw),
        replay,
        |key| async {
            let expected = if_match(req.headers())?;
            let reason = reason?;
            let meta = metadata(
                &req.user,
                req.ctx(),
                key.map(|k| k.answering(StatusCode::OK)),
            );
            let (unmerged, version) = application::merging::unmerge(
                state.services(),
                &req.user,
                (source, expected),
                reason,
                meta,
                now,
            )
            .await?;
            respond(StatusCode::OK, &unmerged, version)
        },
    )
    .await
}

/// `GET /v1/patients/retention-candidates?limit=&offset=`: archived patients whose retention
/// period (`retention.archived_days` after archiving) has passed, oldest first. Listing only:
/// purging comes with erasure.
#[tracing::instrument(skip_all, fields(user_id = %user.id))]
async fn retention_candidates(
    State(state): State<AppState>,
    Authorized(user, _): Authorized<permission::ReviewRetention>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let mut errors = FieldErrors::new();
    let limit = whole_number(&params, "limit", 100, 1..=1000, &mut errors);
    let offset = whole_number(&params, "offset", 0, 0..=1_000_000, &mut errors);
    for key in params
        .keys()
        .filter(|k| !["limit", "offset"].contains(&k.as_str()))
    {
        errors.push(domain::FieldError::new(key.clone(), "unknown parameter"));
    }
    errors.into_result().map_err(ApiError::InvalidParameters)?;
    let (items, more, cutoff) =
        finding::retention_candidates(state.services(), &user, (limit, offset)).await?;
    let next = more.then(|| {
        format!(
            "/v1/patients/retention-candidates?limit={limit}&offset={}",
            offset + limit
        )
    });
    Ok(Json(RetentionPage {
        policy: RetentionPolicy {
            archived_days: state.retention_days,
            cutoff,
        },
        items,
        next,
    })
    .into_response())
}
