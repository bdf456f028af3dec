//! The integration test crate: one binary, one module per feature (see STYLE.md, Tests).
//! Shared helpers live in `fixtures`.

mod fixtures;

mod api;
mod bench_smoke;
mod bouncer;
mod cli;
mod cluster;
mod fixtures_smoke;
mod ircd_smoke;
mod limits;
mod metrics;
mod migrate;
mod push;
mod upstream;
mod web;
mod ws;
