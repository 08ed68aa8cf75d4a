//! FHIR clinical resources as the native API's item bodies: what a FHIR write carries, in the
//! shape the native parser checks (so both APIs share one set of rules), and the native
//! fields' names back as FHIRPath for the errors.
//!
//! Elements the service does not store are left out (the README lists those it stores); a
//! resource that needs one it cannot hold (a `medicationReference`) is refused by name.

use domain::medical_record::ItemKind;
use domain::{FieldError, FieldErrors};
use serde_json::{json, Map, Value};

/// A FHIR write, as the native body of an item of `kind` and the patient it is for.
#[derive(Debug)]
pub struct NativeItem {
    pub kind: ItemKind,
    pub patient: String,
    pub body: Map<String, Value>,
}

/// The SNOMED CT route concepts the service names (as in the resources it serves).
const ROUTES: &[(&str, &str)] = &[
    ("26643006", "oral"),
    ("37839007", "sublingual"),
    ("47625008", "intravenous"),
    ("78421000", "intramuscular"),
    ("34206005", "subcutaneous"),
    ("372464004", "intradermal"),
    ("6064005", "topical"),
    ("45890007", "transdermal"),
    ("447694001", "inhalation"),
    ("46713006", "intranasal"),
    ("37161004", "rectal"),
    ("16857009", "vaginal"),
    ("54485002", "ophthalmic"),
    ("10547007", "otic"),
];

/// HL7 v3 ActSite codes of the injection sites the service names.
const SITES: &[(&str, &str)] = &[
    ("LA", "left-arm"),
    ("RA", "right-arm"),
    ("LT", "left-thigh"),
    ("RT", "right-thigh"),
    ("LG", "left-gluteus"),
    ("RG", "right-gluteus"),
];

/// SNOMED CT's severity concepts.
const SEVERITIES: &[(&str, &str)] = &[
    ("255604002", "mild"),
    ("6736007", "moderate"),
    ("24484000", "severe"),
];

/// The FHIRPath of each native field, per resource type: how errors name what was wrong.
const PATHS: &[(&str, &str)] = &[
    ("substance", "code"),
    ("medication", "medicationCodeableConcept"),
    ("vaccine", "vaccineCode"),
    ("condition", "code"),
    ("clinical_status", "clinicalStatus"),
    ("verification_status", "verificationStatus"),
    ("onset", "onsetDateTime"),
    ("abatement", "abatementDateTime"),
    ("occurred_on", "occurrenceDateTime"),
    ("lot_number", "lotNumber"),
    ("reactions", "reaction"),
    ("reason_for_use", "reasonCode"),
    ("dose", "dosage.doseAndRate.doseQuantity"),
    ("frequency", "dosage.timing.repeat"),
    ("route", "dosage.route"),
    ("start", "effectivePeriod.start"),
    ("end", "effectivePeriod.end"),
    ("prescriber", "informationSource"),
    ("source", "informationSource"),
    ("effective", "effectiveDateTime"),
    ("value_quantity", "valueQuantity"),
    ("value_text", "valueString"),
    ("value_coded", "valueCodeableConcept"),
    ("value_range", "valueRange"),
    ("components", "component"),
    ("reference_range", "referenceRange"),
    ("performed_start", "performed"),
    ("performed_end", "performedPeriod.end"),
    ("reason_code", "reasonCode"),
    ("encounter_type", "type"),
    ("appointment_id", "appointment"),
];

