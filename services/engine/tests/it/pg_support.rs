//! PostgreSQL for the tests: a fresh database per test on the machine's
//! server (`ENGINE_TEST_PG`, default `postgres://postgres@127.0.0.1:5432`),
//! dropped when the test ends.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use engine::storage::SharedStorage;
use engine::storage::postgres::{PgOptions, PgStorage};

use crate::conformance::Backend;

/// The server the tests create their databases on.
pub fn server_url() -> String {
    std::env::var("ENGINE_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A database of its own for one test, dropped (with any connection still
/// open to it) when this is dropped.
pub struct TestDatabase {
    pub name: String,
}

impl TestDatabase {
    pub async fn create() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!(
            "engine_test_{}_{}_{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        admin(&format!(
            "CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8'"
        ))
        .await;
        Self { name }
    }

    /// The URL `--store` takes.
    pub fn url(&self) -> String {
        format!("{}/{}", server_url(), self.name)
    }

    /// A plain client on the database, to look at it with SQL.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .expect("connect to the test database");
        tokio::spawn(connection);
        client
    }

    pub async fn open(&self) -> Arc<PgStorage> {
        self.open_with(PgOptions::default()).await
    }

    pub async fn open_with(&self, options: PgOptions) -> Arc<PgStorage> {
        Arc::new(
            PgStorage::connect_with(&self.url(), options)
                .await
                .expect("open PgStorage"),
        )
    }
}

/// Runs one statement on the server's `postgres` database.
async fn admin(sql: &str) {
    let url = format!("{}/postgres", server_url());
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {url}: {e} (run scripts/ensure-services)"));
    tokio::spawn(connection);
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // Drop runs inside the test's runtime; a thread of its own may block.
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(admin(&sql));
        })
        .join()
        .ok();
    }
}

/// The conformance suite's backend: `PgStorage` on a fresh database,
/// created at the first `open`.
#[derive(Default)]
pub struct Postgres {
    database: Option<TestDatabase>,
}

#[async_trait]
impl Backend for Postgres {
    async fn open(&mut self) -> SharedStorage {
        if self.database.is_none() {
            self.database = Some(TestDatabase::create().await);
        }
        self.database.as_ref().unwrap().open().await
    }
}
