//! Query parameters shared by the list endpoints.

use std::collections::HashMap;

use domain::FieldErrors;

/// The whole-number query parameter `key` within `range`, or `default` when absent; an
/// error on `key` otherwise.
pub(super) fn whole_number<T>(
    params: &HashMap<String, String>,
    key: &str,
    default: T,
    range: std::ops::RangeInclusive<T>,
    errors: &mut FieldErrors,
) -> T
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    match params.get(key).map(|v| v.parse::<T>()) {
        None => default,
        Some(Ok(n)) if range.contains(&n) => n,
        Some(_) => {
            errors.push(domain::FieldError::new(
                key,
                format!(
                    "must be a whole number from {} to {}",
                    range.start(),
                    range.end()
                ),
            ));
            default
        }
    }
}

pub(super) fn url_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