/// Native field errors of a `resource_type` write as FHIRPath expressions.
pub fn fhir_paths(resource_type: &str, errors: &FieldErrors) -> FieldErrors {
    let mut renamed = FieldErrors::new();
    for e in errors.iter() {
        let (head, rest) = e
            .field
            .split_once('.')
            .map_or((e.field.as_str(), None), |(h, r)| (h, Some(r)));
        // `components[3]`: the name is renamed, the index kept.
        let (head, index) = head.split_at(head.find('[').unwrap_or(head.len()));
        let mapped = match (resource_type, head) {
            // An immunization's route is its own element, not a dosage's; an observation's
            // code is its code, an encounter's period its own.
            ("Immunization", "route") => "route",
            ("Observation" | "Procedure", "code") => "code",
            ("Encounter", "start") => "period.start",
            ("Encounter", "end") => "period.end",
            _ => PATHS
                .iter()
                .find(|(native, _)| *native == head)
                .map_or(head, |(_, fhir)| *fhir),
        };
        // The parts below the first named as FHIR names them too (`value_coded` inside a
        // component is its `valueCodeableConcept`).
        let rest = rest.map(|rest| {
            rest.split('.')
                .map(|part| {
                    let (name, index) = part.split_at(part.find('[').unwrap_or(part.len()));
                    let name = PATHS
                        .iter()
                        .find(|(native, _)| *native == name && name.starts_with("value_"))
                        .map_or(name, |(_, fhir)| *fhir);
                    format!("{name}{index}")
                })
                .collect::<Vec<_>>()
                .join(".")
        });
        let path = match rest {
            Some(rest) => format!("{resource_type}.{mapped}{index}.{rest}"),
            None if mapped.is_empty() => resource_type.to_owned(),
            None => format!("{resource_type}.{mapped}{index}"),
        };
        renamed.push(FieldError::new(path, e.message.clone()));
    }
    renamed
}

fn first<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    match &value[key] {
        Value::Array(items) => items.first(),
        Value::Null => None,
        other => Some(other),
    }
}

/// A CodeableConcept as a native concept: its first coding (with its display), its text (or
/// the coding's display, or the code itself when nothing else names it).
fn concept(value: &Value) -> Option<Value> {
    if value.is_null() {
        return None;
    }
    let coding = first(value, "coding");
    let mut concept = Map::new();
    if let Some(coding) = coding {
        if let Some(system) = coding["system"].as_str() {
            concept.insert("system".into(), json!(system));
        }
        if let Some(code) = coding["code"].as_str() {
            concept.insert("code".into(), json!(code));
            if let Some(display) = coding["display"].as_str() {
                concept.insert("display".into(), json!(display));
            }
        }
    }
    let text = value["text"]
        .as_str()
        .or_else(|| coding.and_then(|c| c["display"].as_str()))
        .or_else(|| coding.and_then(|c| c["code"].as_str()));
    if let Some(text) = text {
        concept.insert("text".into(), json!(text));
    }
    Some(Value::Object(concept))
}

/// The code of a CodeableConcept's first coding.
fn code_of(value: &Value) -> Option<&str> {
    first(value, "coding").and_then(|c| c["code"].as_str())
}

/// The day of a FHIR date or dateTime.
fn day(value: &Value) -> Option<Value> {
    value.as_str().map(|v| json!(v.get(..10).unwrap_or(v)))
}

fn text_of(value: &Value) -> Option<&str> {
    value["text"]
        .as_str()
        .or_else(|| first(value, "coding").and_then(|c| c["display"].as_str()))
}

/// A code looked up in `table` by the concept's first code, else taken from its text.
fn looked_up(value: &Value, table: &[(&str, &str)]) -> Option<Value> {
    if value.is_null() {
        return None;
    }
    code_of(value)
        .and_then(|code| table.iter().find(|(c, _)| *c == code).map(|(_, n)| *n))
        .or_else(|| text_of(value))
        .map(|name| json!(name.to_ascii_lowercase()))
}

fn insert(body: &mut Map<String, Value>, key: &str, value: Option<Value>) {
    if let Some(value) = value {
        body.insert(key.into(), value);
    }
}

fn note(body: &mut Map<String, Value>, resource: &Value) {
    insert(
        body,
        "note",
        first(resource, "note").and_then(|n| n["text"].as_str().map(|t| json!(t))),
    );
}

