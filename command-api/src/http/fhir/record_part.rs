//! A part of the patient record served as a FHIR resource of its own (a Coverage, a Consent):
//! its id is the patient's UUID and the part's, as 64 hex digits, its version the patient
//! record's, and it is read as the patient is (access-checked and recorded). The reads, the
//! search by patient and the answer to a write are the same for every such part; each module
//! says what its part is ([`Part`]) and how it is written.

use std::collections::HashMap;

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use domain::medical_record::ItemId;
use domain::patient::{Patient, PatientId, PatientRecord};
use domain::FieldErrors;
use serde_json::{json, Value};
use uuid::Uuid;

use super::clinical::{fhir_id, parse_fhir_id};
use super::patient::base_url;
use super::{match_entry, outcome, patient_param, refuse_unknown, resource, searchset, Issue};
use crate::auth::AuthUser;
use crate::http::{ApiError, AppState};

/// What a kind of part is.
pub struct Part<T: 'static> {
    /// Its FHIR resource type.
    pub name: &'static str,
    /// What a read of an id that names none says.
    pub missing: &'static str,
    /// The parts of this kind a record holds.
    pub of: fn(&PatientRecord) -> &[T],
    /// A part's own id.
    pub id: fn(&T) -> Uuid,
    /// A part as its FHIR resource.
    pub to_fhir: fn(PatientId, &T) -> Value,
}

impl<T: Clone> Part<T> {
    /// A part as its FHIR resource at the patient record's `version`.
    pub fn versioned(&self, patient: PatientId, part: &T, version: u64) -> Value {
        let mut body = (self.to_fhir)(patient, part);
        body["meta"] = json!({ "versionId": version.to_string() });
        body
    }

    /// The patient's parts of this kind and the record's version, the patient read as `user`.
    ///
    /// # Errors
    ///
    /// As the read of the patient.
    pub async fn all(
        &self,
        state: &AppState,
        user: &AuthUser,
        patient: PatientId,
    ) -> Result<(Vec<T>, u64), ApiError> {
        let (found, version) = application::finding::read(state.services(), user, patient).await?;
        let parts = found.record().map(|r| (self.of)(r).to_vec());
        Ok((parts.unwrap_or_default(), version))
    }

    /// Part `id` of `patient` as a command left it.
    ///
    /// # Errors
    ///
    /// [`ApiError::NotFound`] when the record holds none.
    pub fn after<'p>(&self, patient: &'p Patient, id: Uuid) -> Result<&'p T, ApiError> {
        patient
            .record()
            .and_then(|r| (self.of)(r).iter().find(|p| (self.id)(p) == id))
            .ok_or(ApiError::NotFound)
    }

    /// A part written: `status`, the resource at the record's `version` (as `shown` leaves it),
    /// its `ETag` and its `Location`.
    pub fn written(
        &self,
        (state, headers): (&AppState, &HeaderMap),
        (patient, version): (PatientId, u64),
        part: &T,
        (status, shown): (StatusCode, impl FnOnce(&mut Value)),
    ) -> Response {
        let mut body = self.versioned(patient, part, version);
        shown(&mut body);
        let mut answer = super::versioned(status, &body, version);
        let location = format!(
            "{}/{}/{}",
            base_url(state, headers),
            self.name,
            fhir_id(patient, ItemId::new((self.id)(part)))
        );
        super::locate(&mut answer, &location);
        answer
    }

    /// `GET /{name}/{id}`.
    ///
    /// # Errors
    ///
    /// As the read of the patient.
    pub async fn read(
        &self,
        state: &AppState,
        user: &AuthUser,
        raw: &str,
    ) -> Result<Response, ApiError> {
        let not_found = || {
            outcome(
                StatusCode::NOT_FOUND,
                &[Issue::new("not-found", self.missing).at("id")],
            )
        };
        let Some((patient, wanted)) = parse_fhir_id(raw) else {
            return Ok(not_found());
        };
        let (parts, version) = self.all(state, user, patient).await?;
        Ok(
            match parts.iter().find(|p| (self.id)(p) == wanted.as_uuid()) {
                Some(p) => super::versioned(
                    StatusCode::OK,
                    &self.versioned(patient, p, version),
                    version,
                ),
                None => not_found(),
            },
        )
    }

    /// `GET /{name}?...`: the patient's parts (the patient under the first of `patient_keys`),
    /// those `keep` keeps; parameters other than the patient's and `filters` are refused.
    ///
    /// # Errors
    ///
    /// An unknown parameter or no patient named; as the read of the patient.
    pub async fn search(
        &self,
        (state, user, headers): (&AppState, &AuthUser, &HeaderMap),
        params: &HashMap<String, String>,
        (patient_keys, filters): (&[&str], &[&str]),
        keep: impl Fn(&Value) -> bool,
    ) -> Result<Response, ApiError> {
        let mut errors = FieldErrors::new();
        let known: Vec<&str> = patient_keys.iter().chain(filters).copied().collect();
        refuse_unknown(params.keys(), &known, self.name, &mut errors);
        let patient = patient_param(params, patient_keys, &mut errors);
        errors.into_result().map_err(ApiError::InvalidParameters)?;
        let patient = patient.ok_or(ApiError::NotFound)?;
        let base = base_url(state, headers);
        let (parts, version) = self.all(state, user, patient).await?;
        let entries: Vec<Value> = parts
            .iter()
            .map(|p| self.versioned(patient, p, version))
            .filter(|p| keep(p))
            .map(|p| match_entry(&base, p))
            .collect();
        Ok(resource(StatusCode::OK, &searchset(entries)))
    }
}
