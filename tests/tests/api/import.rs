//! `patient-service import`: FHIR data no one on the team wrote (Synthea's R4 sample patients,
//! `tests/data/synthea`) brought in through the API's use cases, counted, readable through
//! the API, and not brought in twice.

use serde_json::Value;

use crate::fhir::fhir_get;
use crate::helpers::{eventually, TestApp, SECURITY_ENV};

/// Runs `patient-service import` on `path` as the source `synthea`; its standard output.
fn import(app: &TestApp, path: &std::path::Path) -> String {
    import_as(app, path, "synthea")
}

/// The count a line `<what> <Type> <n>` of the import's report gives.
fn count(report: &str, what: &str, kind: &str) -> u64 {
    report
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{what} {kind} ")))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.trim_end_matches(':').parse().ok())
        .unwrap_or(0)
}

/// How many resources of `kind` a bundle holds.
fn in_bundle(bundle: &Value, kind: &str) -> usize {
    bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["resource"]["resourceType"] == kind)
        .count()
}

#[tokio::test]
async fn synthea_patients_are_imported_counted_readable_and_not_imported_twice() {
    // Arrange
    let app = TestApp::without_kafka().await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/synthea");

    // Act
    let report = import(&app, &dir);

    // Assert: the closing line, and every patient, their clinical items and practitioners in.
    let last = report.lines().last().unwrap_or_default();
    let figures: Vec<u64> = last
        .split_whitespace()
        .filter_map(|pair| pair.split_once('=').and_then(|(_, n)| n.parse().ok()))
        .collect();
    assert!(last.starts_with("imported="), "{report}");
    assert_eq!(figures.len(), 3, "{last}");
    assert_eq!(count(&report, "imported", "Patient"), 18, "{report}");
    for kind in [
        "Encounter",
        "Observation",
        "Condition",
        "Immunization",
        "Practitioner",
    ] {
        assert!(count(&report, "imported", kind) > 0, "{kind}: {report}");
    }
    for kind in ["Claim", "ExplanationOfBenefit", "Organization"] {
        assert!(count(&report, "skipped", kind) > 0, "{kind}: {report}");
    }
    // Refusals, if any, are for named reasons.
    for line in report.lines().filter(|l| l.starts_with("refused ")) {
        assert!(line.contains(": "), "{line}");
    }

    // One patient through the API: found by their source id, their compartment holding what
    // the source held for them.
    let bundle: Value = serde_json::from_str(
        &std::fs::read_to_string(
            dir.join("Clemente_Kreiger_1484a42d-0eaf-4654-9cbf-6b050a5cd73b.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let source_id = bundle["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let registrar = app.registrar();
    let mut found = Value::Null;
    eventually("the imported patient searchable by source id", || async {
        let (status, _, bundle) = fhir_get(
            &app,
            &format!("/Patient?identifier=urn:patient-service:import:synthea|{source_id}"),
            Some(&registrar),
            &[],
        )
        .await;
        assert_eq!(status, 200);
        bundle["total"] == 1
    })
    .await;
    let (_, _, searched) = fhir_get(
        &app,
        &format!("/Patient?identifier=urn:patient-service:import:synthea|{source_id}"),
        Some(&registrar),
        &[],
    )
    .await;
    found.clone_from(&searched["entry"][0]["resource"]);
    assert_eq!(found["name"][0]["family"], "Kreiger");
    let id = found["id"].as_str().unwrap().to_owned();
    let admin = app.token("admin-1", &["admin"]);
    for kind in ["Observation", "Condition", "Immunization", "Encounter"] {
        let expected = in_bundle(&bundle, kind);
        assert!(expected > 0, "{kind}");
        eventually("the patient's items projected", || async {
            let (status, _, page) = fhir_get(
                &app,
                &format!("/Patient/{id}/$everything?_type={kind}&_count=1000"),
                Some(&admin),
                &[],
            )
            .await;
            assert_eq!(status, 200);
            page["total"].as_u64() == Some(expected as u64)
        })
        .await;
    }

    // A second run finds everything taken and creates nothing.
    let events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type <> 'Access'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let again = import(&app, &dir);
    assert!(
        again
            .lines()
            .last()
            .unwrap_or_default()
            .starts_with("imported=0 "),
        "{again}"
    );
    assert_eq!(count(&again, "already imported", "Patient"), 18, "{again}");
    let after: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type <> 'Access'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(after, events, "nothing stored twice");
    app.stop().await;
}

/// Runs `patient-service import` on `path` as `source`; its standard output.
fn import_as(app: &TestApp, path: &std::path::Path, source: &str) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_patient-service-under-test"))
        .arg("import")
        .arg(path)
        .args(["--source", source])
        .env("DATABASE_URL", &app.database_url)
        .envs(SECURITY_ENV)
        .env("APP_LOG__LEVEL", "warn")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn the_import_policy_acknowledges_allergy_warnings_and_lists_likely_duplicates_for_review() {
    // Arrange: bulk NDJSON files, one per type: a patient whose phone has no country code, an
    // allergy, and a medication the allergy check stops.
    let app = TestApp::without_kafka().await;
    let dir = std::env::temp_dir().join(format!("import-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let lines = |resources: &[Value]| {
        resources
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    };
    let patient = serde_json::json!({
        "resourceType": "Patient", "id": "p-1",
        "name": [{ "use": "official", "family": "Importwell", "given": ["Ada"] }],
        "gender": "female", "birthDate": "1971-03-04",
        "telecom": [{ "system": "phone", "value": "044 123 45 67", "use": "home" }],
        "address": [{ "line": ["Bahnhofstrasse 1"], "city": "Zürich", "postalCode": "8001", "country": "CH" }]
    });
    std::fs::write(dir.join("Patient.ndjson"), lines(&[patient])).unwrap();
    std::fs::write(
        dir.join("AllergyIntolerance.ndjson"),
        lines(&[serde_json::json!({
            "resourceType": "AllergyIntolerance", "id": "a-1",
            "clinicalStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active" }] },
            "code": { "text": "Penicillin" },
            "patient": { "reference": "Patient/p-1" }
        })]),
    )
    .unwrap();
    std::fs::write(
        dir.join("MedicationRequest.ndjson"),
        lines(&[serde_json::json!({
            "resourceType": "MedicationRequest", "id": "m-1", "status": "active", "intent": "order",
            "medicationCodeableConcept": { "text": "Penicillin V Potassium 250 MG Oral Tablet" },
            "subject": { "reference": "Patient/p-1" },
            "authoredOn": "2026-01-05"
        })]),
    )
    .unwrap();

    // Act
    let first = import_as(&app, &dir, "clinic-a");

    // Assert: all in; the medication recorded with its warning acknowledged for the import.
    assert!(
        first
            .lines()
            .last()
            .unwrap()
            .starts_with("imported=3 skipped=0 refused=0"),
        "{first}"
    );
    assert!(
        first.contains("medications recorded with allergy warnings acknowledged 1"),
        "{first}"
    );
    let admin = app.token("admin-1", &["admin"]);
    let mut id = String::new();
    eventually("the imported patient searchable", || async {
        let (_, _, found) = fhir_get(&app, "/Patient?family=Importwell", Some(&admin), &[]).await;
        found["total"] == 1
    })
    .await;
    let (_, _, found) = fhir_get(&app, "/Patient?family=Importwell", Some(&admin), &[]).await;
    id.push_str(found["entry"][0]["resource"]["id"].as_str().unwrap());
    assert_eq!(
        found["entry"][0]["resource"]["telecom"][0]["value"], "+41441234567",
        "read in the address's country"
    );
    let (_, _, medications) = fhir_get(
        &app,
        &format!("/MedicationStatement?patient={id}"),
        Some(&admin),
        &[],
    )
    .await;
    assert_eq!(medications["total"], 1, "{medications}");

    // The same person from another source: a likely duplicate, registered and listed.
    let second = import_as(&app, &dir, "clinic-b");
    let review: Vec<&str> = second
        .lines()
        .filter(|l| l.starts_with("review: "))
        .collect();
    assert_eq!(review.len(), 1, "{second}");
    assert!(review[0].contains(&id), "{second}");
    assert!(
        review[0].contains("(certain)") || review[0].contains("(probable)"),
        "{second}"
    );
    assert!(
        second.lines().last().unwrap().starts_with("imported=3 "),
        "{second}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    app.stop().await;
}

#[tokio::test]
async fn a_second_run_finds_coverages_and_items_taken_and_stores_nothing() {
    // Arrange: a patient with a coverage and an allergy, as bulk NDJSON.
    let app = TestApp::without_kafka().await;
    let dir = std::env::temp_dir().join(format!("import-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let patient = serde_json::json!({
        "resourceType": "Patient", "id": "p-9",
        "name": [{ "use": "official", "family": "Twiceover", "given": ["Ben"] }],
        "gender": "male", "birthDate": "1980-07-01"
    });
    let coverage = serde_json::json!({
        "resourceType": "Coverage", "id": "c-9", "status": "active",
        "beneficiary": { "reference": "Patient/p-9" },
        "payor": [{ "display": "Helsana" }], "subscriberId": "80756-09",
        "relationship": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/subscriber-relationship", "code": "self" }] },
        "period": { "start": "2026-01-01" }, "order": 1
    });
    let allergy = serde_json::json!({
        "resourceType": "AllergyIntolerance", "id": "a-9",
        "clinicalStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active" }] },
        "code": { "text": "Peanut" },
        "patient": { "reference": "Patient/p-9" }
    });
    std::fs::write(dir.join("Patient.ndjson"), patient.to_string()).unwrap();
    std::fs::write(dir.join("Coverage.ndjson"), coverage.to_string()).unwrap();
    std::fs::write(dir.join("AllergyIntolerance.ndjson"), allergy.to_string()).unwrap();

    // Act
    let first = import_as(&app, &dir, "clinic-c");
    let again = import_as(&app, &dir, "clinic-c");

    // Assert
    assert!(
        first
            .lines()
            .last()
            .unwrap()
            .starts_with("imported=3 skipped=0 refused=0"),
        "{first}"
    );
    assert!(
        again
            .lines()
            .last()
            .unwrap()
            .starts_with("imported=0 skipped=0 refused=0"),
        "{again}"
    );
    for kind in ["Patient", "Coverage", "AllergyIntolerance"] {
        assert_eq!(
            count(&again, "already imported", kind),
            1,
            "{kind}: {again}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
    app.stop().await;
}

/// The elements the README lists as stored, per type of the source.
const STORED: &[(&str, &[&str])] = &[
    (
        "Patient",
        &[
            "name",
            "telecom",
            "gender",
            "birthDate",
            "address",
            "maritalStatus",
            "communication",
        ],
    ),
    (
        "Encounter",
        &[
            "status",
            "class",
            "type",
            "period",
            "participant",
            "reasonCode",
        ],
    ),
    (
        "Observation",
        &[
            "status",
            "category",
            "code",
            "effectiveDateTime",
            "valueQuantity",
            "valueString",
            "valueCodeableConcept",
            "interpretation",
            "referenceRange",
            "component",
            "issued",
        ],
    ),
    (
        "Condition",
        &[
            "clinicalStatus",
            "category",
            "severity",
            "code",
            "onsetDateTime",
            "abatementDateTime",
            "recordedDate",
        ],
    ),
    // Held as the MedicationStatement of an order: the medication, the prescriber, the
    // order's time as the start and its dosage.
    (
        "MedicationRequest",
        &[
            "medicationCodeableConcept",
            "authoredOn",
            "requester",
            "dosageInstruction",
        ],
    ),
    (
        "Immunization",
        &[
            "status",
            "vaccineCode",
            "occurrenceDateTime",
            "lotNumber",
            "site",
            "route",
            "performer",
            "recorded",
        ],
    ),
    (
        "Procedure",
        &[
            "status",
            "code",
            "performedDateTime",
            "performedPeriod",
            "performer",
            "reasonCode",
        ],
    ),
];

/// Whether `exported` holds all of `source`: the same values (instants as instants, a
/// coding's `text` and other elements added are not a change), extensions aside (the README
/// lists none as stored).
fn holds(source: &Value, exported: &Value) -> bool {
    match (source, exported) {
        (Value::Object(source), Value::Object(exported)) => source
            .iter()
            .filter(|(key, _)| *key != "extension")
            .all(|(key, value)| exported.get(key).is_some_and(|e| holds(value, e))),
        (Value::Array(source), Value::Array(exported)) => {
            source.len() == exported.len() && source.iter().zip(exported).all(|(s, e)| holds(s, e))
        }
        (Value::String(s), Value::String(e)) => {
            s == e
                || matches!(
                    (chrono::DateTime::parse_from_rfc3339(s), chrono::DateTime::parse_from_rfc3339(e)),
                    (Ok(s), Ok(e)) if s == e
                )
        }
        (Value::Number(s), Value::Number(e)) => s.as_f64() == e.as_f64(),
        _ => source == exported,
    }
}

/// Whether `exported` keeps the `element` of a `kind` as the README says it is stored.
fn kept(kind: &str, element: &str, source: &Value, exported: &Value) -> bool {
    let digits = |v: &Value| -> String {
        v.as_str()
            .unwrap_or_default()
            .chars()
            .filter(char::is_ascii_digit)
            .collect()
    };
    let codes = |v: &Value| -> Vec<(Value, Value)> {
        v["coding"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| (c["system"].clone(), c["code"].clone()))
            .collect()
    };
    match (kind, element) {
        // Kept to the day.
        ("Condition", "onsetDateTime" | "abatementDateTime")
        | ("Immunization", "occurrenceDateTime")
        | ("MedicationRequest", "authoredOn") => {
            source.as_str().and_then(|s| s.get(..10)) == exported.as_str()
        }
        // When the item was recorded here (the import), not in the source.
        ("Condition", "recordedDate")
        | ("Observation", "issued")
        | ("Immunization", "recorded") => exported.is_string(),
        // The official name; phones in E.164 (the number the same); the patient's codes as
        // codes (their display is HL7's, not the source's).
        ("Patient", "name") => {
            let official: Vec<Value> = source
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| n["use"] == "official")
                .cloned()
                .collect();
            holds(
                &Value::Array(official),
                &Value::Array(exported.as_array().unwrap()[..1].to_vec()),
            )
        }
        ("Patient", "telecom") => source.as_array().unwrap().iter().all(|t| {
            exported.as_array().unwrap().iter().any(|e| {
                e["system"] == t["system"] && digits(&e["value"]).ends_with(&digits(&t["value"]))
            })
        }),
        // Codes of HL7's own code systems, kept as codes (their display is HL7's).
        ("Patient", "maritalStatus") => codes(source) == codes(exported),
        ("Observation", "category") => {
            source
                .as_array()
                .map(|s| s.iter().map(codes).collect::<Vec<_>>())
                == exported.as_array().map(|e| e.iter().map(codes).collect())
        }
        ("Patient", "communication") => source
            .as_array()
            .unwrap()
            .iter()
            .zip(exported.as_array().unwrap())
            .all(|(s, e)| codes(&s["language"]) == codes(&e["language"])),
        // The practitioner as the user the reference names (the id the import gave them).
        // The first dosage: its timing, as needed, route and dose.
        ("MedicationRequest", "dosageInstruction") => {
            let (source, exported) = (&source[0], &exported[0]);
            ["timing", "asNeededBoolean", "route"]
                .iter()
                .all(|key| source[key].is_null() || holds(&source[key], &exported[key]))
                && (source["doseAndRate"][0]["doseQuantity"].is_null()
                    || holds(
                        &source["doseAndRate"][0]["doseQuantity"],
                        &exported["doseAndRate"][0]["doseQuantity"],
                    ))
        }
        ("MedicationRequest", "requester") => {
            exported["display"].as_str().map(str::to_owned) == imported_practitioner(source)
        }
        ("Encounter", "participant") | ("Immunization" | "Procedure", "performer") => {
            let each = |v: &Value, read: &dyn Fn(&Value) -> Option<String>| -> Vec<String> {
                v.as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| read(person(p)))
                    .collect()
            };
            each(source, &imported_practitioner)
                == each(exported, &|who| who["display"].as_str().map(str::to_owned))
        }
        _ => holds(source, exported),
    }
}

