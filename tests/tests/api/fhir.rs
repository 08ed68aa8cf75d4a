//! The FHIR R4 API under `/fhir/R4`: every answer, errors included, valid against HL7's FHIR R4
//! JSON schema; the same access rules and access log as the native API.

use serde_json::{json, Value};

use crate::helpers::{assert_valid_fhir, id_of, TestApp};

const FHIR_JSON: &str = "application/fhir+json";

/// GETs `path` under `/fhir/R4`; returns the status, the headers and the body, after checking
/// that the body is FHIR JSON valid against the schema.
pub(crate) async fn fhir_get(
    app: &TestApp,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = app.client.get(format!("{}/fhir/R4{path}", app.address));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let content_type = headers[reqwest::header::CONTENT_TYPE].to_str().unwrap();
    assert!(
        content_type.starts_with(FHIR_JSON),
        "{path}: {content_type}"
    );
    let body: Value = response.json().await.unwrap();
    assert_valid_fhir(&body);
    (status, headers, body)
}

fn ada() -> Value {
    json!({
        "name": { "given": ["Augusta", "Ada"], "family": "Lovelace-Fhir", "prefix": ["Dr."], "preferred": "Ada" },
        "birth_date": "1990-12-10",
        "gender": "female",
        "marital_status": "M",
        "languages": ["en-GB", "fr"],
        "identifiers": [{ "system": "urn:oid:2.16.840.1.113883.4.1", "value": "123-45-6789", "national": true }],
        "contact": {
            "phones": [{ "number": "+41 79 123 45 67", "use": "mobile" }],
            "emails": [{ "address": "ada@example.org" }],
            "addresses": [{ "use": "home", "lines": ["Bahnhofstrasse 1"], "city": "Zürich",
                            "postal_code": "8001", "country": "CH" }]
        }
    })
}

