//! A join of a topic with history: subscribe, read what the client
//! missed, reply, then deliver the missed publications before any live
//! one (see [`history`](crate::channels::history) for the contract).
//!
//! Between the subscription and the store's answer, the client's live
//! broadcasts of the topic are held; after it, those the history already
//! had (offset at or below the read's top) are dropped, until the first
//! newer one: then the subscription goes back to taking shared frames
//! without a callback.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;

use super::{ChannelConn, ChannelsHandler, resubscribe};
use crate::{
    broadcast::Broadcast,
    channels::{
        LeaveReason, Reply,
        context::JoinInfo,
        engine::Call,
        history::{
            History, NotRecovered, Publication, Recovery, RecoveryAnswer, RecoveryRead,
            RecoveryReply, StreamPosition, reply_with_history,
        },
        stats::count,
    },
    protocol::{
        WireProtocol,
        phoenix::{OwnedRef, Ref, Status},
    },
    pubsub::TopicEntry,
    reactor::Conn,
};

/// How long a join waits for a store that answers later; then it is
/// answered `recovered: false` ("unavailable") and goes on live.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(5);

/// The most live broadcasts held for one recovering join; past it the
/// join is refused (the client joins again) rather than lose one.
const MAX_HELD: usize = 4096;

/// The refusal of a join whose held broadcasts overflowed.
const HELD_OVERFLOW: &str = "too many publications during recovery; join again";

/// A joined topic whose history read is under way or just answered.
#[derive(Debug)]
pub(crate) struct Recovering {
    topic: Arc<str>,
    id: u64,
    /// Until the store answers: the reply the client is owed.
    owed: Option<OwedReply>,
    /// Live broadcasts received before the answer.
    held: Vec<Broadcast>,
    overflowed: bool,
    /// After the answer: the epoch and top offset the read saw.
    epoch: Option<Arc<str>>,
    top: u64,
    /// A gap the loop saw before the answer: publications up to this
    /// place never came.
    gap: Option<(Arc<str>, u64)>,
}

#[derive(Debug)]
struct OwedReply {
    join: JoinInfo,
    msg_ref: Option<OwnedRef>,
    response: Reply,
    /// Whether the client asked to recover.
    asked: bool,
    /// What the join callback pushed, and whether it asked for
    /// `presence_state`: sent after the reply, when it goes.
    pushes: Vec<Bytes>,
    presence_state: bool,
}

/// How a live broadcast to a recovering subscription goes.
pub(super) enum Held {
    /// Kept until the answer, or dropped as already recovered.
    Taken,
    /// To the client, now.
    Deliver,
}

impl ChannelsHandler {
    /// The history rule of an accepted join, if it recovers (Phoenix only:
    /// Amber has no replies to carry a position).
    pub(super) fn history_rule(&self, join: &JoinInfo) -> Option<History> {
        (join.protocol == WireProtocol::PhoenixV2)
            .then(|| self.history.rule_for(&join.topic))
            .flatten()
    }

    /// Subscribes an accepted join of a topic with history and reads what
    /// it missed; replies when the store answers.
    pub(super) fn start_recovery(
        &self,
        conn: &mut Conn<'_, ChannelConn>,
        join: JoinInfo,
        msg_ref: Option<Ref<'_>>,
        response: Reply,
        rule: History,
        since: Option<StreamPosition>,
    ) {
        let asked = since.is_some();
        if asked {
            count(&self.counters.recoveries);
        }
        let topic = Arc::clone(&join.topic);
        let state = conn.state();
        state.next_join_id += 1;
        let id = state.next_join_id;
        // This join's own follow-ups wait with its reply: other joins may
        // be answered first.
        let pushes = std::mem::take(&mut state.after_join);
        let presence_state = std::mem::take(&mut state.presence_state_after_join);
        state.recovering.retain(|entry| entry.topic != topic);
        state.recovering.push(Recovering {
            topic: Arc::clone(&topic),
            id,
            owed: Some(OwedReply {
                join,
                msg_ref: msg_ref.and_then(OwnedRef::keep),
                response,
                asked,
                pushes,
                presence_state,
            }),
            held: Vec::new(),
            overflowed: false,
            epoch: None,
            top: 0,
            gap: None,
        });
        // Subscribed before the read: nothing published after it is missed.
        resubscribe(conn, &topic);
        let read = RecoveryRead {
            topic: Arc::clone(&topic),
            rule,
            since,
            reply: RecoveryReply::new(conn.handle(), Arc::clone(&topic), id),
        };
        let answered = Arc::clone(&read.reply.answered);
        match self.history.store.backend.recover(read) {
            Some(recovery) => self.finish_recovery(conn, &topic, id, recovery),
            None => {
                // Unless the store answers first (a stuck bus thread).
                let deadline = RecoveryAnswer {
                    topic,
                    id,
                    recovery: Mutex::new(Some(Recovery::unavailable())),
                };
                let timers = &self.timers;
                timers.answer_after(
                    RECOVERY_DEADLINE,
                    conn.handle(),
                    Arc::new(deadline),
                    answered,
                );
            }
        }
    }