/// Who a participant or performer names (`individual`, else `actor`).
fn person(p: &Value) -> &Value {
    if p["individual"].is_object() {
        &p["individual"]
    } else {
        &p["actor"]
    }
}

/// The user the import made of the practitioner a source reference names.
fn imported_practitioner(reference: &Value) -> Option<String> {
    let id = reference["reference"].as_str()?.rsplit(['/', ':']).next()?;
    Some(format!(
        "import-{}",
        command_api::import::derived("synthea", "Practitioner", id).simple()
    ))
}

#[tokio::test]
async fn a_bulk_export_gives_back_every_element_the_import_stored() {
    // Arrange: Synthea's sample patients imported.
    let app = TestApp::without_kafka().await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/synthea");
    let report = import(&app, &dir);

    // Act: everything exported.
    let admin = app.token("admin-1", &["admin"]);
    let status_url = crate::export::kick_off(&app, &admin, "/$export").await;
    let manifest = crate::export::completed(&app, &admin, &status_url).await;
    let exported = crate::export::exported(&app, &admin, &manifest).await;

    // Assert: each source resource of a type held is exported (unless refused), with every
    // stored element as the source had it.
    let by_id: std::collections::HashMap<String, &Value> = exported
        .iter()
        .filter_map(|r| {
            let id = r["id"].as_str()?;
            let key = if r["resourceType"] == "Patient" {
                r["identifier"]
                    .as_array()?
                    .iter()
                    .find(|i| i["system"] == "urn:patient-service:import:synthea")?["value"]
                    .as_str()?
                    .to_owned()
            } else {
                id.get(32..)?.to_owned()
            };
            Some((key, r))
        })
        .collect();
    let mut differences: std::collections::BTreeMap<String, (usize, String)> =
        std::collections::BTreeMap::new();
    let mut compared = 0;
    let mut missing = std::collections::BTreeMap::<String, usize>::new();
    for file in std::fs::read_dir(&dir).unwrap() {
        let path = file.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let bundle: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for entry in bundle["entry"].as_array().unwrap() {
            let source = &entry["resource"];
            let kind = source["resourceType"].as_str().unwrap();
            let Some((_, elements)) = STORED.iter().find(|(t, _)| *t == kind) else {
                continue;
            };
            let source_id = source["id"].as_str().unwrap();
            let key = if kind == "Patient" {
                source_id.to_owned()
            } else {
                command_api::import::derived("synthea", kind, source_id)
                    .simple()
                    .to_string()
            };
            let Some(exported) = by_id.get(&key) else {
                *missing.entry(kind.to_owned()).or_default() += 1;
                continue;
            };
            compared += 1;
            for element in *elements {
                let shown = match (kind, *element) {
                    ("MedicationRequest", "authoredOn") => &exported["effectivePeriod"]["start"],
                    ("MedicationRequest", "requester") => &exported["informationSource"],
                    ("MedicationRequest", "dosageInstruction") => &exported["dosage"],
                    _ => &exported[element],
                };
                if source[element].is_null() || kept(kind, element, &source[element], shown) {
                    continue;
                }
                let slot = differences
                    .entry(format!("{kind}.{element}"))
                    .or_insert((0, String::new()));
                slot.0 += 1;
                if slot.1.is_empty() {
                    slot.1 = format!("source {} exported {}", source[element], exported[element]);
                }
            }
        }
    }
    for (kind, n) in &missing {
        assert_eq!(
            count(&report, "refused", kind) as usize,
            *n,
            "{kind}: only refused resources are missing from the export\n{report}"
        );
    }
    assert!(compared > 1_000, "{compared}");
    assert!(
        differences.is_empty(),
        "{compared} compared; differences: {differences:#?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_imported_patient_whose_identifiers_agree_with_a_registered_one_is_merged_into_them() {
    // Arrange: one Synthea patient registered already by the front desk, with the source's
    // medical record number among their identifiers.
    let app = TestApp::without_kafka().await;
    let file = "Clemente_Kreiger_1484a42d-0eaf-4654-9cbf-6b050a5cd73b.json";
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/synthea");
    let bundle: Value =
        serde_json::from_str(&std::fs::read_to_string(source.join(file)).unwrap()).unwrap();
    let mut patient = bundle["entry"][0]["resource"].clone();
    let source_id = patient["id"].as_str().unwrap().to_owned();
    let record_number = patient["identifier"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"]["coding"][0]["code"] == "MR")
        .unwrap()
        .clone();
    // The phone as the front desk types it (E.164), as the import reads it too.
    for telecom in patient["telecom"].as_array_mut().unwrap() {
        let digits: String = telecom["value"]
            .as_str()
            .unwrap()
            .chars()
            .filter(char::is_ascii_digit)
            .collect();
        telecom["value"] = Value::String(format!("+1{digits}"));
    }
    let object = patient.as_object_mut().unwrap();
    for element in ["id", "extension", "text", "meta"] {
        object.remove(element);
    }
    object.insert(
        "identifier".into(),
        serde_json::json!([{ "system": record_number["system"], "value": record_number["value"] }]),
    );
    let registered = app
        .client
        .post(format!("{}/fhir/R4/Patient", app.address))
        .bearer_auth(app.registrar())
        .header("content-type", "application/fhir+json")
        .json(&patient)
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 201, "{:?}", registered.text().await);
    let registered: Value = registered.json().await.unwrap();
    let id = registered["id"].as_str().unwrap().to_owned();
    // The import's matcher finds them once its read model has them.
    let registrar = app.registrar();
    let mut described = serde_json::json!({ "resourceType": "Patient" });
    for element in ["name", "gender", "birthDate", "address", "telecom"] {
        described[element] = patient[element].clone();
    }
    let asked = serde_json::json!({
        "resourceType": "Parameters",
        "parameter": [{ "name": "resource", "resource": described }],
    });
    eventually("the registered patient known to the matcher", || async {
        let (status, _, found) = crate::fhir::fhir_send(
            &app,
            reqwest::Method::POST,
            "/Patient/$match",
            &registrar,
            &asked,
            &[],
        )
        .await;
        assert_eq!(status, 200, "{found}");
        found["entry"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["resource"]["id"] == id.as_str()))
    })
    .await;
    let dir = std::env::temp_dir().join(format!("merge-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    for name in [
        file,
        "hospitalInformation1559319163815.json",
        "practitionerInformation1559319163815.json",
    ] {
        std::fs::copy(source.join(name), dir.join(name)).unwrap();
    }

    // Act
    let report = import(&app, &dir);

    // Assert: merged, not registered beside; the registered patient holds the import's
    // identifier and the source's items.
    assert_eq!(count(&report, "imported", "Patient"), 0, "{report}");
    assert!(
        report.contains("patients merged into the one registered, their identifiers agreeing 1"),
        "{report}"
    );
    assert!(
        report.contains(&format!(
            "merged: source patient {source_id} into Patient/{id}"
        )),
        "{report}"
    );
    let admin = app.token("admin-1", &["admin"]);
    let (_, _, read) = fhir_get(&app, &format!("/Patient/{id}"), Some(&admin), &[]).await;
    assert!(read["identifier"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["system"] == "urn:patient-service:import:synthea"
            && i["value"] == source_id.as_str()));
    let expected = in_bundle(&bundle, "Observation") as u64;
    eventually(
        "the source's observations on the registered patient",
        || async {
            let (_, _, page) = fhir_get(
                &app,
                &format!("/Patient/{id}/$everything?_type=Observation&_count=1000"),
                Some(&admin),
                &[],
            )
            .await;
            page["total"].as_u64() == Some(expected)
        },
    )
    .await;

    // A second run finds them merged already and stores nothing.
    let again = import(&app, &dir);
    assert_eq!(count(&again, "already imported", "Patient"), 1, "{again}");
    assert!(
        again.lines().last().unwrap().starts_with("imported=0 "),
        "{again}"
    );
    std::fs::remove_dir_all(dir).unwrap();
    app.stop().await;
}
