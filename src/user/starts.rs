//! Per-user start guards: the registry ([`super::Users`]) starts, resumes and holds a
//! user only under that user's guard, so two starts of one user never overlap, while
//! starts of different users run side by side (an upgrade resumes thousands at once).
//!
//! A guard is an async mutex made on first use and forgotten when its last holder or
//! waiter lets go: the map holds only users being started now.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

use crate::store::UserId;

/// The guards of the users being started now.
#[derive(Default)]
pub(super) struct Starts {
    locks: Mutex<HashMap<UserId, Arc<tokio::sync::Mutex<()>>>>,
}

/// Held while one user is started (or held): others wait for it.
pub(super) struct StartGuard<'a> {
    starts: &'a Starts,
    user: UserId,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Starts {
    /// Waits until no other start of `user` runs, and holds the guard until dropped.
    pub(super) async fn lock(&self, user: UserId) -> StartGuard<'_> {
        let lock = self.locks.lock().unwrap().entry(user).or_default().clone();
        let guard = lock.lock_owned().await;
        StartGuard {
            starts: self,
            user,
            guard: Some(guard),
        }
    }

    /// How many users have a guard now (held or waited for).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.locks.lock().unwrap().len()
    }
}

impl Drop for StartGuard<'_> {
    fn drop(&mut self) {
        let mut locks = self.starts.locks.lock().unwrap();
        // Our clone goes first: what is left is the map's and the waiters' (each
        // took its clone under this same map lock, so none can appear meanwhile).
        drop(self.guard.take());
        if locks
            .get(&self.user)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            locks.remove(&self.user);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_user_waits_others_do_not() {
        let starts = Starts::default();
        let a = starts.lock(1).await;
        // Another user starts at once.
        let b = tokio::time::timeout(Duration::from_secs(5), starts.lock(2))
            .await
            .expect("another user's start does not wait");
        // The same user waits until the first start ends.
        {
            let again = starts.lock(1);
            tokio::pin!(again);
            assert!(
                tokio::time::timeout(Duration::from_millis(50), &mut again)
                    .await
                    .is_err(),
                "a second start of one user waits"
            );
            drop(a);
            let _again = tokio::time::timeout(Duration::from_secs(5), again)
                .await
                .expect("it goes on once the first ends");
            assert_eq!(starts.len(), 2);
        }
        drop(b);
        assert_eq!(
            starts.len(),
            0,
            "guards are forgotten once nobody holds them"
        );
    }

    #[tokio::test]
    async fn many_waiters_each_get_it_once() {
        let starts = Arc::new(Starts::default());
        let inside = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let (starts, inside) = (starts.clone(), inside.clone());
            tasks.push(tokio::spawn(async move {
                let _g = starts.lock(7).await;
                let n = inside.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                assert_eq!(n, 0, "one start of a user at a time");
                tokio::task::yield_now().await;
                inside.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(starts.len(), 0);
    }
}
