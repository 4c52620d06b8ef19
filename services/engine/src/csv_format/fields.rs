//! Writing a row's fields as a few stores each.
//!
//! A wide CSV row of ten sensors is 21 fields. Written through `Vec::push`
//! and `extend_from_slice` with itoa's and ryu's buffers, every fragment is a
//! growth check and most are a `memcpy` call of one to thirteen bytes; a
//! profile of the 10-sensor wide export spent more time there and in libm's
//! `round` than in the digits themselves. [`FieldWriter`] makes room ahead
//! (zero-filled, a few KiB at a time) and writes digits straight into it.

/// Two ASCII digits for each of 0 to 99.
const DIGIT_PAIRS: &[u8; 200] = b"\
0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// Each quality's digits, left-aligned, and their count in the last byte.
const QUALITY_TEXT: [[u8; 4]; 256] = {
    let mut table = [[0u8; 4]; 256];
    let mut q = 0;
    while q < 256 {
        let (h, t, u) = ((q / 100) as u8, (q / 10 % 10) as u8, (q % 10) as u8);
        table[q] = if q >= 100 {
            [b'0' + h, b'0' + t, b'0' + u, 3]
        } else if q >= 10 {
            [b'0' + t, b'0' + u, 0, 2]
        } else {
            [b'0' + u, 0, 0, 1]
        };
        q += 1;
    }
    table
};

/// Bytes the buffer is lengthened by at least, each time it needs room.
const ROOM_STEP: usize = 4096;

/// The most bytes [`FieldWriter::value`] writes (ryu's longest, `-` and 17
/// digits with an exponent, is 24).
pub const MAX_VALUE_BYTES: usize = 25;
/// The most bytes [`FieldWriter::int`] writes (`-9223372036854775808`).
pub const MAX_INT_BYTES: usize = 20;

/// Appends fields to a buffer at a position of its own; the buffer is cut
/// back to what was written when the writer is dropped.
///
/// Callers ask for [`room`](Self::room) before a row (its longest possible
/// size); the field methods then only store bytes.
pub struct FieldWriter<'a> {
    buf: &'a mut Vec<u8>,
    pos: usize,
}

impl<'a> FieldWriter<'a> {
    /// Writes after what `buf` holds.
    pub fn new(buf: &'a mut Vec<u8>) -> Self {
        let pos = buf.len();
        Self { buf, pos }
    }

    /// Makes sure `n` more bytes fit.
    #[inline]
    pub fn room(&mut self, n: usize) {
        if self.buf.len() < self.pos + n {
            self.buf.resize(self.pos + n.max(ROOM_STEP), 0);
        }
    }

    /// Makes sure `n` more bytes fit, lengthening the buffer by no more:
    /// for a writer of one field.
    #[inline]
    pub fn room_exact(&mut self, n: usize) {
        if self.buf.len() < self.pos + n {
            self.buf.resize(self.pos + n, 0);
        }
    }

    #[inline]
    pub fn byte(&mut self, b: u8) {
        self.buf[self.pos] = b;
        self.pos += 1;
    }

    #[inline]
    pub fn bytes(&mut self, bytes: &[u8]) {
        self.buf[self.pos..self.pos + bytes.len()].copy_from_slice(bytes);
        self.pos += bytes.len();
    }

    /// The buffer as written so far, for a writer that needs a `Vec` (the
    /// local-time columns); writing continues after what it appended.
    pub fn with_vec(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        self.buf.truncate(self.pos);
        write(self.buf);
        self.pos = self.buf.len();
    }

    /// An integer's decimal digits, `-` first when negative.
    #[inline]
    pub fn int(&mut self, n: i64) {
        if n < 0 {
            self.byte(b'-');
        }
        self.uint(n.unsigned_abs());
    }

    #[inline]
    pub fn quality(&mut self, q: u8) {
        let text = &QUALITY_TEXT[q as usize];
        self.buf[self.pos..self.pos + 3].copy_from_slice(&text[..3]);
        self.pos += text[3] as usize;
    }

    /// A value as ryu's shortest round-trip decimal, `NaN`, `inf` or `-inf`,
    /// with `mark` as the decimal mark; exact decimals of up to six places
    /// take [`short_decimal`](Self::short_decimal).
    #[inline(always)]
    pub fn value(&mut self, value: f64, mark: u8, floats: &mut ryu::Buffer) {
        if self.short_decimal(value, mark) {
            return;
        }
        let text = floats.format(value).as_bytes();
        let start = self.pos;
        self.bytes(text);
        if mark != b'.' {
            for b in &mut self.buf[start..self.pos] {
                if *b == b'.' {
                    *b = mark;
                }
            }
        }
    }

