//! The scheduling policy of the server's threads (Linux): image decoding runs under `SCHED_IDLE`,
//! below the compute pool, so that a decoder never preempts a kernel of a forward pass (whose two
//! threads would then wait for each other at the next join) but takes every core the pool leaves
//! idle. The syscalls are here with the crate's other `unsafe`.
//!
//! Measured (lite, 4 clients, 640×480 JPEG, 2 cores, interleaved 10 s runs): with decoding at the
//! same priority as inference, the compute threads spent ~6 s of every 10 s runnable but waiting for
//! a core, and a forward pass of two images took ~11 ms in the server against ~5.3 ms alone.

/// While alive, the thread that created it runs under `SCHED_IDLE`: it gets a core only when no
/// normal thread wants it, and a waking normal thread preempts it at once (no privilege needed).
/// Dropping it restores `SCHED_OTHER`, so a pool thread goes back to normal for its next task.
#[derive(Debug)]
pub struct IdlePriority {
    // Not Send: the policy belongs to the thread that set it.
    _thread: std::marker::PhantomData<*const ()>,
}

impl IdlePriority {
    /// Switch the calling thread to `SCHED_IDLE`. `None` when the system refuses (a seccomp
    /// profile, another OS): the thread keeps its priority.
    pub fn enter() -> Option<Self> {
        set_policy(Policy::Idle).then_some(IdlePriority {
            _thread: std::marker::PhantomData,
        })
    }
}

impl Drop for IdlePriority {
    fn drop(&mut self) {
        set_policy(Policy::Normal);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    Normal,
    Idle,
    Other,
}

fn set_policy(p: Policy) -> bool {
    #[cfg(target_os = "linux")]
    {
        let policy = match p {
            Policy::Idle => libc::SCHED_IDLE,
            _ => libc::SCHED_OTHER,
        };
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is a valid sched_param for the duration of the call; pid 0 is the calling
        // thread (Linux applies scheduling policies per thread).
        #[allow(unsafe_code)]
        let r = unsafe { libc::sched_setscheduler(0, policy, &param) };
        r == 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = p;
        false
    }
}

/// The calling thread's scheduling policy (`Other` for anything but the two above, or off Linux).
pub fn current_policy() -> Policy {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: no pointers; pid 0 is the calling thread.
        #[allow(unsafe_code)]
        let p = unsafe { libc::sched_getscheduler(0) };
        match p {
            libc::SCHED_OTHER => Policy::Normal,
            libc::SCHED_IDLE => Policy::Idle,
            _ => Policy::Other,
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        Policy::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn idle_priority_holds_while_alive_and_only_on_its_thread() {
        use std::sync::{Arc, Barrier};
        let (entered, checked) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
        // started before the switch (a new thread inherits its creator's policy)
        let other = {
            let (entered, checked) = (entered.clone(), checked.clone());
            std::thread::spawn(move || {
                entered.wait();
                let p = current_policy();
                checked.wait();
                p
            })
        };
        std::thread::spawn(move || {
            assert_eq!(current_policy(), Policy::Normal);
            let guard = IdlePriority::enter().expect("SCHED_IDLE needs no privilege");
            assert_eq!(current_policy(), Policy::Idle);
            entered.wait();
            checked.wait();
            drop(guard);
            assert_eq!(current_policy(), Policy::Normal);
        })
        .join()
        .unwrap();
        // the other thread was not affected
        assert_eq!(other.join().unwrap(), Policy::Normal);
    }
}
