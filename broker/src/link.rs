//! The node's local links into the embedded broker: reading device commands, publishing
//! replies (MQTT 3.1.1 or 5 with correlation data), and waking the reader. rumqttd's link
//! details (notifications, cursors, raw v5 packets) stay in this file.

use crate::{device_of, random_hex, reply_topic, Broker, COMMAND_FILTER};
use bytes::Bytes;
use rumqttd::local::{LinkError, LinkRx, LinkTx};
use rumqttd::protocol::{Packet, Publish, PublishProperties};
use rumqttd::Notification;
use std::fmt;
use std::time::Instant;

/// Topic on which the node's own waker publishes to get the reader out of its wait when a
/// request from another node arrives. Carries no data; a device publishing here only wakes
/// the reader.
pub const WAKE_TOPIC: &str = "ledger/v1/wake";

/// The broker link is gone (the broker stopped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkClosed(pub String);

impl fmt::Display for LinkClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "broker link closed: {}", self.0)
    }
}

impl std::error::Error for LinkClosed {}

impl From<LinkError> for LinkClosed {
    fn from(e: LinkError) -> LinkClosed {
        LinkClosed(e.to_string())
    }
}

/// Where a reply goes: the device's reply topic, or a v5 response topic with its correlation.
#[derive(Debug, Clone)]
pub struct ReplyTarget {
    topic: String,
    correlation: Option<Bytes>,
    v5: bool,
}

impl ReplyTarget {
    /// The device's own reply topic, MQTT 3.1.1 style (notices go here).
    pub fn device(device: &str) -> ReplyTarget {
        ReplyTarget { topic: reply_topic(device), correlation: None, v5: false }
    }
}

/// A publish on a device's command topic.
#[derive(Debug)]
pub struct DeviceCommand {
    pub device: String,
    pub payload: Bytes,
    pub reply_to: ReplyTarget,
}

/// What one wait on the command link brought.
#[derive(Debug)]
pub enum Inbound {
    /// Nothing arrived before the deadline.
    Timeout,
    /// The link was woken (a wake-up, or the router scheduling it again): nothing to read.
    Woken,
    Command(DeviceCommand),
    /// A publish on a command topic that names no valid device id; dropped.
    InvalidTopic(String),
}

/// Reads device commands from the broker.
pub struct CommandReader {
    rx: LinkRx,
    last_cursor: Option<(u64, u64)>,
    lost: u64,
}

impl CommandReader {
    /// Waits until `deadline` for the next notification.
    pub fn recv(&mut self, deadline: Instant) -> Result<Inbound, LinkClosed> {
        let notification = match self.rx.recv_deadline(deadline) {
            Ok(Some(n)) => n,
            Ok(None) => return Ok(Inbound::Woken),
            Err(LinkError::RecvTimeout(flume::RecvTimeoutError::Timeout)) => return Ok(Inbound::Timeout),
            Err(e) => return Err(e.into()),
        };
        match notification {
            Notification::Forward(forward) => {
                let topic = String::from_utf8_lossy(&forward.publish.topic).into_owned();
                // Wake-ups come from their own log, with cursors of their own.
                if topic == WAKE_TOPIC {
                    return Ok(Inbound::Woken);
                }
                self.watch_cursor(forward.cursor);
                let Some(device) = device_of(&topic) else { return Ok(Inbound::InvalidTopic(topic)) };
                let (response_topic, correlation) = match forward.properties {
                    Some(p) => (p.response_topic, p.correlation_data),
                    None => (None, None),
                };
                // A response topic must lie under the device's own reply topic (SPEC §5), where
                // no other device may subscribe, and hold no wildcards; otherwise the reply
                // goes to the device's reply topic.
                let response_topic = response_topic.filter(|t| usable_response_topic(device, t));
                let v5 = response_topic.is_some() || correlation.is_some();
                let reply_to = ReplyTarget { topic: response_topic.unwrap_or_else(|| reply_topic(device)), correlation, v5 };
                Ok(Inbound::Command(DeviceCommand { device: device.to_string(), payload: forward.publish.payload, reply_to }))
            }
            // The router paused us because our buffer filled; we have drained it.
            Notification::Unschedule => {
                self.rx.ready()?;
                Ok(Inbound::Woken)
            }
            _ => Ok(Inbound::Woken),
        }
    }

