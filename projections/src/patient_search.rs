//! The `patient_search` read model: current demographics and status of every patient, found
//! by family name (prefix), given name (prefix), birth date and MRN.
//!
//! Names are matched in a folded form, lowercase with accents removed, so `muller` finds
//! Müller and `ZOE` finds Zoë. The fold is [`fold`], used both when storing and when querying.

use chrono::{DateTime, NaiveDate, Utc};
use schemas::patient::v1;
use schemas::PublishedEvent;
use serde::Serialize;
use sqlx::{PgConnection, PgPool, QueryBuilder, Row};
use uuid::Uuid;

use crate::runtime::{ProjectionError, ReadModel};

pub use domain::matching::fold;

#[derive(Debug, Clone, Copy, Default)]
pub struct PatientSearch;

impl ReadModel for PatientSearch {
    fn name(&self) -> &'static str {
        "patient_search"
    }

    fn topics(&self) -> &'static [&'static str] {
        &[schemas::topics::PATIENT]
    }

    fn tables(&self) -> &'static [&'static str] {
        &["patient_search"]
    }

    fn partitions_by_patient(&self) -> bool {
        true
    }

    async fn apply(
        &self,
        tx: &mut PgConnection,
        event: &PublishedEvent,
    ) -> Result<(), ProjectionError> {
        let version = event.sequence as i64;
        apply_event(tx, v1::PatientEvent::from_published(event)?, version).await
    }

    /// Runs of registrations are inserted in one statement whatever their length; other
    /// events one by one, in order.
    async fn apply_many(
        &self,
        tx: &mut PgConnection,
        events: &[&PublishedEvent],
    ) -> Result<(), ProjectionError> {
        let mut registered = Vec::new();
        for event in events {
            let version = event.sequence as i64;
            match v1::PatientEvent::from_published(event)? {
                v1::PatientEvent::Registered(e) => registered.push((e, version)),
                other => {
                    register_all(tx, &std::mem::take(&mut registered)).await?;
                    apply_event(tx, other, version).await?;
                }
            }
        }
        register_all(tx, &registered).await?;
        Ok(())
    }

    async fn clear(&self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM patient_search")
            .execute(&mut *tx)
            .await
            .map(|_| ())
    }
}

