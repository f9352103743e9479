//! Rate limits, pure: token buckets for connections per source address,
//! for connections overall, and for each connection's messages.
//!
//! A bucket holds up to `burst` tokens and gains `per_second` of them a
//! second; an event takes one, or is refused with the time until one is
//! there. Time comes in as milliseconds from the caller (the reactor reads
//! the clock), so the limits are tested on virtual time.
//!
//! Each loop keeps its own buckets and enforces its share of a rate (the
//! rate divided by the loops): connections are spread over the loops by
//! the kernel, so the shares add up to the configured rate without any
//! state shared between threads. The per-address map forgets an address as
//! soon as its bucket would be full again, so it holds only the addresses
//! that connected within the last refill period.

use std::{net::IpAddr, time::Duration};

use ahash::AHashMap;

/// A rate: `per_second` events, in bursts of up to `burst`.
///
/// # Examples
///
/// ```
/// use herald::RateLimit;
///
/// let limit = RateLimit::new(100, 20);
/// assert_eq!((limit.per_second(), limit.burst()), (100, 20));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    per_second: u32,
    burst: u32,
}

impl RateLimit {
    /// `per_second` events a second, `burst` at once (both at least 1).
    pub const fn new(per_second: u32, burst: u32) -> Self {
        Self {
            per_second: if per_second == 0 { 1 } else { per_second },
            burst: if burst == 0 { 1 } else { burst },
        }
    }

    /// Events a second.
    pub const fn per_second(&self) -> u32 {
        self.per_second
    }

    /// Events at once.
    pub const fn burst(&self) -> u32 {
        self.burst
    }

    /// This limit shared by `loops` loops: each gets its part of the rate
    /// and of the burst (at least one of each).
    pub(crate) fn share(self, loops: usize) -> Self {
        let loops = u32::try_from(loops.max(1)).unwrap_or(u32::MAX);
        Self::new(self.per_second.div_ceil(loops), self.burst.div_ceil(loops))
    }
}

/// One token bucket.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    tokens: f32,
    updated_ms: u64,
}

impl Bucket {
    /// A full bucket.
    pub(crate) fn full(limit: RateLimit, now_ms: u64) -> Self {
        Self {
            tokens: limit.burst as f32,
            updated_ms: now_ms,
        }
    }

    fn refill(&mut self, limit: RateLimit, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.updated_ms) as f32 / 1000.0;
        self.tokens = (self.tokens + elapsed * limit.per_second as f32).min(limit.burst as f32);
        self.updated_ms = now_ms;
    }

    /// Takes a token, or says how long until there is one.
    pub(crate) fn take(&mut self, limit: RateLimit, now_ms: u64) -> Result<(), Duration> {
        self.refill(limit, now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let missing = 1.0 - self.tokens;
        Err(Duration::from_secs_f32(missing / limit.per_second as f32))
    }

    /// Whether it would be full again by `now_ms` (then it can be forgotten).
    fn is_refilled(&self, limit: RateLimit, now_ms: u64) -> bool {
        let mut bucket = *self;
        bucket.refill(limit, now_ms);
        bucket.tokens >= limit.burst as f32
    }
}

/// A bucket in a loop's 100 ms ticks, 8 bytes: what every connection
/// carries for its message rate. Refused events count too, as debt: a
/// client that keeps sending past the rate runs up a burst's worth of debt
/// and is then told to stop.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TickBucket {
    /// Tokens used (0: full), so that a new connection's zeroed bucket is
    /// full; past the burst, the debt of refused events.
    used: f32,
    tick: u32,
}

/// What a [`TickBucket`] says of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Metered {
    /// Within the rate.
    Taken,
    /// Past the rate: refused.
    Refused,
    /// Past the rate by more than a burst's worth, kept up: stop it.
    Exceeded,
}

