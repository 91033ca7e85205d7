//! Operations in flight, by key (a volume name, a volume's directory, a
//! target path): a second call on the same key while the first runs is
//! refused, and the RPC answers ABORTED as the CSI spec prescribes.
//!
//! Safety assumptions: keys are released when the guard drops, whatever
//! way the call ends (success, error, timeout, cancelled future).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
#[error("an operation on {key} is already in progress; retry later")]
pub struct Busy {
    pub key: String,
}

#[derive(Clone, Default)]
pub struct InFlight {
    keys: Arc<Mutex<HashSet<String>>>,
}

/// Holds keys until dropped.
pub struct Guard {
    keys: Arc<Mutex<HashSet<String>>>,
    held: Vec<String>,
}

impl InFlight {
    /// Takes all `keys` at once, or none.
    pub fn acquire(&self, keys: &[String]) -> Result<Guard, Busy> {
        let mut set = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = keys.iter().find(|k| set.contains(*k)) {
            return Err(Busy { key: k.clone() });
        }
        let mut held = Vec::new();
        for k in keys {
            if set.insert(k.clone()) {
                held.push(k.clone());
            }
        }
        Ok(Guard {
            keys: self.keys.clone(),
            held,
        })
    }

    /// Number of keys held now.
    pub fn len(&self) -> usize {
        self.keys.lock().map(|s| s.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let mut set = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        for k in &self.held {
            set.remove(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_acquire_is_refused_until_release() {
        let f = InFlight::default();
        let g = f.acquire(&["a".into(), "b".into()]).unwrap();
        let err = f.acquire(&["c".into(), "b".into()]).err().unwrap();
        assert_eq!(err.key, "b");
        // nothing of the refused call was kept
        assert_eq!(f.len(), 2);
        drop(g);
        assert!(f.is_empty());
        assert!(f.acquire(&["b".into()]).is_ok());
    }
}
