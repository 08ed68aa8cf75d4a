//! Every error answer is an RFC 9457 problem (`application/problem+json`). [`ApiError`] is the
//! one error type handlers return; internal detail is logged here, once, and never sent.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use domain::medical_record::{AllergyWarning, MedicalRecordError};
use domain::patient::PatientError;
use domain::scheduling::SchedulingError;
use domain::{FieldError, FieldErrors};
use event_store::command::CommandError;
use serde::Serialize;

pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("authentication required")]
    Unauthenticated,
    #[error("forbidden")]
    Forbidden,
    #[error("not found")]
    NotFound,
    /// The patient was forgotten (erased): their data is gone for good.
    #[error("gone")]
    Gone,
    #[error("malformed JSON body")]
    MalformedJson(String),
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("body too large")]
    PayloadTooLarge,
    /// More requests in flight than the service takes at once (`http.max_in_flight`).
    #[error("overloaded")]
    Overloaded,
    /// Bad path, query or header parameters.
    #[error("invalid parameters")]
    InvalidParameters(FieldErrors),
    /// A well-formed body whose fields break the rules.
    #[error("invalid fields")]
    Validation(FieldErrors),
    #[error("If-Match required")]
    PreconditionRequired,
    #[error("stale version")]
    PreconditionFailed { current: u64 },
    #[error(transparent)]
    Rule(PatientError),
    /// A medical record rule.
    #[error(transparent)]
    Record(MedicalRecordError),
    /// A medication matches active allergies: the order, and the warnings to acknowledge.
    #[error("allergy warning")]
    AllergyWarning {
        warnings: Vec<AllergyWarning>,
        order: serde_json::Value,
    },
    /// A scheduling rule.
    #[error(transparent)]
    Schedule(SchedulingError),
    /// The time is taken: by which appointment (when the caller may know), and where it could
    /// go instead.
    #[error("time taken")]
    TimeTaken {
        conflicting: Option<uuid::Uuid>,
        alternatives: Vec<application::planner::Placement>,
    },
    #[error("conflict")]
    Conflict,
    /// Break-the-glass asked for more patients than `auth.break_glass_patients_per_hour`.
    #[error("emergency access limit reached")]
    EmergencyAccessLimit,
    #[error("idempotency key reused")]
    IdempotencyKeyReused,
    /// Registration refused: the patient is likely registered already.
    #[error("possible duplicate")]
    PossibleDuplicate(Vec<application::matching::Match>),
    #[error("service unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    pub fn invalid_parameter(field: &str, message: &str) -> Self {
        Self::InvalidParameters(FieldError::new(field, message).into())
    }

    /// Whether this is a refusal the command itself gave on what it found (not the caller's
    /// credentials, a malformed request, a passing conflict or a failure): the answer a
    /// repeat of the same keyed request gets again. An allergy warning is not one: its
    /// document quotes the order, which is clinical data the idempotency table must not hold.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Self::NotFound
                | Self::Gone
                | Self::Validation(_)
                | Self::PreconditionFailed { .. }
                | Self::Rule(_)
                | Self::Record(_)
                | Self::Schedule(_)
                | Self::TimeTaken { .. }
                | Self::PossibleDuplicate(_)
        )
    }
}

/// A body's bad fields.
impl From<FieldErrors> for ApiError {
    fn from(errors: FieldErrors) -> Self {
        Self::Validation(errors)
    }
}

impl From<CommandError> for ApiError {
    fn from(error: CommandError) -> Self {
        match error {
            CommandError::Rule(PatientError::NotRegistered) => Self::NotFound,
            CommandError::Rule(PatientError::Forgotten) => Self::Gone,
            CommandError::Rule(rule) => Self::Rule(rule),
            CommandError::VersionMismatch { current, .. } => Self::PreconditionFailed { current },
            // A keyed repeat that lost its key to the first request: the idempotency wrapper
            // answers with the first answer; only without one is this the answer.
            CommandError::Conflict | CommandError::Busy | CommandError::KeyTaken => Self::Conflict,
            CommandError::LikelyDuplicates(likely) => Self::PossibleDuplicate(
                likely
                    .into_iter()
                    .map(|(id, grade, score)| application::matching::Match {
                        id,
                        grade,
                        score,
                        status: "active".to_owned(),
                    })
                    .collect(),
            ),
            CommandError::Unavailable(e) => Self::Unavailable(e),
            CommandError::Internal(e) => Self::Internal(e),
        }
    }
}

