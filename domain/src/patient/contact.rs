//! Contact information (phones, e-mail addresses, postal addresses) and identifiers.
//!
//! Parsers follow the value types of [`super::values`]: private fields, fallible `parse`
//! naming the field, redacted `Debug`.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validation::{FieldError, FieldErrors};

macro_rules! redacted_debug {
    ($($t:ty),*) => {$(
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($t), "(<redacted>)"))
            }
        }
    )*};
}

/// A phone number in E.164 form: `+`, a country code and subscriber number, 8 to 15 digits.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct PhoneNumber(String);

impl PhoneNumber {
    /// Accepts `+41 44 668 18 00`, `+1 (555) 010-0000` and the like: spaces, dots, dashes and
    /// brackets are dropped, what remains must be E.164.
    ///
    /// # Errors
    ///
    /// A [`FieldError`] on `field` unless the number is E.164.
    pub fn parse(field: &str, value: &str) -> Result<Self, FieldError> {
        let compact: String = value
            .trim()
            .chars()
            .filter(|c| !matches!(c, ' ' | '.' | '-' | '(' | ')'))
            .collect();
        let digits = compact.strip_prefix('+').unwrap_or_default();
        let valid = compact.starts_with('+')
            && (8..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0');
        if valid {
            Ok(Self(compact))
        } else {
            Err(FieldError::new(
                field,
                "must be an international number in E.164 form, e.g. +41446681800",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PhoneUse {
    Home,
    Work,
    Mobile,
}

impl PhoneUse {
    /// # Errors
    ///
    /// A [`FieldError`] on `field` for anything but `home`, `work`, `mobile`.
    pub fn parse(field: &str, value: &str) -> Result<Self, FieldError> {
        match value {
            "home" => Ok(Self::Home),
            "work" => Ok(Self::Work),
            "mobile" => Ok(Self::Mobile),
            _ => Err(FieldError::new(field, "must be one of home, work, mobile")),
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::Home => "home",
            Self::Work => "work",
            Self::Mobile => "mobile",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Phone {
    pub number: PhoneNumber,
    #[serde(rename = "use")]
    pub phone_use: PhoneUse,
    pub preferred: bool,
}

/// An e-mail address: one `@`, a local part of 1 to 64 characters, a domain with a dot. The
/// domain is stored lowercase; the local part as given.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct EmailAddress(String);

impl EmailAddress {
    /// # Errors
    ///
    /// A [`FieldError`] on `field` unless the address has that shape.
    pub fn parse(field: &str, value: &str) -> Result<Self, FieldError> {
        let value = value.trim();
        let invalid =
            || FieldError::new(field, "must be an e-mail address such as name@example.org");
        let (local, domain) = value.rsplit_once('@').ok_or_else(invalid)?;
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        let valid = !local.is_empty()
            && local.len() <= 64
            && value.len() <= 254
            && !local.contains('@')
            && !local
                .chars()
                .any(|c| c.is_whitespace() || crate::validation::is_hidden(c))
            && domain.contains('.')
            && domain.split('.').all(label_ok);
        if valid {
            Ok(Self(format!("{local}@{}", domain.to_ascii_lowercase())))
        } else {
            Err(invalid())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Email {
    pub address: EmailAddress,
    pub preferred: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AddressUse {
    Home,
    Work,
    Temp,
    Billing,
}

impl AddressUse {
    /// # Errors
    ///
    /// A [`FieldError`] on `field` for anything but `home`, `work`, `temp`, `billing`.
    pub fn parse(field: &str, value: &str) -> Result<Self, FieldError> {
        match value {
            "home" => Ok(Self::Home),
            "work" => Ok(Self::Work),
            "temp" => Ok(Self::Temp),
            "billing" => Ok(Self::Billing),
            _ => Err(FieldError::new(
                field,
                "must be one of home, work, temp, billing",
            )),
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::Home => "home",
            Self::Work => "work",
            Self::Temp => "temp",
            Self::Billing => "billing",
        }
    }
}

/// ISO 3166-1 alpha-2 country codes (officially assigned).
const COUNTRIES: &str = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM \
BN BO BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO \
DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK \
HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI \
LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF \
NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE \
SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG \
UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW";

/// An ISO 3166-1 alpha-2 country code, stored uppercase.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct CountryCode(String);

impl CountryCode {
    /// # Errors
    ///
    /// A [`FieldError`] on `field` unless `value` is an assigned ISO 3166-1 alpha-2 code.
    pub fn parse(field: &str, value: &str) -> Result<Self, FieldError> {
        let code = value.trim().to_ascii_uppercase();
        if code.len() == 2 && COUNTRIES.split(' ').any(|c| c == code) {
            Ok(Self(code))
        } else {
            Err(FieldError::new(
                field,
                "must be an ISO 3166-1 alpha-2 country code, e.g. CH",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A postal address.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Address {
    #[serde(rename = "use")]
    pub address_use: AddressUse,
    pub lines: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postal_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<CountryCode>,
    pub preferred: bool,
}

redacted_debug!(PhoneNumber, EmailAddress, Address);

/// A free-text part of an address: trimmed, 1 to `max` characters, no control characters.
///
/// # Errors
///
/// A [`FieldError`] on `field` otherwise.
pub fn text(field: &str, value: &str, max: usize) -> Result<String, FieldError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if value.chars().count() > max {
        return Err(FieldError::new(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if value.chars().any(crate::validation::is_hidden) {
        return Err(FieldError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(value.to_owned())
}

/// A postal code: 1 to 16 letters, digits, spaces or dashes, stored uppercase.
///
/// # Errors
///
/// A [`FieldError`] on `field` otherwise.
pub fn postal_code(field: &str, value: &str) -> Result<String, FieldError> {
    let value = value.trim().to_ascii_uppercase();
    let valid = (1..=16).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b' ' || b == b'-');
    if valid {
        Ok(value)
    } else {
        Err(FieldError::new(
            field,
            "must be 1 to 16 letters, digits, spaces or dashes",
        ))
    }
}

/// A patient's phones, e-mail addresses and postal addresses, each list with exactly one
/// preferred entry when it is not empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ContactInformation {
    pub phones: Vec<Phone>,
    pub emails: Vec<Email>,
    pub addresses: Vec<Address>,
}

/// At most this many phones, e-mail addresses or postal addresses.
pub const MAX_CONTACT_POINTS: usize = 10;

impl ContactInformation {
    /// Checks the rules across entries: at most ten of each, no number or address twice,
    /// exactly one preferred of each kind present.
    ///
    /// # Errors
    ///
    /// Every broken rule, on `phones`, `emails` or `addresses`.
    pub fn new(
        phones: Vec<Phone>,
        emails: Vec<Email>,
        addresses: Vec<Address>,
    ) -> Result<Self, FieldErrors> {
        let mut errors = FieldErrors::new();
        let mut check = |field: &str, count: usize, preferred: usize, distinct: usize| {
            if count > MAX_CONTACT_POINTS {
                errors.push(FieldError::new(
                    field,
                    format!("at most {MAX_CONTACT_POINTS} entries"),
                ));
            }
            if count > 0 && preferred != 1 {
                errors.push(FieldError::new(
                    field,
                    "exactly one entry must be preferred",
                ));
            }
            if distinct != count {
                errors.push(FieldError::new(field, "an entry is given twice"));
            }
        };
        let distinct_phones = phones
            .iter()
            .map(|p| &p.number)
            .collect::<std::collections::HashSet<_>>()
            .len();
        check(
            "phones",
            phones.len(),
            phones.iter().filter(|p| p.preferred).count(),
            distinct_phones,
        );
        let distinct_emails = emails
            .iter()
            .map(|e| e.address.as_str().to_lowercase())
            .collect::<std::collections::HashSet<_>>()
            .len();
        check(
            "emails",
            emails.len(),
            emails.iter().filter(|e| e.preferred).count(),
            distinct_emails,
        );
        check(
            "addresses",
            addresses.len(),
            addresses.iter().filter(|a| a.preferred).count(),
            addresses.len(),
        );
        errors.into_result()?;
        Ok(Self {
            phones,
            emails,
            addresses,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.phones.is_empty() && self.emails.is_empty() && self.addresses.is_empty()
    }
}

/// An identifier issued by another system: a system URI (or OID URN) and a value.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Identifier {
    pub system: String,
    pub value: String,
    /// A national identifier (such as a social security number): stored, matched on, and
    /// never shown back in full.
    #[serde(default)]
    pub national: bool,
}

redacted_debug!(Identifier);

impl Identifier {
    /// # Errors
    ///
    /// Errors on `{field}.system` (1 to 200 characters, no spaces) and `{field}.value` (1 to
    /// 100 visible characters).
    pub fn parse(
        field: &str,
        system: &str,
        value: &str,
        national: bool,
    ) -> Result<Self, FieldErrors> {
        let mut errors = FieldErrors::new();
        let system = system.trim();
        if system.is_empty()
            || system.len() > 200
            || system
                .chars()
                .any(|c| c.is_whitespace() || crate::validation::is_hidden(c))
        {
            errors.push(FieldError::new(
                format!("{field}.system"),
                "must be a URI or OID of 1 to 200 characters without spaces",
            ));
        }
        let value = value.trim();
        if value.is_empty()
            || value.chars().count() > 100
            || value.chars().any(crate::validation::is_hidden)
            || !value.chars().any(char::is_alphanumeric)
        {
            errors.push(FieldError::new(
                format!("{field}.value"),
                "must be 1 to 100 visible characters, at least one a letter or digit",
            ));
        }
        errors.into_result()?;
        Ok(Self {
            system: system.to_owned(),
            value: value.to_owned(),
            national,
        })
    }

    /// The value as it may be shown: national identifiers masked but for their last four
    /// characters.
    pub fn display_value(&self) -> String {
        if !self.national {
            return self.value.clone();
        }
        // The last four characters at most, and never more than half of them.
        let chars: Vec<char> = self.value.chars().collect();
        let shown = 4.min(chars.len() / 2);
        let tail: String = chars[chars.len() - shown..].iter().collect();
        format!("{}{tail}", "*".repeat(chars.len() - shown))
    }

    /// Whether two identifiers name the same thing (same system, same value ignoring case and
    /// separators).
    pub fn same_as(&self, other: &Identifier) -> bool {
        let norm = |v: &str| -> String {
            v.chars()
                .filter(|c| c.is_alphanumeric())
                .flat_map(char::to_lowercase)
                .collect()
        };
        self.system == other.system && norm(&self.value) == norm(&other.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_numbers_are_compacted_to_e164() {
        assert_eq!(
            PhoneNumber::parse("p", "+41 44 668-18.00")
                .unwrap()
                .as_str(),
            "+41446681800"
        );
        assert_eq!(
            PhoneNumber::parse("p", "+1 (555) 010-0000")
                .unwrap()
                .as_str(),
            "+15550100000"
        );
        for bad in [
            "0446681800",
            "+0446681800",
            "+41 44",
            "+41abc6681800",
            "+1234567890123456",
        ] {
            assert!(PhoneNumber::parse("p", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn email_addresses_need_a_local_part_and_a_dotted_domain() {
        assert_eq!(
            EmailAddress::parse("e", " Ada@Example.ORG ")
                .unwrap()
                .as_str(),
            "Ada@example.org"
        );
        for bad in [
            "ada",
            "@example.org",
            "ada@example",
            "ada@-x.org",
            "a da@example.org",
            "ada@exa_mple.org",
        ] {
            assert!(EmailAddress::parse("e", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn country_codes_are_iso_3166_alpha_2() {
        assert_eq!(CountryCode::parse("c", "ch").unwrap().as_str(), "CH");
        assert!(CountryCode::parse("c", "XX").is_err());
        assert!(CountryCode::parse("c", "CHE").is_err());
        assert_eq!(COUNTRIES.split(' ').count(), 249);
    }

    #[test]
    fn contact_information_needs_one_preferred_of_each_kind() {
        let phone = |n: &str, preferred| Phone {
            number: PhoneNumber::parse("p", n).unwrap(),
            phone_use: PhoneUse::Home,
            preferred,
        };
        let none = ContactInformation::new(vec![phone("+41446681800", false)], vec![], vec![])
            .unwrap_err();
        assert_eq!(none.iter().next().unwrap().field, "phones");
        let two = vec![phone("+41446681800", true), phone("+41446681801", true)];
        assert!(ContactInformation::new(two, vec![], vec![]).is_err());
        let twice = vec![
            phone("+41446681800", true),
            phone("+41 44 668 18 00", false),
        ];
        assert!(ContactInformation::new(twice, vec![], vec![]).is_err());
        assert!(ContactInformation::new(vec![], vec![], vec![])
            .unwrap()
            .is_empty());
    }

    #[test]
    fn national_identifiers_show_only_their_last_four_characters() {
        let ssn =
            Identifier::parse("i", "urn:oid:2.16.840.1.113883.4.1", "123-45-6789", true).unwrap();
        assert_eq!(ssn.display_value(), "*******6789");
        let short = Identifier::parse("i", "urn:x", "1234", true).unwrap();
        assert_eq!(short.display_value(), "**34", "never more than half shown");
        let other = Identifier::parse("i", "https://hospital.example/ids", "A-1", false).unwrap();
        assert_eq!(other.display_value(), "A-1");
        assert!(format!("{ssn:?}").contains("redacted"));
    }

    #[test]
    fn identifiers_compare_ignoring_separators_and_case() {
        let a = Identifier::parse("i", "sys", "123-45-6789", true).unwrap();
        let b = Identifier::parse("i", "sys", "123456789", true).unwrap();
        let c = Identifier::parse("i", "other", "123456789", true).unwrap();
        assert!(a.same_as(&b));
        assert!(!a.same_as(&c));
    }
}
