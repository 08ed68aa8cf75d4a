//! Request bodies as types. Each body is a serde type that describes itself as a JSON Schema
//! (`schemars`, the source of the API's description), whose fields are [`Field`]s: a field
//! that is absent or has the wrong shape does not stop the others from being read, so a body
//! is refused naming every bad field at once, in the order its rules are checked, each by its
//! path (`contact.phones[0].number`). Unknown fields are found against the same schema and
//! refused first. What a shape cannot say (a date in the future, a phone number that is not
//! E.164, one preferred entry) is checked while converting the body into domain values, every
//! rule at once ([`AllOk`]).
//!
//! A `null` member counts as absent, as it always has in this API.

pub mod governance;
pub mod patient;
pub mod record;
pub mod scheduling;

use std::any::TypeId;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use domain::{FieldError, FieldErrors};
use jsonschema::error::ValidationErrorKind;
use jsonschema::Validator;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

/// A request body: deserialized, and described by a JSON Schema.
pub trait Body: DeserializeOwned + JsonSchema + 'static {}

impl<T: DeserializeOwned + JsonSchema + 'static> Body for T {}

/// The JSON Schema of `T` as the API checks it, every subschema inline.
pub fn schema<T: Body>() -> Value {
    schemars::generate::SchemaSettings::draft2020_12()
        .with(|s| s.inline_subschemas = true)
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value()
}

/// The checking validator of each body type, built once.
fn validator<T: Body>() -> Arc<Validator> {
    static VALIDATORS: OnceLock<RwLock<HashMap<TypeId, Arc<Validator>>>> = OnceLock::new();
    let validators = VALIDATORS.get_or_init(RwLock::default);
    let id = TypeId::of::<T>();
    if let Some(found) = validators.read().ok().and_then(|v| v.get(&id).cloned()) {
        return found;
    }
    // A schema generated from a type is valid by construction; a failure here is a defect of
    // this module's, caught by its tests.
    let built = Arc::new(
        jsonschema::validator_for(&schema::<T>())
            .unwrap_or_else(|e| panic!("the schema of a request body does not compile: {e}")),
    );
    if let Ok(mut v) = validators.write() {
        v.insert(id, built.clone());
    }
    built
}

/// A body field as it arrived: absent (or `null`), present with the wrong shape (the wrong
/// JSON type), or given.
#[derive(Clone, Default)]
pub enum Field<T> {
    #[default]
    Absent,
    Misshapen,
    Given(T),
}

impl<T> std::fmt::Debug for Field<T> {
    // A field holds patient data: only whether it arrived is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Absent => "Absent",
            Self::Misshapen => "Misshapen",
            Self::Given(_) => "Given(..)",
        })
    }
}

/// What a field's JSON must look like, and what a caller is told when it does not.
pub trait Shape: DeserializeOwned {
    /// `must be a string`, ...
    const MUST_BE: &'static str;
    /// What an array of these must be.
    const ARRAY_MUST_BE: &'static str = "must be an array";
    /// Whether `null` reads as the member left out. Not for arrays: a client sending `null`
    /// where a list goes has a bug worth hearing about (send `[]` for none).
    const NULL_IS_ABSENT: bool = true;

    fn fits(value: &Value) -> bool;
}

impl Shape for String {
    const MUST_BE: &'static str = "must be a string";
    const ARRAY_MUST_BE: &'static str = "must be an array of strings";

    fn fits(value: &Value) -> bool {
        value.is_string()
    }
}

impl Shape for bool {
    const MUST_BE: &'static str = "must be true or false";

    fn fits(value: &Value) -> bool {
        value.is_boolean()
    }
}

impl Shape for i64 {
    const MUST_BE: &'static str = "must be a whole number";

    fn fits(value: &Value) -> bool {
        value.as_i64().is_some()
    }
}

impl<T: Shape> Shape for Vec<T> {
    const MUST_BE: &'static str = T::ARRAY_MUST_BE;
    const NULL_IS_ABSENT: bool = false;

    fn fits(value: &Value) -> bool {
        value.is_array()
    }
}

