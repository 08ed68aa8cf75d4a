//! Parsing patient JSON (registrations and `$match` candidates) into domain values, naming
//! every bad field.

use application::registration::Registration;
use chrono::NaiveDate;
use domain::matching::MatchRecord;
use domain::patient::contact::{
    self, Address, AddressUse, ContactInformation, CountryCode, Email, EmailAddress, Identifier,
    Phone, PhoneNumber, PhoneUse, MAX_CONTACT_POINTS,
};
use domain::patient::record::{
    Channel, Coverage, CoveragePriority, EmergencyContact, LanguageTag, Preferences, QuietHours,
    Relationship, SubscriberRelationship,
};
use domain::patient::{
    AdministrativeGender, BirthDate, MaritalStatus, NameExtras, PersonName, Reason,
};
use domain::FieldError;
use serde_json::{Map, Value};

use crate::http::json::Fields;
use crate::http::ApiError;

const MAX_IDENTIFIERS: usize = 20;
const MAX_LANGUAGES: usize = 10;

const NAME_FIELDS: &[&str] = &["given", "family", "prefix", "suffix", "preferred"];
const REGISTRATION_FIELDS: &[&str] = &[
    "name",
    "birth_date",
    "gender",
    "marital_status",
    "languages",
    "identifiers",
    "contact",
    "duplicate_override",
];

/// Parses a registration body.
///
/// # Errors
///
/// [`ApiError::Validation`] naming every bad field.
pub fn registration(
    object: &Map<String, Value>,
    today: NaiveDate,
) -> Result<Registration, ApiError> {
    let mut fields = Fields::new(object, "", REGISTRATION_FIELDS);
    let name = name(&mut fields, true);
    let birth_date = fields
        .optional_string("birth_date")
        .and_then(|v| fields.check(BirthDate::parse("birth_date", v, today)));
    let gender = fields
        .string("gender")
        .and_then(|v| fields.check(AdministrativeGender::parse("gender", v)));
    let marital_status = marital_status(&mut fields);
    let languages = languages(&mut fields).unwrap_or_default();
    let identifiers = identifiers(&mut fields);
    let contact = contact(&mut fields);
    let duplicate_override = fields.optional_object("duplicate_override").and_then(|o| {
        let mut f = Fields::new(o, "duplicate_override", &["reason"]);
        let reason = f
            .string("reason")
            .and_then(|v| f.check(Reason::parse("duplicate_override.reason", v)));
        let errors = std::mem::take(&mut f.errors);
        fields.absorb(errors);
        reason
    });
    fields.finish()?;
    match (name, gender) {
        (Some(name), Some(gender)) => Ok(Registration {
            name,
            birth_date,
            gender,
            marital_status,
            languages,
            identifiers,
            contact,
            duplicate_override,
        }),
        // finish() returned early unless every required field parsed; kept total all the same.
        _ => Err(ApiError::Validation(domain::FieldErrors::new())),
    }
}

/// Parses a `$match` candidate: the registration fields, none required, at least one given.
///
/// # Errors
///
/// [`ApiError::Validation`] naming every bad field.
pub fn candidate(object: &Map<String, Value>, today: NaiveDate) -> Result<MatchRecord, ApiError> {
    let mut fields = Fields::new(
        object,
        "",
        &["name", "birth_date", "gender", "identifiers", "contact"],
    );
    let name = name(&mut fields, false);
    let birth_date = fields
        .optional_string("birth_date")
        .and_then(|v| fields.check(BirthDate::parse("birth_date", v, today)));
    if let Some(v) = fields.optional_string("gender") {
        fields.check(AdministrativeGender::parse("gender", v));
    }
    let identifiers = identifiers(&mut fields);
    let contact = contact(&mut fields);
    if object.values().all(Value::is_null) {
        fields.errors.push(FieldError::new(
            "",
            "give at least one field of the candidate patient",
        ));
    }
    fields.finish()?;
    Ok(application::registration::match_record(
        name.as_ref(),
        birth_date.map(|d| d.date()),
        &identifiers,
        &contact,
    ))
}

/// The `name` object: `given` (an array, may be empty) and `family`.
pub fn name(fields: &mut Fields<'_>, required: bool) -> Option<PersonName> {
    if !required && !fields.present("name") {
        return None;
    }
    name_at(fields, "name")
}