/// Applies one decoded patient event that brought the patient to `version`.
async fn apply_event(
    tx: &mut PgConnection,
    event: v1::PatientEvent,
    version: i64,
) -> Result<(), ProjectionError> {
    match event {
        v1::PatientEvent::Registered(e) => register_all(tx, &[(e, version)]).await?,
        v1::PatientEvent::DemographicsCorrected(e) => {
            sqlx::query(
                "UPDATE patient_search
                        SET given = $2, family = $3, given_search = $4, family_search = $5,
                            birth_date = $6, gender = $7, version = $8, updated_at = $9
                      WHERE patient_id = $1",
            )
            .bind(e.patient_id)
            .bind(&e.name.given)
            .bind(&e.name.family)
            .bind(e.name.given.iter().map(|g| fold(g)).collect::<Vec<_>>())
            .bind(fold(&e.name.family))
            .bind(e.birth_date)
            .bind(gender_code(e.gender))
            .bind(version)
            .bind(e.corrected_at)
            .execute(&mut *tx)
            .await?;
        }
        v1::PatientEvent::Archived(e) => {
            set_status(tx, e.patient_id, "archived", version, e.archived_at).await?;
        }
        v1::PatientEvent::Restored(e) => {
            set_status(tx, e.patient_id, "active", version, e.restored_at).await?;
        }
        v1::PatientEvent::ContactInformationChanged(e) => {
            set_contact(tx, e.patient_id, &e.contact).await?;
            touch(tx, e.patient_id, version, e.changed_at).await?;
        }
        v1::PatientEvent::IdentifierAdded(e) => {
            sqlx::query(
                "UPDATE patient_search SET identifiers = array_append(identifiers, $2)
                      WHERE patient_id = $1",
            )
            .bind(e.patient_id)
            .bind(identifier_key(&e.identifier.system, &e.identifier.value))
            .execute(&mut *tx)
            .await?;
            touch(tx, e.patient_id, version, e.added_at).await?;
        }
        v1::PatientEvent::IdentifierRemoved(e) => {
            sqlx::query(
                "UPDATE patient_search SET identifiers = array_remove(identifiers, $2)
                      WHERE patient_id = $1",
            )
            .bind(e.patient_id)
            .bind(identifier_key(&e.identifier.system, &e.identifier.value))
            .execute(&mut *tx)
            .await?;
            touch(tx, e.patient_id, version, e.removed_at).await?;
        }
        v1::PatientEvent::PreferencesUpdated(e) => {
            touch(tx, e.patient_id, version, e.updated_at).await?
        }
        v1::PatientEvent::EmergencyContactAdded(e) => {
            touch(tx, e.patient_id, version, e.added_at).await?
        }
        v1::PatientEvent::EmergencyContactChanged(e) => {
            touch(tx, e.patient_id, version, e.changed_at).await?
        }
        v1::PatientEvent::EmergencyContactRemoved(e) => {
            touch(tx, e.patient_id, version, e.removed_at).await?
        }
        v1::PatientEvent::CoverageAdded(e) => touch(tx, e.patient_id, version, e.added_at).await?,
        v1::PatientEvent::CoverageChanged(e) => {
            touch(tx, e.patient_id, version, e.changed_at).await?
        }
        v1::PatientEvent::CoverageEnded(e) => touch(tx, e.patient_id, version, e.ended_at).await?,
        v1::PatientEvent::CareRelationshipStarted(e) => {
            touch(tx, e.patient_id, version, e.started_at).await?
        }
        v1::PatientEvent::CareRelationshipEnded(e) => {
            touch(tx, e.patient_id, version, e.ended_at).await?
        }
        v1::PatientEvent::ConsentGranted(e) => {
            if e.directive == v1::ConsentDirective::ResearchOptOut {
                sqlx::query(
                    "UPDATE patient_search SET research_opt_out = $2
                          WHERE patient_id = $1",
                )
                .bind(e.patient_id)
                .bind(e.consent_id)
                .execute(&mut *tx)
                .await?;
            }
            touch(tx, e.patient_id, version, e.granted_at).await?
        }
        v1::PatientEvent::ConsentWithdrawn(e) => {
            sqlx::query(
                "UPDATE patient_search SET research_opt_out = NULL
                      WHERE patient_id = $1 AND research_opt_out = $2",
            )
            .bind(e.patient_id)
            .bind(e.consent_id)
            .execute(&mut *tx)
            .await?;
            touch(tx, e.patient_id, version, e.withdrawn_at).await?
        }
        v1::PatientEvent::LegalHoldPlaced(e) => {
            touch(tx, e.patient_id, version, e.placed_at).await?
        }
        v1::PatientEvent::LegalHoldReleased(e) => {
            touch(tx, e.patient_id, version, e.released_at).await?
        }
        // Erased: nothing of the patient stays searchable.
        v1::PatientEvent::Forgotten(e) => {
            sqlx::query("DELETE FROM patient_search WHERE patient_id = $1")
                .bind(e.patient_id)
                .execute(&mut *tx)
                .await?;
        }
        v1::PatientEvent::Merged(e) => {
            set_status(tx, e.patient_id, "merged", version, e.merged_at).await?;
        }
        v1::PatientEvent::Unmerged(e) => {
            set_status(tx, e.patient_id, &e.status, version, e.unmerged_at).await?;
        }
        v1::PatientEvent::Absorbed(e) => {
            let (phones, emails, postal_codes, identifiers) =
                contact_arrays(&e.gained_contact, &e.gained_identifiers);
            sqlx::query(
                "UPDATE patient_search
                        SET phones = phones || $2, emails = emails || $3,
                            postal_codes = postal_codes || $4, identifiers = identifiers || $5
                      WHERE patient_id = $1",
            )
            .bind(e.patient_id)
            .bind(phones)
            .bind(emails)
            .bind(postal_codes)
            .bind(identifiers)
            .execute(&mut *tx)
            .await?;
            touch(tx, e.patient_id, version, e.absorbed_at).await?;
        }
        v1::PatientEvent::AbsorptionReverted(e) => {
            let (phones, emails, postal_codes, identifiers) =
                contact_arrays(&e.removed_contact, &e.removed_identifiers);
            sqlx::query(
                    "UPDATE patient_search
                        SET phones = ARRAY(SELECT unnest(phones) EXCEPT SELECT unnest($2::text[])),
                            emails = ARRAY(SELECT unnest(emails) EXCEPT SELECT unnest($3::text[])),
                            postal_codes = ARRAY(SELECT unnest(postal_codes) EXCEPT SELECT unnest($4::text[])),
                            identifiers = ARRAY(SELECT unnest(identifiers) EXCEPT SELECT unnest($5::text[]))
                      WHERE patient_id = $1",
                )
                .bind(e.patient_id)
                .bind(phones)
                .bind(emails)
                .bind(postal_codes)
                .bind(identifiers)
                .execute(&mut *tx)
                .await?;
            touch(tx, e.patient_id, version, e.reverted_at).await?;
        }
    }
    Ok(())
}