/// An item of an array: any value reads (as given or misshapen).
impl<T: Shape> Shape for Field<T> {
    const MUST_BE: &'static str = T::MUST_BE;
    const ARRAY_MUST_BE: &'static str = T::ARRAY_MUST_BE;

    fn fits(_: &Value) -> bool {
        true
    }
}

/// Declares body structs (JSON objects) as [`Shape`]s.
macro_rules! objects {
    ($($body:ty),+ $(,)?) => {
        $(
            impl $crate::http::input::Shape for $body {
                const MUST_BE: &'static str = "must be an object";

                fn fits(value: &serde_json::Value) -> bool {
                    value.is_object()
                }
            }
        )+
    };
}
pub(crate) use objects;

impl<'de, T: Shape> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Read as a value (not an option, which reads `null` as `None` too): bodies are read
        // from a parsed JSON value, so the only error here is serde's for a member left out.
        Ok(match Value::deserialize(deserializer) {
            Err(_) => Self::Absent,
            Ok(Value::Null) if T::NULL_IS_ABSENT => Self::Absent,
            Ok(value) if T::fits(&value) => match T::deserialize(value) {
                Ok(given) => Self::Given(given),
                Err(_) => Self::Misshapen,
            },
            Ok(_) => Self::Misshapen,
        })
    }
}

impl<T: JsonSchema> JsonSchema for Field<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }

    fn schema_id() -> std::borrow::Cow<'static, str> {
        T::schema_id()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(generator)
    }
}

impl<T: Shape> Field<T> {
    /// The value, required at `path`.
    ///
    /// # Errors
    ///
    /// `is required` when absent; what it must be when misshapen.
    pub fn required(&self, path: &str) -> Result<&T, FieldErrors> {
        match self {
            Self::Given(value) => Ok(value),
            Self::Absent => Err(FieldError::new(path, "is required").into()),
            Self::Misshapen => Err(FieldError::new(path, T::MUST_BE).into()),
        }
    }

    /// The value if given, at `path`.
    ///
    /// # Errors
    ///
    /// What it must be when misshapen.
    pub fn optional(&self, path: &str) -> Result<Option<&T>, FieldErrors> {
        match self {
            Self::Given(value) => Ok(Some(value)),
            Self::Absent => Ok(None),
            Self::Misshapen => Err(FieldError::new(path, T::MUST_BE).into()),
        }
    }

    /// Whether anything was sent (even of the wrong shape).
    pub fn is_sent(&self) -> bool {
        !matches!(self, Self::Absent)
    }
}

impl<T: Shape> Field<Vec<Field<T>>> {
    /// The items of an optional array at `path` (none when absent), each checked by `check`
    /// at `path[i]`.
    ///
    /// # Errors
    ///
    /// A misshapen array; every misshapen item; every refusal of `check`.
    pub fn each<U>(
        &self,
        path: &str,
        mut check: impl FnMut(&T, &str) -> Result<U, FieldErrors>,
    ) -> Result<Vec<U>, FieldErrors> {
        let items = self.optional(path)?.map_or(&[][..], Vec::as_slice);
        each(items, |i, item| {
            let at = format!("{path}[{i}]");
            match item {
                Field::Given(value) => check(value, &at),
                // A `null` item is an item of the wrong shape, not a missing field.
                _ => Err(FieldError::new(at, T::MUST_BE).into()),
            }
        })
    }

    /// How many items were sent.
    pub fn sent(&self) -> usize {
        match self {
            Self::Given(items) => items.len(),
            _ => 0,
        }
    }
}

/// A body of type `T`, and the unknown fields that were left out of it (refused, but not in
/// the way of checking the rest).
#[derive(Debug)]
pub struct Parsed<T> {
    body: T,
    unknown: FieldErrors,
}

impl<T> Parsed<T> {
    /// Converts the body into what it describes, refusing it for its unknown fields and for
    /// every refusal of `convert` (unknown fields first).
    ///
    /// # Errors
    ///
    /// The unknown fields and the refusals of `convert`.
    pub fn then<U>(
        self,
        convert: impl FnOnce(T) -> Result<U, FieldErrors>,
    ) -> Result<U, FieldErrors> {
        let converted = convert(self.body);
        if self.unknown.is_empty() {
            return converted;
        }
        let mut errors = self.unknown;
        if let Err(more) = converted {
            errors.extend(more);
        }
        Err(errors)
    }
}

