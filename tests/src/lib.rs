//! The harness of Credex's integration tests: a fresh database per test, on SQLite and on
//! PostgreSQL, and small builders for ledgers.
//!
//! PostgreSQL is found at `CREDEX_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`). When it cannot be reached the PostgreSQL
//! variant of each test says so and passes, except under `CI=true`, where it fails: CI always
//! provides PostgreSQL. `CREDEX_TEST_POSTGRES=skip` skips them without trying (the test
//! command sets it when its probe finds no server).

pub mod books;
pub mod fixtures;

use std::sync::Arc;

use credex_ledger::Clock;
use credex_store::{Backend, Ledger, Store};
use sqlx::Connection;

pub use books::Books;
pub use fixtures::{audit, top_up};

pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database made for one test; [`TestDb::finish`] removes it after a passing test.
#[derive(Debug)]
pub struct TestDb {
    backend: Backend,
    url: String,
    postgres_admin: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let url = format!("sqlite://{}/credex.db", dir.path().display());
        Self {
            backend: Backend::Sqlite,
            url,
            postgres_admin: None,
            _dir: Some(dir),
        }
    }

    /// A fresh PostgreSQL database, or `None` (outside CI) when PostgreSQL is unreachable.
    pub async fn postgres() -> Option<Self> {
        if std::env::var("CREDEX_TEST_POSTGRES").as_deref() == Ok("skip") {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "PostgreSQL is required under CI=true"
            );
            eprintln!("CREDEX_TEST_POSTGRES=skip: PostgreSQL test skipped");
            return None;
        }
        let admin = std::env::var("CREDEX_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned());
        let mut conn = match sqlx::PgConnection::connect(&admin).await {
            Ok(conn) => conn,
            Err(error) => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "PostgreSQL is required under CI=true but {admin} is unreachable: {error}"
                );
                eprintln!("PostgreSQL unreachable at {admin} ({error}): PostgreSQL test skipped");
                return None;
            }
        };
        let name = format!("credex_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create a test database");
        let url = database_url(&admin, &name);
        Some(Self {
            backend: Backend::Postgres,
            url,
            postgres_admin: Some((admin, name)),
            _dir: None,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// A store on this database; each call opens a separate connection pool, as a separate
    /// process would.
    pub async fn store(&self, clock: Arc<dyn Clock>) -> Arc<dyn Store> {
        credex_store::connect(&self.url, clock)
            .await
            .expect("connect to the test database")
    }

    /// A ledger (store behind a group committer) on this database.
    pub async fn ledger(&self, clock: Arc<dyn Clock>) -> Ledger {
        Ledger::with_defaults(self.store(clock).await)
    }

    /// Drops the PostgreSQL database; the SQLite file goes with its directory.
    pub async fn finish(self) {
        if let Some((admin, name)) = &self.postgres_admin {
            let mut conn = sqlx::PgConnection::connect(admin)
                .await
                .expect("connect to drop the test database");
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut conn)
                .await
                .expect("drop the test database");
        }
    }
}

/// The URL of database `name` on the server of `admin`: its path and query replaced.
fn database_url(admin: &str, name: &str) -> String {
    let host_start = admin.find("://").map_or(0, |i| i + 3);
    let base = match admin[host_start..].find('/') {
        Some(slash) => &admin[..host_start + slash],
        None => admin,
    };
    format!("{base}/{name}")
}

/// Runs each named `async fn(&TestDb)` as two tests, `sqlite::name` and `postgres::name`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = $crate::TestDb::sqlite().await;
                    super::$name(&db).await;
                    db.finish().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = $crate::TestDb::postgres().await else { return };
                    super::$name(&db).await;
                    db.finish().await;
                }
            )*
        }
    };
}