impl TickBucket {
    /// Takes a token at `tick` (of 100 ms), or refuses.
    pub(crate) fn take(&mut self, limit: RateLimit, tick: u32) -> Metered {
        let elapsed = tick.saturating_sub(self.tick) as f32 / 10.0;
        self.used = (self.used - elapsed * limit.per_second as f32).max(0.0);
        self.tick = tick;
        let burst = limit.burst as f32;
        self.used = (self.used + 1.0).min(3.0 * burst);
        if self.used <= burst {
            Metered::Taken
        } else if self.used <= 2.0 * burst {
            Metered::Refused
        } else {
            Metered::Exceeded
        }
    }
}

/// Why a connection was not admitted, and when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// This source address connects too fast (429).
    Address(Duration),
    /// The server as a whole is taking connections too fast (503).
    Overall(Duration),
}

impl From<Refusal> for crate::handshake::HandshakeError {
    fn from(refusal: Refusal) -> Self {
        // Whole seconds, rounded up, at least one (`Retry-After` takes an
        // integer).
        let seconds =
            |wait: Duration| wait.as_secs_f64().ceil().clamp(1.0, f64::from(u32::MAX)) as u32;
        match refusal {
            Refusal::Address(wait) => Self::RateLimited {
                retry_after: seconds(wait),
            },
            Refusal::Overall(wait) => Self::Busy {
                retry_after: seconds(wait),
            },
        }
    }
}

/// The key an address is limited under: itself for IPv4, its /64 for IPv6.
fn network_of(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
    }
}

/// One loop's connection rate limits.
#[derive(Debug)]
pub(crate) struct Admission {
    per_address: Option<RateLimit>,
    overall: Option<(RateLimit, Bucket)>,
    addresses: AHashMap<IpAddr, Bucket>,
    /// Past this many addresses, the map is swept of refilled buckets...
    sweep_at: usize,
    /// ...and at this time in any case.
    next_sweep_ms: u64,
}

/// The smallest size at which the address map is swept.
const SWEEP_AT_LEAST: usize = 1024;
/// How often the address map is swept whatever its size.
const SWEEP_EVERY_MS: u64 = 1000;

impl Admission {
    /// This loop's share (of `loops`) of the configured limits.
    pub(crate) fn new(
        per_address: Option<RateLimit>,
        overall: Option<RateLimit>,
        loops: usize,
        now_ms: u64,
    ) -> Self {
        Self {
            per_address: per_address.map(|limit| limit.share(loops)),
            overall: overall.map(|limit| {
                let share = limit.share(loops);
                (share, Bucket::full(share, now_ms))
            }),
            addresses: AHashMap::default(),
            sweep_at: SWEEP_AT_LEAST,
            next_sweep_ms: now_ms + SWEEP_EVERY_MS,
        }
    }

    /// Whether a connection from `address` may be taken now. The address's
    /// limit is checked first, so that an address refused for its own rate
    /// does not use up a token of the overall rate. IPv6 addresses count
    /// per /64 (one customer's network), so that rotating the low bits does
    /// not escape the limit.
    pub(crate) fn admit(&mut self, address: IpAddr, now_ms: u64) -> Result<(), Refusal> {
        if let Some(limit) = self.per_address {
            self.sweep(limit, now_ms);
            let bucket = self
                .addresses
                .entry(network_of(address))
                .or_insert_with(|| Bucket::full(limit, now_ms));
            bucket.take(limit, now_ms).map_err(Refusal::Address)?;
        }
        if let Some((limit, bucket)) = &mut self.overall {
            bucket.take(*limit, now_ms).map_err(Refusal::Overall)?;
        }
        Ok(())
    }

    /// Forgets the addresses whose buckets have refilled, when the map has
    /// doubled since the last sweep, or a second has passed.
    fn sweep(&mut self, limit: RateLimit, now_ms: u64) {
        if self.addresses.len() < self.sweep_at && now_ms < self.next_sweep_ms {
            return;
        }
        self.next_sweep_ms = now_ms + SWEEP_EVERY_MS;
        self.addresses
            .retain(|_, bucket| !bucket.is_refilled(limit, now_ms));
        self.addresses.shrink_to_fit();
        self.sweep_at = (self.addresses.len() * 2).max(SWEEP_AT_LEAST);
    }

