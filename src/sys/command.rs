//! External commands (`mount -t nfs`, i.e. mount.nfs): the one place the
//! driver starts a process.
//!
//! Safety assumptions: arguments are passed as a vector, never through a
//! shell. A command that does not finish within its timeout is killed with
//! SIGKILL and reaped, so a dead server cannot leave mount processes piling
//! up. Its stderr becomes the error message.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} {args} failed ({status}): {stderr}")]
    Failed {
        program: String,
        args: String,
        status: String,
        stderr: String,
    },
    #[error("{program} {args} did not finish within {secs} s and was killed")]
    TimedOut {
        program: String,
        args: String,
        secs: u64,
    },
}

/// Runs `program args...`, waiting at most `timeout`. Blocking.
pub fn run(program: &str, args: &[String], timeout: Duration) -> Result<String, Error> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Own process group: mount(8) runs mount.nfs as a child, and a
        // timeout must kill both.
        .process_group(0)
        .spawn()
        .map_err(|source| Error::Spawn {
            program: program.to_string(),
            source,
        })?;
    // Drain the pipes on threads so a chatty child cannot block on a full pipe.
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(p) = stdout.as_mut() {
            let _ = p.read_to_string(&mut s);
        }
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(p) = stderr.as_mut() {
            let _ = p.read_to_string(&mut s);
        }
        s
    });
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if start.elapsed() >= timeout => {
                kill_group(&mut child);
                break None;
            }
            Ok(None) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(_) => {
                kill_group(&mut child);
                break None;
            }
        }
    };
    let joined = args.join(" ");
    // On timeout the reader threads are left to end when the pipes close.
    let Some(status) = status else {
        return Err(Error::TimedOut {
            program: program.to_string(),
            args: joined,
            secs: timeout.as_secs().max(1),
        });
    };
    let out = out_t.join().unwrap_or_default();
    let err = err_t.join().unwrap_or_default();
    if status.success() {
        Ok(out)
    } else {
        Err(Error::Failed {
            program: program.to_string(),
            args: joined,
            status: status.to_string(),
            stderr: err.trim().to_string(),
        })
    }
}

fn kill_group(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn returns_stdout_and_stderr_as_error() {
        let out = run("sh", &s(&["-c", "echo hi"]), Duration::from_secs(5)).unwrap();
        assert_eq!(out, "hi\n");
        let err = run(
            "sh",
            &s(&["-c", "echo nope >&2; exit 3"]),
            Duration::from_secs(5),
        )
        .unwrap_err();
        match err {
            Error::Failed { stderr, status, .. } => {
                assert_eq!(stderr, "nope");
                assert!(status.contains('3'), "{status}");
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn kills_on_timeout() {
        let t = tempfile::tempdir().unwrap();
        let pidfile = t.path().join("pid");
        // A grandchild (like mount.nfs under mount) must die too.
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let start = Instant::now();
        let err = run("sh", &s(&["-c", &script]), Duration::from_millis(300)).unwrap_err();
        assert!(matches!(err, Error::TimedOut { .. }), "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The grandchild was killed (it may linger as a zombie of init briefly).
        let mut gone = false;
        for _ in 0..100 {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.is_empty() || stat.contains(") Z ") {
                gone = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(gone, "grandchild {pid} survived the timeout");
    }

    #[test]
    fn missing_program_is_spawn_error() {
        let err = run("/nonexistent/prog", &[], Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, Error::Spawn { .. }));
    }
}
