//! Extraction in a child process: the service's side ([`Extractor`]: start, feed, time limit,
//! kill), the child's (`patient-service extract-text`, [`extract_text`]), and the few words
//! they exchange.
//!
//! The child gets the document on stdin, and the media type and its limits as arguments. It
//! lowers its own limits before it reads a byte, then answers on stdout: one status line, then
//! for `text` the text. It exits 0 whenever it answered; anything else (a signal from its
//! limits, a crash) is read from its exit status. Its environment is emptied and its stderr
//! discarded: it needs no secrets, and a panic message could quote the document.

use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use clap::Parser;
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use super::{
    accepted, expected, extract_now, has_text, signed_as, slots, ExtractionError, ANY_FILE,
    DEFAULT_TIME_LIMIT, MEDIA_TYPES, MEMORY_LIMIT,
};
use crate::configuration::DocumentSettings;

/// The most a child may answer (status line and text): a small compressed PDF can hold far
/// more text than any document worth indexing, and the answer is read into the service's
/// memory.
const MAX_ANSWER_BYTES: u64 = 64 << 20;

/// The hidden subcommand the child runs (clap's name for [`crate::cli::Command::ExtractText`]).
const SUBCOMMAND: &str = "extract-text";

/// The arguments of `patient-service extract-text`.
#[derive(Debug, clap::Args)]
pub struct ExtractTextArgs {
    /// The document's media type.
    #[arg(long)]
    media_type: String,
    /// CPU seconds before the kernel stops the process (SIGXCPU, and SIGKILL a second later).
    #[arg(long)]
    cpu_seconds: u64,
    /// The address space the process may use, in bytes.
    #[arg(long)]
    memory_bytes: u64,
}

/// Extracts text in child processes, one per document, each within a time and a memory limit.
#[derive(Debug, Clone)]
pub struct Extractor {
    program: PathBuf,
    time_limit: Duration,
    memory_limit: u64,
}

impl Default for Extractor {
    /// This binary, with the default limits.
    fn default() -> Self {
        Self {
            program: this_binary(),
            time_limit: DEFAULT_TIME_LIMIT,
            memory_limit: MEMORY_LIMIT,
        }
    }
}

fn this_binary() -> PathBuf {
    // It does not fail on Linux in practice; an empty path would fail to start, which is
    // logged and answered 503.
    std::env::current_exe().unwrap_or_default()
}

impl Extractor {
    /// The extractor `settings` describe (`documents.extractor_path`, this binary if unset, and
    /// `documents.extraction_timeout_ms`).
    pub fn new(settings: &DocumentSettings) -> Self {
        Self {
            program: settings.extractor_path.clone().unwrap_or_else(this_binary),
            time_limit: settings.extraction_timeout(),
            memory_limit: MEMORY_LIMIT,
        }
    }

    /// The text of `bytes` of `media_type` (one of [`MEDIA_TYPES`]); `None` for types
    /// without text. Waits at most the time limit for a slot, and at most the time limit for
    /// the child, which is then killed and reaped before this returns.
    ///
    /// # Errors
    ///
    /// [`ExtractionError`] when the bytes are not what the type says, or take too long; `Busy`
    /// when no slot frees in time or the child cannot be run (logged).
    pub async fn extract(
        &self,
        media_type: &'static str,
        bytes: Vec<u8>,
    ) -> Result<Option<String>, ExtractionError> {
        if !has_text(media_type) {
            // No text to extract, but the bytes must still be what the type says.
            return signed_as(media_type, &bytes).map(|()| None);
        }
        // Held until the child is gone: the slot is free again exactly when its cost ends.
        let _slot = tokio::time::timeout(self.time_limit, slots().acquire_owned())
            .await
            .map_err(|_| ExtractionError::Busy)?
            .map_err(|_| ExtractionError::Busy)?;
        let mut child = self.spawn(media_type).map_err(|e| {
            tracing::error!(
                error.message = %e,
                program = %self.program.display(),
                "the text extractor cannot be started"
            );
            ExtractionError::Busy
        })?;
        let outcome = tokio::time::timeout(self.time_limit, converse(&mut child, bytes)).await;
        match outcome {
            Ok((status, answer)) => read_answer(status, answer),
            Err(_) => {
                if let Err(e) = child.kill().await {
                    tracing::error!(error.message = %e, "a slow text extractor cannot be killed");
                }
                Err(ExtractionError::TooSlow)
            }
        }
    }