    /// Addresses remembered now.
    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.addresses.len()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(n))
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let limit = RateLimit::new(10, 3);
        let mut bucket = Bucket::full(limit, 0);
        for _ in 0..3 {
            assert_eq!(bucket.take(limit, 0), Ok(()));
        }
        let wait = bucket.take(limit, 0).unwrap_err();
        assert!((99..=101).contains(&wait.as_millis()), "{wait:?}");
        assert_eq!(
            bucket.take(limit, 100),
            Ok(()),
            "one token a tenth of a second"
        );
        assert!(bucket.take(limit, 150).is_err());
        // A long pause refills to the burst, not beyond.
        for _ in 0..3 {
            assert_eq!(bucket.take(limit, 60_000), Ok(()));
        }
        assert!(bucket.take(limit, 60_000).is_err());
    }

    #[test]
    fn each_address_has_its_own_limit_and_the_server_one_more() {
        let mut admission = Admission::new(
            Some(RateLimit::new(1, 2)),
            Some(RateLimit::new(100, 4)),
            1,
            0,
        );
        assert_eq!(admission.admit(ip(1), 0), Ok(()));
        assert_eq!(admission.admit(ip(1), 0), Ok(()));
        assert!(matches!(
            admission.admit(ip(1), 0),
            Err(Refusal::Address(_))
        ));
        // Another address is still welcome, until the overall burst is used.
        assert_eq!(admission.admit(ip(2), 0), Ok(()));
        assert_eq!(admission.admit(ip(3), 0), Ok(()));
        assert!(matches!(
            admission.admit(ip(4), 0),
            Err(Refusal::Overall(_))
        ));
        assert_eq!(admission.admit(ip(4), 10), Ok(()));
    }

    #[test]
    fn a_tick_bucket_starts_full_refills_per_tick_and_stops_a_persistent_sender() {
        let limit = RateLimit::new(10, 5);
        let mut bucket = TickBucket::default();
        assert!((0..5).all(|_| bucket.take(limit, 7) == Metered::Taken));
        assert_eq!(bucket.take(limit, 7), Metered::Refused);
        // A tick brings one token at 10/s: the debt shrinks by one.
        assert_eq!(bucket.take(limit, 8), Metered::Refused);
        assert_eq!(bucket.take(limit, 10), Metered::Taken);
        // Sending on past the rate: refused, then, a burst's worth later,
        // exceeded.
        let mut outcomes = Vec::new();
        for _ in 0..7 {
            outcomes.push(bucket.take(limit, 10));
        }
        assert_eq!(outcomes[..5], [Metered::Refused; 5]);
        assert_eq!(outcomes[5..], [Metered::Exceeded; 2]);
        // Quiet for long enough, it is welcome again.
        assert_eq!(bucket.take(limit, 100), Metered::Taken);
    }

    #[test]
    fn ipv6_addresses_count_per_64() {
        let mut admission = Admission::new(Some(RateLimit::new(1, 1)), None, 1, 0);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2::ffff".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(admission.admit(a, 0), Ok(()));
        assert!(admission.admit(b, 0).is_err(), "the same /64");
        assert_eq!(admission.admit(other, 0), Ok(()));
    }

    #[test]
    fn limits_are_shared_by_the_loops() {
        assert_eq!(RateLimit::new(1000, 100).share(4), RateLimit::new(250, 25));
        assert_eq!(RateLimit::new(3, 1).share(4), RateLimit::new(1, 1));
    }

    #[test]
    fn the_address_map_forgets_addresses_that_went_quiet() {
        let mut admission = Admission::new(Some(RateLimit::new(10, 1)), None, 1, 0);
        for n in 0..5_000 {
            let _ = admission.admit(ip(n), 0);
        }
        assert_eq!(admission.remembered(), 5_000);
        // A second later every bucket has refilled: the next admit sweeps.
        let _ = admission.admit(ip(9_999_999), 1_000);
        assert_eq!(admission.remembered(), 1);
    }
}
