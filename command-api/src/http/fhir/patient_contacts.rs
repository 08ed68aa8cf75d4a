//! A FHIR Patient's `contact`s as the record's emergency contacts: a name, who they are to the
//! patient, and at least one phone (the record keeps people it can call). A contact that names
//! no person, only an organization (an employer, `E`), is not an emergency contact and is not
//! held; a person without a phone is refused.

use domain::patient::record::EmergencyContact;
use domain::{FieldError, FieldErrors};
use serde_json::{json, Map, Value};

/// Who a contact is to the patient, from a `relationship` coding of HL7 v3 RoleCode (or the
/// record's own code as text, as the service shows it); `other` when it says nothing more
/// (v2 0131's "emergency contact" or "next of kin").
fn relationship(contact: &Value) -> &'static str {
    const OWN: &[&str] = &[
        "spouse",
        "partner",
        "parent",
        "child",
        "sibling",
        "relative",
        "friend",
        "guardian",
        "caregiver",
        "other",
    ];
    for relationship in contact["relationship"].as_array().into_iter().flatten() {
        if let Some(own) = relationship["text"]
            .as_str()
            .and_then(|t| OWN.iter().find(|o| **o == t))
        {
            return own;
        }
        for coding in relationship["coding"].as_array().into_iter().flatten() {
            let mapped = match coding["code"].as_str().unwrap_or_default() {
                "SPS" | "HUSB" | "WIFE" => "spouse",
                "DOMPART" | "SIGOTHR" => "partner",
                "PRN" | "MTH" | "FTH" | "NPRN" | "STPPRN" => "parent",
                "CHILD" | "SON" | "DAU" | "STPCHLD" => "child",
                "SIB" | "BRO" | "SIS" => "sibling",
                "FAMMEMB" | "EXT" | "GRPRN" | "AUNT" | "UNCLE" | "COUSN" => "relative",
                "FRND" | "NBOR" => "friend",
                "GUARD" => "guardian",
                "CAREGIVER" => "caregiver",
                _ => continue,
            };
            return mapped;
        }
    }
    "other"
}

/// The native emergency contact body of one FHIR `contact`.
fn native(contact: &Value) -> Map<String, Value> {
    let mut body = Map::new();
    let name = &contact["name"];
    if name.is_object() {
        let mut native_name = Map::new();
        for key in ["given", "family", "prefix", "suffix"] {
            if let Some(part) = name.get(key) {
                native_name.insert(key.into(), part.clone());
            }
        }
        body.insert("name".into(), Value::Object(native_name));
    }
    body.insert("relationship".into(), json!(relationship(contact)));
    let phones: Vec<Value> = contact["telecom"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| matches!(t["system"].as_str(), Some("phone" | "sms")))
        .enumerate()
        .map(|(i, t)| {
            let mut phone = json!({ "number": t["value"], "preferred": i == 0 });
            if let Some(phone_use @ ("home" | "work" | "mobile")) = t["use"].as_str() {
                phone["use"] = json!(phone_use);
            }
            phone
        })
        .collect();
    body.insert("phones".into(), Value::Array(phones));
    body
}

/// The emergency contacts a FHIR Patient names in `contact`, each under a new id; every bad
/// element named by its path.
///
/// # Errors
///
/// The contacts' bad elements (a contact needs a name and a phone).
pub fn emergency_contacts(patient: &Value) -> Result<Vec<EmergencyContact>, FieldErrors> {
    let mut contacts = Vec::new();
    let mut errors = FieldErrors::new();
    for (i, contact) in patient["contact"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        if contact.get("name").is_none() && contact.get("organization").is_some() {
            continue;
        }
        match crate::http::input::patient::emergency_contact_body(
            &native(contact),
            uuid::Uuid::new_v4(),
        ) {
            Ok(contact) => contacts.push(contact),
            Err(bad) => {
                for e in bad.iter() {
                    let element = match e.field.as_str() {
                        field if field.starts_with("phones") => "telecom",
                        field if field.starts_with("name") => "name",
                        _ => "relationship",
                    };
                    errors.push(FieldError::new(
                        format!("Patient.contact[{i}].{element}"),
                        e.message.clone(),
                    ));
                }
            }
        }
    }
    errors.into_result()?;
    Ok(contacts)
}

/// Whether two contacts say the same (their ids aside).
pub fn same(a: &EmergencyContact, b: &EmergencyContact) -> bool {
    a.name == b.name && a.relationship == b.relationship && a.phones == b.phones
}
