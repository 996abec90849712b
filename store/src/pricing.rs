//! The model catalog in the database: models, their aliases, and dated prices (the catalog's
//! and orgs' custom ones).
//!
//! This layer keeps a price as the JSON text `credex-pricing` writes and parses; it decides
//! only what a database must decide atomically:
//!
//! - a model id or alias names one model: a new model's id is neither a model's id nor an
//!   alias, and an alias is neither;
//! - a price row never changes once it is in force: a price may be added from `now` on, and a
//!   price not yet in force may be replaced, but a row whose `effective_from` is at or before
//!   `now` is never written again, so the price of any past instant is fixed;
//! - every admin change is written with its audit entry in one transaction.

use async_trait::async_trait;
use credex_ledger::{OrgId, Timestamp};

use crate::identity::{AuditEntry, IdentityError, UserId};
use crate::StoreError;

/// The longest price JSON stored.
pub const PRICE_JSON_MAX_BYTES: usize = 4_096;
/// The most models one import or seed may write.
pub const IMPORT_MAX_MODELS: usize = 20_000;

/// Where a model came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelSource {
    /// Shipped with Credex.
    Builtin,
    /// Added by an admin.
    Admin,
    /// Imported from a price map.
    Import,
}

impl ModelSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Builtin => "builtin",
            Self::Admin => "admin",
            Self::Import => "import",
        }
    }

    pub(crate) fn parse(text: &str) -> Result<Self, StoreError> {
        match text {
            "builtin" => Ok(Self::Builtin),
            "admin" => Ok(Self::Admin),
            "import" => Ok(Self::Import),
            other => Err(StoreError::corrupt(format!(
                "unknown model source {other:?}"
            ))),
        }
    }
}

/// A model as stored. Ids and aliases are lowercase (`credex-pricing` parses them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRecord {
    pub id: String,
    pub provider: String,
    pub class: String,
    /// In tokens; some providers do not publish it.
    pub context_window: Option<u64>,
    pub aliases: Vec<String>,
    pub source: ModelSource,
    pub created_at: Timestamp,
}

/// One entry of a price schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceRecord {
    pub effective_from: Timestamp,
    /// The price, as `credex-pricing` serializes it.
    pub price: String,
    pub recorded_at: Timestamp,
    pub recorded_by: Option<UserId>,
}

/// Whose price schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PriceScope {
    /// The catalog's list prices.
    Catalog,
    /// An org's custom prices.
    Org(OrgId),
}

/// Which models a page holds: every model, or only those of one provider and/or one class
/// (exact, lowercase names).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelFilter {
    pub provider: Option<String>,
    pub class: Option<String>,
}

/// A model with its schedules, as [`PricingStore::model_for_pricing`] reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelPrices {
    /// Without its aliases.
    pub model: ModelRecord,
    pub catalog: Vec<PriceRecord>,
    /// The org's custom schedule; empty without an org.
    pub org: Vec<PriceRecord>,
}

/// What [`PricingStore::put_price`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutPrice {
    Added,
    /// A price that was not yet in force was replaced.
    Replaced,
}

/// One change an import makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportChange {
    /// A model that is not in the catalog, with its prices.
    NewModel {
        model: ModelRecord,
        prices: Vec<PriceRecord>,
    },
    /// A new price for a model in the catalog.
    NewPrice {
        model_id: String,
        price: PriceRecord,
    },
}

/// What an import wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportCounts {
    pub models_added: u64,
    pub prices_added: u64,
    /// Changes that no longer applied when they were written (another process added the model
    /// or a price at that instant first).
    pub skipped: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PricingError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("a model or alias named {0:?} exists")]
    NameTaken(String),
    #[error("no model is named {0:?}")]
    NoSuchModel(String),
    #[error("no such org")]
    NoSuchOrg,
    #[error("a price cannot take effect in the past")]
    InThePast,
    #[error("the price from that instant is already in force and can no longer change")]
    InForce,
    #[error("a price is at most {PRICE_JSON_MAX_BYTES} bytes of JSON")]
    PriceTooLarge,
    #[error("an import writes at most {IMPORT_MAX_MODELS} models")]
    TooManyModels,
    #[error(transparent)]
    Audit(#[from] Box<IdentityError>),
}