/// The name object under `key`, required.
fn name_at(fields: &mut Fields<'_>, key: &str) -> Option<PersonName> {
    let path = fields.path(key);
    let object = fields.object(key)?;
    let mut name = Fields::new(object, &path, NAME_FIELDS);
    let given = name.optional_string_array("given");
    let family = name.string("family");
    // Parse whatever arrived, so a bad given name is reported even when the family name is
    // missing; errors on a field already reported are not repeated.
    let prefix = name.optional_string_array("prefix").unwrap_or_default();
    let suffix = name.optional_string_array("suffix").unwrap_or_default();
    let preferred = name.optional_string("preferred");
    let extras = NameExtras {
        prefix: &prefix,
        suffix: &suffix,
        preferred,
    };
    let parsed = match PersonName::parse_full(
        &path,
        given.as_deref().unwrap_or(&[]),
        family.unwrap_or(""),
        extras,
    ) {
        Ok(n) => Some(n),
        Err(errors) => {
            for error in errors.into_vec() {
                if !name.errors.iter().any(|e| e.field == error.field) {
                    name.errors.push(error);
                }
            }
            None
        }
    };
    let errors = std::mem::take(&mut name.errors);
    fields.absorb(errors);
    parsed
}

/// The optional `marital_status` code.
pub fn marital_status(fields: &mut Fields<'_>) -> Option<MaritalStatus> {
    fields
        .optional_string("marital_status")
        .and_then(|v| fields.check(MaritalStatus::parse("marital_status", v)))
}

/// The optional `languages` array of BCP 47 tags (at most 10, no tag twice).
pub fn languages(fields: &mut Fields<'_>) -> Option<Vec<LanguageTag>> {
    if fields.present("languages")
        && fields
            .object_array_len("languages")
            .is_some_and(|n| n > MAX_LANGUAGES)
    {
        fields.errors.push(FieldError::new(
            "languages",
            format!("at most {MAX_LANGUAGES} languages"),
        ));
        return None;
    }
    let raw = fields.optional_string_array("languages")?;
    let mut out: Vec<LanguageTag> = Vec::new();
    for (i, tag) in raw.iter().enumerate() {
        let field = format!("languages[{i}]");
        if let Some(tag) = fields.check(LanguageTag::parse(&field, tag)) {
            if out
                .iter()
                .any(|t| t.as_str().eq_ignore_ascii_case(tag.as_str()))
            {
                fields.errors.push(FieldError::new(field, "is given twice"));
            } else {
                out.push(tag);
            }
        }
    }
    if out.len() > 10 {
        fields
            .errors
            .push(FieldError::new("languages", "at most 10 languages"));
    }
    Some(out)
}

/// Each element of the array `key` that is an object, with its path.
/// Refused unread beyond `max` items, so a huge array costs nothing.
fn objects<'a>(
    fields: &mut Fields<'a>,
    key: &str,
    max: usize,
) -> Vec<(String, &'a Map<String, Value>)> {
    let path = fields.path(key);
    let Some(items) = fields.optional_array(key) else {
        return Vec::new();
    };
    if items.len() > max {
        fields
            .errors
            .push(FieldError::new(path, format!("at most {max} entries")));
        return Vec::new();
    }
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match item {
            Value::Object(o) => out.push((format!("{path}[{i}]"), o)),
            _ => fields
                .errors
                .push(FieldError::new(format!("{path}[{i}]"), "must be an object")),
        }
    }
    out
}

fn identifiers(fields: &mut Fields<'_>) -> Vec<Identifier> {
    let mut out = Vec::new();
    for (path, object) in objects(fields, "identifiers", MAX_IDENTIFIERS) {
        let mut f = Fields::new(object, &path, &["system", "value", "national"]);
        let system = f.string("system");
        let value = f.string("value");
        let national = f.optional_bool("national").unwrap_or(false);
        if let (Some(system), Some(value)) = (system, value) {
            match Identifier::parse(&path, system, value, national) {
                Ok(id) => out.push(id),
                Err(errors) => f.absorb(errors),
            }
        }
        let errors = std::mem::take(&mut f.errors);
        fields.absorb(errors);
    }
    if out.len() > 20 {
        fields
            .errors
            .push(FieldError::new("identifiers", "at most 20 identifiers"));
    }
    for (i, id) in out.iter().enumerate() {
        if out[..i].iter().any(|other| other.same_as(id)) {
            fields.errors.push(FieldError::new(
                format!("identifiers[{i}]"),
                "the same identifier is given twice",
            ));
        }
    }
    out
}

