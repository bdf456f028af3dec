//! Running a migration at the terminal: a progress bar (or JSON lines with `--json`)
//! fed by the driver's [`Progress`] reports, and the closing summary.

use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::Cli;
use crate::migrate::plan::human_duration;
use crate::migrate::{self, MigrationState, MoveState, Progress};
use crate::store::Store;

/// A progress line: above the bar on a terminal, plain stdout otherwise (indicatif
/// hides everything, `println` included, when stderr is not a terminal).
fn say_line(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        println!("{line}");
    } else {
        bar.println(line);
    }
}

pub(super) fn say(cli: &Cli, json: &serde_json::Value, text: &str) {
    if cli.json {
        println!("{json}");
    } else {
        println!("{text}");
    }
}

pub(super) async fn execute(
    cli: &Cli,
    store: &Store,
    id: i64,
    eta: Option<f64>,
) -> anyhow::Result<()> {
    let users = store.migration_users(id).await?;
    let left = users
        .iter()
        .filter(|u| u.state != MoveState::Moved.as_str())
        .count() as u64;
    let bar = if cli.json {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new(left);
        b.set_style(
            ProgressStyle::with_template(
                "{bar:40} {pos}/{len} users  {elapsed} elapsed, ETA {eta}  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        if let Some(e) = eta {
            b.set_message(format!("(limits: ≥ {})", human_duration(e)));
        }
        b
    };
    let json = cli.json;
    let b2 = bar.clone();
    let report = move |p: Progress| {
        if json {
            println!("{}", serde_json::to_string(&p).unwrap_or_default());
            return;
        }
        match &p {
            Progress::Preflight { report } => {
                say_line(
                    &b2,
                    format!(
                        "preflight {}: {}",
                        report.node,
                        if report.ok { "ok" } else { "FAILED" }
                    ),
                );
                for c in &report.checks {
                    say_line(
                        &b2,
                        format!(
                            "  [{}] {}: {}",
                            if c.ok { " ok " } else { "FAIL" },
                            c.name,
                            c.detail
                        ),
                    );
                }
            }
            Progress::Batch { batch, users } => say_line(
                &b2,
                format!(
                    "{} ({users} users)",
                    if *batch == 0 {
                        "canary batch".to_owned()
                    } else {
                        format!("batch {batch}")
                    }
                ),
            ),
            Progress::Moved { .. } => b2.inc(1),
            Progress::Failed {
                user,
                error,
                rolled_back,
            } => {
                b2.inc(1);
                say_line(
                    &b2,
                    format!(
                        "  {user}: FAILED ({error}){}",
                        if *rolled_back {
                            "; back on its source"
                        } else {
                            ""
                        }
                    ),
                );
            }
            Progress::Interrupted { user, error } => say_line(
                &b2,
                format!("  {user}: INTERRUPTED, the store is unreachable ({error}); `resume` continues this move"),
            ),
            Progress::BatchDone {
                batch,
                moved,
                failed,
            } => {
                say_line(
                    &b2,
                    format!("  batch {batch} done: {moved} moved, {failed} failed"),
                );
            }
            Progress::Paused { reason } => say_line(&b2, format!("PAUSED: {reason}")),
            Progress::Waiting { reason } => say_line(&b2, format!("waiting: {reason}")),
            Progress::Done { state } => say_line(&b2, format!("migration {state}")),
        }
    };
    let r = migrate::execute(store, id, &report).await;
    bar.finish_and_clear();
    let m = r?;
    let f = migrate::figures(&m, &store.migration_users(id).await?);
    say(
        cli,
        &serde_json::json!({"id": id, "state": m.state, "note": m.note, "figures": f}),
        &format!(
            "migration {id}: {}{}; {} moved, {} failed, {} pending; downtime p50 {} ms, p99 {} ms; took {}",
            m.state,
            if m.note.is_empty() { String::new() } else { format!(" ({})", m.note) },
            f.moved,
            f.failed,
            f.pending,
            f.downtime_p50_ms.unwrap_or(0),
            f.downtime_p99_ms.unwrap_or(0),
            human_duration(f.elapsed_ms.unwrap_or(0) as f64 / 1000.0)
        ),
    );
    anyhow::ensure!(
        m.state == MigrationState::Completed.as_str(),
        "migration {id} is {}",
        m.state
    );
    Ok(())
}
