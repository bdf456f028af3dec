//! The integration test crate: one binary, one module per feature (see STYLE.md, Tests).
//! Shared helpers live in `fixtures`.

mod fixtures;

mod api;
mod auth;
mod bench_smoke;
mod bouncer;
mod cli;
mod clients;
mod cluster;
mod fixtures_smoke;
mod hardening;
mod ircd_smoke;
mod limits;
mod metrics;
mod migrate;
mod operator;
mod push;
mod secrets;
mod upstream;
mod web;
mod ws;
