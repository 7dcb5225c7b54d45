//! Worker processes across a server restart: telling a surviving worker from a reused pid, and
//! stopping it.
//!
//! The policy (docs/ARCHITECTURE.md, "Restart"): a worker that outlives its server is stopped
//! when the next server starts, and its run is recorded as interrupted. Re-adopting it would need
//! its pipes (gone with the dead server) and a way to wait for a process that is not our child;
//! stopping it is simple, bounded and leaves no orphan. Its telemetry is not lost: its queue dir
//! is drained (`drain.rs`).

use std::time::Duration;

use nix::{sys::signal::Signal, unistd::Pid};

/// A process's start time in clock ticks since boot (`/proc/<pid>/stat` field 22), which, with
/// the pid, names one process for the machine's uptime. `None` where it cannot be read.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` is still the process that started at `ticks`, and alive (a zombie is not).
pub fn is_same_process(pid: u32, ticks: u64) -> bool {
    ticks != 0 && start_ticks(pid) == Some(ticks) && !is_zombie(pid)
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let rest = stat.get(stat.rfind(')')? + 1..)?.trim_start().to_owned();
            rest.chars().next()
        })
        .is_some_and(|state| matches!(state, 'Z' | 'X'))
}

/// Stops the process group led by `pid`: SIGTERM, then SIGKILL after `grace`. Returns whether
/// the leader is gone at the end.
pub async fn stop_group(pid: u32, ticks: u64, grace: Duration) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    let group = Pid::from_raw(raw);
    let _ = nix::sys::signal::killpg(group, Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + grace;
    while is_same_process(pid, ticks) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = nix::sys::signal::killpg(group, Signal::SIGKILL);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while is_same_process(pid, ticks) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    !is_same_process(pid, ticks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_itself_and_a_reused_pid_is_not() {
        let me = std::process::id();
        let ticks = start_ticks(me).expect("readable on Linux");
        assert!(is_same_process(me, ticks));
        assert!(
            !is_same_process(me, ticks + 1),
            "another start time: another process"
        );
        assert!(!is_same_process(me, 0));
        assert_eq!(start_ticks(u32::MAX), None);
    }
}
