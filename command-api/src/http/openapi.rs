//! The native API described as OpenAPI 3.1, by the routes themselves: every route is added
//! through [`Routes::route`] together with its [`Operation`]s (a route without one stops the
//! router being built, which every test does), a request body is described by the very
//! type the API reads it into and checks it against ([`input::schema`]), and an answer by the
//! very type its handler serializes ([`Operation::returns`]; an answer left undescribed stops
//! the document being built), so the description cannot drift from what is served. The FHIR
//! API is described by its own CapabilityStatement (`/fhir/R4/metadata`).
//!
//! Each operation names the permission it needs (the roles come from the policy table), its
//! parameters, the answer it gives when it succeeds, and the problem types it may answer with
//! (RFC 9457, `application/problem+json`).

use axum::http::Method;
use axum::routing::MethodRouter;
use axum::Router;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{json, Map, Value};

use crate::auth::{policy, Action, Role};
use crate::http::input::{self, Body};
use crate::http::{AppState, PROBLEM_JSON};

/// The routes of the native API and what describes them, built together.
#[derive(Default)]
pub struct Routes {
    router: Router<AppState>,
    operations: Vec<Operation>,
}

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routes")
            .field("operations", &self.operations.len())
            .finish_non_exhaustive()
    }
}

impl Routes {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `methods` at `path`, described by `operations` (at least one: a route is never
    /// served undescribed). An operation that names no path of its own is at `path`.
    ///
    /// # Panics
    ///
    /// When `operations` is empty: a defect every test run finds at once.
    #[must_use]
    pub fn route(
        mut self,
        path: &str,
        methods: MethodRouter<AppState>,
        operations: impl IntoIterator<Item = Operation>,
    ) -> Self {
        let before = self.operations.len();
        self.operations.extend(operations.into_iter().map(|mut op| {
            op.path.get_or_insert_with(|| path.to_owned());
            op
        }));
        assert!(
            self.operations.len() > before,
            "the route {path} is served undescribed"
        );
        self.router = self.router.route(path, methods);
        self
    }

    #[must_use]
    pub fn merge(mut self, other: Routes) -> Self {
        self.router = self.router.merge(other.router);
        self.operations.extend(other.operations);
        self
    }

    /// The router, and the OpenAPI document describing it.
    pub fn into_parts(self) -> (Router<AppState>, Value) {
        let document = document(&self.operations);
        (self.router, document)
    }
}

/// What a query parameter holds.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Text,
    /// A whole number from the first to the second, inclusive.
    Whole(i64, i64),
    Flag,
    Date,
    Instant,
    Id,
}

impl Kind {
    fn schema(self) -> Value {
        match self {
            Self::Text => json!({ "type": "string" }),
            Self::Whole(min, max) => json!({ "type": "integer", "minimum": min, "maximum": max }),
            Self::Flag => json!({ "type": "boolean" }),
            Self::Date => json!({ "type": "string", "format": "date" }),
            Self::Instant => json!({ "type": "string", "format": "date-time" }),
            Self::Id => json!({ "type": "string", "format": "uuid" }),
        }
    }
}