    /// Writes `value` if it is an exact decimal of at most six places between
    /// 1e-5 and 1e9 in magnitude (what most sensors send: `21.5`, `0.125`,
    /// `1013.25`), byte for byte as ryu would, without its general
    /// algorithm; returns false, writing nothing, for every other value.
    ///
    /// Why it is the same text: `n / 1e6` with `|n| < 1e15` has at most 15
    /// significant digits, and two decimals of at most 15 digits are never
    /// within one rounding interval of an f64 (2^-53 relative), so when that
    /// decimal parses to `value` (checked: the division is correctly
    /// rounded, like a parse, since `n` and `1e6` are exact) it is the unique
    /// shortest one, which is what ryu prints; in this magnitude range ryu
    /// prints it positionally (`0.00001`, `21.0`), never with an exponent.
    #[inline(always)]
    pub fn short_decimal(&mut self, value: f64, mark: u8) -> bool {
        const SCALE: f64 = 1e6;
        let magnitude = value.abs();
        if !(1e-5..1e9).contains(&magnitude) {
            return false;
        }
        // Rounded to the nearest by adding a half: a libm `round` call and a
        // branch on the fraction cost more than this path's digits, and a
        // sum that rounds the wrong way only fails the exact check below.
        // In i64, which converts to and from f64 in one instruction.
        // SAFETY: `magnitude * SCALE + 0.5` is finite, non-negative and
        // below 1e15 (the range check above), so it fits an i64; the
        // unchecked conversion skips `as`'s saturation and NaN handling.
        let n: i64 = unsafe { (magnitude * SCALE + 0.5).to_int_unchecked() };
        if n as f64 / SCALE != magnitude {
            return false;
        }
        let n = n as u64;
        if value.is_sign_negative() {
            self.byte(b'-');
        }
        self.uint(n / 1_000_000);
        self.byte(mark);
        let fraction = (n % 1_000_000) as usize;
        if fraction == 0 {
            self.byte(b'0');
            return true;
        }
        let pairs = [fraction / 10_000, fraction / 100 % 100, fraction % 100];
        for (i, pair) in pairs.into_iter().enumerate() {
            self.buf[self.pos + 2 * i..self.pos + 2 * i + 2]
                .copy_from_slice(&DIGIT_PAIRS[2 * pair..2 * pair + 2]);
        }
        // Six digits written; the trailing zeros are not kept.
        let mut places = 6;
        let mut rest = fraction;
        while rest.is_multiple_of(10) {
            rest /= 10;
            places -= 1;
        }
        self.pos += places;
        true
    }

    /// `n`'s decimal digits.
    #[inline]
    pub fn uint(&mut self, n: u64) {
        if n < 100 {
            self.below_100(n as usize);
        } else {
            self.uint_from_100(n);
        }
    }

    /// One or two digits: most values' whole part.
    #[inline(always)]
    fn below_100(&mut self, n: usize) {
        if n < 10 {
            self.buf[self.pos] = b'0' + n as u8;
            self.pos += 1;
        } else {
            self.buf[self.pos..self.pos + 2].copy_from_slice(&DIGIT_PAIRS[2 * n..2 * n + 2]);
            self.pos += 2;
        }
    }

    /// Three digits or more, eight at a time from the right: the eight are
    /// four independent pairs, not a chain of divisions by 100 (a
    /// timestamp's 13 digits were a chain of six).
    fn uint_from_100(&mut self, mut n: u64) {
        let len = n.ilog10() as usize + 1;
        let digits = &mut self.buf[self.pos..self.pos + len];
        let mut end = len;
        while n >= 100_000_000 {
            let eight = (n % 100_000_000) as u32;
            n /= 100_000_000;
            let (high, low) = ((eight / 10_000) as usize, (eight % 10_000) as usize);
            let pairs = [high / 100, high % 100, low / 100, low % 100];
            for (i, pair) in pairs.into_iter().enumerate() {
                digits[end - 8 + 2 * i..end - 6 + 2 * i]
                    .copy_from_slice(&DIGIT_PAIRS[2 * pair..2 * pair + 2]);
            }
            end -= 8;
        }
        let mut n = n as u32;
        while n >= 100 {
            let pair = (n % 100) as usize;
            n /= 100;
            digits[end - 2..end].copy_from_slice(&DIGIT_PAIRS[2 * pair..2 * pair + 2]);
            end -= 2;
        }
        if n >= 10 {
            let pair = n as usize;
            digits[end - 2..end].copy_from_slice(&DIGIT_PAIRS[2 * pair..2 * pair + 2]);
        } else {
            digits[0] = b'0' + n as u8;
        }
        self.pos += len;
    }
}

impl Drop for FieldWriter<'_> {
    fn drop(&mut self) {
        self.buf.truncate(self.pos);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(write: impl FnOnce(&mut FieldWriter)) -> String {
        let mut out = b"x".to_vec();
        {
            let mut fields = FieldWriter::new(&mut out);
            fields.room(64);
            write(&mut fields);
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn integers_and_qualities_are_itoas_digits() {
        let mut ints = itoa::Buffer::new();
        for n in [
            0,
            1,
            9,
            10,
            99,
            100,
            101,
            1_767_225_600_000,
            -1,
            -10,
            i64::MAX,
            i64::MIN,
            999_999_999_999,
            1_000_000_000_000,
        ] {
            assert_eq!(written(|f| f.int(n)), format!("x{}", ints.format(n)));
        }
        for q in 0..=255u8 {
            assert_eq!(written(|f| f.quality(q)), format!("x{q}"));
        }
    }

    #[test]
    fn room_is_made_and_only_what_was_written_stays() {
        let mut out = Vec::new();
        {
            let mut fields = FieldWriter::new(&mut out);
            for i in 0..10_000 {
                fields.room(MAX_INT_BYTES + 1);
                fields.int(i);
                fields.byte(b'\n');
            }
            fields.with_vec(|v| v.extend_from_slice(b"end"));
            fields.room(1);
            fields.byte(b'!');
        }
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("0\n1\n2\n"));
        assert!(text.ends_with("9999\nend!"));
    }
}