/// Marks the only entry of a list preferred when the caller did not say.
fn prefer_single<T>(items: &mut [T], said: bool, set: impl Fn(&mut T)) {
    if items.len() == 1 && !said {
        set(&mut items[0]);
    }
}

fn contact(fields: &mut Fields<'_>) -> ContactInformation {
    let Some(object) = fields.optional_object("contact") else {
        return ContactInformation::default();
    };
    let (contact, errors) = contact_object(object, "contact");
    fields.absorb(errors);
    contact
}

/// A body that is contact information: `phones`, `emails`, `addresses`.
///
/// # Errors
///
/// [`ApiError::Validation`] naming every bad field.
pub fn contact_body(object: &Map<String, Value>) -> Result<ContactInformation, ApiError> {
    let (contact, errors) = contact_object(object, "");
    errors.into_result().map_err(ApiError::Validation)?;
    Ok(contact)
}

fn phones(c: &mut Fields<'_>, key: &str, said: &mut bool) -> Vec<Phone> {
    let mut phones = Vec::new();
    for (path, o) in objects(c, key, MAX_CONTACT_POINTS) {
        let mut f = Fields::new(o, &path, &["number", "use", "preferred"]);
        let number = f
            .string("number")
            .and_then(|v| f.check(PhoneNumber::parse(&format!("{path}.number"), v)));
        let phone_use = match f.optional_string("use") {
            Some(v) => f.check(PhoneUse::parse(&format!("{path}.use"), v)),
            None => Some(PhoneUse::Mobile),
        };
        *said |= f.present("preferred");
        let preferred = f.optional_bool("preferred").unwrap_or(false);
        if let (Some(number), Some(phone_use)) = (number, phone_use) {
            phones.push(Phone {
                number,
                phone_use,
                preferred,
            });
        }
        let errors = std::mem::take(&mut f.errors);
        c.absorb(errors);
    }
    phones
}

fn contact_object(
    object: &Map<String, Value>,
    prefix: &str,
) -> (ContactInformation, domain::FieldErrors) {
    let mut c = Fields::new(object, prefix, &["phones", "emails", "addresses"]);
    let mut said = [false; 3];
    let mut phones = phones(&mut c, "phones", &mut said[0]);

    let mut emails = Vec::new();
    for (path, o) in objects(&mut c, "emails", MAX_CONTACT_POINTS) {
        let mut f = Fields::new(o, &path, &["address", "preferred"]);
        let address = f
            .string("address")
            .and_then(|v| f.check(EmailAddress::parse(&format!("{path}.address"), v)));
        said[1] |= f.present("preferred");
        let preferred = f.optional_bool("preferred").unwrap_or(false);
        if let Some(address) = address {
            emails.push(Email { address, preferred });
        }
        let errors = std::mem::take(&mut f.errors);
        c.absorb(errors);
    }

    let mut addresses = Vec::new();
    for (path, o) in objects(&mut c, "addresses", MAX_CONTACT_POINTS) {
        if let Some(address) = address(&mut c, &path, o, &mut said[2]) {
            addresses.push(address);
        }
    }

    prefer_single(&mut phones, said[0], |p| p.preferred = true);
    prefer_single(&mut emails, said[1], |e| e.preferred = true);
    prefer_single(&mut addresses, said[2], |a| a.preferred = true);
    let parsed = match ContactInformation::new(phones, emails, addresses) {
        Ok(contact) => contact,
        Err(errors) => {
            for e in errors.into_vec() {
                let field = c.path(&e.field);
                c.errors.push(FieldError::new(field, e.message));
            }
            ContactInformation::default()
        }
    };
    (parsed, c.errors)
}

