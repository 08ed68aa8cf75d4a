//! What the use cases need from a document text extractor: the binary runs one in sandboxed
//! child processes; the use cases know only this trait.

/// Extracts the text of an uploaded document (in a sandbox: documents are untrusted).
#[async_trait::async_trait]
pub trait TextExtractor: Send + Sync {
    /// The text of `bytes` of `media_type`, or `None` for a type without text (an image).
    ///
    /// # Errors
    ///
    /// [`Extraction::Busy`] when every extraction slot is taken; [`Extraction::Refused`] when
    /// the document cannot be read.
    async fn extract(
        &self,
        media_type: &'static str,
        bytes: Vec<u8>,
    ) -> Result<Option<String>, Extraction>;
}

/// Why a document's text could not be extracted.
#[derive(Debug, thiserror::Error)]
pub enum Extraction {
    /// Every extraction slot is busy: try again shortly.
    #[error("document extraction is busy")]
    Busy,
    /// The document cannot be read, and why (no content of it).
    #[error("{0}")]
    Refused(String),
}
