//! `patient-service import PATH`: FHIR R4 data from elsewhere (transaction, batch or collection
//! Bundles, and bulk NDJSON files: a file, or a folder of them) brought in through the same use
//! cases as the API. Each resource is sent, in this process, through the service's own router
//! as a request of the `importer` (a role no token can carry), so every rule, event, seal and
//! access entry is the API's.
//!
//! The import is a trusted path with an explicit policy, counted in its closing lines:
//!
//! - **Order.** Practitioners first (held as resources that cannot be booked until given a
//!   template), then patients, their coverages, encounters, then the other clinical items,
//!   so that every reference names something already there. References are rewritten to the
//!   ids given here; one to something not held (an Organization, a Location, a Claim) is left
//!   out of the resource, keeping its display.
//! - **Identity.** Each resource created gets an id derived from the source, its type and its
//!   source id (UUID v5), and a patient keeps the source id as an identifier
//!   (`urn:patient-service:import:<source>`), so a second run, or a run resumed after a crash,
//!   finds each one taken and creates nothing twice (counted `already`).
//! - **Duplicates.** A patient the matcher grades `certain` or `probable` against one already
//!   registered is registered anyway with the override reason "import", and listed for review
//!   (both ids, the grade): never dropped. A candidate that is this very patient (the same
//!   derived id) is the patient imported before.
//! - **Allergy warnings.** A medication the allergy check stops is recorded with the warnings
//!   acknowledged by the importing user, with the reason "imported from <source>".
//! - **Phones** without a country code are read in the country of the patient's first address
//!   (US and Canada `+1`, and the others listed in [`CALLING_CODES`]); others are refused with
//!   the patient.
//! - **Not held** (`skipped`, by type): Organization, Location, Claim, ExplanationOfBenefit,
//!   CarePlan, CareTeam, Goal, ImagingStudy, DiagnosticReport, Provenance, Device, and every
//!   type the service does not keep. **Refused** only what the API refuses as invalid, counted
//!   by type and reason (the first issue's code and place); a patient refused takes their
//!   items with them (counted as refused, reason "patient refused").

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use serde_json::{json, Map, Value};
use tower::ServiceExt as _;
use uuid::Uuid;

use crate::auth::{access, AuthUser, Role};
use crate::http::{ImportedId, TrustedCaller};

/// The namespace of the ids the import derives from source ids.
const NAMESPACE: Uuid = Uuid::from_u128(0x5f4c_1e0a_9b7d_4c1e_8a3f_2d6b_0e91_7c55);

/// The types imported, in the order they are sent.
const ORDER: &[&str] = &[
    "Practitioner",
    "Patient",
    "Coverage",
    "Encounter",
    "AllergyIntolerance",
    "Condition",
    "Immunization",
    "MedicationStatement",
    "MedicationRequest",
    "Procedure",
    "Observation",
];

/// Country calling codes by ISO 3166-1 alpha-2 country (or the names sources write), for
/// phones without one.
pub const CALLING_CODES: &[(&str, &str)] = &[
    ("US", "1"),
    ("USA", "1"),
    ("United States", "1"),
    ("CA", "1"),
    ("GB", "44"),
    ("CH", "41"),
    ("DE", "49"),
    ("FR", "33"),
    ("IT", "39"),
    ("AT", "43"),
    ("NL", "31"),
];

/// What became of the import, counted.
#[derive(Debug, Default)]
pub struct Report {
    pub imported: BTreeMap<String, u64>,
    pub already: BTreeMap<String, u64>,
    pub skipped: BTreeMap<String, u64>,
    /// By type, then reason.
    pub refused: BTreeMap<String, BTreeMap<String, u64>>,
    /// Medications recorded with their allergy warnings acknowledged.
    pub acknowledged: u64,
    /// Patients registered although the matcher found likely duplicates: the new id and the
    /// candidates (id and grade), for review.
    pub review: Vec<(Uuid, Vec<String>)>,
    /// Patients merged into one registered already, whose identifiers agree with theirs: the
    /// source id and the registered patient's id.
    pub merged: Vec<(String, String)>,
}

impl Report {
    fn total(counts: &BTreeMap<String, u64>) -> u64 {
        counts.values().sum()
    }

    /// The closing line: `imported=N skipped=N refused=N`.
    pub fn line(&self) -> String {
        let refused: u64 = self.refused.values().map(Self::total).sum();
        format!(
            "imported={} skipped={} refused={}",
            Self::total(&self.imported),
            Self::total(&self.skipped),
            refused
        )
    }

