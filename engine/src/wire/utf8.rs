//! Incremental UTF-8 validation and validated text buffers.
//!
//! RFC 6455 section 8.1 makes an endpoint fail the connection (1007) on text
//! that is not UTF-8, and good endpoints fail *fast*: as soon as the bytes
//! received so far cannot be the prefix of any valid UTF-8 string, without
//! waiting for the rest of the frame or message. [`Utf8Validator`] does that
//! over arbitrary chunks: code points split across TCP reads or across
//! fragments carry over in at most three pending bytes.
//!
//! The bulk of the work is the standard library's validator (word-at-a-time
//! over ASCII runs); this module only stitches chunk boundaries together.

use std::{fmt, ops::Deref, str};

use bytes::Bytes;

/// The bytes received so far are not a prefix of any valid UTF-8 string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidUtf8;

/// Validates UTF-8 delivered in arbitrary chunks.
///
/// # Examples
///
/// ```
/// use herald::wire::Utf8Validator;
///
/// let euro = "€".as_bytes(); // three bytes
/// let mut v = Utf8Validator::new();
/// v.feed(&euro[..1]).unwrap();
/// v.feed(&euro[1..]).unwrap();
/// assert!(v.finish().is_ok());
///
/// // 0xC0 can never start a valid sequence: rejected at once.
/// assert!(Utf8Validator::new().feed(&[b'a', 0xC0]).is_err());
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Utf8Validator {
    /// The bytes of a code point whose tail has not arrived yet.
    pending: [u8; 4],
    /// How many bytes of `pending` are in use (0..=3).
    pending_len: u8,
}

impl Utf8Validator {
    /// A validator at the start of a string.
    #[inline]
    pub const fn new() -> Self {
        Self {
            pending: [0; 4],
            pending_len: 0,
        }
    }

    /// Validates the next chunk.
    ///
    /// Fails as soon as the input so far cannot be completed into valid
    /// UTF-8. After an error the validator's state is unspecified; start a
    /// new one.
    #[inline]
    pub fn feed(&mut self, mut chunk: &[u8]) -> Result<(), InvalidUtf8> {
        if self.pending_len == 0 && chunk.is_ascii() {
            // Most channel traffic is ASCII JSON: `is_ascii` checks a word
            // at a time with less set-up than the full validator.
            return Ok(());
        }
        if self.pending_len != 0 {
            chunk = self.complete_pending(chunk)?;
            if self.pending_len != 0 {
                // The chunk ended inside the pending code point.
                return Ok(());
            }
        }
        match str::from_utf8(chunk) {
            Ok(_) => Ok(()),
            Err(err) if err.error_len().is_some() => Err(InvalidUtf8),
            Err(err) => {
                // An incomplete but so far valid sequence at the end: at most
                // three bytes, since a complete four-byte one would have been
                // accepted or rejected.
                let tail = &chunk[err.valid_up_to()..];
                self.pending[..tail.len()].copy_from_slice(tail);
                self.pending_len = tail.len() as u8;
                Ok(())
            }
        }
    }

    /// Declares the end of the string: fails if it stopped inside a code
    /// point.
    #[inline]
    pub fn finish(&self) -> Result<(), InvalidUtf8> {
        if self.pending_len == 0 {
            Ok(())
        } else {
            Err(InvalidUtf8)
        }
    }

    /// Adds bytes from `chunk` to the pending code point until it is whole,
    /// and returns what is left of `chunk`.
    fn complete_pending<'a>(&mut self, chunk: &'a [u8]) -> Result<&'a [u8], InvalidUtf8> {
        let have = usize::from(self.pending_len);
        let width = sequence_width(self.pending[0]);
        let take = (width - have).min(chunk.len());
        let mut sequence = self.pending;
        sequence[have..have + take].copy_from_slice(&chunk[..take]);
        match str::from_utf8(&sequence[..have + take]) {
            Ok(_) => {
                self.pending_len = 0;
                Ok(&chunk[take..])
            }
            Err(err) if err.error_len().is_some() => Err(InvalidUtf8),
            Err(_) => {
                self.pending = sequence;
                self.pending_len = (have + take) as u8;
                Ok(&chunk[take..])
            }
        }
    }
}