    /// A store's answer that came through the mailbox.
    pub(super) fn recovery_answered(
        &self,
        conn: &mut Conn<'_, ChannelConn>,
        answer: &RecoveryAnswer,
    ) {
        let recovery = answer
            .recovery
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(recovery) = recovery {
            self.finish_recovery(conn, &answer.topic, answer.id, recovery);
        }
    }

    /// Replies to the join, then sends the missed publications and the
    /// live ones held meanwhile.
    fn finish_recovery(
        &self,
        conn: &mut Conn<'_, ChannelConn>,
        topic: &Arc<str>,
        id: u64,
        recovery: Recovery,
    ) {
        let state = conn.state();
        let Some(at) = state
            .recovering
            .iter()
            .position(|entry| entry.topic == *topic && entry.id == id)
        else {
            return; // left, rejoined or closed meanwhile
        };
        let entry = &mut state.recovering[at];
        let Some(owed) = entry.owed.take() else {
            return;
        };
        let held = std::mem::take(&mut entry.held);
        let gap = entry.gap.take();
        if entry.overflowed {
            state.recovering.swap_remove(at);
            return self.refuse_recovering(conn, owed);
        }
        let top = recovery.top.as_ref().map(|top| top.offset);
        entry.top = top.unwrap_or(0);
        entry.epoch = recovery
            .top
            .as_ref()
            .map(|top| Arc::from(top.epoch.as_str()));
        let epoch = entry.epoch.clone();
        if top.is_none() {
            // Nothing to compare live offsets with: all of them go.
            state.recovering.swap_remove(at);
            resubscribe(conn, topic);
        }
        let Recovery {
            top: recovery_top,
            outcome,
        } = recovery;
        // More than half the connection's queue would trip its
        // slow-consumer policy before the client could read it: refused
        // whole, as too many, rather than closed or cut.
        let room = conn.max_queued_bytes() / 2;
        let outcome = outcome.and_then(|publications| {
            let bytes: usize = publications.iter().map(Publication::wire_size).sum();
            if bytes > room {
                Err(NotRecovered::TooMany)
            } else {
                Ok(publications)
            }
        });
        let (publications, failed) = match outcome {
            Ok(publications) => (publications, None),
            Err(reason) => (Vec::new(), Some(reason)),
        };
        if owed.asked {
            self.count_recovery(failed);
        }
        let response = reply_with_history(
            owed.response.as_raw(),
            recovery_top.as_ref(),
            failed.filter(|_| owed.asked),
            owed.asked,
        )
        .map_or(owed.response, |merged| Reply::raw(&merged));
        let msg_ref = owed.msg_ref.as_ref().map(OwnedRef::get);
        Self::phoenix_reply(
            conn,
            owed.join.join_ref(),
            msg_ref,
            topic,
            Status::Ok,
            &response,
        );
        let state = conn.state();
        state.after_join = owed.pushes;
        state.presence_state_after_join = owed.presence_state;
        self.after_join(conn, &owed.join);
        if let Some(epoch) = epoch {
            self.send_recovered(conn, &owed.join, &epoch, publications);
        }
        for broadcast in held {
            if Self::joined(conn, topic).is_none() {
                break; // a gap among them ended the channel: it rejoins
            }
            if let Held::Deliver = self.hold_or_skip(conn, &broadcast) {
                self.deliver_to_client(conn, &owed.join, &broadcast);
            }
        }
        // The loop's place starts from the read, if it had none: a gap
        // right after it is then seen. (Only a place the loop reached
        // itself says that nothing at or below the read can still come.)
        let had_place = conn.stream_place(topic).is_some();
        if let Some(top) = &recovery_top {
            conn.seed_stream_place(topic, (Arc::from(top.epoch.as_str()), top.offset));
        }
        let covered = |(epoch, last): &(Arc<str>, u64)| {
            recovery_top
                .as_ref()
                .is_some_and(|top| top.epoch == **epoch && top.offset >= *last)
        };
        if gap.as_ref().is_some_and(|gap| !covered(gap)) && Self::joined(conn, topic).is_some() {
            self.resync(conn, topic);
            return;
        }
        if had_place {
            self.end_if_caught_up(conn, topic);
        }
    }

    /// The missed publications, as broadcasts to this client: through
    /// its channel's `handle_out` if it intercepts their event, as live
    /// ones do.
    fn send_recovered(
        &self,
        conn: &mut Conn<'_, ChannelConn>,
        join: &JoinInfo,
        epoch: &Arc<str>,
        publications: Vec<Publication>,
    ) {
        let phoenix_only = TopicEntry::with_protocol(WireProtocol::PhoenixV2);
        for publication in publications {
            let position = (Arc::clone(epoch), publication.offset);
            let broadcast = Broadcast::channel_at(
                &join.topic,
                &publication.event,
                publication.payload,
                &phoenix_only,
                position,
            );
            self.deliver_to_client(conn, join, &broadcast);
        }
    }

