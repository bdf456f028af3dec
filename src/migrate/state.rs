//! The states of a migration, of each user's move, and the kinds of migration, as
//! types. The store keeps them as strings (`migrations.state`, `migration_users.state`,
//! `migrations.kind`); [`MigrationState::as_str`] and friends are those strings, and
//! [`MigrationState::parse`] reads them back (`None` for a string this version does not
//! know, written by a newer one).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::store::migrate::UserProgress;
use crate::store::{Store, UserId};

/// Where a migration is: `planned → preflight → running → paused/completed/aborted/
/// rolled_back`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationState {
    Planned,
    Preflight,
    Running,
    Paused,
    Completed,
    Aborted,
    RolledBack,
}

/// Where one user's move is: `pending → reserved → moving → moved`, or `failed` /
/// `rolled_back`. A user already `moved` is never moved again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MoveState {
    Pending,
    Reserved,
    Moving,
    Moved,
    Failed,
    RolledBack,
}

/// What a migration does: drain a node, move chosen users, move a migration's users
/// back, or even out the active nodes (rebalance).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationKind {
    Drain,
    Move,
    Rollback,
    Rebalance,
}

/// The stored string of each value: one table per type, from which `as_str` (an
/// exhaustive match) and `parse` (a lookup in `ALL`) are made, so they cannot
/// disagree.
macro_rules! stored_strings {
    ($t:ident { $($v:ident = $s:literal),* $(,)? }) => {
        impl $t {
            /// Every value with its stored string, in order.
            pub const ALL: &'static [($t, &'static str)] = &[$(($t::$v, $s)),*];

            /// The string the store keeps.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($t::$v => $s),*
                }
            }

            /// Reads a stored string; `None` when this version does not know it.
            pub fn parse(s: &str) -> Option<$t> {
                Self::ALL.iter().find(|(_, t)| *t == s).map(|(v, _)| *v)
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

stored_strings!(MigrationState {
    Planned = "planned", Preflight = "preflight", Running = "running", Paused = "paused",
    Completed = "completed", Aborted = "aborted", RolledBack = "rolled_back",
});

stored_strings!(MoveState {
    Pending = "pending", Reserved = "reserved", Moving = "moving",
    Moved = "moved", Failed = "failed", RolledBack = "rolled_back",
});

stored_strings!(MigrationKind {
    Drain = "drain", Move = "move", Rollback = "rollback", Rebalance = "rebalance",
});

impl MigrationState {
    /// Whether a migration in state `stored` is over: nothing runs it again.
    pub fn is_over(stored: &str) -> bool {
        matches!(
            MigrationState::parse(stored),
            Some(MigrationState::Completed | MigrationState::Aborted | MigrationState::RolledBack)
        )
    }
}

/// Sets migration `id`'s state, with `note` (why it paused or stopped).
///
/// # Errors
/// Store errors.
pub async fn set_migration_state(
    store: &Store,
    id: i64,
    state: MigrationState,
    note: &str,
) -> anyhow::Result<()> {
    Ok(store
        .set_migration_state(id, state.as_str(), note, super::now())
        .await?)
}

/// Sets the state of `user`'s move in migration `id`, and nothing else.
///
/// # Errors
/// Store errors.
pub async fn set_move_state(
    store: &Store,
    id: i64,
    user: UserId,
    state: MoveState,
) -> anyhow::Result<()> {
    let progress = UserProgress {
        state: state.as_str(),
        ..UserProgress::default()
    };
    Ok(store.update_migration_user(id, user, &progress).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::migrate::{migration_state, move_state};

    #[test]
    fn stored_strings_are_the_stores_and_serde_agrees() {
        fn ours<T>(all: &[(T, &'static str)]) -> Vec<&'static str> {
            all.iter().map(|(_, s)| *s).collect()
        }
        assert_eq!(
            ours(MigrationState::ALL),
            [
                migration_state::PLANNED,
                migration_state::PREFLIGHT,
                migration_state::RUNNING,
                migration_state::PAUSED,
                migration_state::COMPLETED,
                migration_state::ABORTED,
                migration_state::ROLLED_BACK,
            ]
        );
        assert_eq!(
            ours(MoveState::ALL),
            [
                move_state::PENDING,
                move_state::RESERVED,
                move_state::MOVING,
                move_state::MOVED,
                move_state::FAILED,
                move_state::ROLLED_BACK,
            ]
        );
        for (v, s) in MigrationState::ALL {
            assert_eq!((v.as_str(), MigrationState::parse(s)), (*s, Some(*v)));
            assert_eq!(serde_json::to_value(v).unwrap(), *s);
        }
        for (v, s) in MoveState::ALL {
            assert_eq!((v.as_str(), MoveState::parse(s)), (*s, Some(*v)));
            assert_eq!(serde_json::to_value(v).unwrap(), *s);
        }
        for (v, s) in MigrationKind::ALL {
            assert_eq!((v.as_str(), MigrationKind::parse(s)), (*s, Some(*v)));
            assert_eq!(serde_json::to_value(v).unwrap(), *s);
        }
        assert_eq!(MoveState::parse("teleported"), None);
        assert!(MigrationState::is_over("aborted") && !MigrationState::is_over("paused"));
    }
}
