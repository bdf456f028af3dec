use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use tracing::info;

use super::Cli;
use crate::config::{FileConfig, NodeConfig};
use crate::server::Server;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// HTTP listen address (health, admin API, web client).
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// IRC listen address for clients.
    #[arg(long, value_name = "ADDR")]
    pub irc: Option<SocketAddr>,
    /// IRC-over-TLS listen address for clients (needs --tls-cert and --tls-key).
    #[arg(long, value_name = "ADDR")]
    pub irc_tls: Option<SocketAddr>,
    /// PEM certificate chain for --irc-tls.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --irc-tls.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// This node's name in the node list.
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
    /// Local address for connections to IRC networks; repeat to spread users.
    #[arg(long = "source-ip", value_name = "IP")]
    pub source_ips: Vec<IpAddr>,
    /// URL other nodes and clients use to reach this node's HTTP.
    #[arg(long, value_name = "URL")]
    pub advertise_http: Option<String>,
    /// HOST:PORT clients use to reach this node's IRC listener.
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise_irc: Option<String>,
    /// Cluster lease length in seconds (cluster mode).
    #[arg(long, value_name = "S")]
    pub lease_seconds: Option<u64>,
}

pub async fn run(cli: &Cli, args: &ServeArgs) -> anyhow::Result<()> {
    let url = cli.database_url();
    if url.starts_with("sqlite://") && cli.database.is_none() {
        std::fs::create_dir_all(&cli.data_dir).with_context(|| {
            format!(
                "creating the data directory {} (--data-dir)",
                cli.data_dir.display()
            )
        })?;
    }
    let mut cfg = NodeConfig::new(url);
    if let Some(path) = &cli.config {
        FileConfig::load(path)?.apply(&mut cfg);
    }
    if let Some(v) = args.http {
        cfg.http = v;
    }
    if let Some(v) = args.irc {
        cfg.irc = Some(v);
    }
    if let Some(v) = args.irc_tls {
        cfg.irc_tls = Some(v);
    }
    if args.tls_cert.is_some() {
        cfg.tls_cert = args.tls_cert.clone();
    }
    if args.tls_key.is_some() {
        cfg.tls_key = args.tls_key.clone();
    }
    if let Some(v) = &args.node_id {
        cfg.node_id = v.clone();
    }
    if !args.source_ips.is_empty() {
        cfg.user.source_ips = args.source_ips.clone();
    }
    if args.advertise_http.is_some() {
        cfg.advertise_http = args.advertise_http.clone();
    }
    if args.advertise_irc.is_some() {
        cfg.advertise_irc = args.advertise_irc.clone();
    }
    if let Some(s) = args.lease_seconds {
        anyhow::ensure!(s >= 1, "--lease-seconds must be at least 1");
        cfg.cluster = crate::cluster::ClusterConfig::with_lease(std::time::Duration::from_secs(s));
    }
    let running = Server::start(cfg).await?;
    println!(
        "ferry {} serving: web http://{}  irc {}{}",
        env!("CARGO_PKG_VERSION"),
        running.bound.http,
        running
            .bound
            .irc
            .map_or("off".to_owned(), |a| a.to_string()),
        running
            .bound
            .irc_tls
            .map_or(String::new(), |a| format!("  irc+tls {a}")),
    );
    shutdown_signal().await;
    info!("shutting down");
    running.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
