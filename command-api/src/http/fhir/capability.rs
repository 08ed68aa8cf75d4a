//! `GET /metadata`: the CapabilityStatement, listing exactly what this server supports.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};

use super::patient::{base_url, SEARCH_PARAMS};
use super::{appointment, clinical, everything, export, reference, resource, schedule};
use crate::http::AppState;

/// The resources served, each with its interactions and search parameters.
/// Search parameters, `(name, type, what it matches)`, as the statement lists them.
fn search_params<'a>(params: impl Iterator<Item = &'a (&'a str, &'a str, &'a str)>) -> Vec<Value> {
    params
        .map(|(name, kind, documentation)| {
            json!({ "name": name, "type": kind, "documentation": documentation })
        })
        .collect()
}

fn resources() -> Vec<Value> {
    let patient_params = search_params(SEARCH_PARAMS.iter());
    let clinical_params = |kind| -> Vec<Value> {
        search_params(
            clinical::SEARCH_PARAMS
                .iter()
                .filter(|(name, _, _)| clinical::applies(kind, name)),
        )
    };
    let mut resources = vec![json!({
        "type": "Patient",
        "profile": "http://hl7.org/fhir/StructureDefinition/Patient",
        "interaction": [
            { "code": "read" },
            { "code": "vread" },
            { "code": "history-instance" },
            { "code": "search-type" },
            { "code": "create" },
            { "code": "update" },
        ],
        "versioning": "versioned-update",
        "readHistory": true,
        "updateCreate": false,
        "conditionalCreate": true,
        "searchParam": patient_params,
        "operation": [{
            "name": "match",
            "definition": "http://hl7.org/fhir/OperationDefinition/Patient-match",
            "documentation": "The service's matcher: candidates graded certain, probable or possible (match-grade extension), search.score the probability from the matcher's weight",
        }, {
            "name": "export",
            "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export",
            "documentation": "FHIR Bulk Data export of every patient's compartment the caller may read: as the system-level $export",
        }, {
            "name": "everything",
            "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
            "documentation": format!(
                "GET only: the patient's compartment ({}), paged, under one access decision; appointments when the caller may read them or is the patient. Parameters: {}",
                everything::TYPES.join(", "),
                everything::PARAMS.iter().map(|(name, _, what)| format!("{name} ({what})")).collect::<Vec<_>>().join("; "),
            ),
        }],
    })];
    resources.extend(clinical::RESOURCES.iter().map(|(name, kind)| {
        if *kind == domain::medical_record::ItemKind::Document {
            return json!({
                "type": name,
                "profile": format!("http://hl7.org/fhir/StructureDefinition/{name}"),
                "documentation": "Created with its bytes inline (content[0].attachment.data in base64, contentType one the service extracts text from; a url elsewhere is not fetched), as the native upload: text extracted, bytes sealed. An update (If-Match, reason in X-Change-Reason) revises what describes it; the bytes stay. The bytes read back as the Binary the attachment's url names.",
                "interaction": [
                    { "code": "read" },
                    { "code": "vread" },
                    { "code": "history-instance" },
                    { "code": "search-type" },
                    { "code": "create" },
                    { "code": "update" },
                ],
                "versioning": "versioned-update",
                "readHistory": true,
                "searchParam": clinical_params(*kind),
            });
        }
        json!({
            "type": name,
            "profile": format!("http://hl7.org/fhir/StructureDefinition/{name}"),
            "interaction": [
                { "code": "read" },
                { "code": "vread" },
                { "code": "history-instance" },
                { "code": "search-type" },
                { "code": "create" },
                { "code": "update" },
            ],
            "versioning": "versioned",
            "readHistory": true,
            "updateCreate": false,
            "conditionalCreate": true,
            "conditionalUpdate": false,
            "searchParam": clinical_params(*kind),
        })
    }));
    resources.push(json!({
        "type": "Binary",
        "profile": "http://hl7.org/fhir/StructureDefinition/Binary",
        "documentation": "Read-only: a document's bytes (base64), its id the DocumentReference's; read as the document is",
        "interaction": [{ "code": "read" }],
    }));
    resources.push(json!({
        "type": "Appointment",
        "profile": "http://hl7.org/fhir/StructureDefinition/Appointment",
        "documentation": "Created as a booking through the native booking (a time taken answers 409 with an OperationOutcome whose diagnostics start with time-taken); the patient and the practitioner as participants, the service as serviceType. An update (If-Match) is the native step it amounts to: a new status (booked confirms a hold, arrived, checked-in, fulfilled, noshow, cancelled with cancelationReason, entered-in-error) or a new start (a reschedule), one at a time; the reason in X-Change-Reason",
        "interaction": [
            { "code": "read" },
            { "code": "vread" },
            { "code": "history-instance" },
            { "code": "search-type" },
            { "code": "create" },
            { "code": "update" },
        ],
        "versioning": "versioned-update",
        "readHistory": true,
        "searchParam": search_params(appointment::SEARCH_PARAMS.iter()),
    }));
    let reference_params = search_params(reference::SEARCH_PARAMS.iter());
    resources.extend(reference::TYPES.iter().map(|(name, kind)| {
        json!({
            "type": name,
            "profile": format!("http://hl7.org/fhir/StructureDefinition/{name}"),
            "documentation": format!("Read-only: the scheduling resources of kind {kind}"),
            "interaction": [{ "code": "read" }, { "code": "search-type" }],
            "versioning": "no-version",
            "searchParam": reference_params,
        })
    }));
    resources.push(json!({
        "type": "Coverage",
        "profile": "http://hl7.org/fhir/StructureDefinition/Coverage",
        "documentation": "A patient's coverages, held in the patient record: create and update (If-Match: the record's version, which is the coverage's versionId) as a registrar; status must be active (a coverage ends with period.end). Stored: beneficiary, payor (display), subscriberId, class group and plan, relationship, period, order.",
        "interaction": [{ "code": "read" }, { "code": "search-type" }, { "code": "create" }, { "code": "update" }],
        "versioning": "versioned-update",
        "searchParam": [
            { "name": "patient", "type": "reference", "documentation": "the patient (required): Patient/<id> or <id>" },
            { "name": "beneficiary", "type": "reference", "documentation": "as patient" },
            { "name": "status", "type": "token", "documentation": "active, or cancelled once ended" },
        ],
    }));
    resources.push(json!({
        "type": "Consent",
        "profile": "http://hl7.org/fhir/StructureDefinition/Consent",
        "documentation": "The consent directives in force on a patient's record. Create grants one (admin, registrar or the patient): a research opt-out (provision.type deny, purpose HRESCH), sharing with an organization (permit, actor Organization/<id>) or with every clinician (permit, actor shown as every clinician). An update to status inactive (If-Match: the record's version) withdraws it.",
        "interaction": [{ "code": "read" }, { "code": "search-type" }, { "code": "create" }, { "code": "update" }],
        "versioning": "versioned-update",
        "searchParam": [
            { "name": "patient", "type": "reference", "documentation": "the patient (required): Patient/<id> or <id>" },
        ],
    }));
    resources.push(json!({
        "type": "Schedule",
        "profile": "http://hl7.org/fhir/StructureDefinition/Schedule",
        "documentation": "Read-only: one per practitioner of the scheduling resources (its id the practitioner's)",
        "interaction": [{ "code": "read" }, { "code": "search-type" }],
        "searchParam": [{ "name": "actor", "type": "reference", "documentation": "Practitioner/<id>" }],
    }));
    resources.push(json!({
        "type": "Slot",
        "profile": "http://hl7.org/fhir/StructureDefinition/Slot",
        "documentation": "Computed: the free places of a service from availability (templates minus blocks and claimed time); searched only, never stored, so no read by id and no history",
        "interaction": [{ "code": "search-type" }],
        "searchParam": search_params(schedule::SLOT_PARAMS.iter()),
    }));
    resources.push(json!({
        "type": "AuditEvent",
        "profile": "http://hl7.org/fhir/StructureDefinition/AuditEvent",
        "documentation": "Read-only: a patient's accounting of disclosures (every read of their data, granted or denied), after IHE Basic Audit Log Patterns; admin or the patient themself",
        "interaction": [{ "code": "search-type" }],
        "searchParam": [
            { "name": "patient", "type": "reference", "documentation": "the patient (required)" },
            { "name": "entity", "type": "reference", "documentation": "as patient" },
            { "name": "_count", "type": "number", "documentation": "1 to 1000, 100 by default" },
        ],
    }));
    resources.push(json!({
        "type": "Provenance",
        "profile": "http://hl7.org/fhir/StructureDefinition/Provenance",
        "documentation": "Read-only: who made each version of a patient's record, from the verified event history; admin or auditor",
        "interaction": [{ "code": "search-type" }],
        "searchParam": [
            { "name": "target", "type": "reference", "documentation": "Patient/<id> (required)" },
            { "name": "patient", "type": "reference", "documentation": "as target" },
            { "name": "_count", "type": "number", "documentation": "1 to 1000, 100 by default" },
        ],
    }));
    resources.push(json!({
        "type": "MedicationRequest",
        "profile": "http://hl7.org/fhir/StructureDefinition/MedicationRequest",
        "documentation": "Accepted on create and held as the MedicationStatement it amounts to (an order)",
        "interaction": [{ "code": "create" }],
        "conditionalCreate": true,
    }));
    resources
}