fn address(
    c: &mut Fields<'_>,
    path: &str,
    o: &Map<String, Value>,
    said: &mut bool,
) -> Option<Address> {
    let mut f = Fields::new(
        o,
        path,
        &[
            "use",
            "lines",
            "city",
            "state",
            "postal_code",
            "country",
            "preferred",
        ],
    );
    let address_use = match f.optional_string("use") {
        Some(v) => f.check(AddressUse::parse(&format!("{path}.use"), v)),
        None => Some(AddressUse::Home),
    };
    let lines: Vec<String> = f
        .optional_string_array("lines")
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, line)| f.check(contact::text(&format!("{path}.lines[{i}]"), line, 100)))
        .collect();
    if lines.len() > 4 {
        f.errors
            .push(FieldError::new(format!("{path}.lines"), "at most 4 lines"));
    }
    let city = f
        .optional_string("city")
        .and_then(|v| f.check(contact::text(&format!("{path}.city"), v, 100)));
    let state = f
        .optional_string("state")
        .and_then(|v| f.check(contact::text(&format!("{path}.state"), v, 100)));
    let postal_code = f
        .optional_string("postal_code")
        .and_then(|v| f.check(contact::postal_code(&format!("{path}.postal_code"), v)));
    let country = f
        .optional_string("country")
        .and_then(|v| f.check(CountryCode::parse(&format!("{path}.country"), v)));
    *said |= f.present("preferred");
    let preferred = f.optional_bool("preferred").unwrap_or(false);
    if lines.is_empty() && city.is_none() && postal_code.is_none() && f.errors.is_empty() {
        f.errors.push(FieldError::new(
            path,
            "give at least lines, a city or a postal code",
        ));
    }
    let ok = f.errors.is_empty();
    let errors = std::mem::take(&mut f.errors);
    c.absorb(errors);
    (ok).then_some(Address {
        address_use: address_use?,
        lines,
        city,
        state,
        postal_code,
        country,
        preferred,
    })
}

/// `{system, value, national?}`.
///
/// # Errors
///
/// [`ApiError::Validation`] naming every bad field.
pub fn identifier_body(object: &Map<String, Value>) -> Result<Identifier, ApiError> {
    let mut f = Fields::new(object, "", &["system", "value", "national"]);
    let system = f.string("system");
    let value = f.string("value");
    let national = f.optional_bool("national").unwrap_or(false);
    let parsed = match (system, value) {
        (Some(system), Some(value)) => match Identifier::parse("", system, value, national) {
            Ok(id) => Some(id),
            Err(errors) => {
                for e in errors.into_vec() {
                    f.errors
                        .push(FieldError::new(e.field.trim_start_matches('.'), e.message));
                }
                None
            }
        },
        _ => None,
    };
    f.finish()?;
    parsed.ok_or_else(|| ApiError::Validation(domain::FieldErrors::new()))
}

/// `{system, value, reason}`: which identifier to remove, and why.
///
/// # Errors
///
/// [`ApiError::Validation`] naming every bad field.
pub fn identifier_removal(
    object: &Map<String, Value>,
) -> Result<(String, String, Reason), ApiError> {
    let mut f = Fields::new(object, "", &["system", "value", "reason"]);
    let system = f.string("system").map(str::to_owned);
    let value = f.string("value").map(str::to_owned);
    let reason = f
        .string("reason")
        .and_then(|v| f.check(Reason::parse("reason", v)));
    f.finish()?;
    match (system, value, reason) {
        (Some(system), Some(value), Some(reason)) => Ok((system, value, reason)),
        _ => Err(ApiError::Validation(domain::FieldErrors::new())),
    }
}

/// The preferences body.
///
/// # Errors
///
/// [`ApiError::Validation`] naming every bad field.
pub fn preferences_body(object: &Map<String, Value>) -> Result<Preferences, ApiError> {
    let mut f = Fields::new(
        object,
        "",
        &[
            "communication_language",
            "preferred_channel",
            "reminder_opt_in",
            "quiet_hours",
            "interpreter_needed",
        ],
    );
    let communication_language = f
        .optional_string("communication_language")
        .and_then(|v| f.check(LanguageTag::parse("communication_language", v)));
    let preferred_channel = f
        .optional_string("preferred_channel")
        .and_then(|v| f.check(Channel::parse("preferred_channel", v)));
    let reminder_opt_in = f.optional_bool("reminder_opt_in").unwrap_or(false);
    let interpreter_needed = f.optional_bool("interpreter_needed").unwrap_or(false);
    let quiet_hours = f.optional_object("quiet_hours").and_then(|o| {
        let mut q = Fields::new(o, "quiet_hours", &["start", "end"]);
        let start = q.string("start");
        let end = q.string("end");
        let parsed = match (start, end) {
            (Some(start), Some(end)) => match QuietHours::parse("quiet_hours", start, end) {
                Ok(hours) => Some(hours),
                Err(errors) => {
                    q.absorb(errors);
                    None
                }
            },
            _ => None,
        };
        let errors = std::mem::take(&mut q.errors);
        f.absorb(errors);
        parsed
    });
    f.finish()?;
    Ok(Preferences {
        communication_language,
        preferred_channel,
        reminder_opt_in,
        quiet_hours,
        interpreter_needed,
    })
}

