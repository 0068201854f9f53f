//! An engine thread's CPU scheduling policy: normal, and batch during a burst
//! of new connections.
//!
//! On the normal policy a thread that wakes takes the CPU at once from a
//! process running there. On a CPU the gateway shares with a busy process
//! (its backend on the same host, another service on a small VPS), a burst of
//! handshakes then costs a switch between the two at nearly every TLS record:
//! about six per connection. On `SCHED_BATCH` a woken thread waits until the
//! running process blocks or its time slice ends, and finds more to do when it
//! runs: measured, about a third less CPU per connection at 64 clients
//! (bench/results/ISSUE-12-NOTES.md), for a wait of up to that slice per
//! event, which is small beside the queueing of a burst. One client at a time
//! would wait on every record for no gain, so the engine is batch only while
//! many connections are open and arriving; on a CPU of its own it has nothing
//! to preempt, and the two policies run alike. The burst is judged at the
//! first turn of the loop after each window, so a thread that went idle
//! during one comes back to normal at its next event. Either change keeps the
//! thread's nice value.
//!
//! A thread that starts on another policy (systemd's `CPUSchedulingPolicy=`,
//! `chrt`) keeps it: the operator chose.

use std::time::{Duration, Instant};

/// How often the burst is judged.
const WINDOW: Duration = Duration::from_millis(100);
/// A burst: at least this many connections accepted in a window...
const BURST_ACCEPTS: u32 = 32;
/// ...while at least this many are open on the thread.
const BURST_OPEN: usize = 32;

/// Error of the policy change that ended adaptation (seccomp, an old kernel).
#[derive(Debug, thiserror::Error)]
#[error("cannot change the connection engine's scheduling policy: {0}")]
pub(crate) struct PolicyError(std::io::Error);

pub(crate) struct Scheduling {
    /// False when the thread started on a policy other than normal, or a
    /// change failed: the policy is then left alone.
    adaptive: bool,
    batch: bool,
    window_start: Instant,
    accepted: u32,
}

impl Scheduling {
    /// For the calling thread.
    pub(crate) fn new(now: Instant) -> Scheduling {
        // SAFETY: no arguments; the calling thread's own policy.
        let policy = unsafe { libc::sched_getscheduler(0) };
        Scheduling { adaptive: policy == libc::SCHED_OTHER, batch: false, window_start: now, accepted: 0 }
    }

    pub(crate) fn accepted(&mut self) {
        self.accepted = self.accepted.saturating_add(1);
    }

    /// Called once per turn of the loop, with the connections open on the
    /// thread; changes the calling thread's policy when a burst starts or ends.
    pub(crate) fn turn(&mut self, now: Instant, open: usize) -> Result<(), PolicyError> {
        if !self.adaptive || now.duration_since(self.window_start) < WINDOW {
            return Ok(());
        }
        let burst = is_burst(self.accepted, open);
        self.window_start = now;
        self.accepted = 0;
        if burst == self.batch {
            return Ok(());
        }
        let policy = if burst { libc::SCHED_BATCH } else { libc::SCHED_OTHER };
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` outlives the call; pid 0 is the calling thread.
        if unsafe { libc::sched_setscheduler(0, policy, &param) } != 0 {
            self.adaptive = false;
            return Err(PolicyError(std::io::Error::last_os_error()));
        }
        self.batch = burst;
        Ok(())
    }
}

fn is_burst(accepted: u32, open: usize) -> bool {
    accepted >= BURST_ACCEPTS && open >= BURST_OPEN
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> i32 {
        // SAFETY: no arguments.
        unsafe { libc::sched_getscheduler(0) }
    }

    /// On a thread of its own: the test changes its thread's policy.
    #[test]
    fn a_burst_makes_the_thread_batch_until_it_ends() {
        std::thread::spawn(|| {
            let start = Instant::now();
            let mut scheduling = Scheduling::new(start);
            assert!(scheduling.adaptive, "test threads start on the normal policy");
            for _ in 0..BURST_ACCEPTS {
                scheduling.accepted();
            }
            // Not a whole window yet: nothing changes.
            scheduling.turn(start + WINDOW / 2, BURST_OPEN).unwrap();
            assert_eq!(policy(), libc::SCHED_OTHER);
            scheduling.turn(start + WINDOW, BURST_OPEN).unwrap();
            assert!(scheduling.batch);
            assert_eq!(policy(), libc::SCHED_BATCH);
            // The next window accepts nothing: back to normal.
            scheduling.turn(start + 2 * WINDOW, BURST_OPEN).unwrap();
            assert_eq!(policy(), libc::SCHED_OTHER);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn one_client_at_a_time_or_idle_connections_are_no_burst() {
        // Sequential connections: many accepted, few open at once.
        assert!(!is_burst(200, 2));
        // Many long-lived connections, few new ones.
        assert!(!is_burst(3, 5000));
        assert!(is_burst(BURST_ACCEPTS, BURST_OPEN));
    }

    #[test]
    fn an_operators_policy_is_left_alone() {
        std::thread::spawn(|| {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: as in `Scheduling::turn`.
            assert_eq!(unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) }, 0);
            let start = Instant::now();
            let mut scheduling = Scheduling::new(start);
            for _ in 0..BURST_ACCEPTS {
                scheduling.accepted();
            }
            scheduling.turn(start + WINDOW, 0).unwrap();
            scheduling.turn(start + 2 * WINDOW, 0).unwrap();
            assert_eq!(policy(), libc::SCHED_BATCH, "an operator's batch stays batch when no burst");
        })
        .join()
        .unwrap();
    }
}
