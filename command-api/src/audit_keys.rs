//! The audit key's rotation, `patient-service keys rotate-audit`.
//!
//! 1. Every process is given the new key as `security.audit_key` and the one before it in
//!    `security.previous_audit_keys`, and restarted: from then on every row is hashed with the
//!    new key, and the rows of the old one still verify.
//! 2. `keys rotate-audit` verifies both chains (the event store's and the audit log's), then
//!    retires each previous key after the last row it hashed ([`event_store::chain::Retirement`],
//!    signed by the new key). From then on a row hashed with a retired key after that point is
//!    named by `audit verify`, so a previous key that leaks cannot vouch for new rows; and a
//!    previous key not yet retired makes `audit verify` fail until it is.
//!
//! Previous keys stay configured for as long as their rows are kept: without them those rows
//! no longer verify.

use event_store::chain::{self, ChainKey, Retirement};
use sqlx::PgPool;

/// The event store's and the audit log's verification, with the retirements they were
/// checked against.
#[derive(Debug)]
pub struct Checked {
    pub events: chain::Verification,
    pub audit: projections::audit_log::Verification,
    /// The retirements whose signature holds, which both were checked against.
    pub retired: Vec<Retirement>,
    /// Key ids of retirement records whose signature does not hold.
    pub forged_retirements: Vec<String>,
}

impl Checked {
    /// Every finding, one line each, retirements whose signature does not hold and previous
    /// keys not retired included.
    pub fn findings(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .events
            .findings
            .iter()
            .map(ToString::to_string)
            .collect();
        lines.extend(self.audit.findings.iter().map(ToString::to_string));
        lines.extend(self.forged_retirements.iter().map(|kid| {
            format!("audit key retirement of {kid}: not signed by its successor, ignored")
        }));
        lines.extend(self.unretired().into_iter().map(|(kid, events, entries)| {
            format!(
                "audit key {kid}: a previous key not retired, still vouching for {events} events and {entries} audit log entries: run `patient-service keys rotate-audit`"
            )
        }));
        lines
    }

    /// The previous keys not retired, with the events and audit log entries they verified.
    fn unretired(&self) -> Vec<(String, u64, u64)> {
        let (events, audit) = (&self.events.keys.unretired, &self.audit.keys.unretired);
        let mut kids: Vec<&String> = events.keys().chain(audit.keys()).collect();
        kids.sort();
        kids.dedup();
        kids.into_iter()
            .map(|kid| {
                (
                    kid.clone(),
                    events.get(kid).map_or(0, |u| u.rows),
                    audit.get(kid).map_or(0, |u| u.rows),
                )
            })
            .collect()
    }
}

/// Verifies both chains against the recorded retirements.
///
/// # Errors
///
/// The database error.
pub async fn check(pool: &PgPool, key: &ChainKey) -> Result<Checked, sqlx::Error> {
    let (retired, forged_retirements) = chain::retirements(pool, key).await?;
    Ok(Checked {
        events: chain::verify_events(pool, key, &retired).await?,
        audit: projections::audit_log::verify(pool, key, &retired).await?,
        retired,
        forged_retirements,
    })
}

/// Retires every previous key not retired yet, after the last row it hashed, once both chains
/// verify; answers the retirements recorded.
///
/// # Errors
///
/// Without a previous key, when anything does not verify (every finding named), or the
/// database error.
pub async fn rotate(pool: &PgPool, key: &ChainKey) -> anyhow::Result<Vec<Retirement>> {
    let previous = key.previous_key_ids();
    if previous.is_empty() {
        anyhow::bail!(
            "no previous audit key: set security.audit_key to the new key and the one before it in \
             security.previous_audit_keys (APP_SECURITY__PREVIOUS_AUDIT_KEYS), restart every process, \
             then rotate"
        );
    }
    let checked = check(pool, key).await?;
    let blocking: Vec<String> = checked
        .events
        .findings
        .iter()
        .map(ToString::to_string)
        .chain(checked.audit.findings.iter().map(ToString::to_string))
        .collect();
    if !blocking.is_empty() {
        anyhow::bail!(
            "the audit trail does not verify, so no key is retired:\n{}",
            blocking.join("\n")
        );
    }
    let head = projections::audit_head::current(pool).await?;
    let successor = key.key_id(0).unwrap_or_default();
    let mut retired = Vec::new();
    for kid in previous {
        if checked.retired.iter().any(|r| r.kid == kid) {
            continue;
        }
        let retirement = Retirement {
            last_position: checked
                .events
                .keys
                .unretired
                .get(&kid)
                .map_or(0, |u| u.last),
            last_audit_seq: checked.audit.keys.unretired.get(&kid).map_or(0, |u| u.last),
            audit_chain_id: head.chain_id,
            successor: successor.clone(),
            kid,
        };
        chain::retire(pool, key, &retirement).await?;
        retired.push(retirement);
    }
    Ok(retired)
}
