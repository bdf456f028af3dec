//! The integration test crate: one binary, one module per feature (see STYLE.md, Tests).
//! Shared helpers live in `fixtures`.

/// Runs each scenario once per store backend: `sqlite::name` and `postgres::name`
/// (the module using it imports `Backend`). Defined before the modules so that
/// every one of them sees it.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test] async fn $name() { super::$name(super::Backend::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test] async fn $name() { super::$name(super::Backend::Postgres).await })*
        }
    };
}

mod fixtures;

mod account;
mod api;
mod auth;
mod away;
mod bench_smoke;
mod bouncer;
mod bouncer_networks;
mod bouncerserv;
mod cli;
mod clients;
mod cluster;
mod detach;
mod fixtures_smoke;
mod follow;
mod gapfill;
mod hardening;
mod invite;
mod ircd_smoke;
mod limits;
mod metrics;
mod migrate;
mod operator;
mod outage;
mod park;
mod partition;
mod placement;
mod push;
mod rebalance;
mod secrets;
mod shared;
mod state;
mod upgrade;
mod upgrade_scale;
mod upstream;
mod web;
mod ws;