    /// Commands the broker dropped before they were read, since the last call.
    pub fn take_lost(&mut self) -> u64 {
        std::mem::take(&mut self.lost)
    }

    /// rumqttd drops the oldest segment when a reader lags; a jump in the cursor is the
    /// only sign. Those commands got a PUBACK but never reached us: their devices resend.
    /// The cursor's second part is an absolute offset, continuous across segments.
    fn watch_cursor(&mut self, cursor: Option<(u64, u64)>) {
        let Some(cursor) = cursor else { return };
        if let Some(last) = self.last_cursor {
            if cursor.1 > last.1 + 1 {
                self.lost += cursor.1 - last.1 - 1;
            }
        }
        self.last_cursor = Some(cursor);
    }
}

/// Publishes replies and notices.
pub struct ReplyLink {
    tx: LinkTx,
}

impl ReplyLink {
    /// Publishes each `(target, payload)` in order, handing them to the broker together: one
    /// lock and one wake of its router for the lot (a group's replies and notices).
    pub fn publish_all(&mut self, replies: Vec<(ReplyTarget, Vec<u8>)>) -> Result<(), LinkClosed> {
        let packets = replies.into_iter().map(|(target, payload)| {
            let publish = Publish::new(Bytes::from(target.topic), Bytes::from(payload), false);
            // MQTT 5 targets carry the device's correlation data back; 3.1.1 has none.
            let properties = target.v5.then(|| PublishProperties { correlation_data: target.correlation, ..Default::default() });
            Packet::Publish(publish, properties)
        });
        self.tx.send_all(packets)?;
        Ok(())
    }

    pub fn publish(&mut self, target: &ReplyTarget, payload: Vec<u8>) -> Result<(), LinkClosed> {
        if !target.v5 {
            self.tx.publish(target.topic.clone(), payload)?;
            return Ok(());
        }
        let properties = PublishProperties { correlation_data: target.correlation.clone(), ..Default::default() };
        let packet = Packet::Publish(Publish::new(Bytes::from(target.topic.clone()), Bytes::from(payload), false), Some(properties));
        // `LinkTx::send` is async only in name: it queues and signals without waiting.
        poll_once(self.tx.send(packet))?;
        Ok(())
    }
}

/// The node's command link: subscribed to every device's command topic and to the wake
/// topic. A device connecting with the link's client id would take over the link (rumqttd
/// replaces a connection on a duplicate id) and stop the node: the id is unguessable.
pub fn command_link(broker: &mut Broker) -> Result<(CommandReader, ReplyLink), LinkClosed> {
    let (mut tx, rx) = broker.link(&format!("edgeledger-node-{}", random_hex(16)))?;
    tx.subscribe(COMMAND_FILTER)?;
    tx.subscribe(WAKE_TOPIC)?;
    Ok((CommandReader { rx, last_cursor: None, lost: 0 }, ReplyLink { tx }))
}

/// Wakes the command reader out of its wait (after a request from another node was queued).
pub struct Waker {
    tx: std::sync::Mutex<LinkTx>,
    /// Kept so that the broker sees the link open; nothing is read from it.
    _rx: LinkRx,
}

impl Waker {
    pub fn new(broker: &mut Broker) -> Result<Waker, LinkClosed> {
        let (tx, rx) = broker.link(&format!("edgeledger-waker-{}", random_hex(16)))?;
        Ok(Waker { tx: std::sync::Mutex::new(tx), _rx: rx })
    }

    pub fn wake(&self) {
        if let Err(e) = self.tx.lock().expect("waker lock").try_publish(WAKE_TOPIC, Vec::new()) {
            tracing::debug!("wake: {e}");
        }
    }
}

fn usable_response_topic(device: &str, topic: &str) -> bool {
    crate::device_topics(device, rumqttd::TopicAccess::Subscribe, topic) && !topic.contains(['+', '#'])
}

fn poll_once<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(out) => out,
        std::task::Poll::Pending => unreachable!("LinkTx::send has no await point"),
    }
}