/// A query parameter: its name, what it holds, and whether it must be given.
pub type Param = (&'static str, Kind, bool);

/// Who may call an operation.
#[derive(Debug, Clone, Copy)]
enum Caller {
    /// Anyone: no token (health checks, metrics, the description, the token endpoint).
    Anyone,
    /// Any authenticated caller.
    Authenticated,
    /// A caller whose role the policy allows this action.
    Allowed(Action),
}

/// One operation of the API, as the document describes it.
#[derive(Debug, Clone)]
pub struct Operation {
    method: Method,
    path: Option<String>,
    summary: &'static str,
    caller: Caller,
    body: Option<(&'static str, Value)>,
    query: Vec<Param>,
    path_params: Vec<(&'static str, Value)>,
    /// The answer when it succeeds: status, description and body (`None` until described).
    answer: (u16, &'static str, Option<Shape>),
    /// Other answers: status, description and body.
    also: Vec<(u16, &'static str, Shape)>,
    if_match: bool,
    idempotent: bool,
}

/// The body of an answer.
#[derive(Debug, Clone)]
enum Shape {
    /// No body.
    Empty,
    /// Of a content type, shaped as a schema.
    Schema(&'static str, Value),
    /// Of a content type, the type a handler serializes: its schema (its named parts in the
    /// document's components) is generated when the document is.
    Typed(&'static str, fn(&mut SchemaGenerator) -> Schema),
}

impl Shape {
    fn typed<T: JsonSchema>(content_type: &'static str) -> Self {
        Self::Typed(content_type, |generator| generator.subschema_for::<T>())
    }

    /// The content type and schema, unless there is no body.
    fn content(&self, generator: &mut SchemaGenerator) -> Option<(&'static str, Value)> {
        match self {
            Self::Empty => None,
            Self::Schema(content_type, schema) => Some((content_type, schema.clone())),
            Self::Typed(content_type, schema) => Some((content_type, schema(generator).to_value())),
        }
    }
}

fn operation(method: Method, summary: &'static str) -> Operation {
    let answer = if method == Method::POST {
        (201, "Done; the resource as it is now", None)
    } else {
        (200, "The resource", None)
    };
    Operation {
        method,
        path: None,
        summary,
        caller: Caller::Anyone,
        body: None,
        query: Vec::new(),
        path_params: Vec::new(),
        answer,
        also: Vec::new(),
        if_match: false,
        idempotent: false,
    }
}

pub fn get(summary: &'static str) -> Operation {
    operation(Method::GET, summary)
}

pub fn post(summary: &'static str) -> Operation {
    operation(Method::POST, summary)
}

pub fn put(summary: &'static str) -> Operation {
    operation(Method::PUT, summary)
}

pub fn delete(summary: &'static str) -> Operation {
    operation(Method::DELETE, summary)
}

impl Operation {
    /// Needs a token whose role the policy allows `action`.
    #[must_use]
    pub fn needs(mut self, action: Action) -> Self {
        self.caller = Caller::Allowed(action);
        self
    }

    /// Needs a token, of any role.
    #[must_use]
    pub fn authenticated(mut self) -> Self {
        self.caller = Caller::Authenticated;
        self
    }

    /// Takes a JSON body of type `T`: the schema it is checked against.
    #[must_use]
    pub fn body<T: Body>(self) -> Self {
        self.body_as("application/json", input::schema::<T>())
    }

    /// Takes a body of `content_type` shaped as `schema`.
    #[must_use]
    pub fn body_as(mut self, content_type: &'static str, mut schema: Value) -> Self {
        if let Some(object) = schema.as_object_mut() {
            object.remove("$schema");
        }
        self.body = Some((content_type, schema));
        self
    }

    #[must_use]
    pub fn query(mut self, params: &[Param]) -> Self {
        self.query.extend_from_slice(params);
        self
    }

    /// The path parameter `name` is shaped as `schema` (by default an id is a UUID and
    /// anything else a string).
    #[must_use]
    pub fn path_param(mut self, name: &'static str, schema: Value) -> Self {
        self.path_params.push((name, schema));
        self
    }

    /// Answers `status` when it succeeds, with the body [`Operation::returns`] names.
    #[must_use]
    pub fn answers(mut self, status: u16, description: &'static str) -> Self {
        self.answer.0 = status;
        self.answer.1 = description;
        self
    }

    /// Answers with a `T` as JSON when it succeeds: the schema of the very type the handler
    /// serializes, so the description cannot drift from the answer.
    #[must_use]
    pub fn returns<T: JsonSchema>(self) -> Self {
        self.returns_as::<T>("application/json")
    }

    /// Answers with a `T` as `content_type` (a JSON type) when it succeeds.
    #[must_use]
    pub fn returns_as<T: JsonSchema>(mut self, content_type: &'static str) -> Self {
        self.answer.2 = Some(Shape::typed::<T>(content_type));
        self
    }

    /// Answers `status` with a body of `content_type` shaped as `schema` when it succeeds.
    #[must_use]
    pub fn answers_as(
        mut self,
        status: u16,
        description: &'static str,
        content_type: &'static str,
        schema: Value,
    ) -> Self {
        self.answer = (
            status,
            description,
            Some(Shape::Schema(content_type, schema)),
        );
        self
    }

    /// May also answer `status` with a `T` as JSON when it succeeds.
    #[must_use]
    pub fn also_returns<T: JsonSchema>(mut self, status: u16, description: &'static str) -> Self {
        let shape = Shape::typed::<T>("application/json");
        self.also.push((status, description, shape));
        self
    }

    /// Answers `status` with no body when it succeeds.
    #[must_use]
    pub fn answers_nothing(mut self, status: u16, description: &'static str) -> Self {
        self.answer = (status, description, Some(Shape::Empty));
        self
    }

    /// Needs `If-Match` with the version the change was made against.
    #[must_use]
    pub fn if_match(mut self) -> Self {
        self.if_match = true;
        self
    }

    /// A change of something that exists: needs `If-Match`, takes an `Idempotency-Key`, and
    /// answers 200 with it as it is now, its version in `ETag`.
    #[must_use]
    pub fn change(self) -> Self {
        self.if_match().idempotent().answers(
            200,
            "Changed; the resource as it is now, its version in `ETag`",
        )
    }

    /// Takes an `Idempotency-Key`.
    #[must_use]
    pub fn idempotent(mut self) -> Self {
        self.idempotent = true;
        self
    }

    /// Describes this operation at `path` rather than the route's (a route whose last segment
    /// is a closed list of actions is described one action at a time).
    #[must_use]
    pub fn at(mut self, path: &str) -> Self {
        self.path = Some(path.to_owned());
        self
    }

    /// The method and path this operation is described at.
    pub fn method_and_path(&self) -> (&Method, &str) {
        (&self.method, self.path.as_deref().unwrap_or_default())
    }

    /// The roles that may call this operation (none: no token needed; all: any role).
    pub fn roles(&self) -> Option<Vec<Role>> {
        match self.caller {
            Caller::Anyone => None,
            Caller::Authenticated => Some(Role::ALL.to_vec()),
            Caller::Allowed(action) => Some(
                Role::ALL
                    .iter()
                    .copied()
                    .filter(|r| policy::allows(*r, action))
                    .collect(),
            ),
        }
    }
}

/// The problem types, by the status they are answered with, and when.
pub const PROBLEM_TYPES: &[(u16, &str, &str)] = &[
    (
        400,
        "invalid-parameters",
        "a path, query or header parameter is bad (`errors` names each)",
    ),
    (400, "malformed-json", "the body is not a JSON object"),
    (401, "unauthenticated", "no valid bearer token"),
    (
        403,
        "forbidden",
        "the caller's role or reach does not allow it",
    ),
    (
        404,
        "not-found",
        "no such resource within the caller's reach",
    ),
    (
        405,
        "method-not-allowed",
        "the path does not take this method",
    ),
    (409, "conflict", "a concurrent change: try again"),
    (
        409,
        "possible-duplicate",
        "the patient is likely registered already (`candidates`)",
    ),
    (
        409,
        "time-taken",
        "the time is booked (`alternatives` where it could go)",
    ),
    (
        409,
        "allergy-warning",
        "the medication matches active allergies: acknowledge them",
    ),
    (
        409,
        "business-rule",
        "a rule of the record forbids it (`code` names the rule)",
    ),
    (
        409,
        "idempotency-key-reused",
        "the Idempotency-Key was used for another request",
    ),
    (410, "erased", "the patient was forgotten"),
    (
        412,
        "stale-version",
        "If-Match names an older version (`current_version`)",
    ),
    (413, "payload-too-large", "the body is over the limit"),
    (
        415,
        "unsupported-media-type",
        "the body is not of a content type the route takes",
    ),
    (
        422,
        "validation-error",
        "fields of the body break the rules (`errors` names each)",
    ),
    (
        422,
        "business-rule",
        "a rule of the record forbids it (`code` names the rule)",
    ),
    (428, "precondition-required", "If-Match is required"),
    (
        429,
        "emergency-access-limit",
        "break-the-glass asked for more patients than allowed an hour",
    ),
    (
        500,
        "internal",
        "the service failed (a stored event it cannot trust, say): `x-request-id` names it in \
         the logs",
    ),
    (
        503,
        "overloaded",
        "more requests in flight than taken at once: retry after `Retry-After`",
    ),
    (
        503,
        "unavailable",
        "the database or a dependency is unreachable: retry",
    ),
    (503, "service-unavailable", "the request took too long"),
];

/// The statuses `op` may answer with a problem, beyond its success.
fn problem_statuses(op: &Operation) -> Vec<u16> {
    let path = op.path.as_deref().unwrap_or_default();
    let writes = op.method != Method::GET;
    let mut statuses = vec![500, 503];
    if !matches!(op.caller, Caller::Anyone) {
        statuses.push(401);
    }
    if matches!(op.caller, Caller::Allowed(_)) {
        statuses.extend([403, 429]);
    }
    if !op.query.is_empty() || path.contains('{') || op.if_match || op.idempotent {
        statuses.push(400);
    }
    // A path naming something, or a query naming a patient, may name what is not there.
    if path.contains('{') || op.query.iter().any(|(_, kind, _)| matches!(kind, Kind::Id)) {
        statuses.extend([404, 410]);
    }
    if op.body.is_some() {
        statuses.extend([400, 413, 415, 422]);
    }
    if writes && !matches!(op.caller, Caller::Anyone) {
        statuses.extend([409, 422]);
    }
    if op.if_match {
        statuses.extend([412, 428]);
    }
    statuses.sort_unstable();
    statuses.dedup();
    statuses
}

/// The name, in the document's components, of the problem answer of `status`.
fn problem_response_name(status: u16) -> String {
    format!("Problem{status}")
}

/// The problem answer of `status`: its description, content type and schema.
fn problem_response(status: u16) -> (String, (&'static str, Value)) {
    let schema = json!({ "$ref": "#/components/schemas/Problem" });
    (problem_description(status), (PROBLEM_JSON, schema))
}

/// The problem types answered with `status`, and when.
fn problem_description(status: u16) -> String {
    let types: Vec<String> = PROBLEM_TYPES
        .iter()
        .filter(|(s, _, _)| *s == status)
        .map(|(_, slug, when)| format!("`/problems/{slug}`: {when}"))
        .collect();
    types.join("; ")
}

/// Adds an answer to `responses`; a status answered already gains the content type (its
/// descriptions joined), or, answered with that content type already, the schema as another
/// shape the body may take.
fn add_response(
    responses: &mut Map<String, Value>,
    status: u16,
    description: &str,
    content: Option<(&str, Value)>,
) {
    let response = responses
        .entry(status.to_string())
        .or_insert_with(|| json!({ "description": "" }));
    let joined = match response["description"].as_str() {
        Some("") | None => description.to_owned(),
        Some(before) => format!("{before}; or {description}"),
    };
    response["description"] = json!(joined);
    if let Some((content_type, schema)) = content {
        let slot = &mut response["content"][content_type]["schema"];
        *slot = match slot.take() {
            Value::Null => schema,
            before => json!({ "anyOf": [before, schema] }),
        };
    }
}

fn path_parameters(op: &Operation) -> Vec<Value> {
    let path = op.path.as_deref().unwrap_or_default();
    path.split('/')
        .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| {
            let schema = op.path_params.iter().find(|(n, _)| *n == name).map_or_else(
                || match name {
                    "id" | "item" | "session_id" => Kind::Id.schema(),
                    _ => Kind::Text.schema(),
                },
                |(_, s)| s.clone(),
            );
            json!({ "name": name, "in": "path", "required": true, "schema": schema })
        })
        .collect()
}

fn describe(op: &Operation, generator: &mut SchemaGenerator) -> Value {
    let mut parameters = path_parameters(op);
    parameters.extend(op.query.iter().map(|(name, kind, required)| {
        json!({ "name": name, "in": "query", "required": required, "schema": kind.schema() })
    }));
    if op.if_match {
        parameters.push(json!({
            "name": "If-Match", "in": "header", "required": true,
            "description": "The version the change was made against, as the ETag gave it: `\"3\"`",
            "schema": { "type": "string", "pattern": "^\"[0-9]+\"$" },
        }));
    }
    if op.idempotent {
        parameters.push(json!({
            "name": "Idempotency-Key", "in": "header", "required": false,
            "description": "A repeat with the same key gets the first answer, and changes nothing",
            "schema": { "type": "string", "minLength": 1, "maxLength": 255 },
        }));
    }
    let (status, description, shape) = &op.answer;
    let Some(shape) = shape else {
        let (method, path) = op.method_and_path();
        panic!("{method} {path} answers undescribed: name its type with `returns`");
    };
    let mut responses = Map::new();
    let content = shape.content(generator);
    add_response(&mut responses, *status, description, content);
    for (status, description, shape) in &op.also {
        let content = shape.content(generator);
        add_response(&mut responses, *status, description, content);
    }
    for status in problem_statuses(op) {
        let key = status.to_string();
        if responses.contains_key(&key) {
            // Answered otherwise too (an OAuth error): the problem joins that answer.
            let (description, content) = problem_response(status);
            add_response(&mut responses, status, &description, Some(content));
        } else {
            let shared = format!("#/components/responses/{}", problem_response_name(status));
            responses.insert(key, json!({ "$ref": shared }));
        }
    }
    let mut described = json!({
        "summary": op.summary,
        "operationId": operation_id(op),
        "tags": [tag(op.path.as_deref().unwrap_or_default())],
        "parameters": parameters,
        "responses": responses,
    });
    match op.roles() {
        None => described["security"] = json!([]),
        Some(roles) => {
            let names: Vec<&str> = roles.iter().map(Role::as_str).collect();
            described["x-roles"] = json!(names);
            described["description"] = json!(format!("Roles: {}.", names.join(", ")));
        }
    }
    if let Some((content_type, schema)) = &op.body {
        described["requestBody"] = json!({
            "required": true,
            "content": { *content_type: { "schema": schema } },
        });
    }
    described
}

/// `post_v1_patients_id_archive`: unique per method and path.
fn operation_id(op: &Operation) -> String {
    let path: String = op
        .path
        .as_deref()
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let mut id = format!("{}{path}", op.method.as_str().to_ascii_lowercase());
    while id.contains("__") {
        id = id.replace("__", "_");
    }
    id.trim_end_matches('_').to_owned()
}

/// The part of the API a path belongs to: its first segment after the version.
fn tag(path: &str) -> &str {
    let mut segments = path.trim_start_matches('/').split('/');
    match segments.next() {
        Some("v1") => match (segments.next(), segments.nth(1)) {
            (Some("patients"), Some(part)) if !part.starts_with('{') && part != "$match" => part,
            (Some(first), _) => first,
            (None, _) => "v1",
        },
        Some(first) => first,
        None => "",
    }
}

fn problem_schema() -> Value {
    let types: Vec<String> = PROBLEM_TYPES
        .iter()
        .map(|(_, slug, _)| format!("/problems/{slug}"))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    json!({
        "type": "object",
        "description": "An RFC 9457 problem. Extension members of a type may appear beside these.",
        "required": ["type", "title", "status"],
        "properties": {
            "type": { "type": "string", "enum": types },
            "title": { "type": "string" },
            "status": { "type": "integer", "minimum": 400, "maximum": 599 },
            "detail": { "type": "string" },
            "code": { "type": "string", "description": "The rule a business-rule problem names" },
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["field", "message"],
                    "properties": {
                        "field": { "type": "string", "description": "The field's path: `contact.phones[0].number`" },
                        "message": { "type": "string" },
                    },
                },
            },
        },
    })
}

/// The OpenAPI 3.1 document of `operations`.
fn document(operations: &[Operation]) -> Value {
    // One generator for every answer, so that a type answered by many operations is described
    // once, in the components, under a name of its own.
    let mut generator = schemars::generate::SchemaSettings::draft2020_12()
        .for_serialize()
        .with(|s| s.definitions_path = "/components/schemas/".into())
        .into_generator();
    let mut paths = Map::new();
    for op in operations {
        let path = op.path.clone().unwrap_or_default();
        let item = paths.entry(path).or_insert_with(|| json!({}));
        item[op.method.as_str().to_ascii_lowercase()] = describe(op, &mut generator);
    }
    let mut schemas: Map<String, Value> = generator.take_definitions(true);
    // Each problem answer is described once, and the operations refer to it.
    let mut problem_responses = Map::new();
    for (status, _, _) in PROBLEM_TYPES {
        let (description, (content_type, schema)) = problem_response(*status);
        problem_responses.insert(
            problem_response_name(*status),
            json!({
                "description": description,
                "content": { content_type: { "schema": schema } },
            }),
        );
    }
    let named_twice = schemas.insert("Problem".into(), problem_schema());
    assert!(
        named_twice.is_none(),
        "an answer type is named Problem, as RFC 9457's problem is: rename its schema"
    );
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Patient Service",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The native API of the Patient Service. Every error is an RFC 9457 \
                problem (application/problem+json). The FHIR R4 API at /fhir/R4 is described by \
                its CapabilityStatement (GET /fhir/R4/metadata).",
            "license": { "name": "Apache-2.0", "identifier": "Apache-2.0" },
        },
        "security": [{ "bearer": [] }],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "A JWT naming the caller's role (`role`), organization and session",
                },
            },
            "schemas": schemas,
            "responses": problem_responses,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operation_id_is_made_of_method_and_path() {
        let op = post("x").at("/v1/patients/{id}/$match");
        assert_eq!(operation_id(&op), "post_v1_patients_id_match");
    }

    #[test]
    fn a_path_is_tagged_by_its_part_of_the_api() {
        assert_eq!(tag("/v1/patients"), "patients");
        assert_eq!(tag("/v1/patients/{id}/allergies/{item}"), "allergies");
        assert_eq!(tag("/v1/appointments/{id}"), "appointments");
        assert_eq!(tag("/health/ready"), "health");
    }

    #[test]
    #[should_panic(expected = "served undescribed")]
    fn a_route_without_an_operation_does_not_build() {
        drop(Routes::new().route("/x", axum::routing::get(|| async {}), []));
    }
}