    /// The child's arguments, after the program.
    fn arguments(&self, media_type: &str) -> Vec<String> {
        vec![
            SUBCOMMAND.to_owned(),
            "--media-type".to_owned(),
            media_type.to_owned(),
            "--cpu-seconds".to_owned(),
            cpu_seconds(self.time_limit).to_string(),
            "--memory-bytes".to_owned(),
            self.memory_limit.to_string(),
        ]
    }

    fn spawn(&self, media_type: &str) -> std::io::Result<Child> {
        Command::new(&self.program)
            .args(self.arguments(media_type))
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            // Should the upload be abandoned (the client left), the child goes with it.
            .kill_on_drop(true)
            .spawn()
    }
}

/// Whole CPU seconds, at least the time limit: the wall clock stops the child first, the CPU
/// limit stops it anyway should its parent be gone.
fn cpu_seconds(time_limit: Duration) -> u64 {
    (time_limit.as_secs() + u64::from(time_limit.subsec_nanos() > 0)).max(1)
}

/// Feeds the document while reading the answer (a pipe holds little), then reaps the child.
async fn converse(
    child: &mut Child,
    bytes: Vec<u8>,
) -> (std::io::Result<ExitStatus>, std::io::Result<Vec<u8>>) {
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let feed = async move {
        if let Some(mut stdin) = stdin {
            // A child that stops reading has ended: its exit status says how.
            let _fed = stdin.write_all(&bytes).await;
        }
    };
    let answer = async move {
        let mut answer = Vec::new();
        if let Some(stdout) = stdout {
            // One byte past the cap tells that the text was longer.
            stdout
                .take(MAX_ANSWER_BYTES + 1)
                .read_to_end(&mut answer)
                .await?;
        }
        Ok(answer)
    };
    let ((), answer) = tokio::join!(feed, answer);
    (child.wait().await, answer)
}

/// The result of a child that ended with `status` after answering `answer`.
fn read_answer(
    status: std::io::Result<ExitStatus>,
    answer: std::io::Result<Vec<u8>>,
) -> Result<Option<String>, ExtractionError> {
    let status = status.map_err(|e| {
        tracing::error!(error.message = %e, "a text extractor cannot be waited for");
        ExtractionError::Busy
    })?;
    if let Some(signal) = status.signal() {
        // SIGXCPU and SIGKILL: its CPU limit, or the kernel's out-of-memory killer. Anything
        // else (SIGABRT past its memory limit, SIGSEGV) is the parser failing on this file.
        if signal == Signal::SIGXCPU as i32 || signal == Signal::SIGKILL as i32 {
            return Err(ExtractionError::TooSlow);
        }
        tracing::warn!(signal, "a text extractor crashed on a document");
        return Err(ExtractionError::Unreadable(ANY_FILE));
    }
    if !status.success() {
        tracing::error!(code = ?status.code(), "a text extractor failed before extracting");
        return Err(ExtractionError::Busy);
    }
    let answer = answer.map_err(|e| {
        tracing::error!(error.message = %e, "a text extractor's answer cannot be read");
        ExtractionError::Busy
    })?;
    if answer.len() as u64 > MAX_ANSWER_BYTES {
        return Err(ExtractionError::TooMuchText);
    }
    read_report(&answer).unwrap_or_else(|| {
        tracing::error!("a text extractor answered out of protocol");
        Err(ExtractionError::Busy)
    })
}

