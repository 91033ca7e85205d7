//! Blocking work (filesystem calls, syscalls that may touch a dead NFS
//! server) moved off the async runtime and bounded by a timeout.
//!
//! Safety assumptions: a thread stuck in the kernel on a dead hard-mounted
//! NFS server cannot be killed, so on timeout the caller gets an error and
//! the thread is left to finish on its own. [`Probes`] keeps such stuck
//! work from piling up: while one probe of a path is still running, the next
//! one fails at once instead of starting another thread.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// Keys of blocking work still running after its caller gave up.
#[derive(Clone, Default)]
pub struct Probes {
    running: Arc<Mutex<HashSet<String>>>,
}

impl Probes {
    /// Like [`run`], but refuses to start while an earlier run with the same
    /// `key` is still going.
    pub async fn run<T, F>(&self, key: &str, timeout: Duration, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            if !running.insert(key.to_string()) {
                return Err(Error::StillStuck {
                    what: key.to_string(),
                });
            }
        }
        let running = self.running.clone();
        let owned = key.to_string();
        run(key, timeout, move || {
            let out = f();
            running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&owned);
            out
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn times_out_and_refuses_a_second_stuck_probe() {
        let probes = Probes::default();
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
