//! sqlite side of [`crate::store::migrate`]: the shared SQL text.

use super::Db;

include!("../migrate_sql.rs");