/// Inserts the search rows of registrations (of different patients), with their contact
/// points, in one statement.
async fn register_all(
    tx: &mut PgConnection,
    registered: &[(v1::PatientRegistered, i64)],
) -> Result<(), sqlx::Error> {
    if registered.is_empty() {
        return Ok(());
    }
    let rows: Vec<serde_json::Value> = registered
        .iter()
        .map(|(e, version)| {
            let (phones, emails, postal_codes, identifiers) =
                contact_arrays(&e.contact, &e.identifiers);
            serde_json::json!({
                "patient_id": e.patient_id,
                "mrn": e.mrn,
                "given": e.name.given,
                "family": e.name.family,
                "given_search": e.name.given.iter().map(|g| fold(g)).collect::<Vec<_>>(),
                "family_search": fold(&e.name.family),
                "birth_date": e.birth_date,
                "gender": gender_code(e.gender),
                "version": version,
                "updated_at": crate::in_microseconds(e.registered_at),
                "identifiers": identifiers,
                "phones": phones,
                "emails": emails,
                "postal_codes": postal_codes,
            })
        })
        .collect();
    sqlx::query(
        "INSERT INTO patient_search
            (patient_id, mrn, given, family, given_search, family_search, birth_date, gender,
             status, version, updated_at, identifiers, phones, emails, postal_codes)
         SELECT patient_id, mrn, given, family, given_search, family_search, birth_date, gender,
                'active', version, updated_at, identifiers, phones, emails, postal_codes
           FROM jsonb_to_recordset($1) AS r(
                patient_id uuid, mrn text, given text[], family text, given_search text[],
                family_search text, birth_date date, gender text, version bigint,
                updated_at timestamptz, identifiers text[], phones text[], emails text[],
                postal_codes text[])
         ON CONFLICT (patient_id) DO NOTHING",
    )
    .bind(serde_json::Value::Array(rows))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The searchable form of an identifier: `system|value`, the value in lowercase letters and
/// digits only, so `123-45-6789` and `123456789` find the same patient.
pub fn identifier_key(system: &str, value: &str) -> String {
    let value: String = value
        .chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect();
    format!("{}|{value}", system.trim())
}

/// The searchable forms of contact points and identifiers.
fn contact_arrays(
    contact: &v1::ContactInformation,
    identifiers: &[v1::Identifier],
) -> (Vec<String>, Vec<String>, Vec<String>, Vec<String>) {
    (
        contact.phones.iter().map(|p| p.number.clone()).collect(),
        contact
            .emails
            .iter()
            .map(|e| e.address.to_lowercase())
            .collect(),
        contact
            .addresses
            .iter()
            .filter_map(|a| a.postal_code.clone())
            .collect(),
        identifiers
            .iter()
            .map(|i| identifier_key(&i.system, &i.value))
            .collect(),
    )
}

async fn set_contact(
    tx: &mut PgConnection,
    patient_id: Uuid,
    contact: &v1::ContactInformation,
) -> Result<(), sqlx::Error> {
    let (phones, emails, postal_codes, _) = contact_arrays(contact, &[]);
    sqlx::query(
        "UPDATE patient_search SET phones = $2, emails = $3, postal_codes = $4
          WHERE patient_id = $1",
    )
    .bind(patient_id)
    .bind(phones)
    .bind(emails)
    .bind(postal_codes)
    .execute(&mut *tx)
    .await
    .map(|_| ())
}

/// Records the version an event brought, for events that change nothing searchable.
async fn touch(
    tx: &mut PgConnection,
    patient_id: Uuid,
    version: i64,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE patient_search SET version = $2, updated_at = $3 WHERE patient_id = $1")
        .bind(patient_id)
        .bind(version)
        .bind(at)
        .execute(&mut *tx)
        .await
        .map(|_| ())
}

async fn set_status(
    tx: &mut PgConnection,
    patient_id: Uuid,
    status: &str,
    version: i64,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE patient_search
            SET status = $2, version = $3, updated_at = $4,
                archived_at = CASE $2
                    WHEN 'archived' THEN COALESCE(archived_at, $4)
                    WHEN 'merged' THEN archived_at
                END
          WHERE patient_id = $1",
    )
    .bind(patient_id)
    .bind(status)
    .bind(version)
    .bind(at)
    .execute(&mut *tx)
    .await
    .map(|_| ())
}