/// The patient a reference names (`Patient/<id>`), if it names one.
fn patient_of(reference: &Value) -> Option<String> {
    reference["reference"]
        .as_str()
        .and_then(|r| r.strip_prefix("Patient/"))
        .map(str::to_owned)
}

/// The user id a Practitioner reference names, or a display that is one (a display that is
/// a person's name, `Dr Cecil Surgeon`, names no user and is left out).
fn user_of(reference: &Value) -> Option<Value> {
    reference["reference"]
        .as_str()
        .and_then(|r| r.strip_prefix("Practitioner/"))
        .or_else(|| reference["display"].as_str())
        .filter(|u| domain::patient::governance::Principal::parse("user", u).is_ok())
        .map(|u| json!(u))
}

/// A FHIR clinical resource as the native body of its item.
///
/// # Errors
///
/// The resource type is not one held as an item, it names no patient, or it needs an element
/// the service cannot hold.
pub fn native(resource: &Value) -> Result<NativeItem, FieldErrors> {
    let resource_type = resource["resourceType"].as_str().unwrap_or_default();
    let mut body = Map::new();
    let (kind, subject) = match resource_type {
        "AllergyIntolerance" => {
            insert(&mut body, "substance", concept(&resource["code"]));
            insert(
                &mut body,
                "clinical_status",
                code_of(&resource["clinicalStatus"]).map(|c| json!(c)),
            );
            insert(
                &mut body,
                "verification_status",
                code_of(&resource["verificationStatus"]).map(|c| json!(c)),
            );
            insert(&mut body, "category", first(resource, "category").cloned());
            insert(&mut body, "criticality", resource.get("criticality").cloned());
            insert(&mut body, "onset", day(&resource["onsetDateTime"]));
            if let Some(reactions) = resource["reaction"].as_array() {
                let reactions: Vec<Value> = reactions
                    .iter()
                    .map(|r| {
                        let mut reaction = Map::new();
                        insert(
                            &mut reaction,
                            "manifestation",
                            first(r, "manifestation").and_then(concept),
                        );
                        insert(&mut reaction, "severity", r.get("severity").cloned());
                        Value::Object(reaction)
                    })
                    .collect();
                body.insert("reactions".into(), Value::Array(reactions));
            }
            note(&mut body, resource);
            (ItemKind::Allergy, &resource["patient"])
        }
        "MedicationStatement" | "MedicationRequest" => {
            medication(&mut body, resource, resource_type == "MedicationRequest")?;
            (ItemKind::Medication, &resource["subject"])
        }
        "Immunization" => {
            insert(&mut body, "vaccine", concept(&resource["vaccineCode"]));
            insert(&mut body, "occurred_on", day(&resource["occurrenceDateTime"]));
            insert(&mut body, "status", resource.get("status").cloned());
            insert(&mut body, "lot_number", resource.get("lotNumber").cloned());
            insert(&mut body, "site", looked_up(&resource["site"], SITES));
            insert(&mut body, "route", looked_up(&resource["route"], ROUTES));
            insert(
                &mut body,
                "performer",
                first(resource, "performer").and_then(|p| user_of(&p["actor"])),
            );
            note(&mut body, resource);
            (ItemKind::Immunization, &resource["patient"])
        }
        "Condition" => {
            insert(&mut body, "condition", concept(&resource["code"]));
            insert(
                &mut body,
                "clinical_status",
                code_of(&resource["clinicalStatus"]).map(|c| json!(c)),
            );
            insert(&mut body, "onset", day(&resource["onsetDateTime"]));
            insert(&mut body, "abatement", day(&resource["abatementDateTime"]));
            insert(
                &mut body,
                "severity",
                looked_up(&resource["severity"], SEVERITIES),
            );
            note(&mut body, resource);
            (ItemKind::Problem, &resource["subject"])
        }
        "Observation" => {
            observation(&mut body, resource);
            (ItemKind::Observation, &resource["subject"])
        }
        "Procedure" => {
            insert(&mut body, "code", concept(&resource["code"]));
            insert(&mut body, "status", resource.get("status").cloned());
            if resource["performedPeriod"].is_object() {
                insert(&mut body, "performed_start", resource["performedPeriod"].get("start").cloned());
                insert(&mut body, "performed_end", resource["performedPeriod"].get("end").cloned());
            } else {
                insert(&mut body, "performed_start", resource.get("performedDateTime").cloned());
            }
            insert(
                &mut body,
                "performer",
                first(resource, "performer").and_then(|p| user_of(&p["actor"])),
            );
            insert(&mut body, "reason_code", first(resource, "reasonCode").and_then(concept));
            note(&mut body, resource);
            (ItemKind::Procedure, &resource["subject"])
        }
        "Encounter" => {
            insert(&mut body, "status", resource.get("status").cloned());
            insert(&mut body, "class", resource["class"].get("code").cloned());
            insert(&mut body, "encounter_type", first(resource, "type").and_then(concept));
            insert(&mut body, "start", resource["period"].get("start").cloned());
            insert(&mut body, "end", resource["period"].get("end").cloned());
            insert(
                &mut body,
                "practitioner",
                first(resource, "participant").and_then(|p| user_of(&p["individual"])),
            );
            insert(
                &mut body,
                "location",
                first(resource, "location")
                    .and_then(|l| l["location"]["display"].as_str().map(|d| json!(d))),
            );
            insert(&mut body, "reason_code", first(resource, "reasonCode").and_then(concept));
            insert(
                &mut body,
                "appointment_id",
                // One of this service's appointments; another system's is not kept.
                first(resource, "appointment").and_then(|a| {
                    let id = a["reference"].as_str()?.strip_prefix("Appointment/")?;
                    uuid::Uuid::parse_str(id).ok().map(|id| json!(id))
                }),
            );
            (ItemKind::Encounter, &resource["subject"])
        }
        "DocumentReference" => {
            return Err(FieldError::new(
                "DocumentReference",
                "a DocumentReference carries its bytes: it is written through its own create and update",
            )
            .into())
        }
        _ => {
            return Err(FieldError::new(
                "resourceType",
                "must be AllergyIntolerance, MedicationStatement, MedicationRequest, Immunization, Condition, Observation, Procedure or Encounter here",
            )
            .into())
        }
    };
    let subject_path = if matches!(kind, ItemKind::Allergy | ItemKind::Immunization) {
        "patient"
    } else {
        "subject"
    };
    let patient = patient_of(subject).ok_or_else(|| {
        FieldErrors::from(FieldError::new(
            format!("{resource_type}.{subject_path}"),
            "must reference the patient: Patient/<id>",
        ))
    })?;
    Ok(NativeItem {
        kind,
        patient,
        body,
    })
}

