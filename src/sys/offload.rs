//! Blocking work (filesystem calls, syscalls that may touch a dead NFS
//! server) moved off the async runtime and bounded by a timeout.
//!
//! Safety assumptions: a thread stuck in the kernel on a dead hard-mounted
//! NFS server cannot be killed, so on timeout the caller gets an error and
//! the thread is left to finish on its own. [`Probes`] keeps such stuck
//! work from piling up: concurrent probes of a path share one run, and once
//! that run has outlived its timeout the next callers fail at once instead
//! of starting another thread.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} did not finish within {secs} s (is the NFS server answering?)")]
    TimedOut { what: String, secs: u64 },
    #[error("{what} is still stuck from an earlier call (is the NFS server answering?)")]
    StillStuck { what: String },
    #[error("{what} panicked")]
    Panicked { what: String },
}

/// Runs `f` on the blocking pool; gives up waiting after `timeout`.
pub async fn run<T, F>(what: impl Into<String>, timeout: Duration, f: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let what = what.into();
    match tokio::time::timeout(timeout, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(_)) => Err(Error::Panicked { what }),
        Err(_) => Err(Error::TimedOut {
            what,
            secs: timeout.as_secs().max(1),
        }),
    }
}

/// Probes in flight, by key: callers of the same key share one run, and
/// once a run has outlived its timeout (stuck in the kernel on a dead
/// server) the next callers fail at once instead of piling up threads.
pub struct Probes<T> {
    running: Arc<Mutex<HashMap<String, Running<T>>>>,
    next_id: Arc<std::sync::atomic::AtomicU64>,
}

struct Running<T> {
    id: u64,
    started: Instant,
    done: watch::Receiver<Option<T>>,
}

impl<T> Clone for Probes<T> {
    fn clone(&self) -> Self {
        Probes {
            running: self.running.clone(),
            next_id: self.next_id.clone(),
        }
    }
}

impl<T> Default for Probes<T> {
    fn default() -> Self {
        Probes {
            running: Arc::new(Mutex::new(HashMap::new())),
            next_id: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        }
    }
}

impl<T: Clone + Send + Sync + 'static> Probes<T> {
    /// Runs `f` for `key` on the blocking pool, or joins the run already
    /// going for `key`; gives up waiting at `timeout` after the run began.
    pub async fn run<F>(&self, key: &str, timeout: Duration, f: F) -> Result<T, Error>
    where
        F: FnOnce() -> T + Send + 'static,
    {
        let (mut done, started) = {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(r) = running.get(key) {
                if r.started.elapsed() >= timeout {
                    return Err(Error::StillStuck {
                        what: key.to_string(),
                    });
                }
                (r.done.clone(), r.started)
            } else {
                let id = self
                    .next_id
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (tx, rx) = watch::channel(None);
                let started = Instant::now();
                running.insert(
                    key.to_string(),
                    Running {
                        id,
                        started,
                        done: rx.clone(),
                    },
                );
                let map = self.running.clone();
                let owned = key.to_string();
                tokio::task::spawn_blocking(move || {
                    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
                    // Free the key first, so a caller woken below starts a
                    // new run rather than joining this finished one.
                    {
                        let mut running = map.lock().unwrap_or_else(|p| p.into_inner());
                        if running.get(&owned).is_some_and(|r| r.id == id) {
                            running.remove(&owned);
                        }
                    }
                    // A panic drops the sender: waiters see Panicked.
                    if let Ok(out) = out {
                        let _ = tx.send(Some(out));
                    }
                });
                (rx, started)
            }
        };
        let left = timeout.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, done.wait_for(|v| v.is_some())).await {
            Ok(Ok(v)) => v.clone().ok_or_else(|| Error::Panicked {
                what: key.to_string(),
            }),
            Ok(Err(_)) => Err(Error::Panicked {
                what: key.to_string(),
            }),
            Err(_) => Err(Error::TimedOut {
                what: key.to_string(),
                secs: timeout.as_secs().max(1),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_one_run() {
        let probes: Probes<u32> = Probes::default();
        let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (p, runs) = (probes.clone(), runs.clone());
            tasks.push(tokio::spawn(async move {
                p.run("statvfs /share", Duration::from_secs(5), move || {
                    std::thread::sleep(Duration::from_millis(200));
                    runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 7
                })
                .await
            }));
        }
        for t in tasks {
            assert_eq!(
                t.await.unwrap().unwrap(),
                7,
                "every caller gets the one run's result"
            );
        }
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_panicking_probe_frees_its_key() {
        let probes: Probes<u8> = Probes::default();
        let err = probes
            .run("k", Duration::from_secs(5), || panic!("boom"))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Panicked { .. }), "{err}");
        assert_eq!(
            probes.run("k", Duration::from_secs(5), || 3).await.unwrap(),
            3
        );
    }

    #[tokio::test]
    async fn times_out_and_refuses_a_second_stuck_probe() {
        let probes: Probes<()> = Probes::default();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let err = probes
            .run("stat /x", Duration::from_millis(50), move || {
                let _ = rx.recv();
            })
            .await
            .unwrap_err();
        assert!(matches!(err, Error::TimedOut { .. }), "{err}");
        let err = probes
            .run("stat /x", Duration::from_millis(50), || ())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::StillStuck { .. }), "{err}");
        // other keys are unaffected
        probes
            .run("stat /y", Duration::from_secs(5), || ())
            .await
            .unwrap();
        tx.send(()).unwrap();
        for _ in 0..100 {
            if probes
                .run("stat /x", Duration::from_secs(5), || ())
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("probe key never released after the stuck work finished");
    }
}
