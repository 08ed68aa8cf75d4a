//! Duplicate detection: is this candidate someone we already know?
//!
//! A record-linkage matcher in the Fellegi-Sunter way. Each field pair is compared at a few
//! agreement levels suited to the field (Jaro-Winkler for names and streets, transpositions
//! and near misses for birth dates, edit distance for identifiers, exact for phones and postal
//! codes); each level adds its weight, log2(m/u): how much more often that level is seen
//! between records of the same person (m) than between records of different people (u). A
//! missing value adds nothing. The sum grades the pair `certain`, `probable` or `possible`
//! (the FHIR `$match` grades).
//!
//! Blocking keeps it from comparing against everyone: [`MatchRecord::blocking_keys`] names the
//! few groups a record belongs to (birth date, sound of the names, postal code, identifiers,
//! phones), and only records sharing a key are compared.
//!
//! Pure: the store of match records is a read model elsewhere.

use chrono::{Datelike, NaiveDate};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

/// Lowercase, accents removed, inner whitespace collapsed: the form names are compared in.
pub fn fold(text: &str) -> String {
    let stripped: String = text.nfkd().filter(|c| !is_combining_mark(*c)).collect();
    stripped
        .to_lowercase()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// What the matcher knows of a patient, in comparable (folded) form. Stored as JSON in the
/// match read model: fields added later must default.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MatchRecord {
    pub given: String,
    pub family: String,
    pub birth_date: Option<NaiveDate>,
    /// National identifiers as `system|value`, the value in lowercase letters and digits.
    pub national_ids: Vec<String>,
    /// Other identifiers, in the same form.
    pub identifiers: Vec<String>,
    /// E.164 numbers.
    pub phones: Vec<String>,
    pub emails: Vec<String>,
    pub street_number: String,
    pub street: String,
    pub city: String,
    pub postal_code: String,
    pub state: String,
}

impl std::fmt::Debug for MatchRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MatchRecord(<redacted>)")
    }
}

/// The FHIR `$match` grades.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Grade {
    Possible,
    Probable,
    Certain,
}

impl Grade {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Certain => "certain",
            Self::Probable => "probable",
            Self::Possible => "possible",
        }
    }

    /// Whether a registration with a match of this grade needs an override.
    pub fn blocks_registration(&self) -> bool {
        matches!(self, Self::Certain | Self::Probable)
    }
}

/// Score thresholds of the grades.
pub const CERTAIN: f64 = 20.0;
pub const PROBABLE: f64 = 6.5;
pub const POSSIBLE: f64 = 2.0;

/// The weight of a pair and its grade, if it reaches one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    pub score: f64,
    pub grade: Option<Grade>,
}

fn soundex(word: &str) -> String {
    let mut letters = word
        .chars()
        .filter(char::is_ascii_alphabetic)
        .map(|c| c.to_ascii_lowercase());
    let Some(first) = letters.next() else {
        return String::new();
    };
    let code = |c: char| match c {
        'b' | 'f' | 'p' | 'v' => '1',
        'c' | 'g' | 'j' | 'k' | 'q' | 's' | 'x' | 'z' => '2',
        'd' | 't' => '3',
        'l' => '4',
        'm' | 'n' => '5',
        'r' => '6',
        'h' | 'w' => '-',
        _ => '0',
    };
    let mut out = String::from(first.to_ascii_uppercase());
    let mut last = code(first);
    for c in letters {
        let digit = code(c);
        if digit == '-' {
            continue;
        }
        if digit != '0' && digit != last {
            out.push(digit);
            if out.len() == 4 {
                break;
            }
        }
        last = digit;
    }
    while out.len() < 4 {
        out.push('0');
    }
    out
}

impl MatchRecord {
    /// A record of a name and birth date; add the rest with the `with_` methods.
    pub fn new(given: &[String], family: &str, birth_date: Option<NaiveDate>) -> Self {
        Self {
            given: given.first().map(|g| fold(g)).unwrap_or_default(),
            family: fold(family),
            birth_date,
            ..Self::default()
        }
    }

    /// Adds an identifier, as `system|value` with the value in lowercase letters and digits
    /// (so `123-45-6789` and `123456789` agree, as they do on the record).
    pub fn with_identifier(mut self, system: &str, value: &str, national: bool) -> Self {
        let value: String = value
            .chars()
            .filter(|c| c.is_alphanumeric())
            .flat_map(char::to_lowercase)
            .collect();
        if value.is_empty() {
            return self;
        }
        let id = format!("{}|{value}", system.trim());
        if national {
            self.national_ids.push(id);
        } else {
            self.identifiers.push(id);
        }
        self
    }