/// A FHIR Quantity as a native measurement (its UCUM code, else its unit).
fn measurement(quantity: &Value) -> Option<Value> {
    if !quantity.is_object() {
        return None;
    }
    let mut measured = Map::new();
    let value = match &quantity["value"] {
        Value::Number(n) => Some(json!(n.to_string())),
        _ => None,
    };
    insert(&mut measured, "value", value);
    insert(
        &mut measured,
        "unit",
        quantity["code"]
            .as_str()
            .or(quantity["unit"].as_str())
            .map(|u| json!(u)),
    );
    Some(Value::Object(measured))
}

/// An element's `value[x]` as the native `value_*` fields.
fn values(body: &mut Map<String, Value>, element: &Value) {
    insert(
        body,
        "value_quantity",
        measurement(&element["valueQuantity"]),
    );
    insert(body, "value_text", element.get("valueString").cloned());
    insert(
        body,
        "value_coded",
        concept(&element["valueCodeableConcept"]),
    );
    if element["valueRange"].is_object() {
        let mut range = Map::new();
        insert(
            &mut range,
            "low",
            measurement(&element["valueRange"]["low"]),
        );
        insert(
            &mut range,
            "high",
            measurement(&element["valueRange"]["high"]),
        );
        body.insert("value_range".into(), Value::Object(range));
    }
}