/// The length of the sequence that a valid leading byte starts. Only called
/// on bytes that `str::from_utf8` left pending, which are valid lead bytes of
/// two- to four-byte sequences.
#[inline]
fn sequence_width(lead: u8) -> usize {
    match lead {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

/// A [`Bytes`] that holds valid UTF-8: a text message's payload, shared
/// without copying and readable as `&str`.
///
/// # Examples
///
/// ```
/// use herald::wire::Utf8Bytes;
///
/// let text = Utf8Bytes::from_static("hello");
/// assert_eq!(text.as_str(), "hello");
/// assert_eq!(&*text, "hello");
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Utf8Bytes(Bytes);

impl Utf8Bytes {
    /// Wraps a static string.
    #[inline]
    pub const fn from_static(text: &'static str) -> Self {
        Self(Bytes::from_static(text.as_bytes()))
    }

    /// Wraps bytes after checking that they are UTF-8.
    ///
    /// # Examples
    ///
    /// ```
    /// use bytes::Bytes;
    /// use herald::wire::Utf8Bytes;
    ///
    /// assert!(Utf8Bytes::try_from_bytes(Bytes::from_static(b"ok")).is_ok());
    /// assert!(Utf8Bytes::try_from_bytes(Bytes::from_static(b"\xff")).is_err());
    /// ```
    pub fn try_from_bytes(bytes: Bytes) -> Result<Self, InvalidUtf8> {
        match str::from_utf8(&bytes) {
            Ok(_) => Ok(Self(bytes)),
            Err(_) => Err(InvalidUtf8),
        }
    }

    /// Wraps bytes that the caller has already validated.
    ///
    /// # Safety
    ///
    /// `bytes` must be valid UTF-8.
    #[inline]
    pub(crate) unsafe fn from_bytes_unchecked(bytes: Bytes) -> Self {
        debug_assert!(str::from_utf8(&bytes).is_ok());
        Self(bytes)
    }

    /// The text.
    #[inline]
    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor either validated the bytes
        // (`try_from_bytes`), took them from a `&str` or `String`, or is the
        // `unsafe` `from_bytes_unchecked` whose caller guarantees validity;
        // `Bytes` is immutable, so they are still valid here.
        unsafe { str::from_utf8_unchecked(&self.0) }
    }

    /// The underlying bytes, sharing the same buffer.
    #[inline]
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// Borrows the underlying bytes.
    #[inline]
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }
}

impl Deref for Utf8Bytes {
    type Target = str;

    #[inline]
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl From<String> for Utf8Bytes {
    fn from(text: String) -> Self {
        Self(Bytes::from(text))
    }
}

impl From<&'static str> for Utf8Bytes {
    fn from(text: &'static str) -> Self {
        Self::from_static(text)
    }
}

impl fmt::Debug for Utf8Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Utf8Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn validate_in_chunks(bytes: &[u8], cuts: &[usize]) -> Result<(), InvalidUtf8> {
        let mut v = Utf8Validator::new();
        let mut start = 0;
        for &cut in cuts {
            let cut = cut.clamp(start, bytes.len());
            v.feed(&bytes[start..cut])?;
            start = cut;
        }
        v.feed(&bytes[start..])?;
        v.finish()
    }

    #[test]
    fn code_points_split_across_chunks_are_accepted() {
        let text = "aé€😀z";
        let bytes = text.as_bytes();
        for a in 0..=bytes.len() {
            for b in a..=bytes.len() {
                assert_eq!(validate_in_chunks(bytes, &[a, b]), Ok(()), "cuts {a} {b}");
            }
        }
    }

    #[test]
    fn text_ending_inside_a_code_point_is_invalid() {
        let mut v = Utf8Validator::new();
        v.feed(&"€".as_bytes()[..2]).unwrap();
        assert_eq!(v.finish(), Err(InvalidUtf8));
    }

    #[test]
    fn invalid_prefix_fails_before_the_rest_arrives() {
        // 0xF4 0x90 starts a code point above U+10FFFF: no continuation can
        // save it, so the second byte alone must be rejected.
        let mut v = Utf8Validator::new();
        v.feed(&[0xF4]).unwrap();
        assert_eq!(v.feed(&[0x90]), Err(InvalidUtf8));
        // Surrogates (ED A0..) and overlong forms (E0 80..) likewise.
        assert_eq!(Utf8Validator::new().feed(&[0xED, 0xA0]), Err(InvalidUtf8));
        assert_eq!(Utf8Validator::new().feed(&[0xE0, 0x80]), Err(InvalidUtf8));
        assert_eq!(Utf8Validator::new().feed(&[0xC1]), Err(InvalidUtf8));
    }

    proptest! {
        /// The incremental validator agrees with `str::from_utf8` on the
        /// whole input, for every chunking.
        #[test]
        fn chunked_validation_matches_whole_string_validation(
            bytes in prop_oneof![
                any::<String>().prop_map(String::into_bytes),
                proptest::collection::vec(any::<u8>(), 0..64),
            ],
            mut cuts in proptest::collection::vec(0usize..80, 0..6),
        ) {
            cuts.sort_unstable();
            let expected = str::from_utf8(&bytes).map(|_| ()).map_err(|_| InvalidUtf8);
            prop_assert_eq!(validate_in_chunks(&bytes, &cuts), expected);
        }

        /// Fail-fast: a prefix is rejected exactly when no extension of it
        /// can be valid, which std reports as an error with a length.
        #[test]
        fn prefixes_are_rejected_exactly_when_unrecoverable(
            bytes in proptest::collection::vec(any::<u8>(), 0..32),
        ) {
            let mut v = Utf8Validator::new();
            for (i, byte) in bytes.iter().enumerate() {
                let unrecoverable = matches!(
                    str::from_utf8(&bytes[..=i]),
                    Err(e) if e.error_len().is_some()
                );
                prop_assert_eq!(v.feed(std::slice::from_ref(byte)).is_err(), unrecoverable);
                if unrecoverable {
                    break;
                }
            }
        }
    }
}