    pub fn with_phone(mut self, e164: &str) -> Self {
        self.phones.push(e164.to_owned());
        self
    }

    pub fn with_email(mut self, address: &str) -> Self {
        self.emails.push(address.trim().to_lowercase());
        self
    }

    /// Sets the address compared: the house number is the first word of the first line when
    /// it starts with a digit, the street the rest of that line.
    pub fn with_address(
        mut self,
        lines: &[String],
        city: &str,
        postal_code: &str,
        state: &str,
    ) -> Self {
        let first = fold(lines.first().map(String::as_str).unwrap_or_default());
        match first.split_once(' ') {
            Some((number, street)) if number.starts_with(|c: char| c.is_ascii_digit()) => {
                self.street_number = number.to_owned();
                self.street = street.to_owned();
            }
            _ => self.street = first,
        }
        self.city = fold(city);
        self.postal_code = postal_code.trim().to_uppercase();
        self.state = fold(state);
        self
    }

    /// The blocks this record belongs to. Two records are compared only if they share one;
    /// the keys are chosen so a true duplicate shares at least one despite a typo in any one
    /// field.
    pub fn blocking_keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        if let Some(date) = self.birth_date {
            keys.push(format!("dob:{date}"));
        }
        let (given, family) = (soundex(&self.given), soundex(&self.family));
        if !family.is_empty() && !given.is_empty() {
            keys.push(format!("names:{given}{family}"));
            // Given and family names swapped between records.
            keys.push(format!("names:{family}{given}"));
        }
        if let Some(date) = self.birth_date {
            if !family.is_empty() {
                keys.push(format!("family-year:{family}:{}", date.year()));
            }
        }
        if !self.postal_code.is_empty() && !self.street_number.is_empty() {
            keys.push(format!("house:{}:{}", self.postal_code, self.street_number));
        }
        if !self.postal_code.is_empty() && !family.is_empty() {
            keys.push(format!("postal-family:{}:{family}", self.postal_code));
        }
        keys.extend(self.national_ids.iter().map(|id| format!("national:{id}")));
        // Halves of a national identifier, so one typo still leaves a shared key.
        for id in &self.national_ids {
            let (system, value) = id.rsplit_once('|').unwrap_or(("", id));
            let chars: Vec<char> = value.chars().collect();
            if chars.len() >= 6 {
                let half = chars.len() / 2;
                let head: String = chars[..half].iter().collect();
                let tail: String = chars[half..].iter().collect();
                keys.push(format!("national-head:{system}|{head}"));
                keys.push(format!("national-tail:{system}|{tail}"));
            }
        }
        // The folded family name and the first letter of the given name: a key for names in
        // scripts the sound code does not cover.
        if let Some(initial) = self.given.chars().next() {
            if !self.family.is_empty() {
                keys.push(format!("family-initial:{}:{initial}", self.family));
            }
        }
        if !self.postal_code.is_empty() && !self.street.is_empty() {
            keys.push(format!(
                "street:{}:{}",
                self.postal_code,
                soundex(&self.street)
            ));
        }
        keys.extend(self.identifiers.iter().map(|id| format!("id:{id}")));
        keys.extend(self.phones.iter().map(|p| format!("phone:{p}")));
        keys.extend(self.emails.iter().map(|e| format!("email:{e}")));
        keys.sort();
        keys.dedup();
        keys
    }
}

fn jaro_winkler(a: &str, b: &str) -> f64 {
    strsim::jaro_winkler(a, b)
}

/// Adds the weight of a name field at its agreement level.
fn name_weight(a: &str, b: &str, agree: f64, close: f64, near: f64, disagree: f64) -> f64 {
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    if a == b {
        return agree;
    }
    let similarity = jaro_winkler(a, b);
    if similarity >= 0.94 {
        close
    } else if similarity >= 0.86 {
        near
    } else {
        disagree
    }
}

