//! Long work that outlives the RPC that started it (writing a snapshot
//! archive, populating a volume from a snapshot or a clone source), by key.
//!
//! Safety assumptions: at most one job runs per key, so a retried RPC joins
//! the running job instead of starting a second writer on the same files.
//! A job's outcome stays until a caller takes it, so a failure is reported
//! to the next call rather than lost. Jobs can be cancelled; the work checks
//! the flag between files and inside large ones.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

/// How a job ended.
pub type Outcome = Result<(), Failure>;

/// Why a job failed, and the gRPC code the RPC waiting for it answers
/// (INTERNAL unless the job says otherwise).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub message: String,
    pub code: tonic::Code,
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure {
            message,
            code: tonic::Code::Internal,
        }
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Failure {
        message.to_string().into()
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

pub struct Job {
    cancel: Arc<AtomicBool>,
    done: watch::Receiver<Option<Outcome>>,
}

impl Job {
    /// Waits up to `timeout` for the job to end; `None` if still running.
    pub async fn wait(&self, timeout: Duration) -> Option<Outcome> {
        let mut rx = self.done.clone();
        let res = tokio::time::timeout(timeout, rx.wait_for(|v| v.is_some())).await;
        match res {
            Ok(Ok(v)) => v.clone(),
            Ok(Err(_)) => Some(Err("the job ended without a result".into())),
            Err(_) => None,
        }
    }

    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

#[derive(Clone, Default)]
pub struct Jobs {
    map: Arc<Mutex<HashMap<String, Arc<Job>>>>,
}

impl Jobs {
    /// The job under `key`, starting `work` on its own thread if there is
    /// none.
    pub fn start<F, E>(&self, key: &str, work: F) -> Arc<Job>
    where
        F: FnOnce(&AtomicBool) -> Result<(), E> + Send + 'static,
        E: Into<Failure>,
    {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(job) = map.get(key) {
            // A running job, or a failure not yet reported: join it. A job
            // that succeeded has nothing left to say (its work is on disk);
            // new work under its key starts afresh.
            if !matches!(*job.done.borrow(), Some(Ok(()))) {
                return job.clone();
            }
        }
        let (tx, rx) = watch::channel(None);
        let cancel = Arc::new(AtomicBool::new(false));
        let job = Arc::new(Job {
            cancel: cancel.clone(),
            done: rx,
        });
        map.insert(key.to_string(), job.clone());
        let name = key.to_string();
        let spawned = std::thread::Builder::new()
            .name("nfs-csi-job".into())
            .spawn(move || {
                let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    work(&cancel).map_err(Into::into)
                }))
                .unwrap_or_else(|_| Err(format!("job {name} panicked").into()));
                let _ = tx.send(Some(out));
            });
        if let Err(e) = spawned {
            map.remove(key);
            let (tx, rx) = watch::channel(Some(Err(format!("cannot start a thread: {e}").into())));
            drop(tx);
            return Arc::new(Job {
                cancel: Arc::new(AtomicBool::new(false)),
                done: rx,
            });
        }
        job
    }

    /// Waits up to `timeout` for `job` (started under `key`) and, once it
    /// has ended, forgets it: its outcome is reported to this caller only.
    pub async fn outcome(&self, key: &str, job: &Job, timeout: Duration) -> Option<Outcome> {
        let out = job.wait(timeout).await;
        if out.is_some() {
            self.remove(key);
        }
        out
    }

    pub fn get(&self, key: &str) -> Option<Arc<Job>> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    /// Forgets a finished job (its outcome has been reported).
    pub fn remove(&self, key: &str) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// Jobs still running.
    #[cfg(test)]
    pub fn running(&self) -> usize {
        self.map
            .lock()
            .map(|m| m.values().filter(|j| j.done.borrow().is_none()).count())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_job_per_key_outcome_kept_and_cancel() {
        let jobs = Jobs::default();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let a = jobs.start("k", move |_| {
            let _ = rx.recv();
            Err("boom")
        });
        // the same key joins the running job: this work never runs
        let b = jobs.start("k", |_| -> Outcome { panic!("second job must not start") });
        assert!(a.wait(Duration::from_millis(30)).await.is_none());
        assert_eq!(jobs.running(), 1);
        tx.send(()).unwrap();
        assert_eq!(
            b.wait(Duration::from_secs(5)).await,
            Some(Err("boom".into()))
        );
        // kept until removed
        assert!(jobs.get("k").is_some());
        jobs.remove("k");
        // a success is not handed to later work under the same key
        let ok = jobs.start("k", |_| Ok::<(), String>(()));
        assert_eq!(ok.wait(Duration::from_secs(5)).await, Some(Ok(())));
        let ran = Arc::new(AtomicBool::new(false));
        let r = ran.clone();
        let again = jobs.start("k", move |_| {
            r.store(true, Ordering::SeqCst);
            Ok::<(), String>(())
        });
        assert_eq!(again.wait(Duration::from_secs(5)).await, Some(Ok(())));
        assert!(ran.load(Ordering::SeqCst), "new work must run");
        jobs.remove("k");
        let c = jobs.start("k", |cancel| {
            while !cancel.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err("cancelled")
        });
        c.cancel();
        assert_eq!(
            c.wait(Duration::from_secs(5)).await,
            Some(Err("cancelled".into()))
        );
    }
}