fn observation(body: &mut Map<String, Value>, resource: &Value) {
    insert(body, "code", concept(&resource["code"]));
    insert(
        body,
        "category",
        first(resource, "category").and_then(|c| code_of(c).map(|code| json!(code))),
    );
    insert(body, "status", resource.get("status").cloned());
    let effective = resource
        .get("effectiveDateTime")
        .or_else(|| resource.get("effectiveInstant"))
        .or_else(|| resource["effectivePeriod"].get("start"))
        .cloned();
    insert(body, "effective", effective);
    values(body, resource);
    insert(
        body,
        "interpretation",
        first(resource, "interpretation").and_then(concept),
    );
    if let Some(range) = first(resource, "referenceRange") {
        let mut reference = Map::new();
        insert(&mut reference, "low", measurement(&range["low"]));
        insert(&mut reference, "high", measurement(&range["high"]));
        insert(&mut reference, "text", range.get("text").cloned());
        body.insert("reference_range".into(), Value::Object(reference));
    }
    if let Some(components) = resource["component"].as_array() {
        let components: Vec<Value> = components
            .iter()
            .map(|c| {
                let mut component = Map::new();
                insert(&mut component, "code", concept(&c["code"]));
                values(&mut component, c);
                Value::Object(component)
            })
            .collect();
        body.insert("components".into(), Value::Array(components));
    }
    note(body, resource);
}