fn birth_date_weight(a: Option<NaiveDate>, b: Option<NaiveDate>) -> f64 {
    let (Some(a), Some(b)) = (a, b) else {
        return 0.0;
    };
    if a == b {
        return 9.0;
    }
    let (sa, sb) = (
        a.format("%Y%m%d").to_string(),
        b.format("%Y%m%d").to_string(),
    );
    let (ba, bb) = (sa.as_bytes(), sb.as_bytes());
    let diffs: Vec<usize> = (0..ba.len().min(bb.len()))
        .filter(|&i| ba[i] != bb[i])
        .collect();
    let differing = diffs.len() + ba.len().abs_diff(bb.len());
    let day_month_swapped = a.year() == b.year() && a.month() == b.day() && a.day() == b.month();
    let transposed = differing == 2
        && diffs.len() == 2
        && diffs[1] == diffs[0] + 1
        && ba[diffs[0]] == bb[diffs[1]]
        && ba[diffs[1]] == bb[diffs[0]];
    if differing == 1 || day_month_swapped || transposed {
        4.0
    } else if a.year() == b.year() && a.month() == b.month() {
        0.5
    } else {
        -7.0
    }
}

/// Identifiers of the same system agree exactly, nearly (one edit or one transposition) or
/// not at all; identifiers of different systems say nothing about each other.
fn identifier_weight(a: &[String], b: &[String], agree: f64, near: f64, disagree: f64) -> f64 {
    let split = |id: &String| -> (String, String) {
        let (system, value) = id.rsplit_once('|').unwrap_or(("", id));
        (system.to_owned(), value.to_owned())
    };
    let mut best: Option<f64> = None;
    for (sx, x) in a.iter().map(split) {
        for (sy, y) in b.iter().map(split) {
            if sx != sy {
                continue;
            }
            let weight = if x == y {
                agree
            } else if strsim::damerau_levenshtein(&x, &y) == 1 {
                near
            } else {
                disagree
            };
            best = Some(best.map_or(weight, |b| b.max(weight)));
        }
    }
    best.unwrap_or(0.0)
}

fn exact_weight(a: &str, b: &str, agree: f64, disagree: f64) -> f64 {
    match (a.is_empty() || b.is_empty(), a == b) {
        (true, _) => 0.0,
        (false, true) => agree,
        (false, false) => disagree,
    }
}

fn any_shared(a: &[String], b: &[String], agree: f64) -> f64 {
    if a.iter().any(|x| b.contains(x)) {
        agree
    } else {
        0.0
    }
}

