//! Writing back at start what the spill file held when the node last stopped.

use super::*;

/// What [`replay`] wrote back.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Lines written back (or found stored already).
    pub lines: usize,
    /// Gap markers written back.
    pub gaps: usize,
    /// Lines of users that another node adopted meanwhile, set aside (see
    /// [`replay`]).
    pub set_aside: usize,
}

/// Why [`replay`] could not write a spill file back; the file is kept.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("reading the outage spill file {file}: {source}")]
    Io {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("the outage spill file {file} belongs to node {found:?}, not to this node ({this:?}): move it away or start that node with it")]
    Foreign {
        file: PathBuf,
        found: String,
        this: String,
    },
    #[error("writing back the outage spill file {file}: {source} (the file is kept; the next start tries again)")]
    Store { file: PathBuf, source: StoreError },
}

/// Lines written back per transaction.
pub(super) const REPLAY_BATCH: usize = 2000;

/// Writes back what the spill file held when the node last stopped, before any user
/// actor runs, then empties it. Lines keep their ids: a user whose owner row still
/// has the epoch the lines were taken with was never run elsewhere since, and this
/// node allocates nothing for it before the replay ends, so the ids are free (or
/// hold these very lines, from an earlier replay or write-back that stopped midway:
/// the insert skips them, so a replay cut short is simply done again). A user
/// another node adopted meanwhile keeps them too when that node reserved ids for
/// them (its `seq_floor`, set by every take-over without a release, see
/// `Store::assign_user`): the held ids lie between what was stored and the floor,
/// where nobody else writes, so they land in their place in the user's history,
/// before the new owner's lines. Only lines that do not fit (an adopter of an older
/// version, without a floor) are set aside, in order, in
/// `<spill_path>.set-aside-<time>` (the same format), and logged.
///
/// # Errors
/// The file cannot be read, belongs to another node, or the store fails (the file is
/// kept for the next start).
pub async fn replay(store: &Store, cfg: &OutageConfig) -> Result<Replayed, ReplayError> {
    let Some(path) = cfg.spill_path.clone() else {
        return Ok(Replayed::default());
    };
    if !spill_pending(cfg) {
        return Ok(Replayed::default());
    }
    let io = |source| ReplayError::Io {
        file: path.clone(),
        source,
    };
    let c = read_spill(&path).map_err(io)?;
    for p in &c.problems {
        tracing::warn!("outage spill file: {p}");
    }
    if let Some(owner) = &c.owner {
        if !cfg.node.is_empty() && owner.node != cfg.node {
            return Err(ReplayError::Foreign {
                file: path,
                found: owner.node.clone(),
                this: cfg.node.clone(),
            });
        }
        if !cfg.store.is_empty() && owner.store != cfg.store {
            tracing::warn!(file = %path.display(), written_for = %owner.store, store = %cfg.store,
                "outage spill file: written for another store address; writing it back here \
                 (lines of users or networks this store does not have are dropped)");
        }
    }
    let store_err = |source| ReplayError::Store {
        file: path.clone(),
        source,
    };
    // Whose lines may keep their ids: the owner row's epoch is still theirs, or the
    // node that took the user over reserved ids above what was stored (its floor)
    // and these lie below it.
    let mut owners: HashMap<UserId, Option<(i64, i64)>> = HashMap::new();
    for m in c.gaps.iter().chain(&c.lines) {
        if let std::collections::hash_map::Entry::Vacant(v) = owners.entry(m.user_id) {
            let o = store.owner(m.user_id).await.map_err(store_err)?;
            let floor = store.seq_floor(m.user_id).await.map_err(store_err)?;
            v.insert(o.map(|o| (o.epoch, floor)));
        }
    }
    let fits = |m: &NewMessage| match owners.get(&m.user_id).copied().flatten() {
        Some((epoch, _)) if epoch == m.epoch => true,
        Some((_, floor)) => m.seq < floor,
        None => false,
    };
    let (ok, aside): (Vec<NewMessage>, Vec<NewMessage>) = c
        .gaps
        .iter()
        .chain(&c.lines)
        .cloned()
        .partition(|m| fits(m));
    let gaps = c.gaps.iter().filter(|m| fits(m)).count();
    if !aside.is_empty() {
        let mut buf = preamble(c.owner.as_ref().unwrap_or(&SpillOwner {
            node: cfg.node.clone(),
            store: cfg.store.clone(),
        }));
        for m in &aside {
            record(KIND_LINE, &SpillLine::encode(m), &mut buf);
        }
        let file = side(
            &path,
            &format!("set-aside-{}", Utc::now().format("%Y%m%dT%H%M%S")),
        );
        std::fs::write(&file, &buf).map_err(io)?;
        let users: std::collections::BTreeSet<UserId> = aside.iter().map(|m| m.user_id).collect();
        tracing::error!(file = %file.display(), lines = aside.len(), users = ?users,
            "outage spill file: these users were adopted by another node (without an id \
             reservation) while this one was down; their held lines cannot keep their ids \
             and are set aside, not written");
    }
    for chunk in ok.chunks(REPLAY_BATCH) {
        store.insert_messages(chunk).await.map_err(store_err)?;
    }
    // Written: empty the files (a crash before this replays them again, harmlessly).
    let gaps_path = side(&path, "gaps");
    for p in [&path, &gaps_path] {
        match std::fs::remove_file(p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
    }
    Ok(Replayed {
        lines: ok.len() - gaps,
        gaps,
        set_aside: aside.len(),
    })
}
