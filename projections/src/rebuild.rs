//! Rebuilding read models into fresh tables, swapped in whole.
//!
//! A rebuild does not empty the live read models and fill them again under the readers' eyes.
//! [`Rebuild::prepare`] creates a copy of each model's tables, and of the projectors'
//! bookkeeping, in the schema [`SCHEMA`]: the same columns, defaults and constraints (primary
//! keys, unique and check constraints, which the models' writes rely on), but none of the other
//! indexes. Projectors writing [`Tables::Rebuild`](crate::runtime::Tables) fill them from the
//! event store's stream, with nothing but the constraints to maintain. [`Rebuild::swap_in`]
//! then builds the other indexes (each in one pass over the loaded table, two at a time),
//! analyses the tables and, in one transaction, replaces the live tables with them and the
//! rebuilt projectors' bookkeeping rows with theirs. Indexes and constraints keep their names,
//! so later migrations find what they expect.
//!
//! Readers see the old read models until that transaction commits and the rebuilt ones after.
//! A rebuild that fails changes nothing live: [`Rebuild::abandon`] drops its tables, and the
//! next rebuild starts again from scratch. The caller holds every rebuilt model's stream lock
//! throughout, so no projector writes the live tables meanwhile.

use futures::{StreamExt as _, TryStreamExt as _};
use sqlx::{PgConnection, PgPool};

/// The schema a rebuild fills before its tables are swapped in.
pub const SCHEMA: &str = "projections_rebuild";

/// The projectors' bookkeeping: rows per projector, kept with the read model they describe.
const BOOKKEEPING: [&str; 2] = ["applied_sequences", "stream_checkpoints"];

/// How many indexes are built at once (one per core of the machine this was tuned on; each
/// build is one backend).
const INDEX_BUILDS_AT_ONCE: usize = 2;

/// A rebuild under way: the fresh tables and what remains to give them before the swap.
#[derive(Debug)]
#[must_use = "a rebuild is swapped in or abandoned"]
pub struct Rebuild {
    pool: PgPool,
    projectors: Vec<&'static str>,
    tables: Vec<&'static str>,
    /// The live tables' indexes that no constraint owns, as `CREATE INDEX` statements on the
    /// fresh tables: built once the tables are loaded.
    indexes: Vec<String>,
}