impl From<CommandError<MedicalRecordError>> for ApiError {
    fn from(error: CommandError<MedicalRecordError>) -> Self {
        match error {
            CommandError::Rule(MedicalRecordError::ItemNotFound) => Self::NotFound,
            CommandError::Rule(MedicalRecordError::VersionMismatch { current }) => {
                Self::PreconditionFailed {
                    current: u64::from(current),
                }
            }
            CommandError::Rule(rule) => Self::Record(rule),
            CommandError::VersionMismatch { .. }
            | CommandError::Conflict
            | CommandError::Busy
            | CommandError::KeyTaken
            | CommandError::LikelyDuplicates(_) => Self::Conflict,
            CommandError::Unavailable(e) => Self::Unavailable(e),
            CommandError::Internal(e) => Self::Internal(e),
        }
    }
}

impl From<CommandError<SchedulingError>> for ApiError {
    fn from(error: CommandError<SchedulingError>) -> Self {
        match error {
            CommandError::Rule(SchedulingError::AppointmentNotFound) => Self::NotFound,
            CommandError::Rule(SchedulingError::TimeTaken) => Self::TimeTaken {
                conflicting: None,
                alternatives: Vec::new(),
            },
            CommandError::Rule(rule) => Self::Schedule(rule),
            CommandError::VersionMismatch { current, .. } => Self::PreconditionFailed { current },
            // A keyed repeat that lost its key to the first request: the idempotency wrapper
            // answers with the first answer; only without one is this the answer.
            CommandError::Conflict
            | CommandError::Busy
            | CommandError::KeyTaken
            | CommandError::LikelyDuplicates(_) => Self::Conflict,
            CommandError::Unavailable(e) => Self::Unavailable(e),
            CommandError::Internal(e) => Self::Internal(e),
        }
    }
}

impl From<event_store::keys::KeyError> for ApiError {
    fn from(error: event_store::keys::KeyError) -> Self {
        match error {
            event_store::keys::KeyError::Database(e) => e.into(),
            other => Self::Internal(Box::new(other)),
        }
    }
}

impl From<crate::auth::Refused> for ApiError {
    fn from(refused: crate::auth::Refused) -> Self {
        match refused {
            crate::auth::Refused::Forbidden => Self::Forbidden,
            crate::auth::Refused::NotFound => Self::NotFound,
            crate::auth::Refused::Gone => Self::Gone,
        }
    }
}

impl From<application::services::UseCaseError> for ApiError {
    fn from(error: application::services::UseCaseError) -> Self {
        use application::services::UseCaseError as E;
        match error {
            E::Refused(refused) => refused.into(),
            E::EmergencyAccessLimit => Self::EmergencyAccessLimit,
            E::Invalid(errors) => Self::Validation(errors),
            E::Unknown(errors) => Self::InvalidParameters(errors),
            E::Rule(rule) => Self::Rule(rule),
            E::Command(command) => command.into(),
            E::TimeTaken {
                conflicting,
                alternatives,
            } => Self::TimeTaken {
                conflicting,
                alternatives,
            },
            E::Scheduling(command) => command.into(),
            E::Record(command) => command.into(),
            E::AllergyWarning { warnings, order } => Self::AllergyWarning { warnings, order },
            E::Busy => Self::Unavailable("text extraction is busy".into()),
            E::Database(database) => database.into(),
            E::Internal(error) => Self::Internal(error),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        if event_store::is_unavailable(&error) {
            Self::Unavailable(Box::new(error))
        } else {
            Self::Internal(Box::new(error))
        }
    }
}

/// An RFC 9457 problem document.
#[derive(Debug, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: &'static str,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
    /// Extension members of a problem type (RFC 9457 section 3.2).
    #[serde(flatten)]
    pub extensions: serde_json::Map<String, serde_json::Value>,
}

