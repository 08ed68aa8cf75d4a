//! The checked-in JSON Schema files are the contract consumers read; this test fails when they
//! drift from the Rust wire types. Regenerate with
//! `BLESS_SCHEMAS=1 cargo test -p schemas --test json_schemas`.

use std::path::PathBuf;

fn json_dir() -> PathBuf {
    // At run time: a binary built in another checkout sharing the target folder still looks
    // at this one's files.
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("json")
}

fn render(schema: &schemars::Schema) -> String {
    let mut text = serde_json::to_string_pretty(schema).expect("a schema is plain JSON");
    text.push('\n');
    text
}

#[test]
fn checked_in_schemas_match_the_wire_types() {
    let bless = std::env::var_os("BLESS_SCHEMAS").is_some();
    let mut drifted = Vec::new();
    for (path, schema) in schemas::json_schemas() {
        let file = json_dir().join(path);
        let expected = render(&schema);
        if bless {
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, &expected).unwrap();
            continue;
        }
        let actual = std::fs::read_to_string(&file).unwrap_or_default();
        if actual != expected {
            drifted.push(path);
        }
    }
    assert!(
        drifted.is_empty(),
        "JSON Schemas out of date: {drifted:?}; run BLESS_SCHEMAS=1 cargo test -p schemas --test json_schemas"
    );
}

#[test]
fn no_schema_file_is_left_without_a_wire_type() {
    let known: Vec<PathBuf> = schemas::json_schemas()
        .into_iter()
        .map(|(path, _)| json_dir().join(path))
        .collect();
    let mut stale = Vec::new();
    let mut stack = vec![json_dir()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if !known.contains(&path) {
                stale.push(path);
            }
        }
    }
    assert!(
        stale.is_empty(),
        "schema files with no wire type: {stale:?}"
    );
}

#[test]
fn the_checked_in_asyncapi_document_matches_the_topics_and_wire_types() {
    let file = json_dir().parent().unwrap().join("asyncapi.json");
    let mut expected =
        serde_json::to_string_pretty(&schemas::asyncapi_document()).expect("plain JSON");
    expected.push('\n');
    if std::env::var_os("BLESS_SCHEMAS").is_some() {
        std::fs::write(&file, &expected).unwrap();
        return;
    }
    let actual = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(
        actual == expected,
        "asyncapi.json is out of date; run BLESS_SCHEMAS=1 cargo test -p schemas --test json_schemas"
    );
}

#[test]
fn the_asyncapi_document_has_every_event_type_once_on_its_topic() {
    let document = schemas::asyncapi_document();
    let messages = document["components"]["messages"].as_object().unwrap();
    let on_channels: usize = document["channels"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| c["messages"].as_object().unwrap().len())
        .sum();
    assert_eq!(on_channels, messages.len());
    for (event_type, message) in messages {
        // The audit chain's head is no event: in the clear on a topic of its own.
        let sealed =
            event_type != "AuditChainHead" && !schemas::sealed::is_published_in_clear(event_type);
        assert_eq!(
            message["contentType"] == schemas::sealed::SEALED_CONTENT_TYPE,
            sealed,
            "{event_type}"
        );
        let schema = if sealed {
            &message["x-opened-payload"]["$ref"]
        } else {
            &message["payload"]["$ref"]
        };
        let path = json_dir()
            .parent()
            .unwrap()
            .join(schema.as_str().unwrap().trim_start_matches("./"));
        assert!(path.is_file(), "{event_type}: {}", path.display());
    }
    for event_type in [
        "PatientRegistered",
        "AllergyRecorded",
        "ObservationRecorded",
        "AppointmentCreated",
        "AppointmentReminder",
        "AccessRecorded",
    ] {
        assert!(messages.contains_key(event_type), "{event_type}");
    }
}
