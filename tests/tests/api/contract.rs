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