/// The issues of an OperationOutcome as (code, expression) pairs.
fn issues(outcome: &Value) -> Vec<(String, String)> {
    assert_eq!(outcome["resourceType"], "OperationOutcome", "{outcome}");
    outcome["issue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["code"].as_str().unwrap().to_owned(),
                i["expression"][0].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_capability_statement_lists_what_is_served_and_is_valid_fhir() {
    let app = TestApp::without_kafka().await;

    let (status, _, statement) = fhir_get(&app, "/metadata", None, &[]).await;

    assert_eq!(status, 200);
    assert_eq!(statement["fhirVersion"], "4.0.1");
    assert_eq!(statement["format"], json!(["json"]));
    let resources = statement["rest"][0]["resource"].as_array().unwrap();
    let patient = resources.iter().find(|r| r["type"] == "Patient").unwrap();
    let interactions: Vec<&str> = patient["interaction"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        interactions,
        [
            "read",
            "vread",
            "history-instance",
            "search-type",
            "create",
            "update"
        ]
    );
    let system: Vec<&str> = statement["rest"][0]["interaction"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["code"].as_str().unwrap())
        .collect();
    assert_eq!(system, ["batch", "transaction"]);
    let params: Vec<&str> = patient["searchParam"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for expected in ["_id", "identifier", "name", "family", "given", "birthdate"] {
        assert!(params.contains(&expected), "{expected} not in {params:?}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_patient_reads_as_a_valid_fhir_patient_with_its_version_and_the_read_is_recorded() {
    // Arrange
    let app = TestApp::without_kafka().await;
    let registered = app.register(&ada()).await;
    assert_eq!(registered.status(), 201);
    let id = id_of(&registered.json().await.unwrap());
    let token = app.token("registrar-fhir", &["registrar"]);

    // Act
    let (status, headers, patient) =
        fhir_get(&app, &format!("/Patient/{id}"), Some(&token), &[]).await;

    // Assert
    assert_eq!(status, 200, "{patient}");
    assert_eq!(headers["etag"], "W/\"1\"");
    assert_eq!(patient["id"], id.as_str());
    assert_eq!(patient["meta"]["versionId"], "1");
    assert_eq!(patient["active"], true);
    assert_eq!(patient["gender"], "female");
    assert_eq!(patient["birthDate"], "1990-12-10");
    assert_eq!(patient["name"][0]["family"], "Lovelace-Fhir");
    assert_eq!(patient["name"][0]["given"], json!(["Augusta", "Ada"]));
    assert_eq!(patient["name"][0]["prefix"], json!(["Dr."]));
    assert_eq!(
        patient["name"][1],
        json!({ "use": "usual", "given": ["Ada"] })
    );
    assert_eq!(patient["address"][0]["postalCode"], "8001");
    assert_eq!(patient["address"][0]["city"], "Zürich");
    let telecom = patient["telecom"].as_array().unwrap();
    assert!(telecom
        .iter()
        .any(|t| t["system"] == "phone" && t["use"] == "mobile"));
    assert!(telecom
        .iter()
        .any(|t| t["system"] == "email" && t["value"] == "ada@example.org"));
    assert_eq!(
        patient["maritalStatus"]["coding"][0]["code"], "M",
        "{patient}"
    );
    let identifiers = patient["identifier"].as_array().unwrap();
    assert_eq!(identifiers[0]["system"], "urn:patient-service:mrn");
    assert_eq!(identifiers[0]["type"]["coding"][0]["code"], "MR");
    let national = identifiers
        .iter()
        .find(|i| i["system"] == "urn:oid:2.16.840.1.113883.4.1")
        .unwrap();
    assert_eq!(
        national["value"], "*******6789",
        "masked as the native API shows it"
    );
    let languages: Vec<&str> = patient["communication"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["language"]["coding"][0]["code"].as_str().unwrap())
        .collect();
    assert_eq!(languages, ["en-GB", "fr"]);
    let own = app.patient_token(&id);
    crate::helpers::eventually("the FHIR read to be listed in the disclosures", || async {
        let body: Value = app
            .get(&format!("/v1/patients/{id}/disclosures"), &own)
            .await
            .json()
            .await
            .unwrap();
        body["items"].as_array().unwrap().iter().any(|i| {
            i["action"] == "read" && i["user_id"] == "registrar-fhir" && i["outcome"] == "granted"
        })
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn patients_are_searched_and_paged_in_valid_searchset_bundles() {
    // Arrange: three patients of one family, one other.
    let app = TestApp::without_kafka().await;
    for n in 0..3 {
        app.register_person(9100 + n, Some("Fhirsearch")).await;
    }
    let other = id_of(&app.register_person(9200, None).await);
    let token = app.token("registrar-fhir", &["registrar"]);
    let deadline = std::time::Instant::now() + crate::helpers::DEADLINE;
    loop {
        // The search read model follows the events within moments.
        let (_, _, all) = fhir_get(&app, "/Patient?family=fhirsearch", Some(&token), &[]).await;
        if all["total"] == 3 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{all}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // Act: a page of two of the three.
    let (status, _, first) = fhir_get(
        &app,
        "/Patient?family=fhirsearch&_count=2",
        Some(&token),
        &[],
    )
    .await;
    assert_eq!(status, 200);

    // Assert
    assert_eq!(first["type"], "searchset");
    assert_eq!(first["total"], 3, "the total on the first page too");
    assert_eq!(first["entry"].as_array().unwrap().len(), 2, "{first}");
    for entry in first["entry"].as_array().unwrap() {
        assert_eq!(entry["resource"]["resourceType"], "Patient");
        assert_eq!(entry["search"]["mode"], "match");
        let full_url = entry["fullUrl"].as_str().unwrap();
        assert!(full_url.starts_with("http://"), "{full_url}");
        assert!(full_url.ends_with(&format!(
            "/fhir/R4/Patient/{}",
            entry["resource"]["id"].as_str().unwrap()
        )));
    }
    let next = first["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .unwrap_or_else(|| panic!("no next link: {first}"))["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = next.split_once("/fhir/R4").unwrap().1.to_owned();
    let (status, _, second) = fhir_get(&app, &path, Some(&token), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(second["entry"].as_array().unwrap().len(), 1, "{second}");
    assert_eq!(second["total"], 3);

    // _id, and _format=json honoured.
    let (status, _, by_id) = fhir_get(
        &app,
        &format!("/Patient?_id={other}&_format=json"),
        Some(&token),
        &[],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(by_id["total"], 1);
    assert_eq!(by_id["entry"][0]["resource"]["id"], other.as_str());

    // Birth dates by range (both ends as two birthdate parameters) and gender.
    for (given, born, gender) in [
        ("Ann", "1970-05-01", "female"),
        ("Ben", "1985-06-15", "male"),
        ("Cat", "1999-12-31", "female"),
    ] {
        let mut body = crate::helpers::patient(given, "Agefhir", born);
        body["gender"] = json!(gender);
        assert_eq!(app.register(&body).await.status(), 201);
    }
    let count = |query: &'static str| {
        let (app, token) = (&app, token.clone());
        async move {
            let (status, _, found) = fhir_get(
                app,
                &format!("/Patient?family=agefhir&{query}"),
                Some(&token),
                &[],
            )
            .await;
            assert_eq!(status, 200, "{query}: {found}");
            found["total"].as_u64().unwrap()
        }
    };
    crate::helpers::eventually("the three in the search model", || async {
        count("_count=10").await == 3
    })
    .await;
    assert_eq!(
        count("birthdate=ge1980-01-01&birthdate=lt2000-01-01").await,
        2
    );
    assert_eq!(count("birthdate=le1985-06-15").await, 2);
    assert_eq!(count("birthdate=gt1999-12-31").await, 0);
    assert_eq!(count("birthdate=1985-06-15").await, 1);
    assert_eq!(count("gender=female").await, 2);
    assert_eq!(count("gender=female&birthdate=ge1980-01-01").await, 1);
    let (status, _, outcome) = fhir_get(&app, "/Patient?gender=sometimes", Some(&token), &[]).await;
    assert_eq!(status, 400);
    assert_eq!(issues(&outcome)[0].1, "gender");
    app.stop().await;
}

#[tokio::test]
async fn errors_are_operation_outcomes_naming_what_was_wrong() {
    let app = TestApp::without_kafka().await;
    let token = app.token("registrar-fhir", &["registrar"]);
    let id = id_of(&app.register_person(9300, None).await);

    // An unsupported search parameter is refused, never ignored.
    let (status, _, outcome) =
        fhir_get(&app, "/Patient?family=x&shoe-size=42", Some(&token), &[]).await;
    assert_eq!(status, 400);
    assert_eq!(issues(&outcome), [("invalid".into(), "shoe-size".into())]);
    // A bad value names its parameter as FHIR calls it.
    let (status, _, outcome) =
        fhir_get(&app, "/Patient?birthdate=yesterday", Some(&token), &[]).await;
    assert_eq!(status, 400);
    assert_eq!(issues(&outcome)[0].1, "birthdate");
    // XML, asked for in any way, is 415.
    for (path, headers) in [
        (format!("/Patient/{id}?_format=xml"), vec![]),
        (
            format!("/Patient/{id}"),
            vec![("accept", "application/fhir+xml")],
        ),
        ("/metadata?_format=application/fhir+xml".to_owned(), vec![]),
    ] {
        let (status, _, outcome) = fhir_get(&app, &path, Some(&token), &headers).await;
        assert_eq!(status, 415, "{path}");
        assert_eq!(issues(&outcome)[0].0, "not-supported");
    }
    // No token, an unknown patient, an unknown resource type.
    let (status, _, outcome) = fhir_get(&app, &format!("/Patient/{id}"), None, &[]).await;
    assert_eq!((status, issues(&outcome)[0].0.as_str()), (401, "login"));
    let unknown = uuid::Uuid::new_v4();
    let (status, _, outcome) =
        fhir_get(&app, &format!("/Patient/{unknown}"), Some(&token), &[]).await;
    assert_eq!((status, issues(&outcome)[0].0.as_str()), (404, "not-found"));
    let (status, _, _) = fhir_get(&app, "/Spaceship/1", Some(&token), &[]).await;
    assert_eq!(status, 404);
    // A role the native API keeps from a record is kept from it here too.
    let stranger = app.token("dr-stranger", &["clinician"]);
    let (status, _, outcome) =
        fhir_get(&app, &format!("/Patient/{id}"), Some(&stranger), &[]).await;
    assert_eq!((status, issues(&outcome)[0].0.as_str()), (403, "forbidden"));
    app.stop().await;
}

#[test]
fn the_schema_check_refuses_what_fhir_forbids() {
    // The check the tests above rely on is not vacuous: an unknown element, a code outside its
    // value set and a missing required element each fail it. (Cardinalities such as an empty
    // `issue` array are beyond a JSON schema.)
    for bad in [
        json!({ "resourceType": "Patient", "gender": "robot" }),
        json!({ "resourceType": "Patient", "shoeSize": 42 }),
        json!({ "resourceType": "OperationOutcome" }),
    ] {
        let refused = std::panic::catch_unwind(|| assert_valid_fhir(&bad));
        assert!(refused.is_err(), "accepted: {bad}");
    }
    assert_valid_fhir(&json!({ "resourceType": "Patient", "gender": "female" }));
}

/// The FHIR resource type of each native item segment served.
const CLINICAL: [(&str, &str); 4] = [
    ("allergies", "AllergyIntolerance"),
    ("medications", "MedicationStatement"),
    ("immunizations", "Immunization"),
    ("problems", "Condition"),
];

#[tokio::test]
async fn medical_record_items_read_and_search_as_valid_fhir_resources() {
    use crate::medical_records::{bodies, clinician, patient_in_care};
    // Arrange: one item of each kind, recorded through the native API, and a medication
    // reported by the patient with nothing but its name and status.
    let app = TestApp::without_kafka().await;
    let id = patient_in_care(&app, 9400).await;
    let token = clinician(&app);
    let mut hrefs = Vec::new();
    for (segment, body, _) in bodies() {
        let response = app
            .post(&format!("/v1/patients/{id}/{segment}"), &token, &body, &[])
            .await;
        assert_eq!(response.status(), 201, "{segment}");
        let created: Value = response.json().await.unwrap();
        hrefs.push((segment, created["item_id"].as_str().unwrap().to_owned()));
    }
    let reported = json!({ "medication": { "text": "Ibuprofen 200 MG" }, "status": "active",
                           "source": "patient-reported" });
    let response = app
        .post(
            &format!("/v1/patients/{id}/medications"),
            &token,
            &reported,
            &[],
        )
        .await;
    assert_eq!(response.status(), 201);

    for (segment, kind) in CLINICAL {
        // Act
        let (status, _, bundle) = fhir_get(
            &app,
            &format!("/{kind}?patient=Patient/{id}"),
            Some(&token),
            &[],
        )
        .await;

        // Assert: the items, each valid and readable by its id.
        assert_eq!(status, 200, "{kind}: {bundle}");
        let expected = if segment == "medications" { 2 } else { 1 };
        assert_eq!(bundle["total"], expected, "{kind}");
        for entry in bundle["entry"].as_array().unwrap() {
            let resource = &entry["resource"];
            assert_eq!(resource["resourceType"], kind);
            let subject = if kind == "AllergyIntolerance" || kind == "Immunization" {
                &resource["patient"]
            } else {
                &resource["subject"]
            };
            assert_eq!(subject["reference"], format!("Patient/{id}"));
            let fhir_id = resource["id"].as_str().unwrap();
            let (status, headers, read) =
                fhir_get(&app, &format!("/{kind}/{fhir_id}"), Some(&token), &[]).await;
            assert_eq!(status, 200, "{kind}");
            assert_eq!(&read, resource);
            assert_eq!(headers["etag"], "W/\"1\"");
        }
    }
    // What was stored, in FHIR's words.
    let (_, _, medications) = fhir_get(
        &app,
        &format!("/MedicationStatement?patient={id}&code=ibuprofen"),
        Some(&token),
        &[],
    )
    .await;
    assert_eq!(medications["total"], 0, "code matches codes, not text");
    let (_, _, allergies) = fhir_get(
        &app,
        &format!("/AllergyIntolerance?patient={id}&code=http://snomed.info/sct|764146007&clinical-status=active&category=medication"),
        Some(&token),
        &[],
    )
    .await;
    assert_eq!(allergies["total"], 1, "{allergies}");
    let allergy = &allergies["entry"][0]["resource"];
    assert_eq!(allergy["criticality"], "high");
    assert_eq!(allergy["code"]["coding"][0]["code"], "764146007");
    assert_eq!(allergy["reaction"][0]["severity"], "moderate");
    let (_, _, conditions) = fhir_get(
        &app,
        &format!("/Condition?patient={id}&date=ge2018-01-01&clinical-status=active"),
        Some(&token),
        &[],
    )
    .await;
    assert_eq!(conditions["total"], 1);
    assert_eq!(
        conditions["entry"][0]["resource"]["code"]["coding"][0]["code"],
        "E11.9"
    );
    let (_, _, later) = fhir_get(
        &app,
        &format!("/Condition?patient={id}&date=gt2018-03-01"),
        Some(&token),
        &[],
    )
    .await;
    assert_eq!(later["total"], 0);
    let (_, _, reported) = fhir_get(
        &app,
        &format!("/MedicationStatement?patient={id}&status=active"),
        Some(&token),
        &[],
    )
    .await;
    let reported = reported["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .find(|r| r["medicationCodeableConcept"]["text"] == "Ibuprofen 200 MG")
        .unwrap();
    assert_eq!(
        reported["informationSource"]["reference"],
        format!("Patient/{id}"),
        "told by the patient"
    );
    assert!(reported.get("dosage").is_none(), "nothing invented");

    // An item entered in error keeps its place, with that status.
    let (segment, item) = &hrefs[0];
    let response = app
        .client
        .post(format!(
            "{}/v1/patients/{id}/{segment}/{item}/entered-in-error",
            app.address
        ))
        .bearer_auth(&token)
        .header("if-match", "\"1\"")
        .json(&json!({ "reason": "wrong chart" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (_, _, allergies) = fhir_get(
        &app,
        &format!("/AllergyIntolerance?patient={id}"),
        Some(&token),
        &[],
    )
    .await;
    let marked = &allergies["entry"][0]["resource"];
    assert_eq!(
        marked["verificationStatus"]["coding"][0]["code"],
        "entered-in-error"
    );
    assert!(marked.get("clinicalStatus").is_none(), "ait-2");
    assert_eq!(marked["meta"]["versionId"], "2");
    app.stop().await;
}

#[tokio::test]
async fn clinical_searches_need_a_patient_and_keep_to_the_callers_reach() {
    let app = TestApp::without_kafka().await;
    let id = crate::medical_records::patient_in_care(&app, 9500).await;
    let token = crate::medical_records::clinician(&app);

    let (status, _, outcome) = fhir_get(&app, "/Condition?code=E11.9", Some(&token), &[]).await;
    assert_eq!(status, 400);
    assert_eq!(issues(&outcome), [("invalid".into(), "patient".into())]);
    let (status, _, outcome) = fhir_get(
        &app,
        &format!("/Condition?patient={id}&category=food"),
        Some(&token),
        &[],
    )
    .await;
    assert_eq!(status, 400, "category is an AllergyIntolerance parameter");
    assert_eq!(issues(&outcome)[0].1, "category");
    let (status, _, _) = fhir_get(
        &app,
        &format!(
            "/Condition/{}{}",
            id.replace('-', ""),
            uuid::Uuid::new_v4().simple()
        ),
        Some(&token),
        &[],
    )
    .await;
    assert_eq!(status, 404);
    let stranger = app.token("dr-stranger", &["clinician"]);
    let (status, _, outcome) = fhir_get(
        &app,
        &format!("/AllergyIntolerance?patient={id}"),
        Some(&stranger),
        &[],
    )
    .await;
    assert_eq!((status, issues(&outcome)[0].0.as_str()), (403, "forbidden"));
    app.stop().await;
}

/// Sends `resource` to `path` under `/fhir/R4` as FHIR JSON; returns status, headers and the
/// (schema-checked) body.
pub(crate) async fn fhir_send(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    token: &str,
    resource: &Value,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = app
        .client
        .request(method, format!("{}/fhir/R4{path}", app.address))
        .bearer_auth(token)
        .header("content-type", FHIR_JSON)
        .body(resource.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body: Value = response.json().await.unwrap();
    assert_valid_fhir(&body);
    (status, headers, body)
}

#[tokio::test]
async fn clinical_resources_are_created_and_updated_through_the_use_cases_and_published() {
    use crate::helpers::{assert_matches_schema_in, consume_until, consumer_for, key, published};
    // Arrange
    let app = TestApp::spawn().await;
    let id = crate::medical_records::patient_in_care(&app, 9600).await;
    let token = crate::medical_records::clinician(&app);
    let post = reqwest::Method::POST;
    let allergy = json!({
        "resourceType": "AllergyIntolerance",
        "clinicalStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active" }] },
        "code": { "coding": [{ "system": "http://snomed.info/sct", "code": "764146007", "display": "Penicillin" }] },
        "patient": { "reference": format!("Patient/{id}") },
        "reaction": [{ "manifestation": [{ "text": "Hives" }], "severity": "moderate" }]
    });

    // Act + assert: created, with a Location of its first version, and read back.
    let (status, headers, created) = fhir_send(
        &app,
        post.clone(),
        "/AllergyIntolerance",
        &token,
        &allergy,
        &[],
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let allergy_id = created["id"].as_str().unwrap().to_owned();
    assert!(headers["location"].to_str().unwrap().ends_with(&format!(
        "/fhir/R4/AllergyIntolerance/{allergy_id}/_history/1"
    )));
    assert_eq!(headers["etag"], "W/\"1\"");
    assert_eq!(created["code"]["coding"][0]["code"], "764146007");
    assert_eq!(
        created["code"]["text"], "Penicillin",
        "the display names it"
    );
    assert_eq!(created["reaction"][0]["severity"], "moderate");
    assert!(created.get("criticality").is_none());

    // Conditional create: the same allergy again is the one there.
    let (status, _, again) = fhir_send(
        &app,
        post.clone(),
        "/AllergyIntolerance",
        &token,
        &allergy,
        &[("if-none-exist", "code=http://snomed.info/sct|764146007")],
    )
    .await;
    assert_eq!((status, &again["id"]), (200, &created["id"]));

    // A medication order the allergy names is refused, naming the allergy, then acknowledged.
    let order = json!({
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": { "coding": [{ "system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "834061",
            "display": "Penicillin V Potassium 250 MG Oral Tablet" }] },
        "subject": { "reference": format!("Patient/{id}") },
        "authoredOn": "2026-11-20",
        "dosageInstruction": [{ "timing": { "repeat": { "frequency": 2, "period": 1, "periodUnit": "d" } },
            "doseAndRate": [{ "doseQuantity": { "value": 250, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg" } }] }]
    });
    let (status, _, refused) = fhir_send(
        &app,
        post.clone(),
        "/MedicationRequest",
        &token,
        &order,
        &[],
    )
    .await;
    assert_eq!(status, 409, "{refused}");
    let issues = refused["issue"].as_array().unwrap();
    assert_eq!(issues[0]["code"], "business-rule");
    assert!(issues[0]["diagnostics"]
        .as_str()
        .unwrap()
        .starts_with("allergy-warning"));
    assert_eq!(issues[1]["severity"], "warning");
    assert!(issues[1]["diagnostics"]
        .as_str()
        .unwrap()
        .contains(&format!("AllergyIntolerance/{allergy_id}")));
    let (status, _, statement) = fhir_send(
        &app,
        post.clone(),
        "/MedicationRequest",
        &token,
        &order,
        &[("x-acknowledge-allergy-warnings", &allergy_id)],
    )
    .await;
    assert_eq!(status, 201, "{statement}");
    assert_eq!(statement["resourceType"], "MedicationStatement");
    assert_eq!(statement["status"], "active");
    assert_eq!(
        statement["dosage"][0]["doseAndRate"][0]["doseQuantity"]["value"],
        250
    );
    assert_eq!(statement["effectivePeriod"]["start"], "2026-11-20");

    // Updated with If-Match: stale is 412, current is a new version.
    let statement_id = statement["id"].as_str().unwrap().to_owned();
    let mut stopped = statement.clone();
    stopped["status"] = json!("stopped");
    let path = format!("/MedicationStatement/{statement_id}");
    let put = reqwest::Method::PUT;
    let (status, _, stale) = fhir_send(
        &app,
        put.clone(),
        &path,
        &token,
        &stopped,
        &[("if-match", "W/\"7\"")],
    )
    .await;
    assert_eq!(status, 412, "{stale}");
    let (status, headers, updated) = fhir_send(
        &app,
        put.clone(),
        &path,
        &token,
        &stopped,
        &[
            ("if-match", "W/\"1\""),
            ("x-change-reason", "course finished early"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(headers["etag"], "W/\"2\"");
    assert_eq!(updated["status"], "stopped");

    // Every version is an event: vread and the instance history show them.
    let deadline = std::time::Instant::now() + crate::helpers::DEADLINE;
    let history = loop {
        let (status, _, history) =
            fhir_get(&app, &format!("{path}/_history"), Some(&token), &[]).await;
        assert_eq!(status, 200, "{history}");
        if history["total"] == 2 {
            break history;
        }
        assert!(std::time::Instant::now() < deadline, "{history}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(history["type"], "history");
    assert_eq!(history["entry"][0]["resource"]["status"], "stopped");
    assert_eq!(history["entry"][0]["request"]["method"], "PUT");
    assert_eq!(history["entry"][1]["resource"]["status"], "active");
    assert_eq!(history["entry"][1]["response"]["etag"], "W/\"1\"");
    let (status, _, first) = fhir_get(&app, &format!("{path}/_history/1"), Some(&token), &[]).await;
    assert_eq!((status, &first["status"]), (200, &json!("active")));
    assert_eq!(first["meta"]["versionId"], "1");
    let (status, _, _) = fhir_get(&app, &format!("{path}/_history/3"), Some(&token), &[]).await;
    assert_eq!(status, 404);

    // A resource that lacks what the service needs is refused, naming the FHIR element.
    let (status, _, outcome) = fhir_send(
        &app,
        post.clone(),
        "/AllergyIntolerance",
        &token,
        &json!({ "resourceType": "AllergyIntolerance", "patient": { "reference": format!("Patient/{id}") },
                 "clinicalStatus": { "coding": [{ "code": "active" }] } }),
        &[],
    )
    .await;
    assert_eq!(status, 422, "{outcome}");
    assert_eq!(
        outcome["issue"][0]["expression"][0], "AllergyIntolerance.code",
        "{outcome}"
    );

    // The writes are the native events, on the native topic, matching their schemas.
    let topic = format!(
        "{}{}",
        app.settings.kafka.topic_prefix,
        schemas::topics::MEDICAL_RECORD
    );
    let consumer = consumer_for(app.settings.kafka.brokers.as_deref().unwrap(), &topic);
    let records = consume_until(&consumer, |r| {
        r.iter().filter(|r| key(r) == id).count() >= 3
    })
    .await;
    let mut types = Vec::new();
    for record in records.iter().filter(|r| key(r) == id) {
        let event_type = published(record).event_type;
        let data = app.open(record).await;
        assert_matches_schema_in("medical-record/v1", &event_type, &data);
        types.push(event_type);
    }
    assert_eq!(
        types,
        ["AllergyRecorded", "MedicationRecorded", "MedicationRevised"]
    );
    app.stop().await;
}

#[tokio::test]
async fn a_patient_is_registered_through_fhir_with_the_matcher_and_reads_back_as_sent() {
    // Arrange: a Patient as another system sends it (after HL7's example `pat1`).
    let app = TestApp::without_kafka().await;
    let token = app.registrar();
    let patient = json!({
        "resourceType": "Patient",
        "identifier": [{ "use": "usual", "type": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR" }] },
                         "system": "urn:oid:0.1.2.3.4.5.6.7", "value": "654321" }],
        "active": true,
        "name": [{ "use": "official", "family": "Donald-Fhir", "given": ["Duck", "D"] }],
        "telecom": [{ "system": "phone", "value": "+31 20 123 4567", "use": "work" },
                    { "system": "email", "value": "duck@example.org", "rank": 1 }],
        "gender": "male",
        "birthDate": "1974-12-25",
        "address": [{ "use": "home", "line": ["Kerkstraat 1"], "city": "Amsterdam", "postalCode": "1017 GA", "country": "NL" }],
        "communication": [{ "language": { "coding": [{ "system": "urn:ietf:bcp:47", "code": "nl" }] } }],
        "contact": [{ "relationship": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": "WIFE" }] }],
                      "name": { "family": "Duck", "given": ["Daisy"] },
                      "telecom": [{ "system": "phone", "value": "+31 20 765 4321" }] }],
        "photo": [{ "contentType": "image/gif", "data": "R0lGODlhEwARAPcAAAAAAAAA/+9aAO+1AP/WAP/eAP/eCP/eEP/eGP/nAP/nCP/nEP/nIf/nKf/nUv/nWv/vAP/vCP/vEP/vGP/vIf/vKf/vMf/vOf/vWv/vY//va//vjP/3c//3lP/3nP//tf//vf///wAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAACH5BAEAAAAALAAAAAATABEAAAi+AAMIDDCgYMGBCBMSvMCQ4QCFCQcwDBGCA4cLDyEGECDxAoAQHjxwyKhQAMeGIUOSJJjRpMAPGxuXWHfg6UXYgQBcYCr7QGEjwMGNbEMGkGTZj8SBH0wt4HHB0YgBmr8sXiCwFAEw59mBFBsoQEBX44n0oaLbYAVG2EOuM6XDa5v8D7c6ARW9h3gRkUgDr4hfgnKiH4k8d2zVYx/C5oxhg0A7" }]
    });

    // Act
    let (status, headers, created) = fhir_send(
        &app,
        reqwest::Method::POST,
        "/Patient",
        &token,
        &patient,
        &[],
    )
    .await;

    // Assert: registered with the emergency contact (two events, stored together); what the
    // service holds reads back as sent; the MRN assigned.
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(headers["location"]
        .to_str()
        .unwrap()
        .ends_with(&format!("/fhir/R4/Patient/{id}/_history/2")));
    assert_eq!(created["contact"][0]["relationship"][0]["text"], "spouse");
    assert_eq!(created["contact"][0]["name"]["given"], json!(["Daisy"]));
    let (_, _, read) = fhir_get(&app, &format!("/Patient/{id}"), Some(&token), &[]).await;
    assert_eq!(read, created);
    let (_, _, first) = fhir_get(
        &app,
        &format!("/Patient/{id}/_history/1"),
        Some(&token),
        &[],
    )
    .await;
    assert_eq!(first["name"], created["name"]);
    assert!(first.get("contact").is_none());
    let (_, _, history) =
        fhir_get(&app, &format!("/Patient/{id}/_history"), Some(&token), &[]).await;
    assert_eq!(history["total"], 2);
    assert_eq!(history["entry"][0]["resource"], created);
    for element in ["gender", "birthDate", "address"] {
        assert_eq!(read[element], patient[element], "{element}");
    }
    assert_eq!(read["name"][0]["family"], "Donald-Fhir");
    assert_eq!(read["name"][0]["given"], json!(["Duck", "D"]));
    assert_eq!(read["identifier"][0]["system"], "urn:patient-service:mrn");
    assert_eq!(read["identifier"][1]["value"], "654321");
    assert_eq!(
        read["communication"][0]["language"]["coding"][0]["code"],
        "nl"
    );
    assert!(read.get("photo").is_none(), "not held, so not invented");

    // A conditional create finds them by their identifier (once the search model has them)
    // and answers them instead of registering anyone.
    let condition = [("if-none-exist", "identifier=urn:oid:0.1.2.3.4.5.6.7|654321")];
    crate::helpers::eventually("the patient in the search model", || async {
        let (_, _, found) = fhir_get(
            &app,
            "/Patient?identifier=urn:oid:0.1.2.3.4.5.6.7|654321",
            Some(&token),
            &[],
        )
        .await;
        found["total"] == 1
    })
    .await;
    let (status, headers, existing) = fhir_send(
        &app,
        reqwest::Method::POST,
        "/Patient",
        &token,
        &patient,
        &condition,
    )
    .await;
    assert_eq!(status, 200, "{existing}");
    assert_eq!(existing["id"], created["id"]);
    assert_eq!(headers["etag"], "W/\"2\"");

    // The same person again: the matcher's likely duplicate, named; then an override.
    let (status, _, refused) = fhir_send(
        &app,
        reqwest::Method::POST,
        "/Patient",
        &token,
        &patient,
        &[],
    )
    .await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["issue"][0]["code"], "duplicate", "{refused}");
    assert!(refused["issue"][1]["diagnostics"]
        .as_str()
        .unwrap()
        .contains(&format!("Patient/{id}")));
    let (status, _, twin) = fhir_send(
        &app,
        reqwest::Method::POST,
        "/Patient",
        &token,
        &patient,
        &[(
            "x-duplicate-override-reason",
            "twin brother, checked in person",
        )],
    )
    .await;
    assert_eq!(status, 201, "{twin}");
    assert_ne!(twin["id"], created["id"]);
    // Now two have that identifier: a conditional create is refused as ambiguous.
    crate::helpers::eventually("the twin in the search model", || async {
        let (_, _, found) = fhir_get(
            &app,
            "/Patient?identifier=urn:oid:0.1.2.3.4.5.6.7|654321",
            Some(&token),
            &[],
        )
        .await;
        found["total"] == 2
    })
    .await;
    let (status, _, ambiguous) = fhir_send(
        &app,
        reqwest::Method::POST,
        "/Patient",
        &token,
        &patient,
        &condition,
    )
    .await;
    assert_eq!(status, 412, "{ambiguous}");
    assert_eq!(issues(&ambiguous)[0].0, "multiple-matches");

    // Bad input names the FHIR element.
    let mut bad = patient.clone();
    bad["birthDate"] = json!("2999-01-01");
    let (status, _, outcome) =
        fhir_send(&app, reqwest::Method::POST, "/Patient", &token, &bad, &[]).await;
    assert_eq!(status, 422, "{outcome}");
    assert_eq!(outcome["issue"][0]["expression"][0], "Patient.birthDate");
    // A role that may not register may not register here either.
    let clinician = app.token("dr-who", &["clinician"]);
    let (status, _, _) = fhir_send(
        &app,
        reqwest::Method::POST,
        "/Patient",
        &clinician,
        &patient,
        &[],
    )
    .await;
    assert_eq!(status, 403);
    app.stop().await;
}

/// The first coding of what an example resource is about, as (system, code): its code, vaccine
/// or medication (a contained Medication's, when it names one).
fn coding_of(resource: &Value) -> Option<(String, String)> {
    let concept = ["code", "vaccineCode", "medicationCodeableConcept"]
        .iter()
        .map(|k| &resource[*k])
        .find(|c| !c.is_null())
        .cloned()
        .or_else(|| {
            let id = resource["medicationReference"]["reference"]
                .as_str()?
                .strip_prefix('#')?;
            resource["contained"]
                .as_array()?
                .iter()
                .find(|c| c["id"] == id)
                .map(|m| m["code"].clone())
        })?;
    let coding = &concept["coding"][0];
    Some((
        coding["system"].as_str()?.to_owned(),
        coding["code"].as_str()?.to_owned(),
    ))
}

#[tokio::test]
async fn hl7s_examples_of_the_supported_types_are_created_or_refused_for_a_named_reason() {
    // Arrange: HL7's own R4 examples (npm hl7.fhir.r4.examples, installed by scripts/test).
    let dir = std::path::PathBuf::from(
        std::env::var("HL7_EXAMPLES_DIR").expect("HL7_EXAMPLES_DIR: run with scripts/test"),
    );
    let types = [
        "Patient",
        "AllergyIntolerance",
        "Condition",
        "Immunization",
        "MedicationStatement",
        "MedicationRequest",
        "Observation",
        "Procedure",
        "Encounter",
        "Coverage",
        "Consent",
        "DocumentReference",
        "Appointment",
    ];
    let mut files: Vec<(String, std::path::PathBuf)> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name()?.to_str()?.to_owned();
            let kind = name.split_once('-')?.0.to_owned();
            (types.contains(&kind.as_str()) && name.ends_with(".json")).then_some((kind, path))
        })
        .collect();
    files.sort();
    assert!(files.len() > 150, "{} examples", files.len());
    let app = TestApp::without_kafka().await;
    let registrar = app.registrar();
    let clinician = crate::medical_records::clinician(&app);
    let scheduler = app.token("scheduler-1", &["scheduler"]);

    // Act: each through the API, all but patients on a patient of their own.
    let mut created: std::collections::BTreeMap<String, usize> = Default::default();
    let mut refused: Vec<(String, u16, String)> = Vec::new();
    for (n, (kind, path)) in files.iter().enumerate() {
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let mut example: Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let (token, headers) = if kind == "Patient" {
            (
                registrar.clone(),
                vec![("x-duplicate-override-reason", "HL7 example")],
            )
        } else {
            let patient = crate::medical_records::patient_in_care(&app, 20_000 + n as u64).await;
            let reference = json!({ "reference": format!("Patient/{patient}") });
            match kind.as_str() {
                "Coverage" => example["beneficiary"] = reference,
                "Consent" => example["patient"] = reference,
                "Appointment" => {
                    let participants = example["participant"].as_array_mut().unwrap();
                    participants.retain(|p| {
                        !p["actor"]["reference"]
                            .as_str()
                            .is_some_and(|r| r.starts_with("Patient/"))
                    });
                    participants.push(json!({ "actor": reference, "status": "accepted" }));
                }
                _ if example.get("patient").is_some() => example["patient"] = reference,
                _ => example["subject"] = reference,
            }
            let token = match kind.as_str() {
                "Coverage" | "Consent" => &registrar,
                "Appointment" => &scheduler,
                _ => &clinician,
            };
            (token.clone(), vec![])
        };
        let (status, _, answer) = fhir_send(
            &app,
            reqwest::Method::POST,
            &format!("/{kind}"),
            &token,
            &example,
            &headers,
        )
        .await;
        assert!(status < 500, "{name}: {status} {answer}");
        if status != 201 {
            let issue = &answer["issue"][0];
            let reason = format!(
                "{} {}",
                issue["expression"][0].as_str().unwrap_or_default(),
                issue["diagnostics"].as_str().unwrap_or_default()
            );
            assert!(!reason.trim().is_empty(), "{name}: {answer}");
            refused.push((name, status, reason));
            continue;
        }
        // Assert: read back equal in the elements the service stores.
        let shown = answer["resourceType"].as_str().unwrap().to_owned();
        let (status, _, read) = fhir_get(
            &app,
            &format!("/{shown}/{}", answer["id"].as_str().unwrap()),
            Some(&token),
            &[],
        )
        .await;
        assert_eq!((status, &read), (200, &answer), "{name}");
        if kind == "Patient" {
            for element in ["gender", "birthDate"] {
                assert_eq!(read.get(element), example.get(element), "{name}: {element}");
            }
        } else if kind == "Coverage" {
            let member = example
                .get("subscriberId")
                .unwrap_or(&example["identifier"][0]["value"]);
            assert_eq!(&read["subscriberId"], member, "{name}: subscriberId");
            assert_eq!(read["period"], example["period"], "{name}: period");
        } else {
            assert_eq!(coding_of(&read), coding_of(&example), "{name}: code");
            for element in [
                "status",
                "onsetDateTime",
                "occurrenceDateTime",
                "lotNumber",
                "criticality",
            ] {
                if let Some(value) = read.get(element) {
                    let sent = &example[element];
                    let same = value == sent
                        || value
                            .as_str()
                            .zip(sent.as_str())
                            .is_some_and(|(v, s)| s.starts_with(v));
                    assert!(same, "{name}: {element} {value} vs {sent}");
                }
            }
        }
        *created.entry(kind.clone()).or_default() += 1;
    }
    println!("HL7 R4 examples created: {created:?}");
    for (name, status, reason) in &refused {
        println!("refused {name}: {status} {reason}");
    }
    // What is refused, and why (the README lists the rules): each a 422 naming the element.
    let expected_refusals = [
        // a partial date ("2004") where the service keeps days
        ("AllergyIntolerance-example.json", "onsetDateTime"),
        // bookings of services this service's scheduling does not offer (or none named)
        ("Appointment-2docs.json", "Appointment.serviceType"),
        ("Appointment-example.json", "Appointment.serviceType"),
        ("Appointment-examplereq.json", "Appointment.serviceType"),
        // problems coded in ICD-10 or SNOMED CT only; severities mild, moderate, severe
        ("Condition-example2.json", "Condition.code"),
        ("Condition-f003.json", "Condition.severity"),
        ("Condition-f203.json", "Condition.severity"),
        // directives the service does not hold (it holds a research opt-out and sharing with
        // an organization or with every clinician)
        (
            "Consent-consent-example-Emergency.json",
            "Consent.provision",
        ),
        ("Consent-consent-example-Out.json", "Consent.provision"),
        ("Consent-consent-example-basic.json", "Consent.provision"),
        ("Consent-consent-example-grantor.json", "Consent.provision"),
        (
            "Consent-consent-example-notAuthor.json",
            "Consent.provision",
        ),
        ("Consent-consent-example-notOrg.json", "Consent.provision"),
        ("Consent-consent-example-notThem.json", "Consent.provision"),
        ("Consent-consent-example-notThis.json", "Consent.provision"),
        ("Consent-consent-example-notTime.json", "Consent.provision"),
        ("Consent-consent-example-pkb.json", "Consent.provision"),
        (
            "Consent-consent-example-signature.json",
            "Consent.provision",
        ),
        (
            "Consent-consent-example-smartonfhir.json",
            "Consent.provision",
        ),
        // coverages with no start
        ("Coverage-7547E.json", "Coverage.period.start"),
        ("Coverage-SP1234.json", "Coverage.period.start"),
        // a document held elsewhere (by url) in a type the service cannot read
        (
            "DocumentReference-example.json",
            "DocumentReference.content[0].attachment.contentType",
        ),
        // vaccines coded in CVX only; the routes the service names
        ("Immunization-example.json", "Immunization.vaccineCode"),
        ("Immunization-historical.json", "Immunization.vaccineCode"),
        ("Immunization-protocol.json", "Immunization.route"),
        ("Immunization-subpotent.json", "Immunization.vaccineCode"),
        // a Medication held elsewhere, or with no code (a compound); periods in minutes;
        // routes outside the service's list; a timing by count of doses
        ("MedicationRequest-medrx002.json", "medicationReference"),
        ("MedicationRequest-medrx0315.json", "period_unit"),
        ("MedicationRequest-medrx0320.json", "dosage.route"),
        (
            "MedicationRequest-medrx0322.json",
            "medicationCodeableConcept",
        ),
        (
            "MedicationRequest-medrx0323.json",
            "medicationCodeableConcept",
        ),
        (
            "MedicationRequest-medrx0329.json",
            "medicationCodeableConcept",
        ),
        ("MedicationRequest-medrx0332.json", "dosage.route"),
        ("MedicationRequest-medrx0335.json", "repeat.count"),
        (
            "MedicationRequest-medrx0336.json",
            "medicationCodeableConcept",
        ),
        (
            "MedicationRequest-medrx0337.json",
            "medicationCodeableConcept",
        ),
        (
            "MedicationRequest-medrx0338.json",
            "medicationCodeableConcept",
        ),
        // created as entered-in-error: a mistake is marked on an item, never created as one
        ("MedicationStatement-example005.json", "status"),
        // a code system that is not an absolute URI; a decimal of more than 18 digits; a
        // coding without its system; created as entered-in-error
        ("Observation-656.json", "Observation.code.system"),
        (
            "Observation-decimal.json",
            "component[3].valueQuantity.value",
        ),
        (
            "Observation-example-genetics-2.json",
            "component[1].valueCodeableConcept.system",
        ),
        ("Observation-f202.json", "Observation.status"),
        // a registration needs a family name and a gender; phones in E.164; countries in
        // ISO 3166-1 alpha-2; every identifier a value; marital status in HL7 v3's codes
        ("Patient-animal.json", "name.family"),
        ("Patient-ch-example.json", "name.family"),
        ("Patient-example.json", "Patient.telecom"),
        ("Patient-f001.json", "identifier[1].value"),
        ("Patient-f201.json", "Patient.maritalStatus"),
        ("Patient-genetics-example1.json", "Patient.telecom"),
        ("Patient-ihe-pcd.json", "Patient.gender"),
        ("Patient-infant-fetal.json", "Patient.name"),
        ("Patient-mom.json", "Patient.telecom"),
        ("Patient-newborn.json", "Patient.name"),
        ("Patient-proband.json", "Patient.name"),
        ("Patient-xds.json", "country"),
        // a procedure known only by its narrative
        ("Procedure-appendectomy-narrative.json", "Procedure.code"),
    ];
    let names: Vec<&str> = refused.iter().map(|(n, _, _)| n.as_str()).collect();
    let expected: Vec<&str> = expected_refusals.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, expected);
    for ((name, status, reason), (_, element)) in refused.iter().zip(expected_refusals) {
        assert_eq!(*status, 422, "{name}");
        assert!(reason.contains(element), "{name}: {reason}");
    }
    let created_expected = [
        ("AllergyIntolerance", 5),
        ("Condition", 9),
        ("Coverage", 2),
        ("Encounter", 10),
        ("Immunization", 1),
        ("MedicationRequest", 29),
        ("MedicationStatement", 6),
        ("Observation", 60),
        ("Patient", 10),
        ("Procedure", 15),
    ];
    let created: Vec<(&str, usize)> = created.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(created, created_expected);
    app.stop().await;
}

#[tokio::test]
async fn a_fhir_client_library_searches_pages_reads_creates_updates_and_sends_a_transaction() {
    // Arrange: three patients of one family, one in a clinician's care.
    let app = TestApp::without_kafka().await;
    for n in 0..3 {
        app.register_person(9700 + n, Some("Kitclient")).await;
    }
    let patient = crate::medical_records::patient_in_care(&app, 9710).await;
    let token = crate::medical_records::clinician(&app);
    let registrar = app.token("registrar-kit", &["registrar"]);
    let deadline = std::time::Instant::now() + crate::helpers::DEADLINE;
    while fhir_get(&app, "/Patient?family=kitclient", Some(&registrar), &[])
        .await
        .2["total"]
        != 3
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the search model did not catch up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let dir = std::env::var("FHIR_NODE_DIR").expect("FHIR_NODE_DIR: run with scripts/test");

    // Act: fhir-kit-client (npm) against the running service: the registrar searches, the
    // clinician in care writes.
    let output = tokio::process::Command::new("node")
        .arg(format!("{dir}/client.mjs"))
        .args([
            &format!("{}/fhir/R4", app.address),
            &registrar,
            &token,
            "kitclient",
            &patient,
        ])
        .output()
        .await
        .unwrap();

    // Assert
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.trim()).unwrap();
    let pages = seen["pages"].as_array().unwrap();
    assert_eq!(
        (
            pages[0].as_array().unwrap().len(),
            pages[1].as_array().unwrap().len()
        ),
        (2, 1),
        "{seen}"
    );
    assert_eq!(seen["totals"], json!([3, 3]), "the total on every page");
    assert_eq!(seen["read"], patient.as_str());
    assert_eq!(seen["created"]["version"], "1");
    assert_eq!(
        seen["updated"],
        json!({ "version": "2", "criticality": "high" })
    );
    assert_eq!(seen["stale"], 412);
    assert_eq!(seen["staleOutcome"], "OperationOutcome");
    assert_eq!(
        seen["transaction"],
        json!({ "type": "transaction-response", "statuses": ["201 Created", "201 Created"],
                "types": ["Observation", "Condition"] })
    );
    app.stop().await;
}

#[tokio::test]
async fn observations_procedures_and_encounters_are_written_read_and_searched_as_fhir() {
    // Arrange
    let app = TestApp::without_kafka().await;
    let id = crate::medical_records::patient_in_care(&app, 9800).await;
    let token = crate::medical_records::clinician(&app);
    let subject = json!({ "reference": format!("Patient/{id}") });
    let glucose = json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory" }] }],
        "code": { "coding": [{ "system": "http://loinc.org", "code": "2339-0", "display": "Glucose [Mass/volume] in Blood" }] },
        "subject": subject,
        "effectiveDateTime": "2026-11-26T08:15:00+01:00",
        "valueQuantity": { "value": 6.3, "unit": "mmol/l", "system": "http://unitsofmeasure.org", "code": "mmol/L" },
        "interpretation": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "H", "display": "High" }] }],
        "referenceRange": [{ "low": { "value": 3.1, "unit": "mmol/l", "system": "http://unitsofmeasure.org", "code": "mmol/L" },
                             "high": { "value": 6.2, "unit": "mmol/l", "system": "http://unitsofmeasure.org", "code": "mmol/L" } }]
    });
    let pressure = json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs" }] }],
        "code": { "coding": [{ "system": "http://loinc.org", "code": "85354-9", "display": "Blood pressure panel" }] },
        "subject": subject,
        "effectiveDateTime": "2026-11-26",
        "component": [
            { "code": { "coding": [{ "system": "http://loinc.org", "code": "8480-6", "display": "Systolic" }] },
              "valueQuantity": { "value": 109, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]" } },
            { "code": { "coding": [{ "system": "http://loinc.org", "code": "8462-4", "display": "Diastolic" }] },
              "valueQuantity": { "value": 44, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]" } }
        ]
    });
    let procedure = json!({
        "resourceType": "Procedure",
        "status": "completed",
        "code": { "coding": [{ "system": "http://snomed.info/sct", "code": "80146002", "display": "Appendectomy" }] },
        "subject": subject,
        "performedPeriod": { "start": "2026-11-20T09:00:00Z", "end": "2026-11-20T10:10:00Z" }
    });
    let encounter = json!({
        "resourceType": "Encounter",
        "status": "finished",
        "class": { "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB" },
        "type": [{ "coding": [{ "system": "http://snomed.info/sct", "code": "185349003", "display": "Encounter for check up" }] }],
        "subject": subject,
        "period": { "start": "2026-11-26T08:00:00Z", "end": "2026-11-26T08:30:00Z" }
    });

    // Act
    let mut created = Vec::new();
    for resource in [&glucose, &pressure, &procedure, &encounter] {
        let kind = resource["resourceType"].as_str().unwrap();
        let (status, _, answer) = fhir_send(
            &app,
            reqwest::Method::POST,
            &format!("/{kind}"),
            &token,
            resource,
            &[],
        )
        .await;
        assert_eq!(status, 201, "{kind}: {answer}");
        created.push(answer);
    }

    // Assert: read back as sent, in what the service stores.
    let [glucose_read, pressure_read, procedure_read, encounter_read] = created.as_slice() else {
        unreachable!()
    };
    assert_eq!(glucose_read["valueQuantity"]["value"], 6.3);
    assert_eq!(glucose_read["valueQuantity"]["code"], "mmol/L");
    assert_eq!(glucose_read["effectiveDateTime"], "2026-11-26T07:15:00Z");
    assert_eq!(glucose_read["interpretation"][0]["coding"][0]["code"], "H");
    assert_eq!(glucose_read["referenceRange"][0]["high"]["value"], 6.2);
    assert_eq!(pressure_read["component"][1]["valueQuantity"]["value"], 44);
    assert_eq!(
        procedure_read["performedPeriod"]["end"],
        "2026-11-20T10:10:00Z"
    );
    assert_eq!(encounter_read["class"]["code"], "AMB");
    assert_eq!(encounter_read["period"]["start"], "2026-11-26T08:00:00Z");
    for resource in &created {
        let kind = resource["resourceType"].as_str().unwrap();
        let (status, _, read) = fhir_get(
            &app,
            &format!("/{kind}/{}", resource["id"].as_str().unwrap()),
            Some(&token),
            &[],
        )
        .await;
        assert_eq!((status, &read), (200, resource), "{kind}");
    }
    // Searched (the lists of entries follow the store within moments).
    let deadline = std::time::Instant::now() + crate::helpers::DEADLINE;
    loop {
        let (_, _, all) = fhir_get(
            &app,
            &format!("/Observation?patient={id}"),
            Some(&token),
            &[],
        )
        .await;
        if all["total"] == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{all}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for (query, expected) in [
        ("code=http://loinc.org|2339-0", 1),
        ("category=vital-signs", 1),
        ("status=final&date=ge2026-11-26", 2),
        ("date=lt2026-11-26", 0),
    ] {
        let (status, _, found) = fhir_get(
            &app,
            &format!("/Observation?patient={id}&{query}"),
            Some(&token),
            &[],
        )
        .await;
        assert_eq!(
            (status, &found["total"]),
            (200, &json!(expected)),
            "{query}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn patient_match_answers_graded_candidates_with_their_scores() {
    // Arrange: Ada registered; someone who looks like her arrives.
    let app = TestApp::without_kafka().await;
    let token = app.registrar();
    let registered = app.register(&ada()).await;
    assert_eq!(registered.status(), 201);
    let id = id_of(&registered.json().await.unwrap());
    let candidate = json!({
        "resourceType": "Patient",
        "name": [{ "family": "Lovelace-Fhir", "given": ["Augusta", "Ada"] }],
        "gender": "female",
        "birthDate": "1990-12-10",
        "telecom": [{ "system": "phone", "value": "+41 79 123 45 67" }]
    });
    let parameters = |extra: Value| {
        let mut parameters = json!({
            "resourceType": "Parameters",
            "parameter": [{ "name": "resource", "resource": candidate }]
        });
        if let Some(extra) = extra.as_object() {
            parameters["parameter"]
                .as_array_mut()
                .unwrap()
                .push(json!(extra));
        }
        parameters
    };

    // Act (the matcher's read model follows the registration within moments)
    let deadline = std::time::Instant::now() + crate::helpers::DEADLINE;
    let found = loop {
        let (status, _, found) = fhir_send(
            &app,
            reqwest::Method::POST,
            "/Patient/$match",
            &token,
            &parameters(Value::Null),
            &[],
        )
        .await;
        assert_eq!(status, 200, "{found}");
        if found["total"] != 0 {
            break found;
        }
        assert!(std::time::Instant::now() < deadline, "no candidate found");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };

    // Assert
    assert_eq!(found["type"], "searchset");
    let best = &found["entry"][0];
    assert_eq!(best["resource"]["id"], id.as_str());
    assert_eq!(best["search"]["mode"], "match");
    let score = best["search"]["score"].as_f64().unwrap();
    assert!(score > 0.9 && score <= 1.0, "{score}");
    assert_eq!(
        best["search"]["extension"][0]["url"],
        "http://hl7.org/fhir/StructureDefinition/match-grade"
    );
    assert_eq!(best["search"]["extension"][0]["valueCode"], "certain");
    let (_, _, certain) = fhir_send(
        &app,
        reqwest::Method::POST,
        "/Patient/$match",
        &token,
        &parameters(json!({ "name": "onlyCertainMatches", "valueBoolean": true })),
        &[],
    )
    .await;
    assert_eq!(certain["total"], 1);
    let (status, _, outcome) = fhir_send(
        &app,
        reqwest::Method::POST,
        "/Patient/$match",
        &token,
        &json!({ "resourceType": "Parameters", "parameter": [{ "name": "count", "valueInteger": 0 }] }),
        &[],
    )
    .await;
    assert_eq!(status, 400, "{outcome}");
    let expressions: Vec<&str> = outcome["issue"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["expression"][0].as_str())
        .collect();
    assert_eq!(
        expressions,
        [
            "Parameters.parameter.resource",
            "Parameters.parameter.count"
        ]
    );
    app.stop().await;
}

#[tokio::test]
async fn a_patients_coverages_read_as_fhir_coverage() {
    let app = TestApp::without_kafka().await;
    let id = id_of(&app.register_person(9900, None).await);
    let added = app
        .command(
            &id,
            "coverages",
            1,
            &json!({ "payer": "Helsana", "plan": "Basic", "member_id": "80756-01", "group": "G-7",
                     "relationship": "self", "start": "2026-01-01", "priority": "primary" }),
        )
        .await;
    assert_eq!(added.status(), 200, "{:?}", added.text().await);
    let token = app.registrar();

    let (status, _, found) = fhir_get(
        &app,
        &format!("/Coverage?patient=Patient/{id}"),
        Some(&token),
        &[],
    )
    .await;

    assert_eq!(status, 200);
    assert_eq!(found["total"], 1);
    let coverage = &found["entry"][0]["resource"];
    assert_eq!(coverage["status"], "active");
    assert_eq!(coverage["subscriberId"], "80756-01");
    assert_eq!(coverage["payor"][0]["display"], "Helsana");
    assert_eq!(
        coverage["beneficiary"]["reference"],
        format!("Patient/{id}")
    );
    assert_eq!(coverage["order"], 1);
    let (status, _, read) = fhir_get(
        &app,
        &format!("/Coverage/{}", coverage["id"].as_str().unwrap()),
        Some(&token),
        &[],
    )
    .await;
    assert_eq!((status, &read), (200, coverage));
    let (status, _, outcome) = fhir_get(&app, "/Coverage", Some(&token), &[]).await;
    assert_eq!(status, 400);
    assert_eq!(issues(&outcome)[0].1, "patient");
    app.stop().await;
}

#[tokio::test]
async fn the_consent_directives_in_force_read_as_fhir_consents() {
    let app = TestApp::without_kafka().await;
    let id = id_of(&app.register_person(9950, None).await);
    for (version, directive) in [
        (1, json!({ "kind": "research-opt-out" })),
        (2, json!({ "kind": "share-with-role", "role": "clinician" })),
    ] {
        let granted = app
            .command(&id, "consents", version, &json!({ "directive": directive }))
            .await;
        assert_eq!(granted.status(), 200, "{:?}", granted.text().await);
    }
    let token = app.registrar();

    let (status, _, found) =
        fhir_get(&app, &format!("/Consent?patient={id}"), Some(&token), &[]).await;

    assert_eq!(status, 200, "{found}");
    assert_eq!(found["total"], 2);
    let provisions: Vec<&str> = found["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["provision"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(provisions, ["deny", "permit"]);
    let consent = &found["entry"][0]["resource"];
    assert_eq!(consent["scope"]["coding"][0]["code"], "research");
    let (status, _, read) = fhir_get(
        &app,
        &format!("/Consent/{}", consent["id"].as_str().unwrap()),
        Some(&token),
        &[],
    )
    .await;
    assert_eq!((status, &read), (200, consent));
    app.stop().await;
}

#[tokio::test]
async fn consents_are_granted_by_fhir_create_and_withdrawn_by_update_and_they_govern_access() {
    // Arrange: a patient; a registrar of hospital B, which may not read them yet.
    let app = TestApp::spawn_with(crate::helpers::AppOptions {
        kafka: false,
        organization: Some("general-hospital".into()),
        ..crate::helpers::AppOptions::default()
    })
    .await;
    let id = id_of(&app.register_person(9955, None).await);
    let own = app.patient_token(&id);
    let partner = app.token_with(
        "partner-1",
        &["registrar"],
        &command_api::auth::TokenExtras {
            organization: Some("hospital-b".into()),
            ..Default::default()
        },
    );
    let partner_reads = || async {
        fhir_get(&app, &format!("/Patient/{id}"), Some(&partner), &[])
            .await
            .0
    };
    assert_eq!(partner_reads().await, 403);
    let sharing = json!({
        "resourceType": "Consent",
        "status": "active",
        "scope": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy" }] },
        "category": [{ "coding": [{ "system": "http://loinc.org", "code": "59284-0" }] }],
        "patient": { "reference": format!("Patient/{id}") },
        "policyRule": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN" }] },
        "provision": { "type": "permit", "actor": [{
            "role": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP" }] },
            "reference": { "reference": "Organization/hospital-b" }
        }] }
    });

    // Act: the patient grants sharing with hospital B.
    let (status, headers, granted) =
        fhir_send(&app, reqwest::Method::POST, "/Consent", &own, &sharing, &[]).await;

    // Assert
    assert_eq!(status, 201, "{granted}");
    assert_eq!(
        granted["provision"]["actor"][0]["reference"]["reference"],
        "Organization/hospital-b"
    );
    assert_eq!(granted["meta"]["versionId"], "2");
    assert_eq!(headers["etag"], "W/\"2\"");
    let native: Value = app
        .get(&format!("/v1/patients/{id}"), &app.registrar())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        native["consents"][0]["directive"],
        json!({ "kind": "share-with-organization", "organization": "hospital-b" }),
        "{native}"
    );
    assert_eq!(
        partner_reads().await,
        200,
        "the consent lets hospital B read"
    );
    // The same directive twice, and one the service does not hold, are refused.
    let (status, _, _) =
        fhir_send(&app, reqwest::Method::POST, "/Consent", &own, &sharing, &[]).await;
    assert_eq!(status, 409);
    let mut unheld = sharing.clone();
    unheld["provision"] = json!({ "type": "permit", "actor": [{ "role": { "text": "friend" },
        "reference": { "reference": "RelatedPerson/x" } }] });
    let (status, _, refused) =
        fhir_send(&app, reqwest::Method::POST, "/Consent", &own, &unheld, &[]).await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(issues(&refused)[0].1, "Consent.provision");

    // Act: withdrawn by an update to inactive.
    let path = format!("/Consent/{}", granted["id"].as_str().unwrap());
    let mut withdrawn = granted.clone();
    withdrawn["status"] = json!("inactive");
    let (status, _, answer) = fhir_send(
        &app,
        reqwest::Method::PUT,
        &path,
        &own,
        &withdrawn,
        &[("if-match", "W/\"2\""), ("x-change-reason", "moved back")],
    )
    .await;

    // Assert: no longer in force.
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "inactive");
    assert_eq!(answer["meta"]["versionId"], "3");
    let (status, _, _) = fhir_get(&app, &path, Some(&own), &[]).await;
    assert_eq!(status, 404);
    let (_, _, found) = fhir_get(&app, &format!("/Consent?patient={id}"), Some(&own), &[]).await;
    assert_eq!(found["total"], 0);
    assert_eq!(
        partner_reads().await,
        403,
        "withdrawn, hospital B may not read"
    );
    // A clinician manages no consents.
    let clinician = app.token("clinician-1", &["clinician"]);
    let (status, _, _) = fhir_send(
        &app,
        reqwest::Method::POST,
        "/Consent",
        &clinician,
        &sharing,
        &[],
    )
    .await;
    assert_eq!(status, 403);
    app.stop().await;
}

#[tokio::test]
async fn reads_of_a_patient_are_audit_events_and_changes_to_them_provenances() {
    // Arrange: a registration, a change, and a read of the record by someone.
    let app = TestApp::without_kafka().await;
    let id = id_of(&app.register_person(9960, None).await);
    let changed = app
        .command(&id, "archive", 1, &json!({ "reason": "moved abroad" }))
        .await;
    assert_eq!(changed.status(), 200);
    let reader = app.token("registrar-audit", &["registrar"]);
    let (status, _, _) = fhir_get(&app, &format!("/Patient/{id}"), Some(&reader), &[]).await;
    assert_eq!(status, 200);

    // Act + assert: the patient sees the read as an AuditEvent.
    let own = app.patient_token(&id);
    let deadline = std::time::Instant::now() + crate::helpers::DEADLINE;
    let events = loop {
        let (status, _, events) =
            fhir_get(&app, &format!("/AuditEvent?patient={id}"), Some(&own), &[]).await;
        assert_eq!(status, 200, "{events}");
        let by_reader = events["entry"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["resource"]["agent"][0]["who"]["display"] == "registrar-audit");
        if by_reader {
            break events;
        }
        assert!(std::time::Instant::now() < deadline, "{events}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let read = events["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .find(|r| r["agent"][0]["who"]["display"] == "registrar-audit")
        .unwrap();
    assert_eq!(read["action"], "R");
    assert_eq!(read["outcome"], "0");
    assert_eq!(
        read["entity"][0]["what"]["reference"],
        format!("Patient/{id}")
    );

    // An auditor sees who made each version.
    let auditor = app.token("auditor-1", &["auditor"]);
    let (status, _, provenances) = fhir_get(
        &app,
        &format!("/Provenance?target=Patient/{id}"),
        Some(&auditor),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{provenances}");
    let activities: Vec<(&str, &str)> = provenances["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["resource"]["activity"]["coding"][0]["code"]
                    .as_str()
                    .unwrap(),
                e["resource"]["activity"]["text"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        activities,
        [
            ("CREATE", "PatientRegistered"),
            ("UPDATE", "PatientArchived")
        ]
    );
    assert_eq!(
        provenances["entry"][1]["resource"]["target"][0]["reference"],
        format!("Patient/{id}/_history/2")
    );
    // The patient may not read the audit trail itself.
    let (status, _, _) = fhir_get(
        &app,
        &format!("/Provenance?target=Patient/{id}"),
        Some(&own),
        &[],
    )
    .await;
    assert_eq!(status, 403);
    app.stop().await;
}

#[tokio::test]
async fn a_batch_runs_each_entry_on_its_own() {
    let app = TestApp::without_kafka().await;
    let id = crate::medical_records::patient_in_care(&app, 9970).await;
    let token = crate::medical_records::clinician(&app);
    let allergy = json!({
        "resourceType": "AllergyIntolerance",
        "clinicalStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active" }] },
        "code": { "text": "Latex" },
        "patient": { "reference": format!("Patient/{id}") }
    });
    let batch = json!({
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            { "resource": allergy, "request": { "method": "POST", "url": "AllergyIntolerance" } },
            { "resource": { "resourceType": "AllergyIntolerance", "patient": { "reference": format!("Patient/{id}") } },
              "request": { "method": "POST", "url": "AllergyIntolerance" } },
            { "request": { "method": "GET", "url": format!("Patient/{id}") } },
            { "request": { "method": "GET", "url": format!("AllergyIntolerance?patient={id}") } }
        ]
    });

    let (status, _, answer) = fhir_send(&app, reqwest::Method::POST, "", &token, &batch, &[]).await;

    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["type"], "batch-response");
    let statuses: Vec<&str> = answer["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            "201 Created",
            "422 Unprocessable Entity",
            "200 OK",
            "200 OK"
        ]
    );
    assert_eq!(answer["entry"][0]["resource"]["code"]["text"], "Latex");
    assert!(answer["entry"][0]["response"]["location"]
        .as_str()
        .unwrap()
        .contains("/AllergyIntolerance/"));
    assert_eq!(
        answer["entry"][1]["response"]["outcome"]["resourceType"],
        "OperationOutcome"
    );
    assert_eq!(answer["entry"][2]["resource"]["id"], id.as_str());
    assert_eq!(
        answer["entry"][3]["resource"]["total"], 1,
        "the first entry's write is seen"
    );
    app.stop().await;
}

#[tokio::test]
async fn documents_read_as_fhir_document_references_with_their_bytes_as_binary() {
    use base64::Engine as _;
    // Arrange: a letter uploaded through the native API.
    let app = TestApp::without_kafka().await;
    let id = crate::medical_records::patient_in_care(&app, 9980).await;
    let token = crate::medical_records::clinician(&app);
    let letter = b"Discharge letter: seen and well.";
    let (status, uploaded) =
        crate::medical_records::upload(&app, &token, &id, "Discharge letter", "text/plain", letter)
            .await;
    assert_eq!(status, 201, "{uploaded}");

    // Act
    let (status, _, found) = fhir_get(
        &app,
        &format!("/DocumentReference?patient={id}"),
        Some(&token),
        &[],
    )
    .await;

    // Assert: the reference, and its bytes through the attachment's url.
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["total"], 1);
    let reference = &found["entry"][0]["resource"];
    assert_eq!(reference["status"], "current");
    assert_eq!(reference["description"], "Discharge letter");
    let attachment = &reference["content"][0]["attachment"];
    assert_eq!(attachment["contentType"], "text/plain");
    assert_eq!(attachment["size"], letter.len());
    let url = attachment["url"].as_str().unwrap();
    let (status, _, binary) = fhir_get(&app, &format!("/{url}"), Some(&token), &[]).await;
    assert_eq!(status, 200, "{binary}");
    let data = base64::engine::general_purpose::STANDARD
        .decode(binary["data"].as_str().unwrap())
        .unwrap();
    assert_eq!(data, letter);
    // A copy naming its bytes by url only is refused: the service stores the bytes.
    let mut copy = reference.clone();
    copy.as_object_mut().unwrap().remove("id");
    let (status, _, refused) = fhir_send(
        &app,
        reqwest::Method::POST,
        "/DocumentReference",
        &token,
        &copy,
        &[],
    )
    .await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(
        issues(&refused)[0].1,
        "DocumentReference.content[0].attachment.data"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_document_reference_is_created_with_its_bytes_and_revised_by_update() {
    use base64::Engine as _;
    // Arrange
    let app = TestApp::without_kafka().await;
    let id = crate::medical_records::patient_in_care(&app, 9985).await;
    let token = crate::medical_records::clinician(&app);
    let letter = b"Referral letter: chest pain on exertion, please assess.";
    let encoded = base64::engine::general_purpose::STANDARD.encode(letter);
    let document = json!({
        "resourceType": "DocumentReference",
        "status": "current",
        "type": { "coding": [{ "system": "http://loinc.org", "code": "57133-1", "display": "Referral note" }] },
        "subject": { "reference": format!("Patient/{id}") },
        "description": "Referral to cardiology",
        "content": [{ "attachment": { "contentType": "text/plain", "data": encoded, "creation": "2026-11-25" } }]
    });

    // Act
    let (status, _, created) = fhir_send(
        &app,
        reqwest::Method::POST,
        "/DocumentReference",
        &token,
        &document,
        &[],
    )
    .await;

    // Assert: stored as the native upload stores it; the bytes read back as a Binary.
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["description"], "Referral to cardiology");
    assert_eq!(created["type"]["coding"][0]["code"], "57133-1");
    assert_eq!(created["content"][0]["attachment"]["size"], letter.len());
    assert_eq!(
        created["content"][0]["attachment"]["creation"],
        "2026-11-25"
    );
    let doc_id = created["id"].as_str().unwrap();
    let (status, _, binary) = fhir_get(&app, &format!("/Binary/{doc_id}"), Some(&token), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(binary["data"], encoded.as_str());
    crate::helpers::eventually("the document's text found by full-text search", || async {
        let found: Value = app
            .get(
                &format!("/v1/patients/{id}/medical-record/search?q=exertion"),
                &token,
            )
            .await
            .json()
            .await
            .unwrap();
        found.to_string().contains("Referral to cardiology")
    })
    .await;

    // Act: retitled; then its bytes changed.
    let path = format!("/DocumentReference/{doc_id}");
    let mut retitled = created.clone();
    retitled["description"] = json!("Referral to cardiology (urgent)");
    let (status, _, revised) = fhir_send(
        &app,
        reqwest::Method::PUT,
        &path,
        &token,
        &retitled,
        &[
            ("if-match", "W/\"1\""),
            ("x-change-reason", "marked urgent"),
        ],
    )
    .await;
    let mut other_bytes = revised.clone();
    other_bytes["content"][0]["attachment"]["data"] =
        json!(base64::engine::general_purpose::STANDARD.encode(b"something else"));
    let (refused, _, outcome) = fhir_send(
        &app,
        reqwest::Method::PUT,
        &path,
        &token,
        &other_bytes,
        &[("if-match", "W/\"2\"")],
    )
    .await;

    // Assert
    assert_eq!(status, 200, "{revised}");
    assert_eq!(revised["description"], "Referral to cardiology (urgent)");
    assert_eq!(revised["meta"]["versionId"], "2");
    assert_eq!(revised["content"][0]["attachment"]["size"], letter.len());
    assert_eq!(refused, 422, "{outcome}");
    assert_eq!(
        issues(&outcome)[0].1,
        "DocumentReference.content[0].attachment.data"
    );
    // Bytes of a type the service does not read are refused, naming the element.
    let mut unreadable = document.clone();
    unreadable["content"][0]["attachment"]["contentType"] = json!("application/x-msdownload");
    let (status, _, outcome) = fhir_send(
        &app,
        reqwest::Method::POST,
        "/DocumentReference",
        &token,
        &unreadable,
        &[],
    )
    .await;
    assert_eq!(status, 422, "{outcome}");
    assert_eq!(
        issues(&outcome)[0].1,
        "DocumentReference.content[0].attachment.contentType"
    );
    app.stop().await;
}

/// How many events of the patient's data are stored (access entries left out).
async fn data_events(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type <> 'Access'")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// The statuses of a transaction or batch response's entries.
fn statuses(answer: &Value) -> Vec<String> {
    answer["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_transaction_stores_every_entry_or_none() {
    // Arrange
    let app = TestApp::without_kafka().await;
    let id = crate::medical_records::patient_in_care(&app, 9990).await;
    let token = crate::medical_records::clinician(&app);
    let patient = json!({ "reference": format!("Patient/{id}") });
    let allergy = json!({
        "resourceType": "AllergyIntolerance",
        "clinicalStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active" }] },
        "code": { "coding": [{ "system": "http://snomed.info/sct", "code": "764146007", "display": "Penicillin" }] },
        "patient": patient
    });
    let observation = json!({
        "resourceType": "Observation",
        "status": "final",
        "code": { "coding": [{ "system": "http://loinc.org", "code": "8867-4", "display": "Heart rate" }] },
        "subject": patient,
        "effectiveDateTime": "2026-11-26T09:30:00Z",
        "valueQuantity": { "value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min" }
    });
    let condition = json!({
        "resourceType": "Condition",
        "clinicalStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active" }] },
        "code": { "coding": [{ "system": "http://snomed.info/sct", "code": "38341003", "display": "Hypertension" }] },
        "subject": patient
    });
    let medication = |drug: &str, code: &str| {
        json!({
            "resourceType": "MedicationStatement",
            "status": "active",
            "medicationCodeableConcept": { "coding": [{ "system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": code, "display": drug }] },
            "subject": patient
        })
    };
    let entry = |resource: &Value, url: &str| {
        json!({ "fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()), "resource": resource,
                "request": { "method": "POST", "url": url } })
    };
    let mut broken = observation.clone();
    broken.as_object_mut().unwrap().remove("code");
    let failing = json!({ "resourceType": "Bundle", "type": "transaction", "entry": [
        entry(&allergy, "AllergyIntolerance"),
        entry(&broken, "Observation"),
        entry(&condition, "Condition"),
    ] });
    let before = data_events(&app).await;

    // Act: one entry is invalid.
    let (status, _, refused) =
        fhir_send(&app, reqwest::Method::POST, "", &token, &failing, &[]).await;

    // Assert: refused, the entry named, and nothing stored.
    assert_eq!(status, 422, "{refused}");
    assert!(
        issues(&refused)
            .iter()
            .any(|(_, at)| at == "Bundle.entry[1].resource.code"),
        "{refused}"
    );
    assert_eq!(
        data_events(&app).await,
        before,
        "the allergy before it was not stored"
    );

    // Act: every entry valid, and a read after the writes.
    let transaction = json!({ "resourceType": "Bundle", "type": "transaction", "entry": [
        entry(&allergy, "AllergyIntolerance"),
        entry(&observation, "Observation"),
        entry(&condition, "Condition"),
        { "request": { "method": "GET", "url": format!("Patient/{id}") } },
    ] });
    let (status, _, answer) =
        fhir_send(&app, reqwest::Method::POST, "", &token, &transaction, &[]).await;

    // Assert: all stored, in one commit, each readable where its Location says.
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["type"], "transaction-response");
    assert_eq!(
        statuses(&answer),
        ["201 Created", "201 Created", "201 Created", "200 OK"]
    );
    assert_eq!(data_events(&app).await, before + 3);
    for (i, resource_type) in ["AllergyIntolerance", "Observation", "Condition"]
        .iter()
        .enumerate()
    {
        let location = answer["entry"][i]["response"]["location"].as_str().unwrap();
        let path = location.split("/fhir/R4").nth(1).unwrap();
        let (status, _, read) = fhir_get(&app, path, Some(&token), &[]).await;
        assert_eq!(status, 200, "{path}: {read}");
        assert_eq!(read["resourceType"], *resource_type);
    }

    // Act: a medication against the allergy the same transaction records, unacknowledged.
    let against = json!({ "resourceType": "Bundle", "type": "transaction", "entry": [
        entry(&json!({
            "resourceType": "AllergyIntolerance",
            "clinicalStatus": allergy["clinicalStatus"],
            "code": { "coding": [{ "system": "http://snomed.info/sct", "code": "387207008", "display": "Ibuprofen" }] },
            "patient": patient
        }), "AllergyIntolerance"),
        entry(&medication("Ibuprofen", "5640"), "MedicationStatement"),
    ] });
    let (status, _, warned) =
        fhir_send(&app, reqwest::Method::POST, "", &token, &against, &[]).await;

    // Assert: the second entry's check saw the first entry's allergy; nothing stored.
    assert_eq!(status, 409, "{warned}");
    assert_eq!(warned["issue"][0]["code"], "business-rule", "{warned}");
    assert_eq!(data_events(&app).await, before + 3);
    app.stop().await;
}

#[tokio::test]
async fn a_transaction_registers_a_patient_with_a_coverage_resolving_urn_uuid_references() {
    use crate::helpers::{assert_matches_schema, consume_until, consumer_for, key, published};
    // Arrange: the coverage comes first and names the patient by the patient's fullUrl.
    let app = TestApp::spawn().await;
    let token = app.registrar();
    let patient_url = format!("urn:uuid:{}", uuid::Uuid::new_v4());
    let patient = json!({
        "resourceType": "Patient",
        "name": [{ "use": "official", "family": "Transact", "given": ["Tilda"] }],
        "gender": "female",
        "birthDate": "1984-03-02",
        "identifier": [{ "system": "urn:example:hospital-a", "value": "TX-1" }]
    });
    let coverage = json!({
        "resourceType": "Coverage",
        "status": "active",
        "beneficiary": { "reference": patient_url },
        "payor": [{ "display": "Helvetia Health" }],
        "subscriberId": "HH-884",
        "relationship": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/subscriber-relationship", "code": "self" }] },
        "period": { "start": "2026-01-01" },
        "class": [{ "type": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/coverage-class", "code": "plan" }] }, "value": "Basic" }],
        "order": 1
    });
    let bundle = |coverage: &Value| {
        json!({ "resourceType": "Bundle", "type": "transaction", "entry": [
        { "fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()), "resource": coverage,
          "request": { "method": "POST", "url": "Coverage" } },
        { "fullUrl": patient_url, "resource": patient, "request": { "method": "POST", "url": "Patient" } },
    ] })
    };
    let mut bad_coverage = coverage.clone();
    bad_coverage["period"]["start"] = json!("not a date");
    let before = data_events(&app).await;

    // Act: the coverage is invalid.
    let (status, _, refused) = fhir_send(
        &app,
        reqwest::Method::POST,
        "",
        &token,
        &bundle(&bad_coverage),
        &[],
    )
    .await;

    // Assert: nobody registered.
    assert_eq!(status, 422, "{refused}");
    assert!(
        issues(&refused)
            .iter()
            .any(|(_, at)| at == "Bundle.entry[0].resource.period.start"),
        "{refused}"
    );
    assert_eq!(data_events(&app).await, before);

    // Act
    let (status, _, answer) = fhir_send(
        &app,
        reqwest::Method::POST,
        "",
        &token,
        &bundle(&coverage),
        &[],
    )
    .await;

    // Assert: the patient, then the coverage naming the patient's new id.
    assert_eq!(status, 200, "{answer}");
    assert_eq!(statuses(&answer), ["201 Created", "201 Created"]);
    let registered = answer["entry"][1]["resource"]["id"].as_str().unwrap();
    assert_eq!(
        answer["entry"][0]["resource"]["beneficiary"]["reference"],
        format!("Patient/{registered}")
    );
    assert_eq!(
        data_events(&app).await,
        before + 2,
        "a registration and a coverage"
    );
    let (status, _, covered) = fhir_get(
        &app,
        &format!("/Coverage?patient={registered}"),
        Some(&token),
        &[],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(covered["total"], 1);
    assert_eq!(covered["entry"][0]["resource"]["subscriberId"], "HH-884");
    assert_eq!(
        covered["entry"][0]["resource"]["class"][0]["value"],
        "Basic"
    );

    // A reference to no entry, and a booking, are refused before anything runs.
    let mut dangling = bundle(&coverage);
    dangling["entry"][0]["resource"]["beneficiary"]["reference"] =
        json!(format!("urn:uuid:{}", uuid::Uuid::new_v4()));
    dangling["entry"].as_array_mut().unwrap().truncate(1);
    let (status, _, refused) =
        fhir_send(&app, reqwest::Method::POST, "", &token, &dangling, &[]).await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(issues(&refused)[0].1, "Bundle.entry[0].resource");
    let booking = json!({ "resourceType": "Bundle", "type": "transaction", "entry": [
        { "resource": { "resourceType": "Appointment", "status": "booked", "participant": [] },
          "request": { "method": "POST", "url": "Appointment" } },
    ] });
    let (status, _, refused) =
        fhir_send(&app, reqwest::Method::POST, "", &token, &booking, &[]).await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(
        issues(&refused)[0],
        (
            "not-supported".to_owned(),
            "Bundle.entry[0].request.url".to_owned()
        )
    );
    assert_eq!(data_events(&app).await, before + 2);

    // The transaction's events are the native ones, on the native topic, in order.
    let topic = format!(
        "{}{}",
        app.settings.kafka.topic_prefix,
        schemas::topics::PATIENT
    );
    let consumer = consumer_for(app.settings.kafka.brokers.as_deref().unwrap(), &topic);
    let records = consume_until(&consumer, |r| {
        r.iter().filter(|r| key(r) == registered).count() >= 2
    })
    .await;
    let mut types = Vec::new();
    for record in records.iter().filter(|r| key(r) == registered) {
        let event_type = published(record).event_type;
        assert_matches_schema(&event_type, &app.open(record).await);
        types.push(event_type);
    }
    assert_eq!(types, ["PatientRegistered", "CoverageAdded"]);
    app.stop().await;
}

#[tokio::test]
async fn a_coverage_is_created_and_updated_with_if_match_on_the_patient_record() {
    // Arrange
    let app = TestApp::without_kafka().await;
    let id = id_of(&app.register_person(9995, None).await);
    let token = app.registrar();
    let coverage = json!({
        "resourceType": "Coverage",
        "status": "active",
        "beneficiary": { "reference": format!("Patient/{id}") },
        "payor": [{ "display": "Helvetia Health" }],
        "subscriberId": "HH-1",
        "period": { "start": "2026-01-01" }
    });

    // Act
    let (status, headers, created) = fhir_send(
        &app,
        reqwest::Method::POST,
        "/Coverage",
        &token,
        &coverage,
        &[],
    )
    .await;

    // Assert: the record's version is the coverage's.
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["meta"]["versionId"], "2");
    assert_eq!(headers["etag"], "W/\"2\"");
    assert_eq!(created["order"], 1);

    // Act: update it, then again with the old version.
    let path = format!("/Coverage/{}", created["id"].as_str().unwrap());
    let mut changed = created.clone();
    changed["subscriberId"] = json!("HH-2");
    changed["period"]["end"] = json!("2026-12-31");
    let (status, _, updated) = fhir_send(
        &app,
        reqwest::Method::PUT,
        &path,
        &token,
        &changed,
        &[("if-match", "W/\"2\"")],
    )
    .await;
    let (stale, _, outcome) = fhir_send(
        &app,
        reqwest::Method::PUT,
        &path,
        &token,
        &changed,
        &[("if-match", "W/\"2\"")],
    )
    .await;

    // Assert
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["subscriberId"], "HH-2");
    assert_eq!(updated["period"]["end"], "2026-12-31");
    assert_eq!(updated["meta"]["versionId"], "3");
    assert_eq!(stale, 412, "{outcome}");
    let (_, headers, read) = fhir_get(&app, &path, Some(&token), &[]).await;
    assert_eq!(read["subscriberId"], "HH-2");
    assert_eq!(headers["etag"], "W/\"3\"");
    // A clinician may not write coverages.
    let clinician = app.token("clinician-1", &["clinician"]);
    let (status, _, _) = fhir_send(
        &app,
        reqwest::Method::POST,
        "/Coverage",
        &clinician,
        &coverage,
        &[],
    )
    .await;
    assert_eq!(status, 403);
    app.stop().await;
}

#[tokio::test]
async fn a_patient_is_updated_with_if_match_as_one_unit_of_the_native_commands() {
    // Arrange: Ada, with a national identifier shown masked and a second identifier.
    let app = TestApp::without_kafka().await;
    let mut body = ada();
    body["identifiers"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "system": "urn:example:hospital-a", "value": "A-77" }));
    let registered = app.register(&body).await;
    assert_eq!(registered.status(), 201);
    let id = id_of(&registered.json().await.unwrap());
    let token = app.registrar();
    let path = format!("/Patient/{id}");
    let (_, _, shown) = fhir_get(&app, &path, Some(&token), &[]).await;
    assert_eq!(shown["meta"]["versionId"], "1");
    let mut changed = shown.clone();
    changed["name"][0]["family"] = json!("King");
    changed["telecom"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "system": "phone", "value": "+41 44 123 45 67", "use": "work" }));
    // The masked national identifier stays as shown; hospital A's goes.
    changed["identifier"]
        .as_array_mut()
        .unwrap()
        .retain(|i| i["system"] != "urn:example:hospital-a");
    changed["contact"] = json!([{ "relationship": [{ "text": "friend" }],
        "name": { "family": "Somerville", "given": ["Mary"] },
        "telecom": [{ "system": "phone", "value": "+44 20 7946 0000" }] }]);

    // Act
    let (status, headers, updated) = fhir_send(
        &app,
        reqwest::Method::PUT,
        &path,
        &token,
        &changed,
        &[
            ("if-match", "W/\"1\""),
            ("x-change-reason", "married; new work phone"),
        ],
    )
    .await;

    // Assert: four commands (demographics, contact, identifier, emergency contact), one answer.
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["meta"]["versionId"], "5");
    assert_eq!(headers["etag"], "W/\"5\"");
    assert_eq!(updated["contact"][0]["name"]["family"], "Somerville");
    assert_eq!(updated["contact"][0]["relationship"][0]["text"], "friend");
    assert_eq!(updated["name"][0]["family"], "King");
    assert_eq!(updated["telecom"].as_array().unwrap().len(), 3);
    let systems: Vec<&str> = updated["identifier"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["system"].as_str().unwrap())
        .collect();
    assert_eq!(
        systems,
        ["urn:patient-service:mrn", "urn:oid:2.16.840.1.113883.4.1"]
    );
    let native: Value = app
        .get(&format!("/v1/patients/{id}"), &token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        native["identifiers"].as_array().unwrap().len(),
        1,
        "{native}"
    );
    let (_, _, history) = fhir_get(&app, &format!("{path}/_history"), Some(&token), &[]).await;
    assert_eq!(history["total"], 5);

    // Stale, unchanged, and what changes through other commands.
    let (status, _, _) = fhir_send(
        &app,
        reqwest::Method::PUT,
        &path,
        &token,
        &changed,
        &[("if-match", "W/\"1\"")],
    )
    .await;
    assert_eq!(status, 412);
    let (status, _, same) = fhir_send(
        &app,
        reqwest::Method::PUT,
        &path,
        &token,
        &updated,
        &[("if-match", "W/\"5\"")],
    )
    .await;
    assert_eq!(status, 200, "{same}");
    assert_eq!(
        same["meta"]["versionId"], "5",
        "nothing to change, nothing stored"
    );
    let mut archived = updated.clone();
    archived["active"] = json!(false);
    let (status, _, refused) = fhir_send(
        &app,
        reqwest::Method::PUT,
        &path,
        &token,
        &archived,
        &[("if-match", "W/\"5\"")],
    )
    .await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(issues(&refused)[0].1, "Patient.active");
    let mut bad = updated.clone();
    bad["birthDate"] = json!("2999-01-01");
    bad["name"][0]["family"] = json!("Byron");
    let (status, _, refused) = fhir_send(
        &app,
        reqwest::Method::PUT,
        &path,
        &token,
        &bad,
        &[("if-match", "W/\"5\"")],
    )
    .await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(issues(&refused)[0].1, "Patient.birthDate");
    let (_, _, after) = fhir_get(&app, &path, Some(&token), &[]).await;
    assert_eq!(
        after["name"][0]["family"], "King",
        "nothing of a refused update is stored"
    );
    // A clinician may not update a patient.
    let clinician = app.token("clinician-1", &["clinician"]);
    let (status, _, _) = fhir_send(
        &app,
        reqwest::Method::PUT,
        &path,
        &clinician,
        &updated,
        &[("if-match", "W/\"5\"")],
    )
    .await;
    assert_eq!(status, 403);
    app.stop().await;
}

/// The resource types of a Bundle's entries, each with how many.
fn types_in(bundle: &Value) -> std::collections::BTreeMap<String, usize> {
    let mut types = std::collections::BTreeMap::new();
    for entry in bundle["entry"].as_array().unwrap() {
        let kind = entry["resource"]["resourceType"]
            .as_str()
            .unwrap()
            .to_owned();
        *types.entry(kind).or_default() += 1;
    }
    types
}

#[tokio::test]
async fn patient_everything_pages_the_whole_compartment_and_the_patients_own_call_is_a_disclosure()
{
    use crate::medical_records::{bodies, clinician, patient_in_care};
    // Arrange: a patient in care with a coverage, an item of each kind the chart holds, an
    // observation (a stream of its own) and an appointment.
    let app = TestApp::without_kafka().await;
    crate::scheduling::clinic(&app).await;
    let id = patient_in_care(&app, 9950).await;
    let other = id_of(&app.register_person(9951, None).await);
    let added = app
        .command(
            &id,
            "coverages",
            2,
            &json!({ "payer": "Helsana", "plan": "Basic", "member_id": "80756-01",
                     "relationship": "self", "start": "2026-01-01", "priority": "primary" }),
        )
        .await;
    assert_eq!(added.status(), 200, "{:?}", added.text().await);
    let token = clinician(&app);
    for (segment, body, _) in bodies() {
        let response = app
            .post(&format!("/v1/patients/{id}/{segment}"), &token, &body, &[])
            .await;
        assert_eq!(response.status(), 201, "{segment}");
    }
    let glucose = json!({
        "resourceType": "Observation",
        "status": "final",
        "code": { "coding": [{ "system": "http://loinc.org", "code": "2339-0", "display": "Glucose [Mass/volume] in Blood" }] },
        "subject": { "reference": format!("Patient/{id}") },
        "effectiveDateTime": "2026-11-26T08:15:00+01:00",
        "valueQuantity": { "value": 6.3, "unit": "mmol/l", "system": "http://unitsofmeasure.org", "code": "mmol/L" }
    });
    let (status, _, created) = fhir_send(
        &app,
        reqwest::Method::POST,
        "/Observation",
        &token,
        &glucose,
        &[],
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let (status, booked) =
        crate::scheduling::book(&app, &id, &crate::scheduling::at("08:00"), json!({})).await;
    assert_eq!(status, 201, "{booked}");
    let everything = format!("/Patient/{id}/$everything");
    let expected: std::collections::BTreeMap<String, usize> = [
        ("Patient", 1),
        ("Coverage", 1),
        ("AllergyIntolerance", 1),
        ("MedicationStatement", 1),
        ("Immunization", 1),
        ("Condition", 1),
        ("Observation", 1),
    ]
    .into_iter()
    .map(|(k, n)| (k.to_owned(), n))
    .collect();

    // Act: the clinician's call (the observation's and the appointment's read models follow
    // within moments, each on its own).
    crate::helpers::eventually(
        "the observation and the appointment in the compartment",
        || async {
            let (status, _, bundle) = fhir_get(&app, &everything, Some(&token), &[]).await;
            assert_eq!(status, 200, "{bundle}");
            let types = types_in(&bundle);
            types.contains_key("Observation") && types.contains_key("Appointment")
        },
    )
    .await;
    let (_, _, whole) = fhir_get(&app, &everything, Some(&token), &[]).await;

    // Assert: everything, the Patient first; no appointments for a caller who may not read
    // them (a clinician may).
    let mut with_appointment = expected.clone();
    with_appointment.insert("Appointment".into(), 1);
    assert_eq!(types_in(&whole), with_appointment, "{whole}");
    assert_eq!(whole["total"], 8);
    assert_eq!(whole["entry"][0]["resource"]["resourceType"], "Patient");
    assert_eq!(whole["entry"][0]["resource"]["id"], id.as_str());

    // Paged: pages of three, followed by their next links, hold the same resources once each.
    let mut seen = Vec::new();
    let mut next = Some(format!("{everything}?_count=3"));
    while let Some(path) = next.take() {
        let (status, _, page) = fhir_get(&app, &path, Some(&token), &[]).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["total"], 8);
        assert!(page["entry"].as_array().unwrap().len() <= 3);
        for entry in page["entry"].as_array().unwrap() {
            seen.push(entry["fullUrl"].as_str().unwrap().to_owned());
        }
        next = page["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .map(|l| {
                let url = l["url"].as_str().unwrap();
                url[url.find("/Patient/").unwrap()..].to_owned()
            });
    }
    let all: Vec<String> = whole["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["fullUrl"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(seen, all);

    // _type keeps the types named; _since the resources changed at or after the instant.
    let (_, _, conditions) = fhir_get(
        &app,
        &format!("{everything}?_type=Condition,Patient"),
        Some(&token),
        &[],
    )
    .await;
    assert_eq!(
        types_in(&conditions).into_iter().collect::<Vec<_>>(),
        [("Condition".to_owned(), 1), ("Patient".to_owned(), 1)]
    );
    let newest = whole["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["resource"]["meta"]["lastUpdated"].as_str())
        .map(|t| chrono::DateTime::parse_from_rfc3339(t).unwrap())
        .max()
        .unwrap();
    let since = |at: chrono::DateTime<chrono::FixedOffset>| {
        let at = at.with_timezone(&chrono::Utc);
        let instant = at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        format!("{everything}?_since={instant}")
    };
    let (_, _, latest) = fhir_get(&app, &since(newest), Some(&token), &[]).await;
    assert!(latest["total"].as_u64().unwrap() >= 1, "{latest}");
    assert!(latest["total"].as_u64().unwrap() < 8, "{latest}");
    let later = newest + chrono::Duration::milliseconds(1);
    let (_, _, none) = fhir_get(&app, &since(later), Some(&token), &[]).await;
    assert_eq!(none["total"], 0, "{none}");

    // Bad parameters are refused by name, as OperationOutcomes.
    for (query, field) in [
        ("_count=0", "_count"),
        ("_type=Claim", "_type"),
        ("_since=yesterday", "_since"),
        ("name=Ada", "name"),
    ] {
        let (status, _, outcome) =
            fhir_get(&app, &format!("{everything}?{query}"), Some(&token), &[]).await;
        assert_eq!(status, 400, "{query}: {outcome}");
        assert_eq!(issues(&outcome)[0].1, field, "{query}");
    }

    // A scheduler may not read the medical record; the patient reaches only themself.
    let (status, _, _) = fhir_get(
        &app,
        &everything,
        Some(&app.token("scheduler-1", &["scheduler"])),
        &[],
    )
    .await;
    assert_eq!(status, 403);
    let own = app.patient_token(&id);
    let (status, _, _) = fhir_get(
        &app,
        &format!("/Patient/{other}/$everything"),
        Some(&own),
        &[],
    )
    .await;
    assert!(status == 403 || status == 404, "{status}");

    // The patient's own call: their whole compartment, appointments included (their right of
    // access), listed among their disclosures as given to them.
    let (status, _, theirs) = fhir_get(&app, &everything, Some(&own), &[]).await;
    assert_eq!(status, 200, "{theirs}");
    assert_eq!(types_in(&theirs), with_appointment);
    crate::helpers::eventually("the right of access in the disclosures", || async {
        let body: Value = app
            .get(&format!("/v1/patients/{id}/disclosures"), &own)
            .await
            .json()
            .await
            .unwrap();
        body["items"].as_array().unwrap().iter().any(|i| {
            i["action"] == "patient-everything"
                && i["user_id"] == format!("portal-{id}")
                && i["outcome"] == "granted"
        })
    })
    .await;
    app.stop().await;
}
