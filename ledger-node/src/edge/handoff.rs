//! When the intake hands its group to the committer. A group stays open, taking commands
//! as they arrive, while the committer writes the one before it, and goes over once the
//! committer waits for it (or it is full). So a command waits for at most the commit in
//! progress and its own, and a group holds everything that arrived while the disk was busy.
//! Handing over as soon as the channel had room instead kept a second, small group waiting
//! behind the commit in progress: its commands waited for two commits, and each small group
//! paid a commit of its own.
//!
//! Owns the two flags and the wake-up between the two threads; must not touch groups, the
//! books or the file.

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Duration;

/// Longest an open group waits for the committer without looking again, should a wake-up
/// be lost (the broker drops it when the link is full).
pub const RECHECK: Duration = Duration::from_millis(5);

pub struct Handoff {
    /// The committer waits for the next group: the channel is empty and it is in `next`.
    committer_idle: AtomicBool,
    /// The intake holds a group ready to go and wants to be woken when the committer waits.
    intake_waiting: AtomicBool,
    /// Gets the intake out of its wait on the broker (`broker::link::Waker`).
    wake: Box<dyn Fn() + Send + Sync>,
}

impl Handoff {
    pub fn new(wake: Box<dyn Fn() + Send + Sync>) -> Handoff {
        Handoff { committer_idle: AtomicBool::new(false), intake_waiting: AtomicBool::new(false), wake }
    }

    /// The committer's next group: one already in the channel (a full one sent while it
    /// wrote) is taken without saying it waits; else it waits, and the intake is woken if it
    /// holds one. None once the intake hung up.
    pub fn next<T>(&self, groups: &Receiver<T>) -> Option<T> {
        let group = match groups.try_recv() {
            Ok(group) => group,
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) => {
                self.committer_waits();
                groups.recv().ok()?
            }
        };
        // Busy with it, whoever cleared the flag first (`handing_over` did, unless the group
        // was sent while the committer wrote the one before).
        self.committer_idle.store(false, SeqCst);
        Some(group)
    }

    /// The committer is about to wait for a group: the intake is woken if it holds one.
    fn committer_waits(&self) {
        self.committer_idle.store(true, SeqCst);
        if self.intake_waiting.swap(false, SeqCst) {
            (self.wake)();
        }
    }

    /// The intake: whether the committer waits for a group now. If not, the intake is woken
    /// when it does (one of the two sees the other's flag: both are sequentially consistent).
    pub fn committer_free(&self) -> bool {
        if self.committer_idle.load(SeqCst) {
            return true;
        }
        self.intake_waiting.store(true, SeqCst);
        self.committer_idle.load(SeqCst)
    }

    /// The intake is handing a group over: the committer is busy with it from now on (cleared
    /// before the group is sent, so that it never overwrites the committer's next wait).
    pub fn handing_over(&self) {
        self.intake_waiting.store(false, SeqCst);
        self.committer_idle.store(false, SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    fn counting() -> (Arc<Handoff>, Arc<AtomicU64>) {
        let wakes = Arc::new(AtomicU64::new(0));
        let counted = wakes.clone();
        (
            Arc::new(Handoff::new(Box::new(move || {
                counted.fetch_add(1, SeqCst);
            }))),
            wakes,
        )
    }

    #[test]
    fn a_group_waits_while_the_committer_writes_and_is_woken_once_when_it_waits() {
        let (handoff, wakes) = counting();
        let (groups_tx, groups_rx) = std::sync::mpsc::sync_channel::<u64>(1);
        // Before the committer's first wait: busy.
        assert!(!handoff.committer_free());
        assert!(!handoff.committer_free(), "asking again changes nothing");
        // The committer waits (in another thread); the intake, which asked, is woken once.
        let committer = {
            let handoff = handoff.clone();
            std::thread::spawn(move || handoff.next(&groups_rx).map(|g| (g, handoff.next(&groups_rx), handoff.next(&groups_rx))))
        };
        wait_for(|| wakes.load(SeqCst) == 1);
        assert!(handoff.committer_free());
        handoff.handing_over();
        assert!(!handoff.committer_free(), "busy with the group handed over");
        groups_tx.send(1).unwrap();
        // Its next wait wakes the intake again (it asked above).
        wait_for(|| wakes.load(SeqCst) == 2);
        handoff.handing_over();
        groups_tx.send(2).unwrap();
        drop(groups_tx);
        assert_eq!(committer.join().unwrap(), Some((1, Some(2), None)));
    }

    #[test]
    fn a_group_already_in_the_channel_is_taken_without_calling_the_committer_free() {
        let (handoff, wakes) = counting();
        let (groups_tx, groups_rx) = std::sync::mpsc::sync_channel::<u64>(1);
        // A full group went over while the committer wrote the one before, and the intake,
        // holding the next one, asked to be woken.
        assert!(!handoff.committer_free());
        groups_tx.send(7).unwrap();
        assert_eq!(handoff.next(&groups_rx), Some(7));
        assert_eq!(wakes.load(SeqCst), 0, "taken without waiting: nobody to wake yet");
        assert!(!handoff.committer_free(), "writing group 7: the next group must wait for it");
        // Even when the flag was left set by a wait before.
        let (handoff, _) = counting();
        let (groups_tx, groups_rx) = std::sync::mpsc::sync_channel::<u64>(1);
        let waiting = {
            let handoff = handoff.clone();
            std::thread::spawn(move || {
                let first = handoff.next(&groups_rx);
                (first, handoff.committer_free())
            })
        };
        wait_for(|| handoff.committer_free());
        groups_tx.send(8).unwrap(); // sent without `handing_over`: the flag stays set until taken
        assert_eq!(waiting.join().unwrap(), (Some(8), false));
    }

    fn wait_for(condition: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(std::time::Instant::now() < deadline, "condition not met within 10 s");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The two threads race through many hand-overs: the intake waits only for wake-ups (no
    /// `RECHECK`), so a lost one fails the test after 10 s.
    #[test]
    fn no_wake_up_is_lost_between_the_two_threads() {
        const GROUPS: u64 = 20_000;
        let (woken_tx, woken_rx) = std::sync::mpsc::channel::<()>();
        let woken_tx = std::sync::Mutex::new(woken_tx);
        let handoff = Arc::new(Handoff::new(Box::new(move || {
            let _ = woken_tx.lock().unwrap().send(());
        })));
        let (groups_tx, groups_rx) = std::sync::mpsc::sync_channel::<u64>(1);
        let committer = {
            let handoff = handoff.clone();
            std::thread::spawn(move || {
                while let Some(n) = handoff.next(&groups_rx) {
                    if n + 1 == GROUPS {
                        return;
                    }
                }
            })
        };
        for n in 0..GROUPS {
            while !handoff.committer_free() {
                woken_rx.recv_timeout(Duration::from_secs(10)).expect("woken when the committer waits");
            }
            handoff.handing_over();
            groups_tx.send(n).unwrap();
        }
        committer.join().unwrap();
    }
}
