//! Tracing setup. Log lines carry ids only (patient, request, user), never patient data: the
//! types that hold patient data redact their `Debug`, and handlers record ids explicitly.

use tracing::Subscriber;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::EnvFilter;

use crate::configuration::{LogFormat, LogSettings};

/// A subscriber writing to `sink`, filtered by `RUST_LOG` or else `settings.level`.
pub fn get_subscriber<W>(settings: &LogSettings, sink: W) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.level));
    let registry = tracing_subscriber::registry().with(filter);
    match settings.format {
        LogFormat::Json => Box::new(
            registry.with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_writer(sink),
            ),
        ),
        LogFormat::Pretty => {
            Box::new(registry.with(tracing_subscriber::fmt::layer().with_writer(sink)))
        }
    }
}

/// Installs `subscriber` as the global default; a second call is ignored.
pub fn init_subscriber(subscriber: Box<dyn Subscriber + Send + Sync>) {
    if tracing::subscriber::set_global_default(subscriber).is_err() {
        tracing::debug!("a global subscriber was already installed");
    }
}