fn gender_code(gender: v1::AdministrativeGender) -> &'static str {
    match gender {
        v1::AdministrativeGender::Male => "male",
        v1::AdministrativeGender::Female => "female",
        v1::AdministrativeGender::Other => "other",
        v1::AdministrativeGender::Unknown => "unknown",
    }
}

/// What to search for; every given criterion must match.
#[derive(Debug, Clone, Default)]
pub struct Criteria {
    /// Prefix of the family name, matched case- and accent-insensitively.
    pub family: Option<String>,
    /// Prefix of any given name, matched case- and accent-insensitively.
    pub given: Option<String>,
    pub birth_date: Option<NaiveDate>,
    /// Born on or after this day.
    pub born_from: Option<NaiveDate>,
    /// Born on or before this day.
    pub born_to: Option<NaiveDate>,
    /// An administrative gender code.
    pub gender: Option<String>,
    pub mrn: Option<String>,
    /// Words of a name, matched fuzzily (typos, transpositions) against family and given
    /// names; results are ranked by similarity.
    pub name: Option<String>,
    /// E.164.
    pub phone: Option<String>,
    pub email: Option<String>,
    /// `system|value`.
    pub identifier: Option<(String, String)>,
    pub postal_code: Option<String>,
    pub include_archived: bool,
    /// Leave out patients who opted out of research (a search for research).
    pub exclude_research_opt_outs: bool,
    pub limit: u32,
    pub offset: u32,
}

/// One search hit.
#[derive(Clone, Serialize, schemars::JsonSchema)]
pub struct PatientSummary {
    pub id: Uuid,
    pub mrn: String,
    pub name: v1::HumanName,
    pub birth_date: Option<NaiveDate>,
    pub gender: String,
    pub status: String,
    pub version: i64,
}

impl std::fmt::Debug for PatientSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PatientSummary")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// One page of hits, whether there are more after it, and how many match in all (unknown
/// only on a page past the last).
#[derive(Debug, Clone)]
pub struct Page {
    pub items: Vec<PatientSummary>,
    pub has_more: bool,
    pub total: Option<u64>,
}

fn like_prefix(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len() + 1);
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped.push('%');
    escaped
}

/// The summaries of the patients `ids` (those the read model has).
///
/// # Errors
///
/// The database error.
pub async fn by_ids(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<PatientSummary>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT patient_id, mrn, given, family, birth_date, gender, status, version
           FROM projections.patient_search WHERE patient_id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    rows.iter().map(summary).collect()
}

fn summary(row: &sqlx::postgres::PgRow) -> Result<PatientSummary, sqlx::Error> {
    Ok(PatientSummary {
        id: row.try_get("patient_id")?,
        mrn: row.try_get("mrn")?,
        name: v1::HumanName {
            given: row.try_get("given")?,
            family: row.try_get("family")?,
            prefix: Vec::new(),
            suffix: Vec::new(),
            preferred: None,
        },
        birth_date: row.try_get("birth_date")?,
        gender: row.try_get("gender")?,
        status: row.try_get("status")?,
        version: row.try_get("version")?,
    })
}

/// An archived patient the retention policy allows to purge.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct RetentionCandidate {
    pub id: Uuid,
    pub mrn: String,
    pub archived_at: DateTime<Utc>,
}

/// Archived patients archived at or before `cutoff`, oldest first; one more than `limit` tells
/// whether there is a next page.
///
/// # Errors
///
/// The database error.
pub async fn archived_before(
    pool: &PgPool,
    cutoff: DateTime<Utc>,
    limit: u32,
    offset: u32,
) -> Result<Vec<RetentionCandidate>, sqlx::Error> {
    let rows: Vec<(Uuid, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT patient_id, mrn, archived_at FROM projections.patient_search
          WHERE status = 'archived' AND archived_at <= $1
          ORDER BY archived_at, patient_id LIMIT $2 OFFSET $3",
    )
    .bind(cutoff)
    .bind(i64::from(limit) + 1)
    .bind(i64::from(offset))
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, mrn, archived_at)| RetentionCandidate {
            id,
            mrn,
            archived_at,
        })
        .collect())
}

