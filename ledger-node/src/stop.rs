//! How a node is asked to stop: SIGTERM (systemd, Kubernetes, docker) or SIGINT (Ctrl-C).
//! Both are blocked in every thread and taken by one thread that waits for them, so the
//! node's main thread can close the redb file cleanly before the process exits: the next
//! open then needs no check of the file, whatever its length (`Store::close_for_exit`).
//!
//! Owns the signal mask only; it must not touch the store or decide to exit (`node` does).

use crate::error::{Fatal, NodeError};

/// The signals that ask a node to stop.
fn stop_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset and sigaddset fill the zeroed set they are given.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        set
    }
}

/// Blocks the stop signals in the calling thread, and so in every thread it starts from
/// now on: call it before the node starts any thread. Until `wait_in_thread` waits for
/// them they stay pending (a blocked signal is queued, even for PID 1 in a container).
pub fn block() -> Result<(), NodeError> {
    let set = stop_signals();
    // SAFETY: changes the calling thread's mask with a valid set; the old mask is not kept.
    let failed = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    match failed {
        0 => Ok(()),
        errno => Err(NodeError::Start(format!("cannot block SIGTERM and SIGINT: {}", std::io::Error::from_raw_os_error(errno)))),
    }
}

/// Starts the thread that waits for a stop signal and reports it as `NodeError::Signal`.
pub fn wait_in_thread(fatal: &Fatal) -> Result<(), NodeError> {
    fatal.spawn("signals", || {
        let set = stop_signals();
        let mut signal: libc::c_int = 0;
        // SAFETY: waits on a valid set the caller blocked (`block`), writing into `signal`.
        let failed = unsafe { libc::sigwait(&set, &mut signal) };
        if failed != 0 {
            return Err(NodeError::Start(format!("cannot wait for SIGTERM: {}", std::io::Error::from_raw_os_error(failed))));
        }
        Err(NodeError::Signal(if signal == libc::SIGINT { "SIGINT" } else { "SIGTERM" }))
    })
}