impl From<sqlx::Error> for PricingError {
    fn from(error: sqlx::Error) -> Self {
        Self::Store(StoreError::from(error))
    }
}

/// The model catalog, for either backend.
#[async_trait]
pub trait PricingStore: Send + Sync {
    /// Adds the models that are not in the catalog yet, with their prices and the aliases no
    /// other model has; never changes a model or price that exists. Safe to run in every
    /// process at every start. Answers how many models it added.
    async fn seed_models(
        &self,
        models: &[(ModelRecord, Vec<PriceRecord>)],
    ) -> Result<u64, PricingError>;

    /// Adds a model with its first prices and an audit entry.
    async fn add_model(
        &self,
        model: &ModelRecord,
        prices: &[PriceRecord],
        audit: &AuditEntry,
    ) -> Result<(), PricingError>;

    /// A page of the models that pass `filter`, in id order, after `after`.
    async fn models_page(
        &self,
        after: Option<&str>,
        limit: u32,
        filter: &ModelFilter,
    ) -> Result<Vec<ModelRecord>, PricingError>;

    /// The model with this id or alias (lowercase).
    async fn find_model(&self, name: &str) -> Result<Option<ModelRecord>, PricingError>;

    /// What pricing a call needs, in one statement: the model with this id or alias
    /// (lowercase; its `aliases` left empty), its catalog schedule and, for `org`, the org's
    /// custom schedule, each oldest first.
    async fn model_for_pricing(
        &self,
        name: &str,
        org: Option<OrgId>,
    ) -> Result<Option<ModelPrices>, PricingError>;

    /// A model's price schedule, oldest first.
    async fn prices(
        &self,
        model_id: &str,
        scope: PriceScope,
    ) -> Result<Vec<PriceRecord>, PricingError>;

    /// The catalog schedules of the models whose ids are in `first..=last`, by model id, each
    /// oldest first.
    async fn catalog_prices_between(
        &self,
        first: &str,
        last: &str,
    ) -> Result<Vec<(String, PriceRecord)>, PricingError>;

    /// Adds a price to a schedule from `price.effective_from` (at or after `now`), or replaces
    /// the one from that instant if it is not in force yet; with an audit entry.
    async fn put_price(
        &self,
        model_id: &str,
        scope: PriceScope,
        price: &PriceRecord,
        now: Timestamp,
        audit: &AuditEntry,
    ) -> Result<PutPrice, PricingError>;

    /// Writes an import's changes and its audit entry in one transaction. A new model whose
    /// name is taken by then, or a new price at an instant that has one by then, is skipped
    /// and counted.
    async fn import_models(
        &self,
        changes: &[ImportChange],
        now: Timestamp,
        audit: &AuditEntry,
    ) -> Result<ImportCounts, PricingError>;
}