/// Writes `result` as the child answers it.
fn report(
    result: &Result<Option<String>, ExtractionError>,
    out: &mut impl Write,
) -> std::io::Result<()> {
    match result {
        Ok(Some(text)) => {
            out.write_all(b"text\n")?;
            out.write_all(text.as_bytes())
        }
        Ok(None) => out.write_all(b"none\n"),
        Err(ExtractionError::Unreadable(what)) => writeln!(out, "unreadable {what}"),
        Err(ExtractionError::RecursivePdf) => out.write_all(b"recursive-pdf\n"),
        Err(ExtractionError::TooSlow) => out.write_all(b"too-slow\n"),
        Err(ExtractionError::Busy) => out.write_all(b"busy\n"),
        Err(ExtractionError::TooMuchText) => out.write_all(b"too-much-text\n"),
    }
}

/// The result a child's `answer` reports; `None` when it is not an answer.
fn read_report(answer: &[u8]) -> Option<Result<Option<String>, ExtractionError>> {
    let end = answer.iter().position(|b| *b == b'\n')?;
    let (status, rest) = (
        std::str::from_utf8(&answer[..end]).ok()?,
        &answer[end + 1..],
    );
    Some(match status {
        "text" => Ok(Some(String::from_utf8(rest.to_vec()).ok()?)),
        "none" => Ok(None),
        "recursive-pdf" => Err(ExtractionError::RecursivePdf),
        "too-slow" => Err(ExtractionError::TooSlow),
        "busy" => Err(ExtractionError::Busy),
        "too-much-text" => Err(ExtractionError::TooMuchText),
        _ => {
            let what = status.strip_prefix("unreadable ")?;
            // Back to the name `extract_now` used, one of a known few.
            let known = MEDIA_TYPES
                .iter()
                .map(|(t, _)| expected(t))
                .chain([ANY_FILE])
                .find(|known| *known == what)?;
            Err(ExtractionError::Unreadable(known))
        }
    })
}

/// The entry of the extracting child, for every binary that starts the service: the service
/// runs its own binary as `<binary> extract-text ...` for each document, so each such binary
/// calls this first thing in `main`, before any runtime exists (the child's memory limit must
/// count only its own work). Returns `None` when this process was not started as the child.
pub fn run_child_if_asked() -> Option<anyhow::Result<()>> {
    let mut args = std::env::args_os();
    let program = args.next()?;
    if args.next()? != SUBCOMMAND {
        return None;
    }
    Some(
        ChildCommandLine::try_parse_from(std::iter::once(program).chain(args))
            .map_err(anyhow::Error::from)
            .and_then(|child| extract_text(&child.args)),
    )
}

/// `<binary> extract-text ...` as the child reads it (the subcommand already taken off).
#[derive(Debug, clap::Parser)]
struct ChildCommandLine {
    #[command(flatten)]
    args: ExtractTextArgs,
}

/// `patient-service extract-text`: lowers this process's limits, reads one document on stdin
/// and answers on stdout. The service runs it; see the module documentation.
///
/// # Errors
///
/// When the limits cannot be lowered (nothing is extracted then), the media type is not one
/// accepted, or stdin or stdout fail.
pub fn extract_text(args: &ExtractTextArgs) -> anyhow::Result<()> {
    // No core dump: it would hold the document.
    lower(Resource::RLIMIT_CORE, 0, 0)?;
    let cpu = args.cpu_seconds.max(1);
    lower(Resource::RLIMIT_CPU, cpu, cpu.saturating_add(1))?;
    lower(Resource::RLIMIT_AS, args.memory_bytes, args.memory_bytes)?;
    let media_type = accepted(&args.media_type)
        .ok_or_else(|| anyhow::anyhow!("{} is not an accepted media type", args.media_type))?;
    let mut bytes = Vec::new();
    std::io::stdin().lock().read_to_end(&mut bytes)?;
    // A parser that panics is contained here: the child still answers.
    let result = std::panic::catch_unwind(|| extract_now(media_type, &bytes))
        .unwrap_or(Err(ExtractionError::Unreadable(ANY_FILE)));
    let mut out = std::io::stdout().lock();
    report(&result, &mut out)?;
    out.flush()?;
    Ok(())
}