/// Searches the read model, ordered by family name, given names and id.
///
/// # Errors
///
/// The database error.
#[tracing::instrument(skip_all)]
pub async fn search(pool: &PgPool, criteria: &Criteria) -> Result<Page, sqlx::Error> {
    let mut query = QueryBuilder::new(
        "SELECT patient_id, mrn, given, family, birth_date, gender, status, version,
                count(*) OVER () AS total",
    );
    let words: Vec<String> = criteria
        .name
        .as_deref()
        .map(|n| {
            fold(n)
                .split(' ')
                .filter(|w| !w.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if !words.is_empty() {
        // Each word scores its best similarity to the family name or any given name.
        query
            .push(
                ", (SELECT sum(GREATEST(public.similarity(w, family_search),
                      COALESCE((SELECT max(public.similarity(w, g)) FROM unnest(given_search) g), 0)))
                    FROM unnest(",
            )
            .push_bind(words.clone())
            .push("::text[]) w) AS score");
    }
    query.push(" FROM projections.patient_search WHERE true");
    if !words.is_empty() {
        query
            .push(" AND EXISTS (SELECT 1 FROM unnest(")
            .push_bind(words.clone())
            .push(
                "::text[]) w WHERE family_search OPERATOR(public.%) w
                    OR EXISTS (SELECT 1 FROM unnest(given_search) g WHERE g OPERATOR(public.%) w))",
            );
    }
    if let Some(family) = &criteria.family {
        query
            .push(" AND family_search LIKE ")
            .push_bind(like_prefix(&fold(family)));
    }
    if let Some(given) = &criteria.given {
        query
            .push(" AND EXISTS (SELECT 1 FROM unnest(given_search) g WHERE g LIKE ")
            .push_bind(like_prefix(&fold(given)))
            .push(")");
    }
    if let Some(date) = criteria.birth_date {
        query.push(" AND birth_date = ").push_bind(date);
    }
    if let Some(date) = criteria.born_from {
        query.push(" AND birth_date >= ").push_bind(date);
    }
    if let Some(date) = criteria.born_to {
        query.push(" AND birth_date <= ").push_bind(date);
    }
    if let Some(gender) = &criteria.gender {
        query.push(" AND gender = ").push_bind(gender.clone());
    }
    if let Some(mrn) = &criteria.mrn {
        query.push(" AND mrn = ").push_bind(mrn.clone());
    }
    for (column, value) in [
        ("phones", criteria.phone.clone()),
        ("emails", criteria.email.as_deref().map(str::to_lowercase)),
        ("postal_codes", criteria.postal_code.clone()),
        (
            "identifiers",
            criteria
                .identifier
                .as_ref()
                .map(|(s, v)| identifier_key(s, v)),
        ),
    ] {
        if let Some(value) = value {
            query
                .push(format_args!(" AND {column} @> ARRAY["))
                .push_bind(value)
                .push("]::text[]");
        }
    }
    if criteria.exclude_research_opt_outs {
        query.push(" AND research_opt_out IS NULL");
    }
    // Merged-away patients never show: their survivor stands for them.
    if criteria.include_archived {
        query.push(" AND status IN ('active', 'archived')");
    } else {
        query.push(" AND status = 'active'");
    }
    let order = if words.is_empty() {
        " ORDER BY family_search, given_search, patient_id LIMIT "
    } else {
        " ORDER BY score DESC, family_search, given_search, patient_id LIMIT "
    };
    query
        .push(order)
        .push_bind(i64::from(criteria.limit) + 1)
        .push(" OFFSET ")
        .push_bind(i64::from(criteria.offset));
    let rows = query.build().fetch_all(pool).await?;
    let mut items = rows
        .iter()
        .map(summary)
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    // Counted before the page is cut; a page past the last has no row to say.
    let total = match rows.first() {
        Some(row) => Some(u64::try_from(row.try_get::<i64, _>("total")?).unwrap_or_default()),
        None if criteria.offset == 0 => Some(0),
        None => None,
    };
    let has_more = items.len() > criteria.limit as usize;
    items.truncate(criteria.limit as usize);
    Ok(Page {
        items,
        has_more,
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fold_removes_case_and_accents() {
        assert_eq!(fold("Müller"), "muller");
        assert_eq!(fold("ZOË  de la Cruz"), "zoe de la cruz");
        assert_eq!(fold("Ångström"), "angstrom");
    }

    #[test]
    fn like_prefix_escapes_wildcards() {
        assert_eq!(like_prefix("a%b_c\\"), "a\\%b\\_c\\\\%");
    }
}
