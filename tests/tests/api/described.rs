//! Every answer the tests read through [`TestApp::get`](crate::helpers::TestApp::get) and
//! [`TestApp::post`](crate::helpers::TestApp::post) is checked against what the served OpenAPI
//! document says of it (by method, path and status): its status must be listed, its content
//! type given, and a JSON body must match the schema. The document is generated from the types
//! the handlers serialize; this is what shows that it describes what the service answers, in
//! every test that reads an answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;

/// What a `$ref` into `document` (to its components) names, or `value` itself.
pub fn named<'a>(document: &'a Value, value: &'a Value) -> &'a Value {
    match value["$ref"].as_str() {
        Some(reference) => document
            .pointer(reference.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("{reference} names nothing")),
        None => value,
    }
}

/// The served OpenAPI document and the validators built from it so far.
pub struct Description {
    document: Value,
    validators: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
}

impl Description {
    pub fn new(document: Value) -> Self {
        Self {
            document,
            validators: Mutex::default(),
        }
    }

    /// The path template `path` falls under, of those that take `method`: the one with the
    /// most literal segments (`/v1/patients/$match` before `/v1/patients/{id}`).
    fn template(&self, method: &str, path: &str) -> Option<&str> {
        let segments: Vec<&str> = path.split('/').collect();
        let paths = self.document["paths"].as_object()?;
        paths
            .iter()
            .filter(|(_, item)| item.get(method).is_some())
            .filter_map(|(template, _)| {
                let parts: Vec<&str> = template.split('/').collect();
                if parts.len() != segments.len() {
                    return None;
                }
                let mut literal = 0;
                for (part, segment) in parts.iter().zip(&segments) {
                    if part.starts_with('{') {
                        continue;
                    }
                    if part != segment {
                        return None;
                    }
                    literal += 1;
                }
                Some((literal, template.as_str()))
            })
            .max_by_key(|(literal, _)| *literal)
            .map(|(_, template)| template)
    }

    /// Panics when the answer `status`, of `content_type` with `body`, to `method path`
    /// (`path` may carry a query) contradicts the document. Paths it does not describe (the
    /// FHIR API, described by its CapabilityStatement) are not checked.
    pub fn check(&self, method: &str, path: &str, status: u16, content_type: &str, body: &[u8]) {
        let method = method.to_ascii_lowercase();
        let path = path.split('?').next().unwrap_or_default();
        let Some(template) = self.template(&method, path) else {
            return;
        };
        let answer = &self.document["paths"][template][&method]["responses"][status.to_string()];
        // A problem answer is described once, in the components.
        let answer = named(&self.document, answer);
        assert!(
            answer.is_object(),
            "{method} {template} answered {status}, which the OpenAPI document does not list"
        );
        let Some(contents) = answer.get("content").and_then(Value::as_object) else {
            assert!(
                body.is_empty(),
                "{method} {template} {status} has a body; the document describes none"
            );
            return;
        };
        let media_type = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let Some(content) = contents.get(&media_type).or_else(|| contents.get("*/*")) else {
            panic!(
                "{method} {template} {status} answered {media_type}; the document names {:?}",
                contents.keys().collect::<Vec<_>>()
            );
        };
        if !media_type.ends_with("json") {
            return;
        }
        let instance: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
            panic!("{method} {template} {status}: the {media_type} body is not JSON: {e}")
        });
        let key = format!("{method} {template} {status} {media_type}");
        let validator = self.validator(&key, &content["schema"]);
        let errors: Vec<String> = validator
            .iter_errors(&instance)
            .map(|e| format!("at {}: {e}", e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{key}: the answer contradicts the OpenAPI document:\n{}\nanswer: {instance}",
            errors.join("\n")
        );
    }

    fn validator(&self, key: &str, schema: &Value) -> Arc<jsonschema::Validator> {
        let mut validators = self.validators.lock().unwrap();
        validators
            .entry(key.to_owned())
            .or_insert_with(|| {
                let schema = self.resolved(schema);
                Arc::new(
                    jsonschema::validator_for(&schema)
                        .unwrap_or_else(|e| panic!("{key}: the schema does not compile: {e}")),
                )
            })
            .clone()
    }

    /// `schema` with the document's components beside it, for its `$ref`s to resolve.
    fn resolved(&self, schema: &Value) -> Value {
        let mut root = schema.clone();
        root["components"] = self.document["components"].clone();
        root
    }
}
