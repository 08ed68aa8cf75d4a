//! Text extraction from uploaded documents, for indexing: plain text, Markdown, HTML and PDF.
//! Other accepted types (images) are stored without text.
//!
//! The parsers run in a child process (the running binary again, as `<binary> extract-text`:
//! every binary that starts the service calls [`run_child_if_asked`] first thing in `main`; see
//! `process.rs`) limited in CPU time and memory, at most [`CONCURRENT`] at a time. A document
//! past its time limit is refused and its process killed and reaped before the answer, so a
//! hostile document costs at most its limit and frees its slot: a thread cannot be stopped,
//! a process can. A parser that panics or crashes on a malformed file takes only its process
//! down: the upload is refused as unreadable, the service goes on. PDFs are still checked
//! first: pdf-extract draws form XObjects recursively without a cycle check, and a form that
//! draws itself is better refused by name than as a crash.
//!
//! The functions that extract (`extract_now` and below) are pure and tested in-process.

mod process;

use std::sync::Arc;
use std::time::Duration;

use lopdf::{Dictionary, Object, ObjectId};
use tokio::sync::Semaphore;

pub use process::{run_child_if_asked, Extractor};

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

/// How long extraction from one document may take unless configured
/// (`documents.extraction_timeout_ms`).
pub const DEFAULT_TIME_LIMIT: Duration = Duration::from_secs(20);

/// The address space an extracting process may use.
pub const MEMORY_LIMIT: u64 = 1 << 30;

/// What [`ExtractionError::Unreadable`] names when a parser fails on a file beyond what its
/// type says (it panicked, or crashed its process).
const ANY_FILE: &str = "a readable file";

/// Extractions running at once.
pub const CONCURRENT: usize = 2;

/// Deepest nesting of form XObjects accepted in a PDF.
const MAX_FORM_DEPTH: usize = 32;

/// Most XObject references walked when checking a PDF.
const MAX_FORM_VISITS: usize = 10_000;

/// Why no text could be had from a document that should have some.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtractionError {
    #[error("the document is not valid {0}")]
    Unreadable(&'static str),
    #[error("the PDF's forms draw themselves or nest too deep")]
    RecursivePdf,
    #[error("text extraction took too long")]
    TooSlow,
    /// More text than is indexed from one document.
    #[error("the document holds more than 64 MiB of text")]
    TooMuchText,
    /// Every extraction slot is taken, or no extracting process could be run (retry).
    #[error("text extraction is busy")]
    Busy,
}

fn slots() -> Arc<Semaphore> {
    static SLOTS: std::sync::OnceLock<Arc<Semaphore>> = std::sync::OnceLock::new();
    SLOTS
        .get_or_init(|| Arc::new(Semaphore::new(CONCURRENT)))
        .clone()
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

/// Whether text is extracted from `media_type`.
fn has_text(media_type: &str) -> bool {
    MEDIA_TYPES
        .iter()
        .any(|(t, text)| *t == media_type && *text)
}

/// The signatures (leading bytes) of the image types, one of which their files start with.
const IMAGE_SIGNATURES: &[(&str, &str, &[&[u8]])] = &[
    ("image/png", "a PNG image", &[b"\x89PNG\r\n\x1a\n"]),
    ("image/jpeg", "a JPEG image", &[b"\xff\xd8\xff"]),
    ("image/tiff", "a TIFF image", &[b"II*\0", b"MM\0*"]),
];

/// Whether `bytes` start as a file of `media_type` must (the image types, which have no text
/// to extract and so no parser to refuse them).
///
/// # Errors
///
/// [`ExtractionError::Unreadable`] naming what the file should have been.
fn signed_as(media_type: &str, bytes: &[u8]) -> Result<(), ExtractionError> {
    match IMAGE_SIGNATURES.iter().find(|(t, _, _)| *t == media_type) {
        Some((_, what, signatures)) if !signatures.iter().any(|s| bytes.starts_with(s)) => {
            Err(ExtractionError::Unreadable(what))
        }
        _ => Ok(()),
    }
}

/// What a document of `media_type` was expected to be, as `extract_now` names it when the
/// bytes are not that.
fn expected(media_type: &str) -> &'static str {
    match media_type {
        "text/plain" => "UTF-8 text",
        "text/markdown" => "UTF-8 Markdown",
        "text/html" => "HTML",
        "application/pdf" => "PDF",
        _ => ANY_FILE,
    }
}

