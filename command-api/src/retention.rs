//! `patient-service retention purge`: erases every archived patient whose retention period
//! (`retention.archived_days` after archiving) has passed ([`application::retention`]).

use clap::Args;
use event_store::store::PatientStore;

use crate::configuration::Settings;
use crate::startup;

#[derive(Debug, Clone, Args)]
pub struct PurgeArgs {
    /// List who would be erased, erase nobody.
    #[arg(long)]
    pub dry_run: bool,
}

/// Runs the purge against the configured (or embedded) database and prints what it did.
///
/// # Errors
///
/// When the database or the event store fails.
pub async fn run(settings: &Settings, args: PurgeArgs) -> anyhow::Result<()> {
    let secrets = settings.secrets()?;
    let purged = startup::with_database(settings, |pool| async move {
        let store = PatientStore::new(pool.clone(), secrets.keys, secrets.chain);
        Ok(application::retention::purge(
            (&pool, &store),
            settings.retention.archived_days,
            chrono::Utc::now(),
            args.dry_run,
        )
        .await?)
    })
    .await?;
    println!(
        "{} past retention; {} forgotten; {} on legal hold{}",
        purged.candidates,
        purged.forgotten,
        purged.on_legal_hold,
        if args.dry_run { " (dry run)" } else { "" }
    );
    Ok(())
}
