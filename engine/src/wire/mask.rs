//! Payload masking (RFC 6455 section 5.3).
//!
//! Every client frame is XORed with a four-byte key. Unmasking touches every
//! payload byte the server receives, so it runs a word at a time over
//! 32-byte blocks (which the compiler turns into vector instructions) in safe
//! code: `chunks_exact_mut` plus `u64::from_ne_bytes` needs no alignment and
//! no `unsafe`. [`apply_mask_scalar`] is the byte-at-a-time reference that
//! the tests compare it against for every length and key phase.

/// XORs `buf` with `key`, as the payload bytes starting at payload position
/// `offset`.
///
/// `offset` lets a payload be unmasked piecewise as it arrives: byte `i` of
/// `buf` is XORed with `key[(offset + i) % 4]`. Applying the same mask twice
/// restores the input, so this both masks and unmasks.
///
/// # Examples
///
/// ```
/// use herald::wire::apply_mask;
///
/// let key = [1, 2, 3, 4];
/// let mut data = *b"hello world";
/// apply_mask(&mut data, key, 0);
/// // Unmask in two pieces: the second starts at payload offset 5.
/// let (a, b) = data.split_at_mut(5);
/// apply_mask(a, key, 0);
/// apply_mask(b, key, 5);
/// assert_eq!(&data, b"hello world");
/// ```
#[inline]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let key = rotate_key(key, offset);
    if buf.len() < 8 {
        return apply_mask_scalar(buf, key, 0);
    }
    let word = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut blocks = buf.chunks_exact_mut(32);
    for block in &mut blocks {
        for lane in block.chunks_exact_mut(8) {
            xor_word(lane, word);
        }
    }
    // Every block was a multiple of 4 bytes, so the key phase is unchanged.
    let mut lanes = blocks.into_remainder().chunks_exact_mut(8);
    for lane in &mut lanes {
        xor_word(lane, word);
    }
    apply_mask_scalar(lanes.into_remainder(), key, 0);
}

/// The byte-at-a-time reference for [`apply_mask`]: same contract, kept for
/// tests and for very short inputs.
///
/// # Examples
///
/// ```
/// use herald::wire::{apply_mask, apply_mask_scalar};
///
/// let mut fast = [7u8; 37];
/// let mut slow = fast;
/// apply_mask(&mut fast, [9, 8, 7, 6], 3);
/// apply_mask_scalar(&mut slow, [9, 8, 7, 6], 3);
/// assert_eq!(fast, slow);
/// ```
#[inline]
pub fn apply_mask_scalar(buf: &mut [u8], key: [u8; 4], offset: usize) {
    for (i, byte) in buf.iter_mut().enumerate() {
        *byte ^= key[(offset + i) & 3];
    }
}

/// The key as seen from payload position `offset`.
#[inline]
fn rotate_key(key: [u8; 4], offset: usize) -> [u8; 4] {
    [
        key[offset & 3],
        key[(offset + 1) & 3],
        key[(offset + 2) & 3],
        key[(offset + 3) & 3],
    ]
}

#[inline(always)]
fn xor_word(lane: &mut [u8], word: u64) {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(lane);
    lane.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ word).to_ne_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_at_a_time_unmasking_matches_the_scalar_reference() {
        let key = [0x12, 0x34, 0x56, 0x78];
        let source: Vec<u8> = (0..300u32).map(|i| (i * 31 + 7) as u8).collect();
        // Every length, every starting alignment of the slice, every key phase.
        for start in 0..8 {
            for len in 0..(source.len() - start) {
                for offset in 0..4 {
                    let mut fast = source[start..start + len].to_vec();
                    let mut slow = fast.clone();
                    apply_mask(&mut fast, key, offset);
                    apply_mask_scalar(&mut slow, key, offset);
                    assert_eq!(fast, slow, "start {start} len {len} offset {offset}");
                }
            }
        }
    }

    #[test]
    fn masking_twice_restores_the_input() {
        let original: Vec<u8> = (0..=255).collect();
        let mut data = original.clone();
        apply_mask(&mut data, [0xde, 0xad, 0xbe, 0xef], 1);
        assert_ne!(data, original);
        apply_mask(&mut data, [0xde, 0xad, 0xbe, 0xef], 1);
        assert_eq!(data, original);
    }
}
