//! Scratch stores for a benchmark: SQLite in a temp dir, or a database created on the
//! PostgreSQL server of `FERRY_BENCH_POSTGRES` and dropped afterwards.

use sqlx::Connection;

/// A scratch store (dropped with [`Scratch::drop_db`]).
pub struct Scratch {
    /// The database URL to give Ferry.
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    pg: Option<(String, String)>,
}

impl Scratch {
    /// A fresh store: a temp-dir SQLite file, or a new database on the PostgreSQL
    /// server of `admin` (`backend` is `sqlite` or `postgres`).
    pub async fn new(backend: &str, admin: &str) -> anyhow::Result<Scratch> {
        if backend == "sqlite" {
            let dir = tempfile::Builder::new()
                .prefix("ferry-bench-db-")
                .tempdir()?;
            let url = format!("sqlite://{}", dir.path().join("ferry.db").display());
            return Ok(Scratch {
                url,
                _dir: Some(dir),
                pg: None,
            });
        }
        let name = format!("ferry_bench_{:08x}", rand::random::<u32>());
        let mut c = sqlx::PgConnection::connect(admin).await?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut c)
            .await?;
        let base = admin.rsplit_once('/').map_or(admin, |(b, _)| b);
        Ok(Scratch {
            url: format!("{base}/{name}"),
            _dir: None,
            pg: Some((admin.to_string(), name)),
        })
    }

    /// Drops the PostgreSQL database (forcing its connections closed).
    pub async fn drop_db(&self) {
        if let Some((admin, name)) = &self.pg {
            if let Ok(mut c) = sqlx::PgConnection::connect(admin).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut c)
                    .await;
            }
        }
    }
}
