//! Answers groups in the order the committer settled them: a durable group's replies and
//! notices to the broker, other nodes' requests at once; a refused group `disk_full` (and
//! `unavailable` to other nodes). It runs beside the committer, so that one group's
//! answers go out while the next group is written.
//!
//! It never sees a group before its commit returned (or was refused): the committer hands
//! them over only then, which keeps the durability rule in `committer`.

use super::disk;
use crate::core::Effects;
use crate::error::NodeError;
use bridge::Answer;
use broker::link::{ReplyLink, ReplyTarget};
use std::sync::mpsc::Receiver;

/// Groups settled and not yet answered: the answerer publishes one while the committer
/// writes the next; a committer ahead of that waits.
pub const GROUPS_TO_ANSWER: usize = 2;

/// Where the answer to one input goes once its group is durable.
pub enum ReplyTo {
    Device(ReplyTarget),
    /// Another node's request: the reply, or `read`, an answer computed at intake.
    Peer {
        answer: tokio::sync::oneshot::Sender<Answer>,
        read: Option<Answer>,
    },
}

/// A group the committer settled, with where each answer goes.
pub enum Settled {
    /// Its commit returned: every reply and notice may leave.
    Durable(Vec<(Option<ReplyTo>, Effects)>),
    /// The disk refused it (or a write before it): made by books ahead of the file, none of
    /// its replies or notices leaves.
    Refused(Vec<(Option<ReplyTo>, Effects)>),
}

pub struct Answerer {
    replies: ReplyLink,
}

impl Answerer {
    pub fn new(replies: ReplyLink) -> Answerer {
        Answerer { replies }
    }

    /// Answers settled groups in order. Returns when the committer hangs up, or with the
    /// error of a broker link that is gone.
    pub fn run(mut self, settled: Receiver<Settled>) -> Result<(), NodeError> {
        for group in settled {
            match group {
                Settled::Durable(outcomes) => self.answer(outcomes)?,
                Settled::Refused(outcomes) => self.refuse(outcomes)?,
            }
        }
        Ok(())
    }

    /// Answers a group that was not written: devices `disk_full`, other nodes `unavailable`.
    fn refuse(&mut self, outcomes: Vec<(Option<ReplyTo>, Effects)>) -> Result<(), NodeError> {
        for (target, effects) in outcomes {
            match target {
                Some(ReplyTo::Device(target)) => {
                    let id = effects.reply.as_ref().and_then(|r| r.id.as_deref());
                    self.replies.publish(&target, disk::refusal(id).to_json())?;
                }
                Some(ReplyTo::Peer { answer, .. }) => {
                    let _ = answer.send(Err(disk::peer_refusal()));
                }
                None => {}
            }
        }
        Ok(())
    }

    /// Answers a durable group: other nodes' requests at once, devices' replies and notices
    /// handed to the broker together, in order (one wake of its router for the group).
    fn answer(&mut self, outcomes: Vec<(Option<ReplyTo>, Effects)>) -> Result<(), NodeError> {
        let mut messages = Vec::with_capacity(outcomes.len());
        for (target, effects) in outcomes {
            match (target, &effects.reply) {
                (Some(ReplyTo::Device(target)), Some(reply)) => messages.push((target, reply.to_json())),
                (Some(ReplyTo::Peer { answer, read }), reply) => {
                    let value = read.unwrap_or_else(|| Ok(serde_json::to_value(reply).expect("reply serializes")));
                    // The asker may have given up (timeout); it asks again.
                    let _ = answer.send(value);
                }
                _ => {}
            }
            for notice in &effects.notices {
                messages.push((ReplyTarget::device(&notice.device), notice.to_json()));
            }
        }
        self.replies.publish_all(messages)?;
        Ok(())
    }
}
