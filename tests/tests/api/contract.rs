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
    let sealed = event_types
        .iter()
        .filter(|event_type| !schemas::sealed::is_published_in_clear(event_type))
        .count() as u64;
    assert_eq!(
        seen["channels"],
        schemas::topics::ALL.len() as u64,
        "{seen}"
    );
    assert_eq!(seen["messages"], events, "{seen}");
    assert_eq!(seen["payloads"], events, "{seen}");
    assert_eq!(seen["headers"], events, "{seen}");
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
