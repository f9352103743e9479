//! `Sec-WebSocket-Extensions`: which permessage-deflate offer, if any, a
//! server that compresses without context takeover accepts (RFC 7692
//! section 7.1).
//!
//! The client lists offers in order of preference; the first acceptable
//! one wins. An offer is declined, never broken, when it has a parameter
//! that RFC 7692 does not define, a parameter twice, a value where none is
//! allowed or a bad one, or `server_max_window_bits` below 15: herald
//! compresses with a 32 KiB window, and a smaller one would need a
//! compressor per window size. `client_max_window_bits` is fine at any
//! value (the inflater takes any window). The answer always carries
//! `server_no_context_takeover` and `client_no_context_takeover`, which a
//! server may add (7.1.1): every message stands alone both ways.

use super::Request;

/// The answer to an accepted offer, without `server_max_window_bits`.
const ACCEPTED: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The answer to an accepted offer that named `server_max_window_bits=15`,
/// which the answer must then repeat (7.1.2.1).
const ACCEPTED_WITH_WINDOW: &str = "permessage-deflate; server_no_context_takeover; \
                                    client_no_context_takeover; server_max_window_bits=15";

/// The `Sec-WebSocket-Extensions` value answering the request's first
/// acceptable permessage-deflate offer, if it made one.
pub(crate) fn negotiate_deflate(request: &Request) -> Option<&'static str> {
    request
        .header_tokens("sec-websocket-extensions")
        .find_map(accept_offer)
}

/// One offer (`permessage-deflate; param; param=value`): its answer, if
/// acceptable.
fn accept_offer(offer: &str) -> Option<&'static str> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut seen = [false; 4];
    let mut server_window = false;
    for part in parts {
        let (name, value) = match part.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (part, None),
        };
        let index = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" if value.is_none() => 0,
            "client_no_context_takeover" if value.is_none() => 1,
            "server_max_window_bits" if value.is_some_and(|bits| window_bits(bits) == Some(15)) => {
                server_window = true;
                2
            }
            "client_max_window_bits" if value.is_none_or(|bits| window_bits(bits).is_some()) => 3,
            _ => return None,
        };
        if std::mem::replace(&mut seen[index], true) {
            return None;
        }
    }
    Some(if server_window {
        ACCEPTED_WITH_WINDOW
    } else {
        ACCEPTED
    })
}

/// A window size's bits, 8 to 15, written as digits only.
fn window_bits(value: &str) -> Option<u8> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) || value.len() > 2 {
        return None;
    }
    value.parse().ok().filter(|bits| (8..=15).contains(bits))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(extensions: &[&str]) -> Option<&'static str> {
        let mut head = String::from(
            "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        );
        for value in extensions {
            head.push_str(&format!("Sec-WebSocket-Extensions: {value}\r\n"));
        }
        head.push_str("\r\n");
        negotiate_deflate(&Request::parse_for_test(&head))
    }

    #[test]
    fn what_browsers_and_node_offer_is_accepted_without_context_takeover() {
        // Chrome, Firefox, Node's ws.
        assert_eq!(
            answer(&["permessage-deflate; client_max_window_bits"]),
            Some(ACCEPTED)
        );
        assert_eq!(answer(&["permessage-deflate"]), Some(ACCEPTED));
        assert_eq!(
            answer(&["permessage-deflate; server_no_context_takeover; client_no_context_takeover"]),
            Some(ACCEPTED)
        );
        assert_eq!(
            answer(&["permessage-deflate; client_max_window_bits=10"]),
            Some(ACCEPTED)
        );
        assert_eq!(
            answer(&["permessage-deflate; server_max_window_bits=15"]),
            Some(ACCEPTED_WITH_WINDOW)
        );
        assert_eq!(
            answer(&["permessage-deflate; server_max_window_bits=\"15\""]),
            Some(ACCEPTED_WITH_WINDOW)
        );
        assert_eq!(answer(&[]), None);
        assert_eq!(answer(&["x-webkit-deflate-frame"]), None);
    }

    #[test]
    fn offers_herald_cannot_honour_are_declined_and_the_next_one_taken() {
        for declined in [
            "permessage-deflate; server_max_window_bits=10",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; client_max_window_bits=16",
            "permessage-deflate; client_max_window_bits=+9",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; mystery",
        ] {
            assert_eq!(answer(&[declined]), None, "{declined}");
        }
        // Offers in order of preference, in one header or several.
        assert_eq!(
            answer(&["permessage-deflate; server_max_window_bits=10, permessage-deflate"]),
            Some(ACCEPTED)
        );
        assert_eq!(
            answer(&[
                "permessage-deflate; server_max_window_bits=9",
                "permessage-deflate; client_max_window_bits"
            ]),
            Some(ACCEPTED)
        );
    }
}