    /// A join refused because its held broadcasts overflowed: the client
    /// gets an error reply (and joins again, recovering), the channel its
    /// `handle_leave`.
    fn refuse_recovering(&self, conn: &mut Conn<'_, ChannelConn>, owed: OwedReply) {
        if owed.asked {
            count(&self.counters.recovery_failed_unavailable);
        }
        let topic = Arc::clone(&owed.join.topic);
        let msg_ref = owed.msg_ref.as_ref().map(OwnedRef::get);
        let refusal = Reply::reason(HELD_OVERFLOW);
        let join_ref = owed.join.join_ref();
        Self::phoenix_reply(conn, join_ref, msg_ref, &topic, Status::Error, &refusal);
        self.run(conn, &owed.join, None, Call::Leave(LeaveReason::Gap));
        conn.state().stopping = false;
        self.forget(conn, &topic);
    }

    fn count_recovery(&self, failed: Option<NotRecovered>) {
        let counters = &self.counters;
        count(match failed {
            None => &counters.recovered,
            Some(NotRecovered::Epoch) => &counters.recovery_failed_epoch,
            Some(NotRecovered::TooMany) => &counters.recovery_failed_too_many,
            Some(NotRecovered::Gone) => &counters.recovery_failed_gone,
            Some(NotRecovered::Unavailable) => &counters.recovery_failed_unavailable,
        });
    }

    /// What becomes of a live broadcast to a subscription of a joined
    /// topic: held while the store has not answered, dropped if the
    /// history had it, delivered otherwise (and the first newer one ends
    /// the recovery).
    pub(super) fn hold_or_skip(
        &self,
        conn: &mut Conn<'_, ChannelConn>,
        broadcast: &Broadcast,
    ) -> Held {
        let state = conn.state();
        let Some(at) = state
            .recovering
            .iter()
            .position(|entry| *entry.topic == *broadcast.topic())
        else {
            return Held::Deliver;
        };
        let entry = &mut state.recovering[at];
        if entry.owed.is_some() {
            if entry.held.len() < MAX_HELD {
                entry.held.push(broadcast.clone());
            } else {
                entry.overflowed = true;
            }
            return Held::Taken;
        }
        let Some(offset) = broadcast.offset() else {
            return Held::Deliver;
        };
        let same_stream = broadcast.epoch() == entry.epoch.as_deref();
        if same_stream && offset < entry.top {
            return Held::Taken; // the history had it
        }
        // The read's last (the history had it too), or newer: live from
        // now on. (Gaps are the loop's to see: this subscription may have
        // been excluded from some broadcasts.)
        let topic = Arc::clone(&entry.topic);
        let top = entry.top;
        state.recovering.swap_remove(at);
        resubscribe(conn, &topic);
        if same_stream && offset == top {
            Held::Taken
        } else {
            Held::Deliver
        }
    }

    /// A gap in `topic`'s stream on this loop (publications up to
    /// `last_missing` of `epoch` never came): a recovering join whose read
    /// covers them is fine; one still waiting for its read decides when
    /// the read comes; any other channel errs, and its client rejoins.
    pub(super) fn stream_gap(
        &self,
        conn: &mut Conn<'_, ChannelConn>,
        topic: &str,
        epoch: &str,
        last_missing: u64,
    ) {
        let state = conn.state();
        if let Some(entry) = state
            .recovering
            .iter_mut()
            .find(|entry| &*entry.topic == topic)
        {
            if entry.owed.is_some() {
                entry.gap = Some((Arc::from(epoch), last_missing));
                return;
            }
            if entry.epoch.as_deref() == Some(epoch) && entry.top >= last_missing {
                return;
            }
        }
        self.resync(conn, topic);
    }

    /// Ends the recovery of `topic` at once if this loop has already
    /// delivered the read's last publication (none at or below it can
    /// come any more): the subscription then takes shared frames again.
    fn end_if_caught_up(&self, conn: &mut Conn<'_, ChannelConn>, topic: &Arc<str>) {
        let place = conn.stream_place(topic);
        let state = conn.state();
        let Some(at) = state
            .recovering
            .iter()
            .position(|entry| entry.topic == *topic)
        else {
            return;
        };
        let entry = &state.recovering[at];
        let caught_up = entry.owed.is_none()
            && place.is_some_and(|(epoch, offset)| {
                Some(&*epoch) == entry.epoch.as_deref() && offset >= entry.top
            });
        if caught_up {
            state.recovering.swap_remove(at);
            resubscribe(conn, topic);
        }
    }
}
/// Whether `topic` is recovering on this connection: its subscription
/// then takes broadcasts as callbacks.
pub(super) fn is_recovering(state: &ChannelConn, topic: &str) -> bool {
    state.recovering.iter().any(|entry| &*entry.topic == topic)
}

/// Forgets a topic's recovery (its channel ended).
pub(super) fn forget_recovery(state: &mut ChannelConn, topic: &str) {
    state.recovering.retain(|entry| &*entry.topic != topic);
}
