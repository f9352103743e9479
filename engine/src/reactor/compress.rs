//! permessage-deflate on the way out: which frames are compressed, and the
//! compressor each thread keeps for it.
//!
//! A broadcast is compressed once, where it is published (a loop, an API
//! thread, the cluster bus's thread), for the protocols whose subscribers
//! negotiated the extension; a frame for one connection (a reply, a push)
//! is compressed for it alone. Each publishing thread keeps one
//! [`Deflater`] (compressor state is large: built once, reset per
//! message).

use std::cell::RefCell;

use bytes::Bytes;

use crate::{
    broadcast::{Broadcast, compress_frame},
    config::Compression,
    pubsub::TopicRegistry,
    wire::Deflater,
};

thread_local! {
    /// This thread's compressor, and the level it was made for.
    static DEFLATER: RefCell<Option<(u32, Deflater)>> = const { RefCell::new(None) };
}

/// Runs `compress` with this thread's compressor at `level`.
fn with_deflater<R>(level: u32, compress: impl FnOnce(&mut Deflater) -> R) -> R {
    DEFLATER.with_borrow_mut(|slot| {
        let deflater = match slot {
            Some((made_for, deflater)) if *made_for == level => deflater,
            _ => &mut slot.insert((level, Deflater::new(level))).1,
        };
        compress(deflater)
    })
}

/// Compresses `broadcast` for the subscribers of its topic that take it
/// compressed, if compression is on.
pub(crate) fn compress_broadcast(
    broadcast: &mut Broadcast,
    registry: &TopicRegistry,
    compression: Option<Compression>,
) {
    let Some(compression) = compression else {
        return;
    };
    let Some(entry) = registry.lookup(broadcast.topic()) else {
        return;
    };
    with_deflater(compression.get_level(), |deflater| {
        broadcast.compress(&entry, deflater, compression.get_min_size());
    });
}

/// `frame` as a connection that negotiated permessage-deflate (`deflate`)
/// gets it: compressed if compression is on and it is large enough.
pub(crate) fn for_connection(
    frame: Bytes,
    deflate: bool,
    compression: Option<Compression>,
) -> Bytes {
    let Some(compression) = compression.filter(|_| deflate) else {
        return frame;
    };
    let min_size = compression.get_min_size();
    if frame.len() < min_size {
        return frame;
    }
    with_deflater(compression.get_level(), |deflater| {
        compress_frame(&frame, deflater, min_size)
    })
    .unwrap_or(frame)
}