    /// The counts per type and reason, one per line, after the closing line's figures.
    pub fn details(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for (kind, n) in &self.imported {
            lines.push(format!("imported {kind} {n}"));
        }
        for (kind, n) in &self.already {
            lines.push(format!("already imported {kind} {n}"));
        }
        for (kind, n) in &self.skipped {
            lines.push(format!("skipped {kind} {n} (not held)"));
        }
        for (kind, reasons) in &self.refused {
            for (reason, n) in reasons {
                lines.push(format!("refused {kind} {n}: {reason}"));
            }
        }
        lines.push(format!(
            "medications recorded with allergy warnings acknowledged {}",
            self.acknowledged
        ));
        lines.push(format!(
            "patients registered despite likely duplicates, for review {}",
            self.review.len()
        ));
        lines.push(format!(
            "patients merged into the one registered, their identifiers agreeing {}",
            self.merged.len()
        ));
        lines
    }
}

/// The files at `path` (a file, or a folder's `.json` and `.ndjson` files), in the order they
/// are imported: those holding only what others refer to (Synthea's `practitionerInformation*`
/// and `hospitalInformation*`, bulk `Practitioner`, `Organization` and `Location` files) first,
/// then bulk files in the order of their types, then Bundles, each group in name order.
///
/// # Errors
///
/// The folder cannot be read.
fn files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = if path.is_dir() {
        std::fs::read_dir(path)
            .with_context(|| format!("reading {}", path.display()))?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json" || e == "ndjson"))
            .collect()
    } else {
        vec![path.to_owned()]
    };
    let referred = |p: &PathBuf| {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        ![
            "practitionerInformation",
            "hospitalInformation",
            "Practitioner",
            "Organization",
            "Location",
        ]
        .iter()
        .any(|prefix| name.starts_with(prefix))
    };
    // Bulk files are one type each, named by it (`Patient.ndjson`, `Observation-2.ndjson`):
    // taken in the order of the types they hold.
    let rank = |p: &PathBuf| {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !name.ends_with(".ndjson") {
            return 0;
        }
        ORDER
            .iter()
            .position(|kind| name.starts_with(kind))
            .map_or(ORDER.len() + 1, |at| at + 1)
    };
    files.sort_by_key(|p| (referred(p), rank(p), p.clone()));
    Ok(files)
}

/// The resources of one file, in the order they are imported ([`ORDER`]); the types the
/// service does not hold are counted in `skipped` and left out.
///
/// # Errors
///
/// The file cannot be read or is not JSON.
fn read(file: &Path, skipped: &mut BTreeMap<String, u64>) -> anyhow::Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let mut resources = Vec::new();
    if file.extension().is_some_and(|e| e == "ndjson") {
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let resource: Value = serde_json::from_str(line).with_context(|| {
                format!("{} line {}: not a JSON resource", file.display(), n + 1)
            })?;
            resources.push(resource);
        }
    } else {
        let value: Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not JSON", file.display()))?;
        if value["resourceType"] == "Bundle" {
            for entry in value["entry"].as_array().into_iter().flatten() {
                let mut resource = entry["resource"].clone();
                // A Bundle's entries may be named by their fullUrl only.
                if resource["id"].is_null() {
                    if let Some(id) = entry["fullUrl"]
                        .as_str()
                        .and_then(|u| u.strip_prefix("urn:uuid:"))
                    {
                        resource["id"] = json!(id);
                    }
                }
                if resource.is_object() {
                    resources.push(resource);
                }
            }
        } else {
            resources.push(value);
        }
    }
    let mut ordered = Vec::with_capacity(resources.len());
    for kind in ORDER {
        ordered.extend(
            resources
                .iter()
                .filter(|r| r["resourceType"] == *kind)
                .cloned(),
        );
    }
    for resource in &resources {
        let kind = resource["resourceType"]
            .as_str()
            .unwrap_or("(no resourceType)");
        if !ORDER.contains(&kind) {
            *skipped.entry(kind.to_owned()).or_default() += 1;
        }
    }
    Ok(ordered)
}

/// What the import sends through, as whom, and what it has done so far.
struct Importer {
    router: Router,
    user: AuthUser,
    source: String,
    /// What the import made of each source resource, by source id.
    ids: Ids,
    /// Source patients refused: their items go with them.
    refused_patients: std::collections::HashSet<String>,
    report: Report,
}