/// Parses `object` (a body, or the part of one under `prefix`) as `T`: its unknown fields
/// (against `T`'s schema) are named and left out; every other field is read as it came.
///
/// # Errors
///
/// Only for a body type that has a field other than a [`Field`] (which reads whatever
/// arrives) and cannot read what arrived: "is not valid" at `prefix`, logged as a defect.
pub fn parse<T: Body>(object: &Map<String, Value>, prefix: &str) -> Result<Parsed<T>, FieldErrors> {
    // `null` members stay: a `Field` reads one as left out, except where a list goes.
    let mut value = Value::Object(object.clone());
    let validator = validator::<T>();
    let mut unknown = FieldErrors::new();
    let mut extra: Vec<(String, Vec<String>)> = Vec::new();
    for error in validator.iter_errors(&value) {
        if let ValidationErrorKind::AdditionalProperties { unexpected } = error.kind() {
            let pointer = error.instance_path().as_str().to_owned();
            let path = field_path(prefix, &pointer);
            for key in unexpected {
                unknown.push(FieldError::new(join(&path, key), "unknown field"));
            }
            extra.push((pointer, unexpected.clone()));
        }
    }
    for (pointer, keys) in extra {
        if let Some(Value::Object(object)) = value.pointer_mut(&pointer) {
            for key in keys {
                object.remove(&key);
            }
        }
    }
    match serde_json::from_value(value) {
        Ok(body) => Ok(Parsed { body, unknown }),
        Err(e) => {
            // A body whose fields are all `Field`s reads whatever its members hold.
            tracing::error!(error.category = %classify(&e), "a request body type does not read leniently");
            unknown.push(FieldError::new(prefix, "is not valid"));
            Err(unknown)
        }
    }
}

fn classify(error: &serde_json::Error) -> &'static str {
    match error.classify() {
        serde_json::error::Category::Data => "data",
        serde_json::error::Category::Syntax => "syntax",
        serde_json::error::Category::Io => "io",
        serde_json::error::Category::Eof => "eof",
    }
}

/// `prefix` and a JSON pointer as the API names fields: `contact.phones[0].number`.
fn field_path(prefix: &str, pointer: &str) -> String {
    let mut path = prefix.to_owned();
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            path.push_str(&format!("[{segment}]"));
        } else {
            path = join(&path, &segment);
        }
    }
    path
}

/// `key` under `path`, as the API names fields.
pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// A group of checks, each either a value or the fields it refuses: all of them, or every
/// refusal at once (in order).
pub trait AllOk {
    type Values;

    /// # Errors
    ///
    /// Every check's refusals, in order, when any refused.
    fn all_ok(self) -> Result<Self::Values, FieldErrors>;
}

macro_rules! all_ok {
    ($($name:ident),+) => {
        impl<$($name),+> AllOk for ($(Result<$name, FieldErrors>,)+) {
            type Values = ($($name,)+);

            #[allow(non_snake_case)]
            fn all_ok(self) -> Result<Self::Values, FieldErrors> {
                let ($($name,)+) = self;
                let mut errors = FieldErrors::new();
                $(
                    let $name = match $name {
                        Ok(value) => Some(value),
                        Err(e) => {
                            errors.extend(e);
                            None
                        }
                    };
                )+
                match ($($name,)+) {
                    ($(Some($name),)+) => Ok(($($name,)+)),
                    _ => Err(errors),
                }
            }
        }
    };
}

all_ok!(A, B);
all_ok!(A, B, C);
all_ok!(A, B, C, D);
all_ok!(A, B, C, D, E);
all_ok!(A, B, C, D, E, F);
all_ok!(A, B, C, D, E, F, G);
all_ok!(A, B, C, D, E, F, G, H);
all_ok!(A, B, C, D, E, F, G, H, I);
all_ok!(A, B, C, D, E, F, G, H, I, J);
all_ok!(A, B, C, D, E, F, G, H, I, J, K);
all_ok!(A, B, C, D, E, F, G, H, I, J, K, L);

