//! Close status codes (RFC 6455 section 7.4 and the IANA "WebSocket Close
//! Code Number" registry).
//!
//! A close code is a plain `u16` on the wire, so [`CloseCode`] is a newtype
//! rather than an enum: applications may use any code in `4000..=4999`, and a
//! received code must survive a round trip even when herald has no name for
//! it. What matters is whether a code may appear on the wire at all, which
//! [`CloseCode::is_allowed_on_wire`] answers.

use std::fmt;

use super::utf8::Utf8Bytes;

/// A WebSocket close status code.
///
/// # Examples
///
/// ```
/// use herald::wire::CloseCode;
///
/// assert_eq!(CloseCode::PROTOCOL_ERROR.as_u16(), 1002);
/// assert!(CloseCode::from(4001).is_allowed_on_wire());
/// assert!(!CloseCode::NO_STATUS.is_allowed_on_wire());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CloseCode(u16);

impl CloseCode {
    /// 1000: the purpose of the connection has been fulfilled.
    pub const NORMAL: Self = Self(1000);
    /// 1001: the server is going down, or a browser left the page.
    pub const GOING_AWAY: Self = Self(1001);
    /// 1002: the peer broke the protocol.
    pub const PROTOCOL_ERROR: Self = Self(1002);
    /// 1003: a message of a type the endpoint cannot accept.
    pub const UNSUPPORTED_DATA: Self = Self(1003);
    /// 1005: no status code was present. Never sent on the wire.
    pub const NO_STATUS: Self = Self(1005);
    /// 1006: the connection dropped without a close frame. Never sent.
    pub const ABNORMAL: Self = Self(1006);
    /// 1007: message data inconsistent with its type (text that is not UTF-8).
    pub const INVALID_PAYLOAD: Self = Self(1007);
    /// 1008: the message violates the endpoint's policy.
    pub const POLICY_VIOLATION: Self = Self(1008);
    /// 1009: a message too big to process.
    pub const MESSAGE_TOO_BIG: Self = Self(1009);
    /// 1010: the client expected an extension the server did not negotiate.
    pub const MANDATORY_EXTENSION: Self = Self(1010);
    /// 1011: the server met an unexpected condition.
    pub const INTERNAL_ERROR: Self = Self(1011);
    /// 1012: the service is restarting; clients should reconnect.
    pub const SERVICE_RESTART: Self = Self(1012);
    /// 1013: try again later (overload, or a slow consumer cut off).
    pub const TRY_AGAIN_LATER: Self = Self(1013);
    /// 1014: a gateway got an invalid response upstream.
    pub const BAD_GATEWAY: Self = Self(1014);
    /// 1015: the TLS handshake failed. Never sent.
    pub const TLS_HANDSHAKE: Self = Self(1015);

    /// The numeric value.
    #[inline]
    pub const fn as_u16(self) -> u16 {
        self.0
    }

    /// Whether an endpoint may put this code in a close frame.
    ///
    /// Allowed: 1000-1003 and 1007-1014 (RFC 6455 section 7.4.1 plus the
    /// IANA registrations 1012-1014), and 3000-4999 (libraries, frameworks
    /// and applications). Everything else is either reserved for future use
    /// (0-999, 1004, 1016-2999, 5000 and up) or a status that only describes
    /// a local condition and must never be sent (1005, 1006, 1015).
    ///
    /// # Examples
    ///
    /// ```
    /// use herald::wire::CloseCode;
    ///
    /// assert!(CloseCode::NORMAL.is_allowed_on_wire());
    /// assert!(CloseCode::TRY_AGAIN_LATER.is_allowed_on_wire());
    /// assert!(!CloseCode::from(1004).is_allowed_on_wire());
    /// assert!(!CloseCode::from(2999).is_allowed_on_wire());
    /// ```
    #[inline]
    pub const fn is_allowed_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

impl From<u16> for CloseCode {
    #[inline]
    fn from(code: u16) -> Self {
        Self(code)
    }
}

impl From<CloseCode> for u16 {
    #[inline]
    fn from(code: CloseCode) -> Self {
        code.0
    }
}

impl fmt::Debug for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CloseCode({})", self.0)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// The body of a close frame that carried a status code.
///
/// A close frame with an empty body decodes as [`Message::Close(None)`]; one
/// with a body always has a code that [`CloseCode::is_allowed_on_wire`] and a
/// reason that is valid UTF-8 (possibly empty).
///
/// [`Message::Close(None)`]: super::Message::Close
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    /// The status code.
    pub code: CloseCode,
    /// The reason, at most 123 bytes of UTF-8.
    pub reason: Utf8Bytes,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_allowed_on_the_wire_follow_rfc_6455_and_iana() {
        let allowed: Vec<u16> = (0..=u16::MAX)
            .filter(|&c| CloseCode::from(c).is_allowed_on_wire())
            .collect();
        let expected: Vec<u16> = (1000..=1003)
            .chain(1007..=1014)
            .chain(3000..=4999)
            .collect();
        assert_eq!(allowed, expected);
    }
}
