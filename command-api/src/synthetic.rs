//! Distinct synthetic patients, for the benchmark, `match-eval --population` and tests: a
//! deterministic function of a number, so runs repeat, and spread out (scrambled names and
//! birth dates) so two of them are not likely duplicates of each other.

use chrono::{Duration, NaiveDate};
use serde_json::{json, Value};

const SYLLABLES: [&str; 24] = [
    "ka", "lo", "mi", "ren", "sa", "tu", "vel", "dor", "an", "bri", "cas", "el", "fio", "gar",
    "hul", "is", "jo", "kur", "lin", "mor", "nes", "ol", "pra", "quin",
];

/// A 64-bit mix of `n` (splitmix64), so neighbouring numbers share nothing.
fn mix(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn word(mut bits: u64, syllables: usize) -> String {
    let mut out = String::new();
    for _ in 0..syllables {
        out.push_str(SYLLABLES[(bits % SYLLABLES.len() as u64) as usize]);
        bits /= SYLLABLES.len() as u64;
    }
    let mut chars = out.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// The given name, family name and birth date of synthetic person `n`.
pub fn person(n: u64) -> (String, String, NaiveDate) {
    let bits = mix(n);
    let given = word(bits, 3);
    let family = word(bits >> 20, 4);
    let base = NaiveDate::from_ymd_opt(1930, 1, 1).unwrap_or_default();
    let birth_date = base + Duration::days(((bits >> 44) % 27_000) as i64);
    (given, family, birth_date)
}

/// A registration body for synthetic person `n`, with `family` as the family name if given.
pub fn registration(n: u64, family: Option<&str>) -> Value {
    let (given, generated_family, birth_date) = person(n);
    json!({
        "name": { "given": [given], "family": family.unwrap_or(&generated_family) },
        "birth_date": birth_date.to_string(),
        "gender": "unknown"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn people_are_stable_and_distinct() {
        assert_eq!(person(7), person(7));
        let names: std::collections::HashSet<_> =
            (0..1000).map(|n| person(n).0 + &person(n).1).collect();
        assert_eq!(names.len(), 1000);
    }
}