/// The text of `bytes` of `media_type`, here and now: what the child process runs.
fn extract_now(media_type: &str, bytes: &[u8]) -> Result<Option<String>, ExtractionError> {
    let what = expected(media_type);
    let text = match media_type {
        "text/plain" => utf8(bytes, what)?.to_owned(),
        "text/markdown" => markdown(utf8(bytes, what)?),
        "text/html" => {
            html2text::from_read(bytes, 100_000).map_err(|_| ExtractionError::Unreadable(what))?
        }
        "application/pdf" => {
            forms_are_acyclic(bytes)?;
            pdf_extract::extract_text_from_mem(bytes)
                .map_err(|_| ExtractionError::Unreadable(what))?
        }
        _ => return Ok(None),
    };
    Ok(Some(tidy(&text)))
}

/// Walks every page's form XObjects the way pdf-extract draws them (a form without resources
/// of its own uses its parent's) and refuses a form reachable from itself, or nested deeper
/// than [`MAX_FORM_DEPTH`].
fn forms_are_acyclic(bytes: &[u8]) -> Result<(), ExtractionError> {
    let document =
        lopdf::Document::load_mem(bytes).map_err(|_| ExtractionError::Unreadable("PDF"))?;
    let mut budget = MAX_FORM_VISITS;
    for page in document.get_pages().into_values() {
        let (inline, inherited) = document
            .get_page_resources(page)
            .map_err(|_| ExtractionError::Unreadable("PDF"))?;
        let mut resources: Vec<&Dictionary> = inline.into_iter().collect();
        resources.extend(
            inherited
                .into_iter()
                .filter_map(|id| document.get_object(id).and_then(Object::as_dict).ok()),
        );
        for dictionary in resources {
            walk_forms(&document, dictionary, &mut Vec::new(), &mut budget)?;
        }
    }
    Ok(())
}

fn walk_forms(
    document: &lopdf::Document,
    resources: &Dictionary,
    path: &mut Vec<ObjectId>,
    budget: &mut usize,
) -> Result<(), ExtractionError> {
    let Ok(xobjects) = resources
        .get(b"XObject")
        .and_then(|o| document.dereference(o))
        .and_then(|(_, o)| o.as_dict())
    else {
        return Ok(());
    };
    for (_, entry) in xobjects.iter() {
        *budget = budget.checked_sub(1).ok_or(ExtractionError::RecursivePdf)?;
        let Ok(id) = entry.as_reference() else {
            continue;
        };
        if path.contains(&id) || path.len() >= MAX_FORM_DEPTH {
            return Err(ExtractionError::RecursivePdf);
        }
        let Ok(Object::Stream(stream)) = document.get_object(id) else {
            continue;
        };
        let inner = stream
            .dict
            .get(b"Resources")
            .and_then(|o| document.dereference(o))
            .and_then(|(_, o)| o.as_dict())
            .unwrap_or(resources);
        path.push(id);
        walk_forms(document, inner, path, budget)?;
        path.pop();
    }
    Ok(())
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
        let pdf = synthetic::pdf(&["Discharge summary", "Allergy to penicillin (rash)"]);
        let text = extract_now("application/pdf", &pdf).unwrap().unwrap();
        assert!(text.contains("Discharge summary"), "{text}");
        assert!(text.contains("penicillin (rash)"), "{text}");
    }

    /// A PDF whose page draws form /X1, which draws itself: pdf-extract alone would recurse
    /// until the stack overflows.
    fn self_drawing_pdf() -> Vec<u8> {
        let objects = [
            "<< /Type /Catalog /Pages 2 0 R >>".to_owned(),
            "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_owned(),
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R \
             /Resources << /XObject << /X1 5 0 R >> >> >>"
                .to_owned(),
            "<< /Length 7 >>\nstream\n/X1 Do\nendstream".to_owned(),
            "<< /Type /XObject /Subtype /Form /BBox [0 0 10 10] /Length 7 >>\nstream\n/X1 Do\nendstream".to_owned(),
        ];
        synthetic::pdf_of(&objects)
    }

    #[test]
    fn a_pdf_whose_forms_draw_themselves_is_refused_before_extraction() {
        assert_eq!(
            extract_now("application/pdf", &self_drawing_pdf()),
            Err(ExtractionError::RecursivePdf)
        );
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
