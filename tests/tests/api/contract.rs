//! The published contract read by outside tools: the AsyncAPI 3.0 document of every topic
//! (`schemas/asyncapi.json`) validated by the AsyncAPI Initiative's parser (npm
//! `@asyncapi/parser`), every payload and sealed payload resolving to its checked-in schema.

use serde_json::Value;

#[tokio::test]
async fn the_asyncapi_document_validates_with_the_asyncapi_parser() {
    // Arrange
    let document =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/asyncapi.json");
    let dir = std::env::var("FHIR_NODE_DIR").expect("FHIR_NODE_DIR: run with scripts/test");

    // Act
    let output = tokio::process::Command::new("node")
        .arg(format!("{dir}/asyncapi.mjs"))
        .arg(&document)
        .output()
        .await
        .unwrap();

    // Assert: no error; every message of every topic with its headers and its payload (the
    // sealed ones with the schema of what they open to).
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(seen["errors"], serde_json::json!([]), "{seen}");
    let event_types: Vec<String> = schemas::json_schemas()
        .iter()
        .filter(|(path, _)| path.contains("/v1/"))
        .filter_map(|(path, _)| {
            Some(
                path.rsplit('/')
                    .next()?
                    .strip_suffix(".schema.json")?
                    .to_owned(),
            )
        })
        .collect();
    let events = event_types.len() as u64;
    // The audit chain's head is no event: published in the clear on a topic of its own.
    let sealed = event_types
        .iter()
        .filter(|event_type| *event_type != "AuditChainHead")
        .filter(|event_type| !schemas::sealed::is_published_in_clear(event_type))
        .count() as u64;
    assert_eq!(
        seen["channels"],
        schemas::topics::ALL.len() as u64 + 1,
        "{seen}"
    );
    assert_eq!(seen["messages"], events, "{seen}");
    assert_eq!(seen["payloads"], events, "{seen}");
    // Every event's CloudEvents headers; the audit head has content-type alone.
    assert_eq!(seen["headers"], events - 1, "{seen}");
    assert_eq!(seen["opened"], sealed, "{seen}");
}

/// A `PatientForgotten` as the contract has it, with `extra` added.
fn forgotten(extra: Option<(&str, Value)>) -> Vec<u8> {
    let mut event = serde_json::json!({
        "patient_id": "5f4c1e0a-9b7d-4c1e-8a3f-2d6b0e917c55",
        "reason": "patient-request",
        "forgotten_at": "2026-11-27T12:00:00Z",
    });
    if let Some((name, value)) = extra {
        event[name] = value;
    }
    serde_json::to_vec(&event).unwrap()
}

#[test]
fn the_producers_schema_checks_pass_what_the_contract_names() {
    crate::helpers::assert_matches_schema("PatientForgotten", &forgotten(None));
}

#[test]
#[should_panic(expected = "does not match its schema")]
fn the_producers_schema_checks_refuse_a_property_the_contract_does_not_name() {
    crate::helpers::assert_matches_schema(
        "PatientForgotten",
        &forgotten(Some(("family", Value::from("Doe")))),
    );
}

/// Every `enum` given to property `name` anywhere in the checked-in schema `file` (null left
/// out), each list once.
fn enums_of(file: &str, name: &str) -> Vec<Vec<String>> {
    fn walk(schema: &Value, name: &str, found: &mut Vec<Vec<String>>) {
        match schema {
            Value::Object(object) => {
                if let Some(Value::Object(properties)) = object.get("properties") {
                    if let Some(Value::Array(codes)) =
                        properties.get(name).and_then(|p| p.get("enum"))
                    {
                        let codes: Vec<String> = codes
                            .iter()
                            .filter_map(|c| c.as_str().map(str::to_owned))
                            .collect();
                        if !found.contains(&codes) {
                            found.push(codes);
                        }
                    }
                }
                object.values().for_each(|v| walk(v, name, found));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, name, found)),
            _ => {}
        }
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../schemas/json")
        .join(format!("{file}.schema.json"));
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut found = Vec::new();
    walk(&schema, name, &mut found);
    found
}