/// What the import made of the source's resources: by source id, the type and the id given
/// here (a patient's, a resource's, an item's FHIR id). One entry per resource, kept for the
/// whole import (bulk files refer across files).
#[derive(Default)]
struct Ids(HashMap<String, Vec<(String, String)>>);

impl Ids {
    fn remember(&mut self, kind: impl Into<String>, source_id: &str, given: impl Into<String>) {
        self.0
            .entry(source_id.to_owned())
            .or_default()
            .push((kind.into(), given.into()));
    }

    /// What a reference (`urn:uuid:<id>` or `<Type>/<id>`) names, if the import made it.
    fn find(&self, reference: &str) -> Option<&(String, String)> {
        if let Some(id) = reference.strip_prefix("urn:uuid:") {
            return self.0.get(id)?.first();
        }
        let (kind, id) = reference.split_once('/')?;
        self.0.get(id)?.iter().find(|(k, _)| k == kind)
    }
}

/// The id derived from the source, type and source id: what the import gives a resource
/// (a patient, an item) it brings.
pub fn derived(source: &str, kind: &str, id: &str) -> Uuid {
    Uuid::new_v5(&NAMESPACE, format!("{source}/{kind}/{id}").as_bytes())
}

impl Importer {
    /// Sends one request through the router as the importer; the status and the JSON answer.
    async fn send(
        &self,
        (method, path): (Method, String),
        body: &Value,
        (id, headers): (Option<Uuid>, &[(&str, String)]),
    ) -> anyhow::Result<(StatusCode, Value)> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/fhir+json");
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let mut request = request.body(Body::from(body.to_string()))?;
        request
            .extensions_mut()
            .insert(TrustedCaller(self.user.clone()));
        if let Some(id) = id {
            request.extensions_mut().insert(ImportedId(id));
        }
        let response = self.router.clone().oneshot(request).await?;
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 16 * 1024 * 1024).await?;
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    fn refuse(&mut self, kind: &str, reason: String) {
        *self
            .report
            .refused
            .entry(kind.to_owned())
            .or_default()
            .entry(reason)
            .or_default() += 1;
    }

    fn count(counts: &mut BTreeMap<String, u64>, kind: &str) {
        *counts.entry(kind.to_owned()).or_default() += 1;
    }

    /// Imports one resource of a type the service holds.
    async fn import(&mut self, mut resource: Value) -> anyhow::Result<()> {
        let kind = resource["resourceType"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let source_id = resource["id"].as_str().unwrap_or_default().to_owned();
        if source_id.is_empty() {
            self.refuse(&kind, "no id in the source".into());
            return Ok(());
        }
        if kind != "Practitioner" && kind != "Patient" {
            let patient = subject_of(&resource);
            if patient
                .as_ref()
                .is_some_and(|p| self.refused_patients.contains(p))
            {
                self.refuse(&kind, "patient refused".into());
                return Ok(());
            }
        }
        self.rewrite_references(&mut resource);
        let id = derived(&self.source, &kind, &source_id);
        match kind.as_str() {
            "Practitioner" => self.practitioner(&resource, &source_id).await,
            "Patient" => self.patient(resource, &source_id, id).await,
            _ => self.item(resource, &source_id, id).await,
        }
    }

    /// A practitioner as a resource that cannot be booked until given a template.
    async fn practitioner(&mut self, resource: &Value, source_id: &str) -> anyhow::Result<()> {
        let name = &resource["name"][0];
        let text = name["text"].as_str().map_or_else(
            || {
                let given: Vec<&str> = name["given"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                format!(
                    "{} {}",
                    given.join(" "),
                    name["family"].as_str().unwrap_or_default()
                )
                .trim()
                .to_owned()
            },
            str::to_owned,
        );
        let resource_id = format!(
            "import-{}",
            derived(&self.source, "Practitioner", source_id).simple()
        );
        let body = json!({ "kind": "practitioner", "name": if text.is_empty() { "Practitioner".to_owned() } else { text } });
        let (status, answer) = self
            .send(
                (Method::PUT, format!("/v1/resources/{resource_id}")),
                &body,
                (None, &[]),
            )
            .await?;
        match status.as_u16() {
            201 => Self::count(&mut self.report.imported, "Practitioner"),
            200 => Self::count(&mut self.report.already, "Practitioner"),
            _ => {
                self.refuse("Practitioner", reason(status, &answer));
                return Ok(());
            }
        }
        self.ids.remember("Practitioner", source_id, resource_id);
        Ok(())
    }

    async fn patient(
        &mut self,
        mut resource: Value,
        source_id: &str,
        id: Uuid,
    ) -> anyhow::Result<()> {
        // Imported before (a second run, or one resumed after a crash): the id is taken.
        let (found, _) = self
            .send(
                (Method::GET, format!("/fhir/R4/Patient/{id}")),
                &Value::Null,
                (None, &[]),
            )
            .await?;
        if found == StatusCode::OK {
            Self::count(&mut self.report.already, "Patient");
            self.ids.remember("Patient", source_id, id.to_string());
            return Ok(());
        }
        let identifiers = resource["identifier"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut kept = identifiers;
        kept.push(json!({
            "system": format!("urn:patient-service:import:{}", self.source),
            "value": source_id,
        }));
        resource["identifier"] = Value::Array(kept);
        with_calling_codes(&mut resource);
        let mut headers: Vec<(&str, String)> = Vec::new();
        let mut answer;
        let mut status;
        loop {
            (status, answer) = self
                .send(
                    (Method::POST, "/fhir/R4/Patient".into()),
                    &resource,
                    (Some(id), &headers),
                )
                .await?;
            if status != StatusCode::CONFLICT || !headers.is_empty() {
                break;
            }
            let candidates = warned(&answer, "possible-duplicate: Patient/");
            if candidates.iter().any(|c| c.starts_with(&id.to_string())) {
                // The very patient, imported before.
                status = StatusCode::OK;
                break;
            }
            if candidates.is_empty() {
                break;
            }
            if self.merged(&resource, source_id, &candidates).await? {
                return Ok(());
            }
            self.report.review.push((id, candidates));
            headers.push((crate::http::fhir::DUPLICATE_OVERRIDE, "import".into()));
        }
        match status.as_u16() {
            201 => Self::count(&mut self.report.imported, "Patient"),
            200 => Self::count(&mut self.report.already, "Patient"),
            _ => {
                self.refuse("Patient", reason(status, &answer));
                self.refused_patients.insert(source_id.to_owned());
                return Ok(());
            }
        }
        self.ids.remember("Patient", source_id, id.to_string());
        Ok(())
    }

    /// Whether the patient `resource` (source id `source_id`) is one of the registered
    /// `candidates` the matcher found: one holding this import's identifier for them (merged in
    /// an earlier run), or an identifier of the same system and value as one of the source's.
    /// Such a patient takes this import's identifier for them (a later run finds them by it)
    /// and the source's items; no patient is registered.
    async fn merged(
        &mut self,
        resource: &Value,
        source_id: &str,
        candidates: &[String],
    ) -> anyhow::Result<bool> {
        let ours = json!({
            "system": format!("urn:patient-service:import:{}", self.source),
            "value": source_id,
        });
        let same = |a: &Value, b: &Value| {
            a["system"].is_string() && a["system"] == b["system"] && a["value"] == b["value"]
        };
        let theirs: Vec<&Value> = resource["identifier"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| !same(i, &ours))
            .collect();
        for candidate in candidates {
            let Some(candidate_id) = candidate.split_whitespace().next() else {
                continue;
            };
            let (status, registered) = self
                .send(
                    (Method::GET, format!("/fhir/R4/Patient/{candidate_id}")),
                    &Value::Null,
                    (None, &[]),
                )
                .await?;
            if status != StatusCode::OK {
                continue;
            }
            let held: Vec<&Value> = registered["identifier"]
                .as_array()
                .into_iter()
                .flatten()
                .collect();
            if held.iter().any(|i| same(i, &ours)) {
                Self::count(&mut self.report.already, "Patient");
                self.ids
                    .remember("Patient", source_id, candidate_id.to_owned());
                return Ok(true);
            }
            if !held.iter().any(|h| theirs.iter().any(|t| same(h, t))) {
                continue;
            }
            let version = registered["meta"]["versionId"].as_str().unwrap_or("1");
            let (added, answer) = self
                .send(
                    (
                        Method::POST,
                        format!("/v1/patients/{candidate_id}/identifiers"),
                    ),
                    &ours,
                    (None, &[("if-match", format!("\"{version}\""))]),
                )
                .await?;
            if added != StatusCode::OK {
                self.refuse("Patient", reason(added, &answer));
                self.refused_patients.insert(source_id.to_owned());
                return Ok(true);
            }
            self.report
                .merged
                .push((source_id.to_owned(), candidate_id.to_owned()));
            self.ids
                .remember("Patient", source_id, candidate_id.to_owned());
            return Ok(true);
        }
        Ok(false)
    }

    /// A clinical item or a coverage, with its allergy warnings acknowledged when the check
    /// stops it.
    async fn item(&mut self, resource: Value, source_id: &str, id: Uuid) -> anyhow::Result<()> {
        let kind = resource["resourceType"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        // Its FHIR id here: the patient's and its own, as 64 hex digits (what a later item's
        // reference to it is rewritten to, whether it is made now or was in an earlier run).
        let given = subject_of(&resource)
            .and_then(|p| Uuid::parse_str(&p).ok())
            .map(|patient| format!("{}{}", patient.simple(), id.simple()));
        if let (Some(given), "Coverage") = (&given, kind.as_str()) {
            // A coverage is a part of the patient record, not an item: one added in an earlier
            // run is found by its id.
            let (found, _) = self
                .send(
                    (Method::GET, format!("/fhir/R4/Coverage/{given}")),
                    &Value::Null,
                    (None, &[]),
                )
                .await?;
            if found == StatusCode::OK {
                Self::count(&mut self.report.already, &kind);
                self.ids.remember(kind, source_id, given.clone());
                return Ok(());
            }
        }
        let reason_header = ("x-change-reason", format!("imported from {}", self.source));
        let mut headers = vec![reason_header];
        let (mut status, mut answer) = self
            .send(
                (Method::POST, format!("/fhir/R4/{kind}")),
                &resource,
                (Some(id), &headers),
            )
            .await?;
        if status == StatusCode::CONFLICT && diagnostics(&answer).starts_with("allergy-warning") {
            let allergies: Vec<String> = warned(&answer, "allergy-warning: AllergyIntolerance/")
                .iter()
                .filter_map(|w| w.split_whitespace().next().map(str::to_owned))
                .collect();
            headers.push((crate::http::fhir::ACKNOWLEDGE, allergies.join(",")));
            (status, answer) = self
                .send(
                    (Method::POST, format!("/fhir/R4/{kind}")),
                    &resource,
                    (Some(id), &headers),
                )
                .await?;
            if status == StatusCode::CREATED {
                self.report.acknowledged += 1;
            }
        }
        match status.as_u16() {
            201 => Self::count(&mut self.report.imported, &kind),
            409 if diagnostics(&answer).starts_with("item-id-in-use") => {
                Self::count(&mut self.report.already, &kind);
            }
            _ => {
                self.refuse(&kind, reason(status, &answer));
                return Ok(());
            }
        }
        if let Some(given) = given.or_else(|| answer["id"].as_str().map(str::to_owned)) {
            self.ids.remember(kind, source_id, given);
        }
        Ok(())
    }

    /// Rewrites `resource`'s references to what the import made of their targets; one to
    /// anything else is left out, keeping its display.
    fn rewrite_references(&self, resource: &mut Value) {
        fn walk(value: &mut Value, ids: &Ids) {
            match value {
                Value::Object(object) => {
                    if let Some(reference) = object.get("reference").and_then(Value::as_str) {
                        match ids.find(reference) {
                            Some((kind, given)) => {
                                let rewritten = format!("{kind}/{given}");
                                object.insert("reference".into(), json!(rewritten));
                            }
                            None => {
                                object.remove("reference");
                            }
                        }
                    }
                    for item in object.values_mut() {
                        walk(item, ids);
                    }
                    // A reference left with nothing else says nothing.
                    object.retain(|_, v| {
                        !(v.is_object() && v.as_object().is_some_and(Map::is_empty))
                    });
                }
                Value::Array(items) => {
                    for item in items.iter_mut() {
                        walk(item, ids);
                    }
                    items.retain(|v| !(v.is_object() && v.as_object().is_some_and(Map::is_empty)));
                }
                _ => {}
            }
        }
        walk(resource, &self.ids);
    }
}

/// The source patient a resource is about (its `subject`, `patient` or `beneficiary`).
fn subject_of(resource: &Value) -> Option<String> {
    ["subject", "patient", "beneficiary"]
        .iter()
        .find_map(|k| resource[*k]["reference"].as_str())
        .map(|r| {
            r.strip_prefix("urn:uuid:")
                .or_else(|| r.strip_prefix("Patient/"))
                .unwrap_or(r)
                .to_owned()
        })
}

/// The first issue's diagnostics of an OperationOutcome.
fn diagnostics(outcome: &Value) -> &str {
    outcome["issue"][0]["diagnostics"]
        .as_str()
        .unwrap_or_default()
}

/// Why an answer refused: its status, the first issue's code and where (or, from the native
/// API, the problem's type and its first field and message).
fn reason(status: StatusCode, outcome: &Value) -> String {
    if let Some(kind) = outcome["type"].as_str() {
        let error = &outcome["errors"][0];
        let field = error["field"].as_str().unwrap_or_default();
        let message = error["message"].as_str().unwrap_or_default();
        return format!("{} {kind} at {field}: {message}", status.as_u16());
    }
    let issue = &outcome["issue"][0];
    let code = issue["code"].as_str().unwrap_or("error");
    let at = issue["expression"][0].as_str().unwrap_or_default();
    let rule = diagnostics(outcome)
        .split(':')
        .next()
        .filter(|r| !r.contains(' '))
        .unwrap_or_default();
    let mut reason = format!("{} {code}", status.as_u16());
    if !rule.is_empty() {
        reason.push_str(&format!(" {rule}"));
    }
    if !at.is_empty() {
        reason.push_str(&format!(" at {at}"));
    }
    // A field's rule, as the API words it (never the value sent).
    if rule.is_empty() {
        if let Some(message) = issue["diagnostics"].as_str().filter(|m| m.len() <= 200) {
            reason.push_str(&format!(": {message}"));
        }
    }
    reason
}

/// What the warning issues of an OperationOutcome name after `prefix` (a 409's first issue
/// says what happened, the others what it concerns): the candidates of a `possible-duplicate`
/// (`<id> (<grade>)`) or the allergies of an `allergy-warning`.
fn warned(outcome: &Value, prefix: &str) -> Vec<String> {
    outcome["issue"]
        .as_array()
        .into_iter()
        .flatten()
        .skip(1)
        .filter_map(|i| i["diagnostics"].as_str())
        .filter_map(|d| d.strip_prefix(prefix))
        .map(str::to_owned)
        .collect()
}

/// Gives the phones of `patient` without a country code the one of its first address's
/// country ([`CALLING_CODES`]).
fn with_calling_codes(patient: &mut Value) {
    let country = patient["address"][0]["country"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let Some((_, code)) = CALLING_CODES
        .iter()
        .find(|(c, _)| c.eq_ignore_ascii_case(&country))
    else {
        return;
    };
    for telecom in patient["telecom"].as_array_mut().into_iter().flatten() {
        if telecom["system"] != "phone" {
            continue;
        }
        let Some(number) = telecom["value"].as_str() else {
            continue;
        };
        if number.trim_start().starts_with('+') {
            continue;
        }
        let digits: String = number.chars().filter(char::is_ascii_digit).collect();
        let national = digits.trim_start_matches('0');
        let national = national
            .strip_prefix(code)
            .filter(|_| *code == "1" && digits.len() == 11)
            .unwrap_or(national);
        telecom["value"] = json!(format!("+{code}{national}"));
    }
}

/// Imports the files at `path` under the source name `source` through `router` (the
/// service's, on its database), and reports what became of every resource.
///
/// # Errors
///
/// A source file that cannot be read; the service failing (a refusal of a resource is
/// counted, not an error).
pub async fn import(
    router: Router,
    (path, source): (&Path, &str),
    home_organization: Option<String>,
) -> anyhow::Result<Report> {
    let files = files(path)?;
    let user = AuthUser {
        id: format!("import:{source}"),
        roles: vec![Role::Importer],
        patient_id: None,
        organization: home_organization,
        session_id: format!("import-{}", Uuid::new_v4()),
        purpose: access::Purpose::Operations,
        break_glass: None,
        request_id: None,
        traceparent: None,
        scopes: None,
        launch_patient: None,
        confined_to: None,
    };
    let mut importer = Importer {
        router,
        user,
        source: source.to_owned(),
        ids: Ids::default(),
        refused_patients: std::collections::HashSet::new(),
        report: Report::default(),
    };
    // One file at a time: memory holds the largest file, not the whole source.
    let progress = indicatif::ProgressBar::with_draw_target(
        Some(files.len() as u64),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} files {per_sec} {eta}")
    {
        progress.set_style(style);
    }
    for file in &files {
        for resource in read(file, &mut importer.report.skipped)? {
            importer.import(resource).await?;
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    Ok(importer.report)
}
