use std::io::IsTerminal;

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// jemalloc instead of glibc's malloc: after a burst (a reconnect storm, thousands
/// of JOINs queued for the writer) glibc kept the freed memory (a settled node with
/// 300 users in shared channels: 218 MiB resident, 54 MiB after `malloc_trim`),
/// while jemalloc gives unused pages back within about a second (see
/// `docs/benchmarks.md` §1).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options: purge unused dirty pages from a background thread after 1 s
/// (the default, 10 s and only on allocator activity, leaves an idle node holding
/// its peak).
#[cfg(feature = "jemalloc")]
#[repr(transparent)]
struct MallocConf(*const std::ffi::c_char);
// SAFETY: a pointer to a static, immutable C string.
#[cfg(feature = "jemalloc")]
unsafe impl Sync for MallocConf {}
#[cfg(feature = "jemalloc")]
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: MallocConf = MallocConf(c"background_thread:true,dirty_decay_ms:1000".as_ptr());

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = ferry::cli::Cli::parse();
    let serving = matches!(cli.command, ferry::cli::Command::Serve(_));
    if !serving {
        // A command whose reader went away (`ferry migrate status | head -1`) ends
        // quietly, as other Unix tools do (killed by SIGPIPE, status 141), instead of
        // panicking in `println!` on EPIPE. Rust ignores SIGPIPE by default; the node
        // keeps ignoring it, since a client's closed socket must only fail that write.
        #[cfg(unix)]
        // SAFETY: restoring the default disposition of one signal before any thread
        // that could be affected writes to a pipe.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let default_level = if serving { "info" } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("FERRY_LOG").unwrap_or_else(|_| EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal: a log file or journal gets plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match ferry::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