/// The CapabilityStatement of this server, at `base`.
pub fn capability_statement(base: &str, date: &str) -> Value {
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date,
        "publisher": "patient-service",
        "kind": "instance",
        "software": { "name": "patient-service", "version": env!("CARGO_PKG_VERSION") },
        "implementation": {
            "description": "Event-sourced patient service: FHIR R4 over the same use cases as its native API",
            "url": base,
        },
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "instantiates": ["http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"],
        "rest": [{
            "mode": "server",
            "documentation": "JSON only (application/fhir+json); XML answers 415. Every error is an OperationOutcome. Results page with _count (1 to 100) and _offset. Updates need If-Match: W/\"n\" (412 when stale) and may give their reason in X-Change-Reason. A medication refused by an allergy warning (409, issue code business-rule, diagnostics starting allergy-warning, one warning issue per allergy) is recorded when sent again with X-Acknowledge-Allergy-Warnings listing those allergies' ids.",
            "security": {
                "description": "OAuth 2 bearer tokens (JWT) checked against the identity provider's keys; roles and per-patient access rules as in the native API; every read is recorded.",
            },
            "resource": resources(),
            "interaction": [{
                "code": "batch",
                "documentation": "POST a batch Bundle to the base: each entry run on its own, answered in order",
            }, {
                "code": "transaction",
                "documentation": "POST a transaction Bundle to the base: all or nothing, in one database transaction. Creates run first (urn:uuid: fullUrls resolved in references), then updates, then reads. Writes Patient, Coverage, Consent and the clinical resources; an Appointment is booked on its own. The first entry to fail fails the Bundle with its OperationOutcome (expressions located in the Bundle).",
            }],
            "operation": [{
                "name": "export",
                "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export",
                "documentation": format!(
                    "FHIR Bulk Data export, system level (every patient's compartment and the practitioners, locations, devices and schedules; Patient/$export: the compartments only). Prefer: respond-async; the status URL answers 202 with Retry-After, then the manifest; DELETE cancels. Needs the admin role (a SMART backend client's token from POST /auth/token, scopes system/*.rs). Parameters: {}",
                    export::PARAMS.iter().map(|(name, _, what)| format!("{name} ({what})")).collect::<Vec<_>>().join("; "),
                ),
            }],
        }],
    })
}

pub(super) async fn metadata(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let date = (state.clock)().format("%Y-%m-%d").to_string();
    resource(
        StatusCode::OK,
        &capability_statement(&base_url(&state, &headers), &date),
    )
}
