//! The suite's output: a table per benchmark on stdout, JSON and a markdown report
//! under the results folder (`results/` by default, gitignored).

use std::path::Path;

use serde_json::{json, Value};

use crate::bench::{verdict, Section, Sizes};

/// Writes `bench-<time>.json`, `latest.json` and `report.md` into `dir`; returns the
/// markdown.
pub fn write(
    dir: &Path,
    sizes: &Sizes,
    sections: &[Section],
    failures: &[(String, String)],
) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir)?;
    let machine = crate::procfs::machine();
    let started = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let mut benches = serde_json::Map::new();
    let mut targets = Vec::new();
    for s in sections {
        benches.insert(s.name.to_string(), s.json.clone());
        targets.extend(s.targets.iter().cloned());
    }
    let doc = json!({
        "finished_at": started,
        "quick": sizes.quick,
        "sizes": sizes,
        "machine": machine,
        "znc_version": znc_version(),
        "benchmarks": Value::Object(benches),
        "targets": targets,
        "failures": failures.iter().map(|(n, e)| json!({"benchmark": n, "error": e})).collect::<Vec<_>>(),
    });
    let text = serde_json::to_string_pretty(&doc)?;
    let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S");
    std::fs::write(dir.join(format!("bench-{stamp}.json")), &text)?;
    std::fs::write(dir.join("latest.json"), &text)?;

    let mut md = format!(
        "# Ferry benchmark report\n\nRun finished {started} ({}).\n\nMachine: {} CPUs ({}), {} GiB RAM, Linux {}. ZNC: {}.\n\n",
        if sizes.quick { "--quick size" } else { "full size" },
        machine["nproc"],
        machine["cpu_model"].as_str().unwrap_or("?"),
        machine["ram_gib"],
        machine["kernel"].as_str().unwrap_or("?"),
        znc_version(),
    );
    md.push_str("## Targets\n\n| target | wanted | measured | verdict |\n|---|---|---|---|\n");
    for t in sections.iter().flat_map(|s| &s.targets) {
        md.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            t.name,
            t.target,
            t.measured,
            verdict(t.met)
        ));
    }
    for s in sections {
        md.push_str(&format!("\n## {}\n\n{}", s.name, s.markdown));
    }
    if !failures.is_empty() {
        md.push_str("\n## Failures\n\n");
        for (n, e) in failures {
            md.push_str(&format!("- {n}: {e}\n"));
        }
    }
    std::fs::write(dir.join("report.md"), &md)?;
    Ok(md)
}

fn znc_version() -> String {
    std::process::Command::new("znc")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| {
            s.lines()
                .next()
                .map(|l| l.split(" - ").next().unwrap_or(l).to_string())
        })
        .unwrap_or_else(|| "not installed".into())
}
