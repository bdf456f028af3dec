use clap::Parser;
use tracing_subscriber::EnvFilter;

/// jemalloc instead of glibc's malloc: after a burst (a reconnect storm, thousands
/// of JOINs queued for the writer) glibc kept the freed memory (a settled node with
/// 300 users in shared channels: 218 MiB resident, 54 MiB after `malloc_trim`),
/// while jemalloc gives unused pages back within about a second (see
/// `docs/benchmarks.md` §1).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options: purge unused dirty pages from a background thread after 1 s
/// (the default, 10 s and only on allocator activity, leaves an idle node holding
/// its peak).
#[repr(transparent)]
struct MallocConf(*const std::ffi::c_char);
// SAFETY: a pointer to a static, immutable C string.
unsafe impl Sync for MallocConf {}
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: MallocConf = MallocConf(c"background_thread:true,dirty_decay_ms:1000".as_ptr());

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = ferry::cli::Cli::parse();
    let default_level = if matches!(cli.command, ferry::cli::Command::Serve(_)) {
        "info"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("FERRY_LOG").unwrap_or_else(|_| EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: logs read by fail2ban or journald stay plain.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match ferry::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