impl Rebuild {
    /// Empty copies, in [`SCHEMA`], of `tables` (those of the read models of `projectors`) and
    /// of the bookkeeping, replacing what an abandoned rebuild left there. The indexes named in
    /// `for_writes` (the models' writes look rows up by them) are built at once, the others
    /// when the tables are loaded.
    ///
    /// # Errors
    ///
    /// The database error (nothing live is changed).
    pub async fn prepare(
        pool: &PgPool,
        projectors: Vec<&'static str>,
        (tables, for_writes): (Vec<&'static str>, Vec<&'static str>),
    ) -> Result<Self, sqlx::Error> {
        let mut tx = pool.begin().await?;
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!("CREATE SCHEMA {SCHEMA}"))
            .execute(&mut *tx)
            .await?;
        let mut indexes = Vec::new();
        for table in tables.iter().copied().chain(BOOKKEEPING) {
            indexes.extend(copy_table(&mut tx, table, &for_writes).await?);
        }
        tx.commit().await?;
        Ok(Self {
            pool: pool.clone(),
            projectors,
            tables,
            indexes,
        })
    }

    /// Builds the fresh tables' remaining indexes, analyses them, and swaps them and the
    /// bookkeeping of the rebuilt projectors in, in one transaction.
    ///
    /// # Errors
    ///
    /// The database error; the live tables are then as they were, and the fresh ones dropped.
    pub async fn swap_in(self) -> Result<(), sqlx::Error> {
        let swapped = self.index_and_swap().await;
        if swapped.is_err() {
            self.abandon().await?;
        }
        swapped
    }

    async fn index_and_swap(&self) -> Result<(), sqlx::Error> {
        let pool = &self.pool;
        let started = std::time::Instant::now();
        futures::stream::iter(self.indexes.iter())
            .map(|create| async move {
                let mut conn = pool.acquire().await?;
                sqlx::query("SET maintenance_work_mem = '256MB'")
                    .execute(&mut *conn)
                    .await?;
                let built = sqlx::query(create).execute(&mut *conn).await;
                sqlx::query("RESET maintenance_work_mem")
                    .execute(&mut *conn)
                    .await?;
                built.map(|_| ())
            })
            .buffer_unordered(INDEX_BUILDS_AT_ONCE)
            .try_collect::<()>()
            .await?;
        let indexed = started.elapsed();
        for table in self.tables.iter().chain(&BOOKKEEPING) {
            sqlx::query(&format!("ANALYZE {SCHEMA}.{table}"))
                .execute(pool)
                .await?;
        }
        let analysed = started.elapsed();

        let mut tx = pool.begin().await?;
        // Readers queue behind the swap's locks: give up rather than hold them all for long
        // behind one slow reader (the rebuild can be swapped in again).
        sqlx::query("SET LOCAL lock_timeout = '10s'")
            .execute(&mut *tx)
            .await?;
        for table in BOOKKEEPING {
            sqlx::query(&format!(
                "DELETE FROM projections.{table} WHERE projector = ANY($1)"
            ))
            .bind(&self.projectors)
            .execute(&mut *tx)
            .await?;
            sqlx::query(&format!(
                "INSERT INTO projections.{table} SELECT * FROM {SCHEMA}.{table}"
            ))
            .execute(&mut *tx)
            .await?;
        }
        for table in &self.tables {
            sqlx::query(&format!("DROP TABLE projections.{table}"))
                .execute(&mut *tx)
                .await?;
            sqlx::query(&format!(
                "ALTER TABLE {SCHEMA}.{table} SET SCHEMA projections"
            ))
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(&format!("DROP SCHEMA {SCHEMA} CASCADE"))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(
            indexes = self.indexes.len(),
            index_ms = indexed.as_millis() as u64,
            analyse_ms = (analysed - indexed).as_millis() as u64,
            swap_ms = (started.elapsed() - analysed).as_millis() as u64,
            "rebuilt read models swapped in"
        );
        Ok(())
    }

    /// Drops the fresh tables; the live ones were never touched.
    ///
    /// # Errors
    ///
    /// The database error (the next rebuild drops them anyway).
    pub async fn abandon(self) -> Result<(), sqlx::Error> {
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// Creates `SCHEMA.table` like `projections.table` with its constraints under their own names;
/// returns the `CREATE INDEX` statements of its other indexes, for the fresh table.
async fn copy_table(
    tx: &mut PgConnection,
    table: &str,
    for_writes: &[&str],
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query(&format!(
        "CREATE TABLE {SCHEMA}.{table} (LIKE projections.{table}
             INCLUDING DEFAULTS INCLUDING GENERATED INCLUDING IDENTITY INCLUDING STORAGE)"
    ))
    .execute(&mut *tx)
    .await?;
    let live = format!("projections.{table}");
    let constraints: Vec<(String, String)> = sqlx::query_as(
        "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint
          WHERE conrelid = $1::regclass AND contype IN ('p', 'u', 'c', 'x')
          ORDER BY contype DESC, conname",
    )
    .bind(&live)
    .fetch_all(&mut *tx)
    .await?;
    for (name, definition) in constraints {
        sqlx::query(&format!(
            "ALTER TABLE {SCHEMA}.{table} ADD CONSTRAINT \"{name}\" {definition}"
        ))
        .execute(&mut *tx)
        .await?;
    }
    let indexes: Vec<(String, bool)> = sqlx::query_as(
        "SELECT pg_get_indexdef(i.indexrelid), i.indisunique OR c.relname = ANY($2)
           FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
          WHERE i.indrelid = $1::regclass
            AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
          ORDER BY i.indexrelid",
    )
    .bind(&live)
    .bind(for_writes)
    .fetch_all(&mut *tx)
    .await?;
    let on_live = format!(" ON {live} ");
    let on_fresh = format!(" ON {SCHEMA}.{table} ");
    let mut later = Vec::new();
    for (create, now) in indexes {
        let create = create.replacen(&on_live, &on_fresh, 1);
        if now {
            // A write's `ON CONFLICT` or lookup needs it: built before the load.
            sqlx::query(&create).execute(&mut *tx).await?;
        } else {
            later.push(create);
        }
    }
    Ok(later)
}