/// Expands the shared implementation of [`PricingStore`] for `$store` (whose field `pool` is a
/// `sqlx::Pool<$db>`), with the backend's dialect module `$dialect` (`begin_write`,
/// `is_retryable`).
macro_rules! shared_pricing {
    ($store:ident, $db:ty, $dialect:ident) => {
        mod pricing_shared {
            use async_trait::async_trait;
            use credex_ledger::{OrgId, Timestamp};
            use sqlx::Row;
            use uuid::Uuid;

            use super::$dialect as dialect;
            use super::$store;
            use crate::identity::{AuditEntry, UserId};
            use crate::pricing::{
                ImportChange, ImportCounts, ModelFilter, ModelPrices, ModelRecord, ModelSource,
                PriceRecord, PriceScope, PricingError, PricingStore, PutPrice, IMPORT_MAX_MODELS,
                PRICE_JSON_MAX_BYTES,
            };
            use crate::StoreError;

            type Connection = <$db as sqlx::Database>::Connection;
            type DbRow = <$db as sqlx::Database>::Row;

            /// Every write to the catalog holds this lock (an advisory lock on PostgreSQL; the
            /// write lock itself on SQLite), so the check that a name is free and the insert
            /// that takes it are one step for every process. Nothing else is locked with it.
            const CATALOG_LOCK: &str = "credex:model-catalog";

            const MODEL_COLUMNS: &str = "id, provider, class, context_window, source, created_at";

            fn model(row: &DbRow, aliases: Vec<String>) -> Result<ModelRecord, PricingError> {
                let context_window: Option<i64> = row.try_get("context_window")?;
                Ok(ModelRecord {
                    id: row.try_get("id")?,
                    provider: row.try_get("provider")?,
                    class: row.try_get("class")?,
                    context_window: context_window
                        .map(u64::try_from)
                        .transpose()
                        .map_err(StoreError::corrupt)?,
                    aliases,
                    source: ModelSource::parse(&row.try_get::<String, _>("source")?)?,
                    created_at: Timestamp::from_micros(row.try_get("created_at")?),
                })
            }

            fn price(row: &DbRow) -> Result<PriceRecord, PricingError> {
                let recorded_by: Option<Uuid> = row.try_get("recorded_by")?;
                Ok(PriceRecord {
                    effective_from: Timestamp::from_micros(row.try_get("effective_from")?),
                    price: row.try_get("price")?,
                    recorded_at: Timestamp::from_micros(row.try_get("recorded_at")?),
                    recorded_by: recorded_by
                        .map(UserId::new)
                        .transpose()
                        .map_err(StoreError::corrupt)?,
                })
            }

            async fn retrying<T, F, Fut>(attempt: F) -> Result<T, PricingError>
            where
                F: Fn() -> Fut,
                Fut: std::future::Future<Output = Result<T, PricingError>>,
            {
                crate::sql::retry(dialect::is_retryable, attempt).await
            }

            /// Whether `name` is a model's id or an alias.
            async fn name_taken(conn: &mut Connection, name: &str) -> Result<bool, PricingError> {
                let row = sqlx::query(
                    "SELECT 1 AS found FROM models WHERE id = $1 \
                     UNION ALL SELECT 1 AS found FROM model_aliases WHERE alias = $1",
                )
                .bind(name)
                .fetch_optional(&mut *conn)
                .await?;
                Ok(row.is_some())
            }

            async fn model_exists(conn: &mut Connection, id: &str) -> Result<bool, PricingError> {
                let row = sqlx::query("SELECT 1 AS found FROM models WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *conn)
                    .await?;
                Ok(row.is_some())
            }

            fn check_price(price: &PriceRecord) -> Result<(), PricingError> {
                if price.price.len() > PRICE_JSON_MAX_BYTES {
                    return Err(PricingError::PriceTooLarge);
                }
                Ok(())
            }

            /// Inserts a model, its prices and (when `all_aliases`) every alias, refusing a
            /// taken alias; otherwise skipping taken aliases. Answers false when the model's
            /// id is taken.
            async fn insert_model(
                conn: &mut Connection,
                model: &ModelRecord,
                prices: &[PriceRecord],
                all_aliases: bool,
            ) -> Result<bool, PricingError> {
                if name_taken(conn, &model.id).await? {
                    return Ok(false);
                }
                for price in prices {
                    check_price(price)?;
                }
                let context_window = model
                    .context_window
                    .map(i64::try_from)
                    .transpose()
                    .map_err(StoreError::corrupt)?;
                sqlx::query(
                    "INSERT INTO models (id, provider, class, context_window, source, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&model.id)
                .bind(&model.provider)
                .bind(&model.class)
                .bind(context_window)
                .bind(model.source.as_str())
                .bind(model.created_at.as_micros())
                .execute(&mut *conn)
                .await?;
                for alias in &model.aliases {
                    if alias == &model.id {
                        continue;
                    }
                    if name_taken(conn, alias).await? {
                        if all_aliases {
                            return Err(PricingError::NameTaken(alias.clone()));
                        }
                        continue;
                    }
                    sqlx::query("INSERT INTO model_aliases (alias, model_id) VALUES ($1, $2)")
                        .bind(alias)
                        .bind(&model.id)
                        .execute(&mut *conn)
                        .await?;
                }
                for price in prices {
                    insert_price(conn, &model.id, PriceScope::Catalog, price).await?;
                }
                Ok(true)
            }

            async fn insert_price(
                conn: &mut Connection,
                model_id: &str,
                scope: PriceScope,
                price: &PriceRecord,
            ) -> Result<(), PricingError> {
                let by = price.recorded_by.map(UserId::as_uuid);
                match scope {
                    PriceScope::Catalog => {
                        sqlx::query(
                            "INSERT INTO model_prices (model_id, effective_from, price, \
                             recorded_at, recorded_by) VALUES ($1, $2, $3, $4, $5)",
                        )
                        .bind(model_id)
                        .bind(price.effective_from.as_micros())
                        .bind(&price.price)
                        .bind(price.recorded_at.as_micros())
                        .bind(by)
                        .execute(&mut *conn)
                        .await?;
                    }
                    PriceScope::Org(org) => {
                        sqlx::query(
                            "INSERT INTO org_model_prices (org_id, model_id, effective_from, \
                             price, recorded_at, recorded_by) VALUES ($1, $2, $3, $4, $5, $6)",
                        )
                        .bind(org.as_uuid())
                        .bind(model_id)
                        .bind(price.effective_from.as_micros())
                        .bind(&price.price)
                        .bind(price.recorded_at.as_micros())
                        .bind(by)
                        .execute(&mut *conn)
                        .await?;
                    }
                }
                Ok(())
            }

            /// The `effective_from` of the row at exactly `at` in a schedule, if any.
            async fn price_at_instant(
                conn: &mut Connection,
                model_id: &str,
                scope: PriceScope,
                at: Timestamp,
            ) -> Result<bool, PricingError> {
                let row = match scope {
                    PriceScope::Catalog => {
                        sqlx::query(
                            "SELECT 1 AS found FROM model_prices \
                             WHERE model_id = $1 AND effective_from = $2",
                        )
                        .bind(model_id)
                        .bind(at.as_micros())
                        .fetch_optional(&mut *conn)
                        .await?
                    }
                    PriceScope::Org(org) => {
                        sqlx::query(
                            "SELECT 1 AS found FROM org_model_prices \
                             WHERE org_id = $1 AND model_id = $2 AND effective_from = $3",
                        )
                        .bind(org.as_uuid())
                        .bind(model_id)
                        .bind(at.as_micros())
                        .fetch_optional(&mut *conn)
                        .await?
                    }
                };
                Ok(row.is_some())
            }

            crate::sql::append_audit_fn!(PricingError);

            async fn aliases_between(
                conn: &mut Connection,
                first: &str,
                last: &str,
            ) -> Result<Vec<(String, String)>, PricingError> {
                let rows = sqlx::query(
                    "SELECT model_id, alias FROM model_aliases \
                     WHERE model_id >= $1 AND model_id <= $2 ORDER BY model_id, alias",
                )
                .bind(first)
                .bind(last)
                .fetch_all(&mut *conn)
                .await?;
                rows.iter()
                    .map(|row| Ok((row.try_get("model_id")?, row.try_get("alias")?)))
                    .collect()
            }

            #[async_trait]
            impl PricingStore for $store {
                async fn seed_models(
                    &self,
                    models: &[(ModelRecord, Vec<PriceRecord>)],
                ) -> Result<u64, PricingError> {
                    if models.len() > IMPORT_MAX_MODELS {
                        return Err(PricingError::TooManyModels);
                    }
                    retrying(|| async {
                        let mut tx = dialect::begin_write(&self.pool).await?;
                        dialect::lock_asset_exclusive(&mut tx, CATALOG_LOCK).await?;
                        let mut added = 0;
                        for (model, prices) in models {
                            if insert_model(&mut tx, model, prices, false).await? {
                                added += 1;
                            }
                        }
                        tx.commit().await?;
                        Ok(added)
                    })
                    .await
                }

                async fn add_model(
                    &self,
                    model: &ModelRecord,
                    prices: &[PriceRecord],
                    audit: &AuditEntry,
                ) -> Result<(), PricingError> {
                    retrying(|| async {
                        let mut tx = dialect::begin_write(&self.pool).await?;
                        dialect::lock_asset_exclusive(&mut tx, CATALOG_LOCK).await?;
                        if !insert_model(&mut tx, model, prices, true).await? {
                            return Err(PricingError::NameTaken(model.id.clone()));
                        }
                        append_audit(&mut tx, audit).await?;
                        tx.commit().await?;
                        Ok(())
                    })
                    .await
                }

                async fn models_page(
                    &self,
                    after: Option<&str>,
                    limit: u32,
                    filter: &ModelFilter,
                ) -> Result<Vec<ModelRecord>, PricingError> {
                    let mut conn = self.pool.acquire().await?;
                    // An empty filter value matches every model (no model has an empty
                    // provider or class).
                    let sql = format!(
                        "SELECT {MODEL_COLUMNS} FROM models WHERE id > $1 \
                         AND ($3 = '' OR provider = $3) AND ($4 = '' OR class = $4) \
                         ORDER BY id LIMIT $2"
                    );
                    let rows = sqlx::query(&sql)
                        .bind(after.unwrap_or(""))
                        .bind(i64::from(limit))
                        .bind(filter.provider.as_deref().unwrap_or(""))
                        .bind(filter.class.as_deref().unwrap_or(""))
                        .fetch_all(&mut *conn)
                        .await?;
                    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
                        return Ok(Vec::new());
                    };
                    let first: String = first.try_get("id")?;
                    let last: String = last.try_get("id")?;
                    let mut aliases = aliases_between(&mut conn, &first, &last)
                        .await?
                        .into_iter()
                        .peekable();
                    rows.iter()
                        .map(|row| {
                            let id: String = row.try_get("id")?;
                            // Aliases of models between this page's that the filter left out.
                            while aliases.next_if(|(model, _)| *model < id).is_some() {}
                            let mut own = Vec::new();
                            while let Some((_, alias)) = aliases.next_if(|(model, _)| *model == id)
                            {
                                own.push(alias);
                            }
                            model(row, own)
                        })
                        .collect()
                }

                async fn find_model(
                    &self,
                    name: &str,
                ) -> Result<Option<ModelRecord>, PricingError> {
                    let mut conn = self.pool.acquire().await?;
                    let sql = format!(
                        "SELECT {MODEL_COLUMNS} FROM models WHERE id = $1 OR id = \
                         (SELECT model_id FROM model_aliases WHERE alias = $1)"
                    );
                    let Some(row) = sqlx::query(&sql)
                        .bind(name)
                        .fetch_optional(&mut *conn)
                        .await?
                    else {
                        return Ok(None);
                    };
                    let id: String = row.try_get("id")?;
                    let aliases = aliases_between(&mut conn, &id, &id).await?;
                    model(&row, aliases.into_iter().map(|(_, alias)| alias).collect()).map(Some)
                }

                async fn model_for_pricing(
                    &self,
                    name: &str,
                    org: Option<OrgId>,
                ) -> Result<Option<ModelPrices>, PricingError> {
                    // One row per price (`scope` 0: the catalog's, 1: the org's), or one row
                    // with no price for a model without any.
                    let sql = format!(
                        "SELECT m.id, m.provider, m.class, m.context_window, m.source, \
                         m.created_at, p.scope, p.effective_from, p.price, p.recorded_at, \
                         p.recorded_by \
                         FROM models m LEFT JOIN ( \
                           SELECT model_id, 0 AS scope, effective_from, price, recorded_at, \
                                  recorded_by FROM model_prices \
                           UNION ALL \
                           SELECT model_id, 1 AS scope, effective_from, price, recorded_at, \
                                  recorded_by FROM org_model_prices WHERE org_id = $2 \
                         ) p ON p.model_id = m.id \
                         WHERE m.id = (SELECT id FROM models WHERE id = $1 \
                                       UNION ALL \
                                       SELECT model_id FROM model_aliases WHERE alias = $1 \
                                       LIMIT 1) \
                         ORDER BY p.scope, p.effective_from"
                    );
                    let rows = sqlx::query(&sql)
                        .bind(name)
                        .bind(org.map(OrgId::as_uuid))
                        .fetch_all(&self.pool)
                        .await?;
                    let Some(first) = rows.first() else {
                        return Ok(None);
                    };
                    let mut found = ModelPrices {
                        model: model(first, Vec::new())?,
                        catalog: Vec::new(),
                        org: Vec::new(),
                    };
                    for row in &rows {
                        let scope: Option<i32> = row.try_get("scope")?;
                        match scope {
                            None => {}
                            Some(0) => found.catalog.push(price(row)?),
                            Some(1) => found.org.push(price(row)?),
                            Some(other) => {
                                return Err(
                                    StoreError::corrupt(format!("price scope {other}")).into()
                                )
                            }
                        }
                    }
                    Ok(Some(found))
                }

                async fn prices(
                    &self,
                    model_id: &str,
                    scope: PriceScope,
                ) -> Result<Vec<PriceRecord>, PricingError> {
                    let rows = match scope {
                        PriceScope::Catalog => {
                            sqlx::query(
                                "SELECT effective_from, price, recorded_at, recorded_by \
                                 FROM model_prices WHERE model_id = $1 ORDER BY effective_from",
                            )
                            .bind(model_id)
                            .fetch_all(&self.pool)
                            .await?
                        }
                        PriceScope::Org(org) => {
                            sqlx::query(
                                "SELECT effective_from, price, recorded_at, recorded_by \
                                 FROM org_model_prices WHERE org_id = $1 AND model_id = $2 \
                                 ORDER BY effective_from",
                            )
                            .bind(org.as_uuid())
                            .bind(model_id)
                            .fetch_all(&self.pool)
                            .await?
                        }
                    };
                    rows.iter().map(price).collect()
                }

                async fn catalog_prices_between(
                    &self,
                    first: &str,
                    last: &str,
                ) -> Result<Vec<(String, PriceRecord)>, PricingError> {
                    let rows = sqlx::query(
                        "SELECT model_id, effective_from, price, recorded_at, recorded_by \
                         FROM model_prices WHERE model_id >= $1 AND model_id <= $2 \
                         ORDER BY model_id, effective_from",
                    )
                    .bind(first)
                    .bind(last)
                    .fetch_all(&self.pool)
                    .await?;
                    rows.iter()
                        .map(|row| Ok((row.try_get("model_id")?, price(row)?)))
                        .collect()
                }

                async fn put_price(
                    &self,
                    model_id: &str,
                    scope: PriceScope,
                    new: &PriceRecord,
                    now: Timestamp,
                    audit: &AuditEntry,
                ) -> Result<PutPrice, PricingError> {
                    check_price(new)?;
                    if new.effective_from < now {
                        return Err(PricingError::InThePast);
                    }
                    retrying(|| async {
                        let mut tx = dialect::begin_write(&self.pool).await?;
                        dialect::lock_asset_exclusive(&mut tx, CATALOG_LOCK).await?;
                        if !model_exists(&mut tx, model_id).await? {
                            return Err(PricingError::NoSuchModel(model_id.to_owned()));
                        }
                        if let PriceScope::Org(org) = scope {
                            let found = sqlx::query("SELECT 1 AS found FROM orgs WHERE id = $1")
                                .bind(org.as_uuid())
                                .fetch_optional(&mut *tx)
                                .await?;
                            if found.is_none() {
                                return Err(PricingError::NoSuchOrg);
                            }
                        }
                        let outcome =
                            if price_at_instant(&mut tx, model_id, scope, new.effective_from)
                                .await?
                            {
                                // Not in force yet (effective_from >= now was checked; a row
                                // from exactly now is in force, so refuse that too).
                                if new.effective_from <= now {
                                    return Err(PricingError::InForce);
                                }
                                // `effective_from > now` again in the statement: the row
                                // is replaced only while it is not in force.
                                let done = match scope {
                                    PriceScope::Catalog => sqlx::query(
                                        "UPDATE model_prices SET price = $3, recorded_at = $4, \
                                             recorded_by = $5 WHERE model_id = $1 \
                                             AND effective_from = $2 AND effective_from > $6",
                                    )
                                    .bind(model_id)
                                    .bind(new.effective_from.as_micros())
                                    .bind(&new.price)
                                    .bind(new.recorded_at.as_micros())
                                    .bind(new.recorded_by.map(UserId::as_uuid))
                                    .bind(now.as_micros())
                                    .execute(&mut *tx)
                                    .await?,
                                    PriceScope::Org(org) => {
                                        sqlx::query(
                                            "UPDATE org_model_prices SET price = $3, \
                                             recorded_at = $4, recorded_by = $5 \
                                             WHERE model_id = $1 AND effective_from = $2 \
                                             AND effective_from > $6 AND org_id = $7",
                                        )
                                        .bind(model_id)
                                        .bind(new.effective_from.as_micros())
                                        .bind(&new.price)
                                        .bind(new.recorded_at.as_micros())
                                        .bind(new.recorded_by.map(UserId::as_uuid))
                                        .bind(now.as_micros())
                                        .bind(org.as_uuid())
                                        .execute(&mut *tx)
                                        .await?
                                    }
                                };
                                if done.rows_affected() != 1 {
                                    return Err(PricingError::InForce);
                                }
                                PutPrice::Replaced
                            } else {
                                insert_price(&mut tx, model_id, scope, new).await?;
                                PutPrice::Added
                            };
                        append_audit(&mut tx, audit).await?;
                        tx.commit().await?;
                        Ok(outcome)
                    })
                    .await
                }

                async fn import_models(
                    &self,
                    changes: &[ImportChange],
                    now: Timestamp,
                    audit: &AuditEntry,
                ) -> Result<ImportCounts, PricingError> {
                    if changes.len() > IMPORT_MAX_MODELS {
                        return Err(PricingError::TooManyModels);
                    }
                    retrying(|| async {
                        let mut tx = dialect::begin_write(&self.pool).await?;
                        dialect::lock_asset_exclusive(&mut tx, CATALOG_LOCK).await?;
                        let mut counts = ImportCounts::default();
                        for change in changes {
                            match change {
                                ImportChange::NewModel { model, prices } => {
                                    if insert_model(&mut tx, model, prices, false).await? {
                                        counts.models_added += 1;
                                    } else {
                                        counts.skipped += 1;
                                    }
                                }
                                ImportChange::NewPrice { model_id, price } => {
                                    check_price(price)?;
                                    if price.effective_from < now {
                                        return Err(PricingError::InThePast);
                                    }
                                    if !model_exists(&mut tx, model_id).await?
                                        || price_at_instant(
                                            &mut tx,
                                            model_id,
                                            PriceScope::Catalog,
                                            price.effective_from,
                                        )
                                        .await?
                                    {
                                        counts.skipped += 1;
                                        continue;
                                    }
                                    insert_price(&mut tx, model_id, PriceScope::Catalog, price)
                                        .await?;
                                    counts.prices_added += 1;
                                }
                            }
                        }
                        append_audit(&mut tx, audit).await?;
                        tx.commit().await?;
                        Ok(counts)
                    })
                    .await
                }
            }
        }
    };
}

pub(crate) use shared_pricing;

impl crate::sql::MayRetry for PricingError {
    fn database_error(&self) -> Option<&sqlx::Error> {
        match self {
            Self::Store(StoreError::Database(error)) => Some(error),
            _ => None,
        }
    }
}
