//! A receiving thread of a fan-out run: its share of the subscribers,
//! counting what arrives until the run ends.

use std::{
    io,
    time::{Duration, Instant},
};

use herald_bench::{
    client::{Scratch, drive_paced},
    tracker::ThreadStats,
};

use super::shared::FanoutShared;

/// A receiving thread: its share of the subscribers, until the run ends.
pub(super) fn fanout_receiver(shared: &FanoutShared<'_>, share: usize) -> io::Result<ThreadStats> {
    let (mut poll, mut clients) = shared.connect(share, false)?;
    let mut stats = ThreadStats::new()?;
    let mut failure = None;
    let deadline = Instant::now() + shared.plan.duration;
    let mut scratch = Scratch::new();
    drive_paced(&mut poll, deadline, Duration::from_millis(5), |wake| {
        match wake {
            Some(token) => {
                if let Err(err) = shared.receive(&mut clients[token.0], &mut stats, &mut scratch) {
                    failure = Some(err);
                }
            }
            None if shared.tracker.has_failed() => return false,
            None => {}
        }
        failure.is_none()
    })?;
    if let Some(err) = failure {
        shared.tracker.fail();
        return Err(err);
    }
    shared.drain(&mut poll, &mut clients, &mut stats, &mut scratch, false)?;
    Ok(stats)
}