/// The emergency contact body: `name`, `relationship`, `phones` (at least one).
///
/// # Errors
///
/// [`ApiError::Validation`] naming every bad field.
pub fn emergency_contact_body(
    object: &Map<String, Value>,
    contact_id: uuid::Uuid,
) -> Result<EmergencyContact, ApiError> {
    let mut f = Fields::new(object, "", &["name", "relationship", "phones"]);
    let name = name(&mut f, true);
    let relationship = f
        .string("relationship")
        .and_then(|v| f.check(Relationship::parse("relationship", v)));
    let mut said = false;
    let mut phones = phones(&mut f, "phones", &mut said);
    prefer_single(&mut phones, said, |p| p.preferred = true);
    if phones.is_empty() && f.errors.iter().all(|e| !e.field.starts_with("phones")) {
        f.errors
            .push(FieldError::new("phones", "at least one phone is required"));
    }
    // The same rules as the patient's own phones: no number twice, one preferred.
    if let Err(errors) = ContactInformation::new(phones.clone(), vec![], vec![]) {
        f.absorb(errors);
    }
    f.finish()?;
    match (name, relationship) {
        (Some(name), Some(relationship)) => Ok(EmergencyContact {
            contact_id,
            name,
            relationship,
            phones,
        }),
        _ => Err(ApiError::Validation(domain::FieldErrors::new())),
    }
}

pub(super) fn date(f: &mut Fields<'_>, key: &str, required: bool) -> Option<NaiveDate> {
    let value = if required {
        f.string(key)
    } else {
        f.optional_string(key)
    }?;
    let parsed = NaiveDate::parse_from_str(value, "%Y-%m-%d")
        .map_err(|_| FieldError::new(f.path(key), "must be a date in the form YYYY-MM-DD"));
    f.check(parsed)
}

/// The coverage body.
///
/// # Errors
///
/// [`ApiError::Validation`] naming every bad field.
pub fn coverage_body(
    object: &Map<String, Value>,
    coverage_id: uuid::Uuid,
) -> Result<Coverage, ApiError> {
    let mut f = Fields::new(
        object,
        "",
        &[
            "payer",
            "plan",
            "member_id",
            "group",
            "subscriber_name",
            "relationship",
            "start",
            "end",
            "priority",
        ],
    );
    let payer = f
        .string("payer")
        .and_then(|v| f.check(contact::text("payer", v, 200)));
    let plan = f
        .optional_string("plan")
        .and_then(|v| f.check(contact::text("plan", v, 200)));
    let member_id = f
        .string("member_id")
        .and_then(|v| f.check(contact::text("member_id", v, 100)));
    let group = f
        .optional_string("group")
        .and_then(|v| f.check(contact::text("group", v, 100)));
    let subscriber_name = if f.present("subscriber_name") {
        name_at(&mut f, "subscriber_name")
    } else {
        None
    };
    let relationship = match f.optional_string("relationship") {
        Some(v) => f.check(SubscriberRelationship::parse("relationship", v)),
        None => Some(SubscriberRelationship::Myself),
    };
    let start = date(&mut f, "start", true);
    let end = date(&mut f, "end", false);
    let priority = f
        .string("priority")
        .and_then(|v| f.check(CoveragePriority::parse("priority", v)));
    if let (Some(s), Some(e)) = (start, end) {
        if e < s {
            f.errors
                .push(FieldError::new("end", "must not be before the start"));
        }
    }
    f.finish()?;
    match (payer, member_id, relationship, start, priority) {
        (Some(payer), Some(member_id), Some(relationship), Some(start), Some(priority)) => {
            Ok(Coverage {
                coverage_id,
                payer,
                plan,
                member_id,
                group,
                subscriber_name,
                relationship,
                start,
                end,
                priority,
                ended: false,
            })
        }
        _ => Err(ApiError::Validation(domain::FieldErrors::new())),
    }
}

/// `{end, reason}`: when a coverage ends, and why.
///
/// # Errors
///
/// [`ApiError::Validation`] naming every bad field.
pub fn coverage_end_body(object: &Map<String, Value>) -> Result<(NaiveDate, Reason), ApiError> {
    let mut f = Fields::new(object, "", &["end", "reason"]);
    let end = date(&mut f, "end", true);
    let reason = f
        .string("reason")
        .and_then(|v| f.check(Reason::parse("reason", v)));
    f.finish()?;
    match (end, reason) {
        (Some(end), Some(reason)) => Ok((end, reason)),
        _ => Err(ApiError::Validation(domain::FieldErrors::new())),
    }
}
