//! The bodies about a patient's own record: registration, `$match` candidates, demographic
//! corrections, contact information, identifiers, preferences, emergency contacts and
//! coverages.

use application::registration::Registration;
use chrono::{DateTime, NaiveDate, Utc};
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
    AdministrativeGender, BirthDate, CorrectDemographics, MaritalStatus, NameExtras, PersonName,
    Reason,
};
use domain::{FieldError, FieldErrors};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{join as path, objects, one, optional, parse, AllOk, Field};

const MAX_IDENTIFIERS: usize = 20;
const MAX_LANGUAGES: usize = 10;

/// Strings, each of which may be misshapen.
pub type Strings = Field<Vec<Field<String>>>;

/// A person's name.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct NameBody {
    /// Given names, in order.
    #[serde(default)]
    pub given: Strings,
    pub family: Field<String>,
    #[serde(default)]
    pub prefix: Strings,
    #[serde(default)]
    pub suffix: Strings,
    /// The name the person goes by.
    #[serde(default)]
    pub preferred: Field<String>,
}

/// An identifier: a system (URI or OID) and a value; `national` for national identifiers,
/// which are shown masked.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct IdentifierBody {
    pub system: Field<String>,
    pub value: Field<String>,
    #[serde(default)]
    pub national: Field<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct PhoneBody {
    /// E.164, e.g. `+41446681800`.
    pub number: Field<String>,
    /// `home`, `work` or `mobile` (the default).
    #[serde(rename = "use", default)]
    pub phone_use: Field<String>,
    #[serde(default)]
    pub preferred: Field<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct EmailBody {
    pub address: Field<String>,
    #[serde(default)]
    pub preferred: Field<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct AddressBody {
    /// `home` (the default), `work`, `temp` or `old`.
    #[serde(rename = "use", default)]
    pub address_use: Field<String>,
    /// At most 4.
    #[serde(default)]
    pub lines: Strings,
    #[serde(default)]
    pub city: Field<String>,
    #[serde(default)]
    pub state: Field<String>,
    #[serde(default)]
    pub postal_code: Field<String>,
    /// ISO 3166-1 alpha-2.
    #[serde(default)]
    pub country: Field<String>,
    #[serde(default)]
    pub preferred: Field<bool>,
}

/// Phones, e-mail addresses and postal addresses (at most 10 of each); of each kind, one is
/// preferred.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ContactBody {
    #[serde(default)]
    pub phones: Field<Vec<Field<PhoneBody>>>,
    #[serde(default)]
    pub emails: Field<Vec<Field<EmailBody>>>,
    #[serde(default)]
    pub addresses: Field<Vec<Field<AddressBody>>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct OverrideBody {
    /// Why the patient is registered although the matcher finds likely duplicates.
    pub reason: Field<String>,
}

/// `POST /v1/patients`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RegistrationBody {
    pub name: Field<NameBody>,
    /// `YYYY-MM-DD`, not in the future, not before 1900.
    #[serde(default)]
    pub birth_date: Field<String>,
    /// `male`, `female`, `other` or `unknown`.
    pub gender: Field<String>,
    #[serde(default)]
    pub marital_status: Field<String>,
    /// BCP 47 tags, at most 10.
    #[serde(default)]
    pub languages: Strings,
    /// At most 20.
    #[serde(default)]
    pub identifiers: Field<Vec<Field<IdentifierBody>>>,
    #[serde(default)]
    pub contact: Field<ContactBody>,
    #[serde(default)]
    pub duplicate_override: Field<OverrideBody>,
}

/// `POST /v1/patients/$match`: the registration's fields, none required, at least one given.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct CandidateBody {
    #[serde(default)]
    pub name: Field<NameBody>,
    #[serde(default)]
    pub birth_date: Field<String>,
    #[serde(default)]
    pub gender: Field<String>,
    #[serde(default)]
    pub identifiers: Field<Vec<Field<IdentifierBody>>>,
    #[serde(default)]
    pub contact: Field<ContactBody>,
}