/// Compares two records and grades the pair.
pub fn compare(a: &MatchRecord, b: &MatchRecord) -> Comparison {
    let names_straight = name_weight(&a.given, &b.given, 6.0, 4.5, 2.0, -4.0)
        + name_weight(&a.family, &b.family, 8.0, 6.0, 3.0, -5.0);
    // Given and family names swapped, a common registration slip.
    let names_swapped = name_weight(&a.given, &b.family, 6.0, 4.5, 2.0, -4.0)
        + name_weight(&a.family, &b.given, 8.0, 6.0, 3.0, -5.0)
        - 1.0;
    let mut score = names_straight.max(names_swapped);
    score += birth_date_weight(a.birth_date, b.birth_date);
    score += identifier_weight(&a.national_ids, &b.national_ids, 12.0, 6.0, -6.0);
    score += any_shared(&a.identifiers, &b.identifiers, 14.0);
    score += any_shared(&a.phones, &b.phones, 7.0);
    score += any_shared(&a.emails, &b.emails, 9.0);
    score += exact_weight(&a.street_number, &b.street_number, 3.0, -1.5);
    score += name_weight(&a.street, &b.street, 4.0, 3.0, 1.0, -2.0);
    score += name_weight(&a.city, &b.city, 3.0, 2.5, 1.0, -1.5);
    score += exact_weight(&a.postal_code, &b.postal_code, 3.5, -1.5);
    score += exact_weight(&a.state, &b.state, 0.5, -0.5);
    let grade = if score >= CERTAIN {
        Some(Grade::Certain)
    } else if score >= PROBABLE {
        Some(Grade::Probable)
    } else if score >= POSSIBLE {
        Some(Grade::Possible)
    } else {
        None
    };
    Comparison { score, grade }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(given: &str, family: &str, dob: &str, ssn: &str) -> MatchRecord {
        MatchRecord {
            given: fold(given),
            family: fold(family),
            birth_date: NaiveDate::parse_from_str(dob, "%Y-%m-%d").ok(),
            national_ids: if ssn.is_empty() {
                vec![]
            } else {
                vec![format!("urn:ssn|{ssn}")]
            },
            street_number: "12".into(),
            street: "church street".into(),
            city: "bondi".into(),
            postal_code: "2026".into(),
            state: "nsw".into(),
            ..MatchRecord::default()
        }
    }

    #[test]
    fn soundex_codes_names_by_sound() {
        assert_eq!(soundex("robert"), "R163");
        assert_eq!(soundex("rupert"), "R163");
        assert_eq!(soundex("tymczak"), "T522");
        assert_eq!(soundex("ashcraft"), "A261");
        assert_eq!(soundex(""), "");
    }

    #[test]
    fn the_same_person_is_certain() {
        let a = record("Ada", "Lovelace", "1990-12-10", "1234567");
        assert_eq!(compare(&a, &a.clone()).grade, Some(Grade::Certain));
    }

    #[test]
    fn a_typo_and_a_transposed_birth_date_are_still_a_match() {
        let a = record("Ada", "Lovelace", "1990-12-10", "1234567");
        let b = record("Ada", "Lovelcae", "1990-12-01", "1234567");
        assert!(
            compare(&a, &b).grade >= Some(Grade::Probable),
            "{:?}",
            compare(&a, &b)
        );
    }

    #[test]
    fn swapped_names_are_recognised() {
        let a = record("Ada", "Lovelace", "1990-12-10", "");
        let b = record("Lovelace", "Ada", "1990-12-10", "");
        assert!(compare(&a, &b).grade >= Some(Grade::Probable));
    }

    #[test]
    fn relatives_at_the_same_address_are_at_most_possible() {
        let a = record("Ada", "Lovelace", "1990-12-10", "1234567");
        let b = record("George", "Lovelace", "1962-03-04", "7654321");
        let grade = compare(&a, &b).grade;
        assert!(grade <= Some(Grade::Possible), "{grade:?}");
        assert!(!grade.is_some_and(|g| g.blocks_registration()));
    }

    #[test]
    fn strangers_do_not_match() {
        let a = record("Ada", "Lovelace", "1990-12-10", "1234567");
        let mut b = record("Grace", "Hopper", "1906-12-09", "7654321");
        b.street_number = "7".into();
        b.street = "main road".into();
        b.city = "sydney".into();
        b.postal_code = "2000".into();
        assert_eq!(compare(&a, &b).grade, None);
    }

    #[test]
    fn a_duplicate_shares_a_blocking_key_despite_a_typo_in_any_one_field() {
        let a = record("Ada", "Lovelace", "1990-12-10", "1234567");
        let variants = [
            record("Adda", "Lovelace", "1990-12-10", "1234567"),
            record("Ada", "Lovelace", "1990-12-11", "1234567"),
            record("Ada", "Lovelace", "1990-12-10", "1234568"),
        ];
        for b in variants {
            let shared = a
                .blocking_keys()
                .iter()
                .any(|k| b.blocking_keys().contains(k));
            assert!(shared);
        }
    }

    #[test]
    fn identifiers_of_different_systems_neither_agree_nor_disagree() {
        let a = MatchRecord::new(&[], "x", None).with_identifier("urn:ssn", "123-45-6789", true);
        let same = MatchRecord::new(&[], "x", None).with_identifier("urn:ssn", "123456789", true);
        let passport =
            MatchRecord::new(&[], "x", None).with_identifier("urn:passport", "999", true);
        assert_eq!(
            identifier_weight(&a.national_ids, &same.national_ids, 12.0, 6.0, -6.0),
            12.0
        );
        assert_eq!(
            identifier_weight(&a.national_ids, &passport.national_ids, 12.0, 6.0, -6.0),
            0.0
        );
    }

    #[test]
    fn names_in_other_scripts_still_share_a_blocking_key() {
        let a = MatchRecord::new(&["Иван".to_owned()], "Петров", None);
        let b = MatchRecord::new(&["Иван".to_owned()], "Петров", None);
        assert!(a
            .blocking_keys()
            .iter()
            .any(|k| b.blocking_keys().contains(k)));
    }

    #[test]
    fn fold_removes_case_and_accents() {
        assert_eq!(fold("Müller"), "muller");
        assert_eq!(fold("ZOË  de la Cruz"), "zoe de la cruz");
    }
}