impl Problem {
    pub fn new(status: StatusCode, slug: &str, title: &'static str) -> Self {
        Self {
            problem_type: format!("/problems/{slug}"),
            title,
            status: status.as_u16(),
            detail: None,
            errors: Vec::new(),
            code: None,
            extensions: serde_json::Map::new(),
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn into_response_with(self, extra: &[(header::HeaderName, HeaderValue)]) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        for (name, value) in extra {
            headers.insert(name.clone(), value.clone());
        }
        response
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (problem, extra) = self.into_problem();
        problem.into_response_with(&extra)
    }
}

impl ApiError {
    /// The problem document of this error, and the headers that go with it. Internal detail
    /// is logged here, once, and never put in the document.
    pub fn into_problem(self) -> (Problem, Vec<(header::HeaderName, HeaderValue)>) {
        use StatusCode as S;
        let mut extra = Vec::new();
        let problem = match self {
            Self::Unauthenticated => {
                extra.push((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
                Problem::new(
                    S::UNAUTHORIZED,
                    "unauthenticated",
                    "Authentication required",
                )
                .detail("a valid bearer token is required")
            }
            // One answer for a role that does not allow the action and for a patient out of the
            // caller's reach (no care relationship, consent or emergency access; another
            // organization's), so that it tells nothing of whether the patient exists.
            Self::Forbidden => Problem::new(S::FORBIDDEN, "forbidden", "Forbidden").detail(
                "your roles, or your reach to this patient (care team, consent, emergency \
                 access), do not allow this action",
            ),
            Self::NotFound => Problem::new(S::NOT_FOUND, "not-found", "Not found"),
            Self::Gone => Problem::new(S::GONE, "erased", "Erased")
                .detail("this patient's data was erased; only the fact of erasure is kept"),
            Self::MalformedJson(detail) => {
                Problem::new(S::BAD_REQUEST, "malformed-json", "Malformed JSON").detail(detail)
            }
            Self::UnsupportedMediaType => Problem::new(
                S::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            )
            .detail("send the body as application/json"),
            Self::PayloadTooLarge => Problem::new(
                S::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Payload too large",
            ),
            Self::Overloaded => {
                extra.push((header::RETRY_AFTER, HeaderValue::from_static("1")));
                Problem::new(S::SERVICE_UNAVAILABLE, "overloaded", "Overloaded")
                    .detail("more requests are in flight than the service takes at once; retry")
            }
            Self::InvalidParameters(errors) => Problem {
                errors: errors.into_vec(),
                ..Problem::new(S::BAD_REQUEST, "invalid-parameters", "Invalid parameters")
            },
            Self::Validation(errors) => Problem {
                errors: errors.into_vec(),
                ..Problem::new(
                    S::UNPROCESSABLE_ENTITY,
                    "validation-error",
                    "Invalid fields",
                )
            },
            Self::PreconditionRequired => Problem::new(
                S::PRECONDITION_REQUIRED,
                "precondition-required",
                "If-Match required",
            )
            .detail("send If-Match with the ETag of the version you are changing"),
            Self::PreconditionFailed { current } => {
                if let Ok(etag) = HeaderValue::from_str(&crate::http::etag(current)) {
                    extra.push((header::ETAG, etag));
                }
                Problem::new(S::PRECONDITION_FAILED, "stale-version", "Stale version").detail(
                    format!("the record is now at version {current}; read it again"),
                )
            }
            Self::Rule(rule) => {
                let status = match rule {
                    PatientError::CorrectionChangesNothing => S::UNPROCESSABLE_ENTITY,
                    PatientError::NotRegistered => S::NOT_FOUND,
                    _ => S::CONFLICT,
                };
                Problem {
                    code: Some(rule.code()),
                    ..Problem::new(status, "business-rule", "Business rule violated")
                        .detail(rule.to_string())
                }
            }
            Self::Record(rule) => {
                let status = match rule {
                    MedicalRecordError::ChangesNothing
                    | MedicalRecordError::AcknowledgedWarningDoesNotApply { .. } => {
                        S::UNPROCESSABLE_ENTITY
                    }
                    MedicalRecordError::ItemNotFound => S::NOT_FOUND,
                    _ => S::CONFLICT,
                };
                let mut problem = Problem {
                    code: Some(rule.code()),
                    ..Problem::new(status, "business-rule", "Business rule violated")
                        .detail(rule.to_string())
                };
                match &rule {
                    MedicalRecordError::DuplicateAllergy { existing } => {
                        problem
                            .extensions
                            .insert("existing_item_id".into(), existing.to_string().into());
                    }
                    MedicalRecordError::AcknowledgedWarningDoesNotApply { allergy_id } => {
                        problem.errors.push(domain::FieldError::new(
                            "acknowledge_allergy_warnings",
                            format!("{allergy_id} is not a warning of this medication"),
                        ));
                    }
                    _ => {}
                }
                problem
            }
            Self::AllergyWarning { warnings, order } => {
                let mut problem = Problem {
                    code: Some("allergy-warning"),
                    ..Problem::new(S::CONFLICT, "allergy-warning", "Allergy warning").detail(
                        "the medication matches active allergies of the patient; nothing was \
                         recorded. Send the order again with acknowledge_allergy_warnings listing \
                         each allergy_id to record it anyway",
                    )
                };
                let warnings: Vec<serde_json::Value> = warnings
                    .iter()
                    .map(|w| {
                        let mut warning = serde_json::json!({
                            "allergy_id": w.allergy_id,
                            "allergy_version": w.allergy_version,
                        });
                        if let Some(criticality) = w.criticality {
                            warning["criticality"] = criticality.code().into();
                        }
                        warning
                    })
                    .collect();
                problem
                    .extensions
                    .insert("warnings".into(), serde_json::Value::Array(warnings));
                problem.extensions.insert("order".into(), order);
                problem
            }
            Self::Schedule(rule) => {
                let status = match rule {
                    SchedulingError::ChangesNothing | SchedulingError::EmptyInterval => {
                        S::UNPROCESSABLE_ENTITY
                    }
                    _ => S::CONFLICT,
                };
                Problem {
                    code: Some(rule.code()),
                    ..Problem::new(status, "business-rule", "Business rule violated")
                        .detail(rule.to_string())
                }
            }
            Self::TimeTaken {
                conflicting,
                alternatives,
            } => {
                let mut problem = Problem {
                    code: Some("time-taken"),
                    ..Problem::new(S::CONFLICT, "time-taken", "Time taken").detail(
                        "another appointment holds some of this time; nothing was booked. \
                         alternatives lists the nearest free places",
                    )
                };
                if let Some(id) = conflicting {
                    problem
                        .extensions
                        .insert("conflicting_appointment".into(), id.to_string().into());
                }
                problem.extensions.insert(
                    "alternatives".into(),
                    serde_json::to_value(alternatives).unwrap_or_default(),
                );
                problem
            }
            Self::Conflict => Problem {
                code: Some("concurrent-change"),
                ..Problem::new(S::CONFLICT, "conflict", "Concurrent change")
                    .detail("the record kept changing for longer than a writer waits; try again")
            },
            Self::IdempotencyKeyReused => Problem::new(
                S::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency key reused",
            )
            .detail("this Idempotency-Key was used for a different request"),
            Self::PossibleDuplicate(matches) => {
                let candidates = matches
                    .iter()
                    .map(|m| {
                        serde_json::json!({
                            "id": m.id,
                            "grade": m.grade.code(),
                            "score": m.score,
                            "href": format!("/v1/patients/{}", m.id),
                        })
                    })
                    .collect();
                let mut problem =
                    Problem::new(S::CONFLICT, "possible-duplicate", "Possible duplicate").detail(
                        "the patient may be registered already; check the candidates, or register \
                         anyway with duplicate_override.reason",
                    );
                problem
                    .extensions
                    .insert("candidates".into(), serde_json::Value::Array(candidates));
                problem
            }
            Self::EmergencyAccessLimit => {
                extra.push((header::RETRY_AFTER, HeaderValue::from_static("3600")));
                Problem::new(
                    S::TOO_MANY_REQUESTS,
                    "emergency-access-limit",
                    "Emergency access limit reached",
                )
                .detail(
                    "you opened as many patients under break-the-glass in the last hour as the \
                     policy allows; ask to join the care team, or an administrator",
                )
            }
            Self::Unavailable(source) => {
                tracing::warn!(error.message = %source, "dependency unavailable");
                extra.push((header::RETRY_AFTER, HeaderValue::from_static("5")));
                Problem::new(S::SERVICE_UNAVAILABLE, "unavailable", "Service unavailable")
                    .detail("a dependency is unavailable; retry later")
            }
            Self::Internal(source) => {
                tracing::error!(error.message = %source, error.cause_chain = ?source, "internal error");
                Problem::new(S::INTERNAL_SERVER_ERROR, "internal", "Internal error")
            }
        };
        (problem, extra)
    }
}