/// Each item's check, all of them or every refusal.
///
/// # Errors
///
/// Every item's refusals, in order.
pub fn each<T, U>(
    items: impl IntoIterator<Item = T>,
    mut check: impl FnMut(usize, T) -> Result<U, FieldErrors>,
) -> Result<Vec<U>, FieldErrors> {
    let mut out = Vec::new();
    let mut errors = FieldErrors::new();
    for (i, item) in items.into_iter().enumerate() {
        match check(i, item) {
            Ok(value) => out.push(value),
            Err(e) => errors.extend(e),
        }
    }
    errors.into_result()?;
    Ok(out)
}

/// An optional value's check: absent stays absent.
///
/// # Errors
///
/// The check's refusals.
pub fn optional<T, U>(
    value: Option<T>,
    check: impl FnOnce(T) -> Result<U, FieldErrors>,
) -> Result<Option<U>, FieldErrors> {
    value.map(check).transpose()
}

/// A domain parse's single refusal as the refusals of a check.
///
/// # Errors
///
/// The refusal.
pub fn one<T>(result: Result<T, FieldError>) -> Result<T, FieldErrors> {
    result.map_err(FieldErrors::from)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[derive(Debug, Deserialize, JsonSchema)]
    #[schemars(deny_unknown_fields)]
    struct Outer {
        name: Field<Inner>,
        #[serde(default)]
        tags: Field<Vec<Field<String>>>,
        #[serde(default)]
        count: Field<i64>,
        #[serde(default)]
        flag: Field<bool>,
        #[serde(default)]
        nested: Field<Inner>,
    }

    #[derive(Debug, Deserialize, JsonSchema)]
    #[schemars(deny_unknown_fields)]
    struct Inner {
        family: Field<String>,
    }

    objects!(Inner);

    type Read = (
        String,
        Vec<String>,
        Option<i64>,
        Option<bool>,
        Option<String>,
    );

    fn family(inner: &Inner, at: &str) -> Result<String, FieldErrors> {
        inner.family.required(&format!("{at}.family")).cloned()
    }

    fn read(value: Value) -> Result<Read, Vec<(String, String)>> {
        let Value::Object(object) = value else {
            panic!("an object")
        };
        parse::<Outer>(&object, "")
            .and_then(|p| {
                p.then(|o| {
                    (
                        o.name.required("name").and_then(|n| family(n, "name")),
                        o.tags.each("tags", |t, _| Ok(t.clone())),
                        o.count.optional("count").map(Option::<&i64>::copied),
                        o.flag.optional("flag").map(Option::<&bool>::copied),
                        o.nested
                            .optional("nested")
                            .and_then(|n| optional(n, |n| family(n, "nested"))),
                    )
                        .all_ok()
                })
            })
            .map_err(|errors| {
                errors
                    .iter()
                    .map(|e| (e.field.clone(), e.message.clone()))
                    .collect()
            })
    }

    #[test]
    fn every_bad_field_is_named_by_its_path_in_order_without_quoting_it() {
        let errors = read(json!({
            "secret": "Ada",
            "name": { "family": 5, "x": 1 },
            "tags": ["a", 7],
            "count": 1.5,
            "flag": "yes",
            "nested": {},
        }))
        .unwrap_err();
        let mut unknown: Vec<_> = errors[..2].to_vec();
        unknown.sort();
        assert_eq!(
            unknown,
            [
                ("name.x".to_owned(), "unknown field".to_owned()),
                ("secret".to_owned(), "unknown field".to_owned()),
            ]
        );
        assert_eq!(
            errors[2..],
            [
                ("name.family".to_owned(), "must be a string".to_owned()),
                ("tags[1]".to_owned(), "must be a string".to_owned()),
                ("count".to_owned(), "must be a whole number".to_owned()),
                ("flag".to_owned(), "must be true or false".to_owned()),
                ("nested.family".to_owned(), "is required".to_owned()),
            ]
        );
    }

    #[test]
    fn null_is_absent_and_a_required_null_is_missing() {
        let read_back =
            read(json!({ "name": { "family": "L" }, "count": null, "nested": null })).unwrap();
        assert_eq!(read_back, ("L".to_owned(), vec![], None, None, None));
        assert_eq!(
            read(json!({ "name": { "family": null } })).unwrap_err(),
            [("name.family".to_owned(), "is required".to_owned())]
        );
        assert_eq!(
            read(json!({ "name": ["L"] })).unwrap_err(),
            [("name".to_owned(), "must be an object".to_owned())]
        );
    }

    #[test]
    fn an_array_item_of_null_is_misshapen_and_an_array_of_strings_says_so() {
        assert_eq!(
            read(json!({ "name": { "family": "L" }, "tags": ["a", null] })).unwrap_err(),
            [("tags[1]".to_owned(), "must be a string".to_owned())]
        );
        assert_eq!(
            read(json!({ "name": { "family": "L" }, "tags": "a" })).unwrap_err(),
            [("tags".to_owned(), "must be an array of strings".to_owned())]
        );
    }

    #[test]
    fn a_field_shows_whether_it_arrived_never_what() {
        let given: Field<String> = Field::Given("Ada Lovelace".to_owned());
        assert_eq!(format!("{given:?}"), "Given(..)");
    }

    /// Every body's schema compiles (a failure would otherwise surface on a request) and
    /// says what the body requires and that nothing else is accepted.
    #[test]
    fn every_body_has_a_schema_that_compiles_and_refuses_unknown_fields() {
        fn check<T: Body>(required: &[&str]) {
            validator::<T>();
            let schema = schema::<T>();
            assert_eq!(
                schema["additionalProperties"],
                false,
                "{}",
                T::schema_name()
            );
            let mut listed: Vec<&str> = schema["required"]
                .as_array()
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            listed.sort_unstable();
            let mut expected = required.to_vec();
            expected.sort_unstable();
            assert_eq!(listed, expected, "{}", T::schema_name());
        }
        use crate::http::input::governance::*;
        use crate::http::input::patient::*;
        use crate::http::input::record::*;
        use crate::http::input::scheduling::*;
        check::<RegistrationBody>(&["name", "gender"]);
        check::<CandidateBody>(&[]);
        check::<CorrectionBody>(&["reason"]);
        check::<ContactBody>(&[]);
        check::<IdentifierBody>(&["system", "value"]);
        check::<IdentifierRemovalBody>(&["system", "value", "reason"]);
        check::<PreferencesBody>(&[]);
        check::<EmergencyContactBody>(&["name", "relationship"]);
        check::<CoverageBody>(&["payer", "member_id", "start", "priority"]);
        check::<CoverageEndBody>(&["end", "reason"]);
        check::<ReasonBody>(&["reason"]);
        // As in FHIR's AllergyIntolerance and MedicationStatement: what it is and whether it
        // stands; everything else when known.
        check::<AllergyBody>(&["substance", "clinical_status"]);
        check::<MedicationBody>(&["medication", "status"]);
        check::<ImmunizationBody>(&["vaccine", "occurred_on", "status"]);
        check::<ProblemBody>(&["condition", "clinical_status"]);
        check::<HistoryBody>(&["category", "description"]);
        check::<DocumentBody>(&["title", "document_type", "author", "date"]);
        check::<CareRelationshipBody>(&["practitioner", "role"]);
        check::<ConsentBody>(&["directive"]);
        check::<ForgetBody>(&["reason"]);
        check::<MergeBody>(&["target_id", "reason"]);
        check::<ResourceBody>(&["kind", "name"]);
        check::<BlockBody>(&["from", "to", "reason"]);
        check::<ServiceBody>(&["name", "minutes"]);
        check::<BookingBody>(&["patient_id", "service", "start"]);
        check::<WaitlistBody>(&["patient_id", "service", "from", "to"]);
        check::<CancelBody>(&["reason"]);
        check::<RescheduleBody>(&["start", "reason"]);
    }

    #[test]
    fn all_ok_keeps_every_refusal_in_order() {
        let a: Result<u8, FieldErrors> = Err(FieldError::new("a", "x").into());
        let b: Result<u8, FieldErrors> = Ok(1);
        let c: Result<u8, FieldErrors> = Err(FieldError::new("c", "y").into());
        let errors = (a, b, c).all_ok().unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["a", "c"]);
        assert_eq!((Ok::<_, FieldErrors>(1), Ok(2)).all_ok().unwrap(), (1, 2));
    }
}