#[test]
fn the_schemas_code_lists_are_the_domains() {
    use domain::medical_record::items;
    let owned = |codes: &[&str]| codes.iter().map(|c| (*c).to_owned()).collect::<Vec<_>>();

    for (file, name, codes) in [
        (
            "medical-record/v1/AllergyRecorded",
            "category",
            items::AllergyCategory::CODES,
        ),
        (
            "medical-record/v1/AllergyRecorded",
            "criticality",
            items::AllergyCriticality::CODES,
        ),
        (
            "medical-record/v1/AllergyRecorded",
            "clinical_status",
            items::AllergyClinicalStatus::CODES,
        ),
        (
            "medical-record/v1/AllergyRecorded",
            "verification_status",
            items::VerificationStatus::CODES,
        ),
        (
            "medical-record/v1/AllergyRecorded",
            "severity",
            items::Severity::CODES,
        ),
        (
            "medical-record/v1/MedicationRecorded",
            "status",
            items::MedicationStatus::CODES,
        ),
        (
            "medical-record/v1/MedicationRecorded",
            "source",
            items::MedicationSource::CODES,
        ),
        (
            "medical-record/v1/MedicationRecorded",
            "route",
            items::Route::CODES,
        ),
        (
            "medical-record/v1/MedicationRecorded",
            "period_unit",
            domain::medical_record::values::PeriodUnit::CODES,
        ),
        (
            "medical-record/v1/ImmunizationRecorded",
            "status",
            items::ImmunizationStatus::CODES,
        ),
        (
            "medical-record/v1/ImmunizationRecorded",
            "site",
            items::BodySite::CODES,
        ),
        (
            "medical-record/v1/ImmunizationRecorded",
            "route",
            items::Route::CODES,
        ),
        (
            "medical-record/v1/ProblemRecorded",
            "clinical_status",
            items::ProblemStatus::CODES,
        ),
        (
            "medical-record/v1/ProblemRecorded",
            "severity",
            items::Severity::CODES,
        ),
        (
            "medical-record/v1/HistoryEntryRecorded",
            "category",
            items::HistoryCategory::CODES,
        ),
        (
            "clinical-entry/v1/ProcedureEnteredInError",
            "kind",
            items::ItemKind::CODES,
        ),
        (
            "clinical-entry/v1/ObservationRecorded",
            "category",
            items::ObservationCategory::CODES,
        ),
        (
            "clinical-entry/v1/ObservationRecorded",
            "status",
            items::ObservationStatus::CODES,
        ),
        (
            "clinical-entry/v1/ProcedureRecorded",
            "status",
            items::ProcedureStatus::CODES,
        ),
        (
            "clinical-entry/v1/EncounterRecorded",
            "status",
            items::EncounterStatus::CODES,
        ),
        (
            "clinical-entry/v1/EncounterRecorded",
            "class",
            items::EncounterClass::CODES,
        ),
        (
            "appointment/v1/AppointmentCreated",
            "priority",
            domain::scheduling::Priority::CODES,
        ),
        (
            "appointment/v1/AppointmentCreated",
            "status",
            domain::scheduling::AppointmentStatus::CODES,
        ),
        (
            "notification/v1/AppointmentReminder",
            "channel",
            domain::patient::record::Channel::CODES,
        ),
        (
            "patient/v1/PreferencesUpdated",
            "preferred_channel",
            domain::patient::record::Channel::CODES,
        ),
        (
            "patient/v1/EmergencyContactAdded",
            "relationship",
            domain::patient::record::Relationship::CODES,
        ),
        (
            "patient/v1/CoverageAdded",
            "priority",
            domain::patient::record::CoveragePriority::CODES,
        ),
        (
            "patient/v1/CoverageAdded",
            "relationship",
            domain::patient::record::SubscriberRelationship::CODES,
        ),
        (
            "patient/v1/CareRelationshipStarted",
            "role",
            domain::patient::governance::CareRole::CODES,
        ),
        (
            "patient/v1/PatientForgotten",
            "reason",
            domain::patient::governance::ErasureReason::CODES,
        ),
    ] {
        assert_eq!(enums_of(file, name), [owned(codes)], "{file} {name}");
    }
    // Codes the domain reads with a parser of its own: every one listed parses (phones' and
    // addresses' both under `use`).
    let parses_all =
        |codes: &[String], parses: &dyn Fn(&str) -> bool| codes.iter().all(|c| parses(c));
    let uses = enums_of("patient/v1/PatientRegistered", "use");
    assert_eq!(uses.len(), 2, "{uses:?}");
    assert!(
        uses.iter().any(
            |u| parses_all(u, &|c| domain::patient::contact::PhoneUse::parse("use", c)
                .is_ok())
        ),
        "{uses:?}"
    );
    assert!(
        uses.iter().any(
            |u| parses_all(u, &|c| domain::patient::contact::AddressUse::parse(
                "use", c
            )
            .is_ok())
        ),
        "{uses:?}"
    );
    let marital = enums_of("patient/v1/PatientRegistered", "marital_status");
    assert_eq!(marital.len(), 1, "{marital:?}");
    assert!(parses_all(&marital[0], &|c| {
        domain::patient::MaritalStatus::parse("marital_status", c).is_ok()
    }));
}