/// `POST /v1/patients/{id}/correct-demographics`: what was recorded wrongly, and why.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct CorrectionBody {
    #[serde(default)]
    pub name: Field<NameBody>,
    #[serde(default)]
    pub birth_date: Field<String>,
    #[serde(default)]
    pub gender: Field<String>,
    #[serde(default)]
    pub marital_status: Field<String>,
    #[serde(default)]
    pub languages: Strings,
    pub reason: Field<String>,
}

/// `{system, value, reason}`: which identifier to remove, and why.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct IdentifierRemovalBody {
    pub system: Field<String>,
    pub value: Field<String>,
    pub reason: Field<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct QuietHoursBody {
    /// `HH:MM`, local time.
    pub start: Field<String>,
    pub end: Field<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct PreferencesBody {
    #[serde(default)]
    pub communication_language: Field<String>,
    /// `sms`, `email`, `phone` or `mail`.
    #[serde(default)]
    pub preferred_channel: Field<String>,
    #[serde(default)]
    pub reminder_opt_in: Field<bool>,
    #[serde(default)]
    pub quiet_hours: Field<QuietHoursBody>,
    #[serde(default)]
    pub interpreter_needed: Field<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct EmergencyContactBody {
    pub name: Field<NameBody>,
    pub relationship: Field<String>,
    /// At least one.
    #[serde(default)]
    pub phones: Field<Vec<Field<PhoneBody>>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct CoverageBody {
    pub payer: Field<String>,
    #[serde(default)]
    pub plan: Field<String>,
    pub member_id: Field<String>,
    #[serde(default)]
    pub group: Field<String>,
    #[serde(default)]
    pub subscriber_name: Field<NameBody>,
    /// The patient's relationship to the subscriber; `self` by default.
    #[serde(default)]
    pub relationship: Field<String>,
    pub start: Field<String>,
    #[serde(default)]
    pub end: Field<String>,
    pub priority: Field<String>,
}

/// `{end, reason}`: when a coverage ends, and why.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct CoverageEndBody {
    pub end: Field<String>,
    pub reason: Field<String>,
}

/// `{reason}`: why.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ReasonBody {
    pub reason: Field<String>,
}

objects!(
    NameBody,
    IdentifierBody,
    PhoneBody,
    EmailBody,
    AddressBody,
    ContactBody,
    OverrideBody,
    QuietHoursBody,
);

/// The strings of an optional array at `field`, each of which must be a string.
///
/// # Errors
///
/// A misshapen array or item.
pub fn strings(values: &Strings, field: &str) -> Result<Vec<String>, FieldErrors> {
    values.each(field, |v, _| Ok(v.clone()))
}

/// The required string at `field`, checked by `check`.
///
/// # Errors
///
/// Its absence, its shape, or the refusal of `check`.
pub fn text<T>(
    value: &Field<String>,
    field: &str,
    check: impl FnOnce(&str) -> Result<T, FieldErrors>,
) -> Result<T, FieldErrors> {
    value.required(field).and_then(|v| check(v))
}

/// The optional string at `field`, checked by `check` when given.
///
/// # Errors
///
/// Its shape, or the refusal of `check`.
pub fn optional_text<T>(
    value: &Field<String>,
    field: &str,
    check: impl FnOnce(&str) -> Result<T, FieldErrors>,
) -> Result<Option<T>, FieldErrors> {
    value
        .optional(field)
        .and_then(|v| optional(v.map(String::as_str), check))
}

/// A name at `field`. What arrived is parsed even when a part is missing, so a bad given name
/// is reported beside a missing family name; no field is named twice.
pub fn name(body: &NameBody, field: &str) -> Result<PersonName, FieldErrors> {
    let (given, family, prefix, suffix, preferred) = (
        strings(&body.given, &path(field, "given")),
        body.family.required(&path(field, "family")),
        strings(&body.prefix, &path(field, "prefix")),
        strings(&body.suffix, &path(field, "suffix")),
        body.preferred.optional(&path(field, "preferred")),
    );
    let mut errors = FieldErrors::new();
    // The strings that are strings, even beside some that are not.
    let lenient =
        |values: &Strings, checked: Result<Vec<String>, FieldErrors>, errors: &mut FieldErrors| {
            errors.check_all(checked).unwrap_or_else(|| match values {
                Field::Given(items) => items
                    .iter()
                    .filter_map(|item| match item {
                        Field::Given(s) => Some(s.clone()),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            })
        };
    let given = lenient(&body.given, given, &mut errors);
    let family = errors.check_all(family);
    let prefix = lenient(&body.prefix, prefix, &mut errors);
    let suffix = lenient(&body.suffix, suffix, &mut errors);
    let preferred = errors.check_all(preferred).flatten();
    let parsed = PersonName::parse_full(
        field,
        &given,
        family.map_or("", String::as_str),
        NameExtras {
            prefix: &prefix,
            suffix: &suffix,
            preferred: preferred.map(String::as_str),
        },
    );
    match parsed {
        Ok(name) if errors.is_empty() => Ok(name),
        Ok(_) => Err(errors),
        Err(more) => {
            let reported: Vec<String> = errors.iter().map(|e| e.field.clone()).collect();
            for e in more.into_vec() {
                if !reported.contains(&e.field) {
                    errors.push(e);
                }
            }
            Err(errors)
        }
    }
}

/// A reason at `field`.
pub fn reason(value: &str, field: &str) -> Result<Reason, FieldErrors> {
    one(Reason::parse(field, value))
}

/// A calendar date (`YYYY-MM-DD`) at `field`.
pub fn date(value: &str, field: &str) -> Result<NaiveDate, FieldErrors> {
    one(NaiveDate::parse_from_str(value, "%Y-%m-%d")
        .map_err(|_| FieldError::new(field, "must be a date in the form YYYY-MM-DD")))
}

fn birth_date(value: &Field<String>, today: NaiveDate) -> Result<Option<BirthDate>, FieldErrors> {
    optional_text(value, "birth_date", |v| {
        one(BirthDate::parse("birth_date", v, today))
    })
}

fn gender(value: &str) -> Result<AdministrativeGender, FieldErrors> {
    one(AdministrativeGender::parse("gender", value))
}

fn marital_status(value: &Field<String>) -> Result<Option<MaritalStatus>, FieldErrors> {
    optional_text(value, "marital_status", |v| {
        one(MaritalStatus::parse("marital_status", v))
    })
}

/// BCP 47 tags, at most 10, none twice.
fn languages(tags: &Strings) -> Result<Vec<LanguageTag>, FieldErrors> {
    if tags.sent() > MAX_LANGUAGES {
        return Err(
            FieldError::new("languages", format!("at most {MAX_LANGUAGES} languages")).into(),
        );
    }
    let mut seen: Vec<LanguageTag> = Vec::new();
    tags.each("languages", |tag, at| {
        let tag = one(LanguageTag::parse(at, tag))?;
        if seen
            .iter()
            .any(|t| t.as_str().eq_ignore_ascii_case(tag.as_str()))
        {
            return Err(FieldError::new(at, "is given twice").into());
        }
        seen.push(tag.clone());
        Ok(tag)
    })
}

fn at_most(count: usize, max: usize, field: &str) -> Result<(), FieldErrors> {
    if count > max {
        return Err(FieldError::new(field, format!("at most {max} entries")).into());
    }
    Ok(())
}

/// Identifiers at `field`, none twice.
fn identifiers(
    bodies: &Field<Vec<Field<IdentifierBody>>>,
    field: &str,
) -> Result<Vec<Identifier>, FieldErrors> {
    at_most(bodies.sent(), MAX_IDENTIFIERS, field)?;
    let out = bodies.each(field, identifier)?;
    let mut errors = FieldErrors::new();
    for (i, id) in out.iter().enumerate() {
        if out[..i].iter().any(|other| other.same_as(id)) {
            errors.push(FieldError::new(
                format!("{field}[{i}]"),
                "the same identifier is given twice",
            ));
        }
    }
    errors.into_result()?;
    Ok(out)
}

fn identifier(body: &IdentifierBody, field: &str) -> Result<Identifier, FieldErrors> {
    let (system, value, national) = (
        body.system.required(&path(field, "system")),
        body.value.required(&path(field, "value")),
        body.national.optional(&path(field, "national")),
    )
        .all_ok()?;
    Identifier::parse(field, system, value, national.copied().unwrap_or(false)).map_err(|errors| {
        // The domain names the parts after `field.`; at the top of a body, without the dot.
        let mut named = FieldErrors::new();
        for e in errors.into_vec() {
            named.push(FieldError::new(e.field.trim_start_matches('.'), e.message));
        }
        named
    })
}

/// Marks the only entry of a list preferred when the caller did not say.
fn prefer_single<T>(items: &mut [T], said: bool, set: impl Fn(&mut T)) {
    if items.len() == 1 && !said {
        set(&mut items[0]);
    }
}

/// Whether any item of `items` says whether it is preferred.
fn said<T>(items: &Field<Vec<Field<T>>>, preferred: impl Fn(&T) -> bool) -> bool {
    match items {
        Field::Given(items) => items.iter().any(|i| match i {
            Field::Given(item) => preferred(item),
            _ => false,
        }),
        _ => false,
    }
}

fn phones(bodies: &Field<Vec<Field<PhoneBody>>>, field: &str) -> Result<Vec<Phone>, FieldErrors> {
    at_most(bodies.sent(), MAX_CONTACT_POINTS, field)?;
    let mut phones = bodies.each(field, |body, at| {
        let (number, phone_use, preferred) = (
            text(&body.number, &path(at, "number"), |v| {
                one(PhoneNumber::parse(&path(at, "number"), v))
            }),
            optional_text(&body.phone_use, &path(at, "use"), |v| {
                one(PhoneUse::parse(&path(at, "use"), v))
            }),
            body.preferred.optional(&path(at, "preferred")),
        )
            .all_ok()?;
        Ok(Phone {
            number,
            phone_use: phone_use.unwrap_or(PhoneUse::Mobile),
            preferred: preferred.copied().unwrap_or(false),
        })
    })?;
    prefer_single(&mut phones, said(bodies, |p| p.preferred.is_sent()), |p| {
        p.preferred = true
    });
    Ok(phones)
}

fn emails(bodies: &Field<Vec<Field<EmailBody>>>, field: &str) -> Result<Vec<Email>, FieldErrors> {
    at_most(bodies.sent(), MAX_CONTACT_POINTS, field)?;
    let mut emails = bodies.each(field, |body, at| {
        let (address, preferred) = (
            text(&body.address, &path(at, "address"), |v| {
                one(EmailAddress::parse(&path(at, "address"), v))
            }),
            body.preferred.optional(&path(at, "preferred")),
        )
            .all_ok()?;
        Ok(Email {
            address,
            preferred: preferred.copied().unwrap_or(false),
        })
    })?;
    prefer_single(&mut emails, said(bodies, |e| e.preferred.is_sent()), |e| {
        e.preferred = true
    });
    Ok(emails)
}

fn address(body: &AddressBody, at: &str) -> Result<Address, FieldErrors> {
    let lines_at = path(at, "lines");
    let lines = body
        .lines
        .each(&lines_at, |line, field| {
            one(contact::text(field, line, 100))
        })
        .and_then(|lines| {
            if lines.len() > 4 {
                return Err(FieldError::new(&lines_at, "at most 4 lines").into());
            }
            Ok(lines)
        });
    let short = |key: &str, value: &Field<String>| {
        let field = path(at, key);
        optional_text(value, &field, |v| one(contact::text(&field, v, 100)))
    };
    let (address_use, lines, city, state, postal_code, country, preferred) = (
        optional_text(&body.address_use, &path(at, "use"), |v| {
            one(AddressUse::parse(&path(at, "use"), v))
        }),
        lines,
        short("city", &body.city),
        short("state", &body.state),
        optional_text(&body.postal_code, &path(at, "postal_code"), |v| {
            one(contact::postal_code(&path(at, "postal_code"), v))
        }),
        optional_text(&body.country, &path(at, "country"), |v| {
            one(CountryCode::parse(&path(at, "country"), v))
        }),
        body.preferred.optional(&path(at, "preferred")),
    )
        .all_ok()?;
    if lines.is_empty() && city.is_none() && postal_code.is_none() {
        return Err(FieldError::new(at, "give at least lines, a city or a postal code").into());
    }
    Ok(Address {
        address_use: address_use.unwrap_or(AddressUse::Home),
        lines,
        city,
        state,
        postal_code,
        country,
        preferred: preferred.copied().unwrap_or(false),
    })
}

/// Contact information at `prefix` (empty for a whole body).
fn contact(body: &ContactBody, prefix: &str) -> Result<ContactInformation, FieldErrors> {
    let addresses_at = path(prefix, "addresses");
    let addresses =
        at_most(body.addresses.sent(), MAX_CONTACT_POINTS, &addresses_at).and_then(|()| {
            let mut addresses = body.addresses.each(&addresses_at, address)?;
            let said = said(&body.addresses, |a| a.preferred.is_sent());
            prefer_single(&mut addresses, said, |a| a.preferred = true);
            Ok(addresses)
        });
    let (phones, emails, addresses) = (
        phones(&body.phones, &path(prefix, "phones")),
        emails(&body.emails, &path(prefix, "emails")),
        addresses,
    )
        .all_ok()?;
    ContactInformation::new(phones, emails, addresses).map_err(|errors| {
        let mut named = FieldErrors::new();
        for e in errors.into_vec() {
            named.push(FieldError::new(path(prefix, &e.field), e.message));
        }
        named
    })
}

/// Parses a registration body, `today` being the day it arrives.
///
/// # Errors
///
/// Every bad field, by its path.
pub fn registration(
    object: &Map<String, Value>,
    today: NaiveDate,
) -> Result<Registration, FieldErrors> {
    parse(object, "")?.then(|body: RegistrationBody| {
        let (
            name,
            birth_date,
            gender,
            marital_status,
            languages,
            identifiers,
            contact,
            duplicate_override,
        ) = (
            body.name.required("name").and_then(|n| name(n, "name")),
            birth_date(&body.birth_date, today),
            text(&body.gender, "gender", gender),
            marital_status(&body.marital_status),
            languages(&body.languages),
            identifiers(&body.identifiers, "identifiers"),
            body.contact
                .optional("contact")
                .and_then(|c| optional(c, |c| contact(c, "contact"))),
            body.duplicate_override
                .optional("duplicate_override")
                .and_then(|o| {
                    optional(o, |o| {
                        text(&o.reason, "duplicate_override.reason", |v| {
                            reason(v, "duplicate_override.reason")
                        })
                    })
                }),
        )
            .all_ok()?;
        Ok(Registration {
            name,
            birth_date,
            gender,
            marital_status,
            languages,
            identifiers,
            contact: contact.unwrap_or_default(),
            duplicate_override,
        })
    })
}

/// Parses a `$match` candidate: the registration fields, none required, at least one given.
///
/// # Errors
///
/// Every bad field, by its path.
pub fn candidate(
    object: &Map<String, Value>,
    today: NaiveDate,
) -> Result<MatchRecord, FieldErrors> {
    // Anything sent counts as given (an unknown field is refused as such).
    let given = object.values().any(|v| !v.is_null());
    parse(object, "")?.then(|body: CandidateBody| {
        let at_least_one = if given {
            Ok(())
        } else {
            Err(FieldError::new("", "give at least one field of the candidate patient").into())
        };
        let (name, birth_date, _, identifiers, contact, ()) = (
            body.name
                .optional("name")
                .and_then(|n| optional(n, |n| name(n, "name"))),
            birth_date(&body.birth_date, today),
            optional_text(&body.gender, "gender", gender),
            identifiers(&body.identifiers, "identifiers"),
            body.contact
                .optional("contact")
                .and_then(|c| optional(c, |c| contact(c, "contact"))),
            at_least_one,
        )
            .all_ok()?;
        Ok(application::registration::match_record(
            name.as_ref(),
            birth_date.map(|d| d.date()),
            &identifiers,
            &contact.unwrap_or_default(),
        ))
    })
}

/// Parses a demographic correction made at `now`.
///
/// # Errors
///
/// Every bad field, by its path; a correction that corrects nothing.
pub fn correction(
    object: &Map<String, Value>,
    now: DateTime<Utc>,
) -> Result<CorrectDemographics, FieldErrors> {
    parse(object, "")?.then(|body: CorrectionBody| {
        let corrects_something = body.name.is_sent()
            || body.birth_date.is_sent()
            || body.gender.is_sent()
            || body.marital_status.is_sent()
            || body.languages.is_sent();
        let something = if corrects_something {
            Ok(())
        } else {
            Err(FieldError::new(
                "",
                "give at least one of name, birth_date, gender, marital_status, languages",
            )
            .into())
        };
        let (name, birth_date, gender, marital_status, languages, reason, ()) = (
            body.name
                .optional("name")
                .and_then(|n| optional(n, |n| name(n, "name"))),
            birth_date(&body.birth_date, now.date_naive()),
            optional_text(&body.gender, "gender", gender),
            marital_status(&body.marital_status),
            if body.languages.is_sent() {
                languages(&body.languages).map(Some)
            } else {
                Ok(None)
            },
            text(&body.reason, "reason", |v| reason(v, "reason")),
            something,
        )
            .all_ok()?;
        Ok(CorrectDemographics {
            name,
            birth_date,
            gender,
            marital_status,
            languages,
            reason,
            at: now,
        })
    })
}

/// A body that is contact information: `phones`, `emails`, `addresses`.
///
/// # Errors
///
/// Every bad field, by its path.
pub fn contact_body(object: &Map<String, Value>) -> Result<ContactInformation, FieldErrors> {
    parse(object, "")?.then(|body: ContactBody| contact(&body, ""))
}

/// `{system, value, national?}`.
///
/// # Errors
///
/// Every bad field, by its path.
pub fn identifier_body(object: &Map<String, Value>) -> Result<Identifier, FieldErrors> {
    parse(object, "")?.then(|body: IdentifierBody| identifier(&body, ""))
}

/// `{system, value, reason}`: which identifier to remove, and why.
///
/// # Errors
///
/// Every bad field, by its path.
pub fn identifier_removal(
    object: &Map<String, Value>,
) -> Result<(String, String, Reason), FieldErrors> {
    parse(object, "")?.then(|body: IdentifierRemovalBody| {
        (
            body.system.required("system").cloned(),
            body.value.required("value").cloned(),
            text(&body.reason, "reason", |v| reason(v, "reason")),
        )
            .all_ok()
    })
}

/// The preferences body.
///
/// # Errors
///
/// Every bad field, by its path.
pub fn preferences_body(object: &Map<String, Value>) -> Result<Preferences, FieldErrors> {
    parse(object, "")?.then(|body: PreferencesBody| {
        let quiet_hours = body.quiet_hours.optional("quiet_hours").and_then(|q| {
            optional(q, |q| {
                let (start, end) = (
                    q.start.required("quiet_hours.start"),
                    q.end.required("quiet_hours.end"),
                )
                    .all_ok()?;
                QuietHours::parse("quiet_hours", start, end)
            })
        });
        let (
            communication_language,
            preferred_channel,
            reminder_opt_in,
            quiet_hours,
            interpreter_needed,
        ) = (
            optional_text(
                &body.communication_language,
                "communication_language",
                |v| one(LanguageTag::parse("communication_language", v)),
            ),
            optional_text(&body.preferred_channel, "preferred_channel", |v| {
                one(Channel::parse("preferred_channel", v))
            }),
            body.reminder_opt_in.optional("reminder_opt_in"),
            quiet_hours,
            body.interpreter_needed.optional("interpreter_needed"),
        )
            .all_ok()?;
        Ok(Preferences {
            communication_language,
            preferred_channel,
            reminder_opt_in: reminder_opt_in.copied().unwrap_or(false),
            quiet_hours,
            interpreter_needed: interpreter_needed.copied().unwrap_or(false),
        })
    })
}

/// The emergency contact body: `name`, `relationship`, `phones` (at least one).
///
/// # Errors
///
/// Every bad field, by its path.
pub fn emergency_contact_body(
    object: &Map<String, Value>,
    contact_id: uuid::Uuid,
) -> Result<EmergencyContact, FieldErrors> {
    parse(object, "")?.then(|body: EmergencyContactBody| {
        let phones = phones(&body.phones, "phones").and_then(|phones| {
            if phones.is_empty() {
                return Err(FieldError::new("phones", "at least one phone is required").into());
            }
            // The same rules as the patient's own phones: no number twice, one preferred.
            ContactInformation::new(phones.clone(), vec![], vec![])?;
            Ok(phones)
        });
        let (name, relationship, phones) = (
            body.name.required("name").and_then(|n| name(n, "name")),
            text(&body.relationship, "relationship", |v| {
                one(Relationship::parse("relationship", v))
            }),
            phones,
        )
            .all_ok()?;
        Ok(EmergencyContact {
            contact_id,
            name,
            relationship,
            phones,
        })
    })
}

/// The coverage body.
///
/// # Errors
///
/// Every bad field, by its path.
pub fn coverage_body(
    object: &Map<String, Value>,
    coverage_id: uuid::Uuid,
) -> Result<Coverage, FieldErrors> {
    parse(object, "")?.then(|body: CoverageBody| {
        let bounded = |key: &'static str, max| move |v: &str| one(contact::text(key, v, max));
        let (payer, plan, member_id, group, subscriber_name, relationship, start, end, priority) =
            (
                text(&body.payer, "payer", bounded("payer", 200)),
                optional_text(&body.plan, "plan", bounded("plan", 200)),
                text(&body.member_id, "member_id", bounded("member_id", 100)),
                optional_text(&body.group, "group", bounded("group", 100)),
                body.subscriber_name
                    .optional("subscriber_name")
                    .and_then(|n| optional(n, |n| name(n, "subscriber_name"))),
                optional_text(&body.relationship, "relationship", |v| {
                    one(SubscriberRelationship::parse("relationship", v))
                }),
                text(&body.start, "start", |v| date(v, "start")),
                optional_text(&body.end, "end", |v| date(v, "end")),
                text(&body.priority, "priority", |v| {
                    one(CoveragePriority::parse("priority", v))
                }),
            )
                .all_ok()?;
        if end.is_some_and(|end| end < start) {
            return Err(FieldError::new("end", "must not be before the start").into());
        }
        Ok(Coverage {
            coverage_id,
            payer,
            plan,
            member_id,
            group,
            subscriber_name,
            relationship: relationship.unwrap_or(SubscriberRelationship::Myself),
            start,
            end,
            priority,
            ended: false,
        })
    })
}

/// `{end, reason}`: when a coverage ends, and why.
///
/// # Errors
///
/// Every bad field, by its path.
pub fn coverage_end_body(object: &Map<String, Value>) -> Result<(NaiveDate, Reason), FieldErrors> {
    parse(object, "")?.then(|body: CoverageEndBody| {
        (
            text(&body.end, "end", |v| date(v, "end")),
            text(&body.reason, "reason", |v| reason(v, "reason")),
        )
            .all_ok()
    })
}

/// `{reason}`.
///
/// # Errors
///
/// Every bad field, by its path.
pub fn reason_body(object: &Map<String, Value>) -> Result<Reason, FieldErrors> {
    parse(object, "")?
        .then(|body: ReasonBody| text(&body.reason, "reason", |v| reason(v, "reason")))
}
