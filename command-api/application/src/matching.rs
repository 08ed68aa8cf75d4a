//! Duplicate detection against the `patient_match` read model: the candidates sharing a
//! blocking key, scored by `domain::matching`, best first.

use domain::matching::{compare, Grade, MatchRecord};
use sqlx::PgPool;
use uuid::Uuid;

/// At most this many candidates are returned.
pub const MAX_MATCHES: usize = 10;

/// A registered patient who may be the candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct Match {
    pub id: Uuid,
    pub grade: Grade,
    pub score: f64,
    /// `active` or `archived`.
    pub status: String,
}

/// The registered patients `record` may be, graded, best first.
///
/// # Errors
///
/// The database error.
#[tracing::instrument(skip_all)]
pub async fn find_matches(pool: &PgPool, record: &MatchRecord) -> Result<Vec<Match>, sqlx::Error> {
    let mut found: Vec<Match> = projections::patient_match::candidates(pool, record)
        .await?
        .into_iter()
        .filter_map(|(id, other, status)| {
            let comparison = compare(record, &other);
            comparison.grade.map(|grade| Match {
                id,
                grade,
                score: comparison.score,
                status,
            })
        })
        .collect();
    found.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
    found.truncate(MAX_MATCHES);
    Ok(found)
}
