//! Distinct synthetic patients, for the benchmark, `match-eval --population` and tests: a
//! deterministic function of a number, so runs repeat, and spread out (scrambled names and
//! birth dates) so two of them are not likely duplicates of each other.

use chrono::{Duration, NaiveDate};
use serde_json::{json, Value};

const SYLLABLES: [&str; 24] = [
    "ka", "lo", "mi", "ren", "sa", "tu", "vel", "dor", "an", "bri", "cas", "el", "fio", "gar",
    "hul", "is", "jo", "kur", "lin", "mor", "nes", "ol", "pra", "quin",
];

/// A 64-bit mix of `n` (splitmix64), so neighbouring numbers share nothing: a deterministic
/// source of variety for synthetic data.
pub fn mix(n: u64) -> u64 {
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

/// A one-page PDF (PDF 1.4, Helvetica) showing `lines`: what a scanner or a report writer
/// produces, small enough to build here so tests and the benchmark need no files.
pub fn pdf(lines: &[&str]) -> Vec<u8> {
    let mut stream = String::from("BT /F1 11 Tf 14 TL 72 740 Td\n");
    for line in lines {
        let escaped: String = line
            .chars()
            .filter(char::is_ascii)
            .flat_map(|c| match c {
                '(' | ')' | '\\' => vec!['\\', c],
                c => vec![c],
            })
            .collect();
        stream.push_str(&format!("({escaped}) Tj T*\n"));
    }
    stream.push_str("ET");
    pdf_of(&[
        "<< /Type /Catalog /Pages 2 0 R >>".to_owned(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_owned(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R \
         /Resources << /Font << /F1 5 0 R >> >> >>"
            .to_owned(),
        format!(
            "<< /Length {} >>\nstream\n{stream}\nendstream",
            stream.len()
        ),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"
            .to_owned(),
    ])
}

/// A PDF file of `objects` (object `n` is `objects[n - 1]`; the first is the catalog), with its
/// cross-reference table.
pub fn pdf_of(objects: &[String]) -> Vec<u8> {
    let mut out = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (i, object) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n{object}\nendobj\n", i + 1).as_bytes());
    }
    let xref = out.len();
    out.extend_from_slice(
        format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes(),
    );
    for offset in offsets {
        out.extend_from_slice(format!("{offset:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .as_bytes(),
    );
    out
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
