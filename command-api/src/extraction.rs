//! Text extraction from uploaded documents, for indexing: plain text, Markdown, HTML and PDF.
//! Other accepted types (images) are stored without text.
//!
//! Extraction runs on a blocking thread with a time limit, and a parser that panics on a
//! malformed file is contained: the upload is refused as unreadable, the service goes on.

use std::time::Duration;

/// The media types a document may have, and whether text is extracted from them.
pub const MEDIA_TYPES: &[(&str, bool)] = &[
    ("text/plain", true),
    ("text/markdown", true),
    ("text/html", true),
    ("application/pdf", true),
    ("image/png", false),
    ("image/jpeg", false),
    ("image/tiff", false),
];

/// How long extraction from one document may take.
const TIME_LIMIT: Duration = Duration::from_secs(20);

/// Why no text could be had from a document that should have some.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtractionError {
    #[error("the document is not valid {0}")]
    Unreadable(&'static str),
    #[error("text extraction took too long")]
    TooSlow,
}

/// The media type as accepted (lowercase, without parameters), if it is one of
/// [`MEDIA_TYPES`].
pub fn accepted(media_type: &str) -> Option<&'static str> {
    let essence = media_type.split(';').next()?.trim().to_ascii_lowercase();
    MEDIA_TYPES
        .iter()
        .find(|(t, _)| *t == essence)
        .map(|(t, _)| *t)
}

/// The text of `bytes` of `media_type` (one of [`MEDIA_TYPES`]); `None` for types without
/// text.
///
/// # Errors
///
/// [`ExtractionError`] when the bytes are not what the type says, or take too long.
pub async fn extract(
    media_type: &'static str,
    bytes: Vec<u8>,
) -> Result<Option<String>, ExtractionError> {
    let work = tokio::task::spawn_blocking(move || {
        std::panic::catch_unwind(|| extract_now(media_type, &bytes))
            .unwrap_or(Err(ExtractionError::Unreadable("a readable file")))
    });
    match tokio::time::timeout(TIME_LIMIT, work).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(ExtractionError::Unreadable("a readable file")),
        Err(_) => Err(ExtractionError::TooSlow),
    }
}

fn extract_now(media_type: &str, bytes: &[u8]) -> Result<Option<String>, ExtractionError> {
    let text = match media_type {
        "text/plain" => utf8(bytes, "UTF-8 text")?.to_owned(),
        "text/markdown" => markdown(utf8(bytes, "UTF-8 Markdown")?),
        "text/html" => {
            html2text::from_read(bytes, 100_000).map_err(|_| ExtractionError::Unreadable("HTML"))?
        }
        "application/pdf" => pdf_extract::extract_text_from_mem(bytes)
            .map_err(|_| ExtractionError::Unreadable("PDF"))?,
        _ => return Ok(None),
    };
    Ok(Some(tidy(&text)))
}

fn utf8<'a>(bytes: &'a [u8], what: &'static str) -> Result<&'a str, ExtractionError> {
    std::str::from_utf8(bytes).map_err(|_| ExtractionError::Unreadable(what))
}

/// The words of a Markdown document, without its markup.
fn markdown(source: &str) -> String {
    use pulldown_cmark::{Event, Parser, TagEnd};
    let mut out = String::with_capacity(source.len());
    for event in Parser::new(source) {
        match event {
            Event::Text(t) | Event::Code(t) | Event::InlineMath(t) | Event::DisplayMath(t) => {
                out.push_str(&t);
            }
            Event::SoftBreak | Event::HardBreak => out.push(' '),
            Event::End(
                TagEnd::Paragraph
                | TagEnd::Heading(_)
                | TagEnd::Item
                | TagEnd::CodeBlock
                | TagEnd::TableCell,
            ) => {
                out.push('\n');
            }
            _ => {}
        }
    }
    out
}

/// Control characters out, runs of blank lines and spaces collapsed.
fn tidy(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let line: String = line
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect::<String>()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        if !line.is_empty() {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_are_matched_without_parameters() {
        assert_eq!(accepted("Text/HTML; charset=utf-8"), Some("text/html"));
        assert_eq!(accepted("application/x-msdownload"), None);
    }

    #[test]
    fn markdown_and_html_lose_their_markup() {
        let md = extract_now(
            "text/markdown",
            b"# Discharge\n\n**Penicillin** allergy, see `notes`.",
        )
        .unwrap()
        .unwrap();
        assert_eq!(md, "Discharge\nPenicillin allergy, see notes.\n");
        let html = extract_now(
            "text/html",
            b"<html><head><style>p{color:red}</style><script>alert(1)</script></head><body><h1>Referral</h1><p>Chest&nbsp;pain &amp; dyspnoea</p></body></html>",
        )
        .unwrap()
        .unwrap();
        assert!(html.contains("Referral"), "{html}");
        assert!(html.contains("Chest pain & dyspnoea"), "{html}");
        assert!(!html.contains("alert") && !html.contains("color"), "{html}");
    }

    #[test]
    fn pdf_text_is_extracted() {
        let pdf = crate::synthetic::pdf(&["Discharge summary", "Allergy to penicillin (rash)"]);
        let text = extract_now("application/pdf", &pdf).unwrap().unwrap();
        assert!(text.contains("Discharge summary"), "{text}");
        assert!(text.contains("penicillin (rash)"), "{text}");
    }

    #[test]
    fn bytes_that_are_not_what_they_claim_are_refused() {
        assert_eq!(
            extract_now("application/pdf", b"not a pdf"),
            Err(ExtractionError::Unreadable("PDF"))
        );
        assert_eq!(
            extract_now("text/plain", &[0xff, 0xfe, 0x00]),
            Err(ExtractionError::Unreadable("UTF-8 text"))
        );
        assert_eq!(extract_now("image/png", b"\x89PNG"), Ok(None));
    }
}