/// Sets a limit of this process, never above its hard limit now (raising that needs
/// privileges, and lowering is the point).
fn lower(resource: Resource, soft: u64, hard: u64) -> nix::Result<()> {
    let (_, current) = getrlimit(resource)?;
    setrlimit(resource, soft.min(current), hard.min(current))
}

#[async_trait::async_trait]
impl application::extraction::TextExtractor for Extractor {
    async fn extract(
        &self,
        media_type: &'static str,
        bytes: Vec<u8>,
    ) -> Result<Option<String>, application::extraction::Extraction> {
        use application::extraction::Extraction;
        Extractor::extract(self, media_type, bytes)
            .await
            .map_err(|e| match e {
                ExtractionError::Busy => Extraction::Busy,
                refused => Extraction::Refused(refused.to_string()),
            })
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    fn answered(result: &Result<Option<String>, ExtractionError>) -> Vec<u8> {
        let mut answer = Vec::new();
        report(result, &mut answer).unwrap();
        answer
    }

    #[test]
    fn every_outcome_of_extraction_reads_back_as_it_was() {
        let pdf = synthetic::pdf(&["Discharge summary"]);
        let samples: [(&str, &[u8]); 7] = [
            ("text/html", b"<p>Chest pain</p>"),
            ("text/plain", &[0xff, 0xfe]),
            ("text/markdown", &[0xff]),
            ("application/pdf", b"not a pdf"),
            ("application/pdf", &pdf),
            ("image/png", b"\x89PNG"),
            ("text/plain", b"first line\nsecond line\n"),
        ];
        for (media_type, bytes) in samples {
            let result = extract_now(media_type, bytes);
            assert_eq!(
                read_report(&answered(&result)),
                Some(result),
                "{media_type}"
            );
        }
        for result in [
            Err(ExtractionError::Unreadable(ANY_FILE)),
            Err(ExtractionError::RecursivePdf),
        ] {
            assert_eq!(read_report(&answered(&result)), Some(result));
        }
        assert_eq!(read_report(b"running 0 tests\n"), None);
        assert_eq!(read_report(b"unreadable anything\n"), None);
    }

    #[test]
    fn how_a_child_ended_decides_the_answer() {
        let killed = |signal: Signal| Ok(ExitStatus::from_raw(signal as i32));
        let exited = |code: i32| Ok(ExitStatus::from_raw(code << 8));
        let text = || Ok(b"text\nReferral\n".to_vec());
        assert_eq!(
            read_answer(killed(Signal::SIGXCPU), text()),
            Err(ExtractionError::TooSlow)
        );
        assert_eq!(
            read_answer(killed(Signal::SIGKILL), text()),
            Err(ExtractionError::TooSlow)
        );
        assert_eq!(
            read_answer(killed(Signal::SIGABRT), text()),
            Err(ExtractionError::Unreadable(ANY_FILE))
        );
        assert_eq!(read_answer(exited(2), text()), Err(ExtractionError::Busy));
        assert_eq!(
            read_answer(exited(0), text()),
            Ok(Some("Referral\n".to_owned()))
        );
    }

    #[test]
    fn the_child_is_run_with_arguments_the_command_line_accepts() {
        let extractor = Extractor {
            program: PathBuf::from("patient-service"),
            time_limit: Duration::from_millis(1500),
            memory_limit: MEMORY_LIMIT,
        };
        let mut arguments = extractor.arguments("text/html");
        assert_eq!(arguments.remove(0), SUBCOMMAND);
        let argv = std::iter::once("patient-service".to_owned()).chain(arguments);
        let args = ChildCommandLine::try_parse_from(argv).unwrap().args;
        assert_eq!(args.media_type, "text/html");
        assert_eq!(args.cpu_seconds, 2, "rounded up");
        assert_eq!(args.memory_bytes, MEMORY_LIMIT);
    }
}