/// A MedicationStatement's (or MedicationRequest's) elements as a native medication.
fn medication(
    body: &mut Map<String, Value>,
    resource: &Value,
    request: bool,
) -> Result<(), FieldErrors> {
    let resource_type = if request {
        "MedicationRequest"
    } else {
        "MedicationStatement"
    };
    let medication = if resource["medicationReference"].is_null() {
        concept(&resource["medicationCodeableConcept"])
    } else {
        // A Medication contained in the resource (`#id`) is read for its code; one held
        // elsewhere cannot be.
        let contained = resource["medicationReference"]["reference"]
            .as_str()
            .and_then(|r| r.strip_prefix('#'))
            .and_then(|id| {
                resource["contained"]
                    .as_array()?
                    .iter()
                    .find(|c| c["resourceType"] == "Medication" && c["id"] == id)
            });
        match contained {
            Some(medication) => concept(&medication["code"]),
            None => {
                return Err(FieldError::new(
                    format!("{resource_type}.medicationReference"),
                    "must name a Medication contained in the resource (#id); send \
                     medicationCodeableConcept otherwise",
                )
                .into())
            }
        }
    };
    insert(body, "medication", medication);
    let status = resource["status"].as_str().map(|s| match (request, s) {
        // A request's statuses in MedicationStatement's words.
        (true, "cancelled") => "stopped",
        (true, "draft") => "intended",
        (_, other) => other,
    });
    insert(body, "status", status.map(|s| json!(s)));
    let (source, prescriber) = if request {
        ("order", user_of(&resource["requester"]))
    } else {
        let informant = &resource["informationSource"];
        match informant["reference"].as_str() {
            Some(r) if r.starts_with("Patient/") || r.starts_with("RelatedPerson/") => {
                ("patient-reported", None)
            }
            Some(r) if r.starts_with("Practitioner/") => ("order", user_of(informant)),
            _ => ("other-record", None),
        }
    };
    body.insert("source".into(), json!(source));
    insert(body, "prescriber", prescriber);
    if request {
        insert(body, "start", day(&resource["authoredOn"]));
    } else if resource["effectivePeriod"].is_object() {
        insert(body, "start", day(&resource["effectivePeriod"]["start"]));
        insert(body, "end", day(&resource["effectivePeriod"]["end"]));
    } else {
        insert(body, "start", day(&resource["effectiveDateTime"]));
    }
    insert(
        body,
        "reason_for_use",
        first(resource, "reasonCode").and_then(concept),
    );
    note(body, resource);
    let dosage_key = if request {
        "dosageInstruction"
    } else {
        "dosage"
    };
    if let Some(dosage) = first(resource, dosage_key) {
        let repeat = &dosage["timing"]["repeat"];
        if repeat.is_object() {
            let mut frequency = Map::new();
            insert(&mut frequency, "count", repeat.get("frequency").cloned());
            insert(&mut frequency, "period", repeat.get("period").cloned());
            insert(
                &mut frequency,
                "period_unit",
                repeat.get("periodUnit").cloned(),
            );
            insert(
                &mut frequency,
                "as_needed",
                dosage.get("asNeededBoolean").cloned(),
            );
            body.insert("frequency".into(), Value::Object(frequency));
        } else {
            insert(body, "as_needed", dosage.get("asNeededBoolean").cloned());
        }
        insert(body, "route", looked_up(&dosage["route"], ROUTES));
        if let Some(dose) = first(dosage, "doseAndRate").map(|d| &d["doseQuantity"]) {
            if dose.is_object() {
                let value = match &dose["value"] {
                    Value::Number(n) => Some(json!(n.to_string())),
                    _ => None,
                };
                let mut quantity = Map::new();
                insert(&mut quantity, "value", value);
                // A dose with no unit at all is a count (one tablet): UCUM's unity, `1`.
                let unit = dose["code"].as_str().or(dose["unit"].as_str()).or_else(|| {
                    (dose.get("value").is_some() && dose.get("system").is_none()).then_some("1")
                });
                insert(&mut quantity, "unit", unit.map(|u| json!(u)));
                body.insert("dose".into(), Value::Object(quantity));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_synthea_medication_request_reads_as_an_order_with_what_it_knows() {
        let request = json!({
            "resourceType": "MedicationRequest",
            "status": "stopped",
            "intent": "order",
            "medicationCodeableConcept": { "coding": [{ "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                "code": "834061", "display": "Penicillin V Potassium 250 MG Oral Tablet" }],
                "text": "Penicillin V Potassium 250 MG Oral Tablet" },
            "subject": { "reference": "Patient/8f789d0b-3145-4cf2-8504-13159edaa747" },
            "authoredOn": "2014-04-20T09:31:04-04:00",
            "requester": { "reference": "Practitioner/dr-a", "display": "Dr. A" },
            "dosageInstruction": [{ "timing": { "repeat": { "frequency": 2, "period": 1, "periodUnit": "d" } },
                "asNeededBoolean": false,
                "doseAndRate": [{ "doseQuantity": { "value": 1 } }] }]
        });
        let native = native(&request).unwrap();
        assert_eq!(native.kind, ItemKind::Medication);
        assert_eq!(native.patient, "8f789d0b-3145-4cf2-8504-13159edaa747");
        assert_eq!(native.body["source"], "order");
        assert_eq!(native.body["prescriber"], "dr-a");
        assert_eq!(native.body["start"], "2014-04-20");
        assert_eq!(native.body["medication"]["code"], "834061");
        assert_eq!(native.body["frequency"]["count"], 2);
        assert_eq!(native.body["dose"]["value"], "1");
        assert_eq!(native.body["dose"]["unit"], "1", "a count: UCUM's unity");
    }

    #[test]
    fn errors_name_fhir_elements() {
        let mut errors = FieldErrors::new();
        errors.push(FieldError::new("substance.text", "is required"));
        errors.push(FieldError::new("dose.value", "must be positive"));
        let renamed = fhir_paths("MedicationStatement", &errors);
        let fields: Vec<&str> = renamed.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "MedicationStatement.code.text",
                "MedicationStatement.dosage.doseAndRate.doseQuantity.value"
            ]
        );
    }
}
