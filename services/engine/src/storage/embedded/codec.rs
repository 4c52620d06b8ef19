//! The compressed block: up to [`MAX_BLOCK_POINTS`] points of one sensor in
//! time order, each column encoded on its own.
//!
//! Layout (little endian):
//!
//! ```text
//! version u8 | count u32 | first_ts i64 | last_ts i64 | min f64 | max f64
//! timestamps: mode u8, then
//!     REGULAR: delta varint            (every step the same: 0 bytes a point)
//!     DELTA_OF_DELTA: first delta, then count-2 delta-of-delta, zigzag varints
//!     PACKED_STEPS: smallest step varint, width u8, count-1 bit-packed
//!                   `step - smallest` (jittery or irregular steps)
//! values: mode u8, then
//!     DECIMAL: scale u8, first int zigzag varint, width u8, count-1 bit-packed
//!              zigzag deltas of `value * 10^scale` (values that are exact
//!              decimals, as most sensors quantise: ~1 byte a point)
//!     DECIMAL_PATCHED: DECIMAL, then exceptions varint and per exception
//!              (position delta varint, bits u64): the few values that are
//!              not decimals (-0.0, NaN, an odd reading) cost 9 bytes each
//!              instead of pushing the whole block to XOR
//!     XOR: first bits u64, then per value a control byte (trailing zero bytes
//!          << 4 | significant bytes) and the significant bytes of
//!          `bits ^ previous bits` (Gorilla's idea, byte-aligned for speed)
//! qualities: runs varint, then (quality u8, run length varint) per run
//! versions: mode u8, then
//!     CONSTANT: version varint         (an import, a run of direct writes)
//!     DELTA: first varint, then count-1 zigzag varint deltas
//! ```
//!
//! The header (version 2) ends with `versions_at u32`, the offset of the
//! versions column: scans never need it, merges (a late point, a replayed
//! message) read it without decoding the values. Blocks of version 1 have no
//! versions column; their points take [`FIRST_DIRECT_VERSION`].
//!
//! Every value round-trips bit-exactly: a value is stored as a decimal only
//! when `(int as f64) / 10^scale`, computed from the stored integer exactly
//! as the decoder does, reproduces its bits. That excludes `-0.0` (its
//! integer is 0), NaN and infinities, which are stored as exceptions with
//! their bits; XOR mode stores bits.

use crate::model::{FIRST_DIRECT_VERSION, PointBatch};

/// Points per block at most (a block is also cut at [`MAX_BLOCK_BYTES`],
/// which full-precision data reaches at about 4,500 points). Big enough that
/// per-block overhead vanishes and a scan is a few hundred sequential reads
/// per million points; small enough that rewriting a block for a late point
/// is cheap.
pub const MAX_BLOCK_POINTS: usize = 8192;

/// Bytes per block at most: redb keeps a block in a leaf page of its own
/// (20 bytes of leaf overhead), in power-of-two multiples of 4 KiB, so a
/// block just over 32 KiB would take 64 KiB. Cut below that, a block fills
/// its page.
pub const MAX_BLOCK_BYTES: usize = 32 * 1024 - 64;

const VERSION: u8 = 2;
const VERSION_1: u8 = 1;
const HEADER_LEN_1: usize = 1 + 4 + 8 * 4;
const HEADER_LEN: usize = HEADER_LEN_1 + 4;

const TS_REGULAR: u8 = 0;
const TS_DELTA_OF_DELTA: u8 = 1;
const TS_PACKED_STEPS: u8 = 2;
const VALUES_DECIMAL: u8 = 0;
const VALUES_XOR: u8 = 1;
const VALUES_DECIMAL_PATCHED: u8 = 2;
const VERSIONS_CONSTANT: u8 = 0;
const VERSIONS_DELTA: u8 = 1;

/// Largest decimal scale tried (10^-6). Beyond it XOR is as good.
const MAX_DECIMAL_SCALE: u8 = 6;
/// Decimal integers must stay exactly representable as f64.
const MAX_DECIMAL_INT: f64 = 9_007_199_254_740_992.0; // 2^53

const POWERS_OF_TEN: [f64; 7] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6];

/// The summary at the front of every block, readable without decoding it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockHeader {
    pub count: u32,
    pub first_ts: i64,
    pub last_ts: i64,
    /// Smallest non-NaN value (NaN when every value is NaN).
    pub min: f64,
    /// Largest non-NaN value (NaN when every value is NaN).
    pub max: f64,
    /// Where the columns start, and where the versions column starts
    /// (`None` in a version 1 block, which has none).
    columns_at: usize,
    versions_at: Option<usize>,
}

/// Why a block could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt block: {0}")]
pub struct CodecError(&'static str);

/// Encodes the columns of a non-empty, strictly increasing run of at most
/// [`MAX_BLOCK_POINTS`] points, with each point's version.
pub fn encode(timestamps: &[i64], values: &[f64], qualities: &[u8], versions: &[u64]) -> Vec<u8> {
    let n = timestamps.len();
    assert!(
        n > 0
            && n <= MAX_BLOCK_POINTS
            && values.len() == n
            && qualities.len() == n
            && versions.len() == n
    );
    debug_assert!(timestamps.windows(2).all(|w| w[0] < w[1]));
    let mut out = Vec::with_capacity(HEADER_LEN + n * 3);
    let (min, max) = min_max(values);
    out.push(VERSION);
    out.extend_from_slice(&(n as u32).to_le_bytes());
    out.extend_from_slice(&timestamps[0].to_le_bytes());
    out.extend_from_slice(&timestamps[n - 1].to_le_bytes());
    out.extend_from_slice(&min.to_bits().to_le_bytes());
    out.extend_from_slice(&max.to_bits().to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    encode_timestamps(timestamps, &mut out);
    encode_values(values, &mut out);
    encode_qualities(qualities, &mut out);
    let versions_at = out.len() as u32;
    out[HEADER_LEN_1..HEADER_LEN].copy_from_slice(&versions_at.to_le_bytes());
    encode_versions(versions, &mut out);
    out
}

/// Reads the header of an encoded block.
pub fn header(block: &[u8]) -> Result<BlockHeader, CodecError> {
    let header_len = match block.first() {
        Some(&VERSION) => HEADER_LEN,
        Some(&VERSION_1) => HEADER_LEN_1,
        _ => return Err(CodecError("bad header")),
    };
    if block.len() < header_len {
        return Err(CodecError("bad header"));
    }
    let u64_at = |at: usize| u64::from_le_bytes(block[at..at + 8].try_into().unwrap_or([0; 8]));
    let count = u32::from_le_bytes(block[1..5].try_into().unwrap_or([0; 4]));
    if count == 0 || count as usize > MAX_BLOCK_POINTS {
        return Err(CodecError("bad point count"));
    }
    let versions_at = (header_len == HEADER_LEN).then(|| {
        u32::from_le_bytes(block[HEADER_LEN_1..HEADER_LEN].try_into().unwrap_or([0; 4])) as usize
    });
    Ok(BlockHeader {
        count,
        first_ts: u64_at(5) as i64,
        last_ts: u64_at(13) as i64,
        min: f64::from_bits(u64_at(21)),
        max: f64::from_bits(u64_at(29)),
        columns_at: header_len,
        versions_at,
    })
}

/// Decodes a block's versions, appending one per point to `out`.
pub fn decode_versions(block: &[u8], out: &mut Vec<u64>) -> Result<BlockHeader, CodecError> {
    let header = header(block)?;
    let n = header.count as usize;
    let Some(at) = header.versions_at else {
        out.extend(std::iter::repeat_n(FIRST_DIRECT_VERSION, n));
        return Ok(header);
    };
    let mut reader = Reader { bytes: block, at };
    match reader.byte()? {
        VERSIONS_CONSTANT => {
            let version = reader.varint()?;
            out.extend(std::iter::repeat_n(version, n));
        }
        VERSIONS_DELTA => {
            let mut version = reader.varint()?;
            out.push(version);
            for _ in 1..n {
                version = version.wrapping_add(unzigzag(reader.varint()?) as u64);
                out.push(version);
            }
        }
        _ => return Err(CodecError("unknown versions mode")),
    }
    Ok(header)
}

fn encode_versions(versions: &[u64], out: &mut Vec<u8>) {
    let first = versions[0];
    if versions.iter().all(|&v| v == first) {
        out.push(VERSIONS_CONSTANT);
        put_varint(out, first);
        return;
    }
    out.push(VERSIONS_DELTA);
    put_varint(out, first);
    for w in versions.windows(2) {
        put_varint(out, zigzag(w[1].wrapping_sub(w[0]) as i64));
    }
}

/// Decodes a block, appending its points to `out`.
pub fn decode_into(block: &[u8], out: &mut PointBatch) -> Result<BlockHeader, CodecError> {
    let header = header(block)?;
    let n = header.count as usize;
    let mut reader = Reader {
        bytes: block,
        at: header.columns_at,
    };
    let start = out.len();
    out.reserve(n);
    let decoded = decode_timestamps(&mut reader, header.first_ts, n, &mut out.timestamps)
        .and_then(|()| decode_values(&mut reader, n, &mut out.values))
        .and_then(|()| decode_qualities(&mut reader, n, &mut out.qualities))
        .and_then(|()| {
            if out.timestamps.last() != Some(&header.last_ts)
                || out.timestamps.len() - start != n
                || out.values.len() - start != n
                || out.qualities.len() - start != n
            {
                return Err(CodecError("timestamps do not match the header"));
            }
            Ok(())
        });
    if let Err(error) = decoded {
        // Nothing of a bad block stays behind, and the columns stay the
        // same length (a failure midway left some columns longer; found
        // by fuzzing).
        out.truncate(start);
        return Err(error);
    }
    Ok(header)
}

/// Bytes of each part of an encoded block: header, timestamps, values,
/// qualities, versions. For finding where the bytes go.
pub fn column_sizes(block: &[u8]) -> Result<[usize; 5], CodecError> {
    let header = header(block)?;
    let n = header.count as usize;
    let mut reader = Reader {
        bytes: block,
        at: header.columns_at,
    };
    let mut scratch = PointBatch::with_capacity(n);
    let mut ends = [header.columns_at, 0, 0, 0, 0];
    decode_timestamps(&mut reader, header.first_ts, n, &mut scratch.timestamps)?;
    ends[1] = reader.at;
    decode_values(&mut reader, n, &mut scratch.values)?;
    ends[2] = reader.at;
    decode_qualities(&mut reader, n, &mut scratch.qualities)?;
    ends[3] = reader.at;
    ends[4] = block.len();
    Ok([
        ends[0],
        ends[1] - ends[0],
        ends[2] - ends[1],
        ends[3] - ends[2],
        ends[4] - ends[3],
    ])
}

fn min_max(values: &[f64]) -> (f64, f64) {
    let mut min = f64::NAN;
    let mut max = f64::NAN;
    for &v in values {
        // f64::min/max ignore NaN operands, so NaN only survives when all are NaN.
        min = min.min(v);
        max = max.max(v);
    }
    (min, max)
}

fn encode_timestamps(timestamps: &[i64], out: &mut Vec<u8>) {
    let n = timestamps.len();
    if n == 1 {
        out.push(TS_REGULAR);
        put_varint(out, 0);
        return;
    }
    // Deltas are positive and below 2^62 (timestamps are bounded), so i64 is exact.
    let delta = timestamps[1] - timestamps[0];
    if timestamps.windows(2).all(|w| w[1] - w[0] == delta) {
        out.push(TS_REGULAR);
        put_varint(out, delta as u64);
        return;
    }
    // Two encodings of irregular steps; the smaller wins. Delta-of-delta
    // varints suit steps that are mostly regular with rare jumps;
    // bit-packed steps suit jitter and report-by-exception data (steps of
    // 1 to 199 ms pack into 8 bits, where their differences need 9 bits
    // and varints 2 bytes).
    let (mut min_delta, mut max_delta) = (i64::MAX, i64::MIN);
    let mut dod_bytes = varint_len(delta as u64);
    let mut previous_delta = delta;
    for w in timestamps.windows(2) {
        let d = w[1] - w[0];
        min_delta = min_delta.min(d);
        max_delta = max_delta.max(d);
        dod_bytes += varint_len(zigzag(d - previous_delta));
        previous_delta = d;
    }
    dod_bytes -= varint_len(zigzag(0)); // the first step has no difference
    let width = 64 - ((max_delta - min_delta) as u64).leading_zeros();
    let packed_bytes = varint_len(min_delta as u64) + 1 + ((n - 1) * width as usize).div_ceil(8);
    if packed_bytes < dod_bytes {
        out.push(TS_PACKED_STEPS);
        put_varint(out, min_delta as u64);
        out.push(width as u8);
        let mut packer = BitPacker::new(out);
        for w in timestamps.windows(2) {
            packer.put((w[1] - w[0] - min_delta) as u64, width as u8);
        }
        packer.finish();
        return;
    }
    out.push(TS_DELTA_OF_DELTA);
    put_varint(out, delta as u64);
    let mut previous_delta = delta;
    for w in timestamps[1..].windows(2) {
        let delta = w[1] - w[0];
        put_varint(out, zigzag(delta - previous_delta));
        previous_delta = delta;
    }
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn decode_timestamps(
    reader: &mut Reader<'_>,
    first: i64,
    n: usize,
    out: &mut Vec<i64>,
) -> Result<(), CodecError> {
    let mode = reader.byte()?;
    let first_delta = reader.varint()? as i64;
    out.push(first);
    match mode {
        TS_REGULAR => {
            let mut ts = first;
            for _ in 1..n {
                ts = ts.wrapping_add(first_delta);
                out.push(ts);
            }
        }
        TS_DELTA_OF_DELTA => {
            let mut ts = first.wrapping_add(first_delta);
            out.push(ts);
            let mut delta = first_delta;
            for _ in 2..n {
                delta = delta.wrapping_add(unzigzag(reader.varint()?));
                ts = ts.wrapping_add(delta);
                out.push(ts);
            }
            if n < 2 {
                return Err(CodecError("delta-of-delta block with one point"));
            }
        }
        TS_PACKED_STEPS => {
            // `first_delta` is the smallest step here.
            let width = reader.byte()? as u32;
            if width > 63 {
                return Err(CodecError("bad bit width"));
            }
            let packed = reader.take(((n - 1) * width as usize).div_ceil(8))?;
            let mask = if width == 0 {
                0
            } else {
                u64::MAX >> (64 - width)
            };
            let mut ts = first;
            for i in 0..n - 1 {
                let bit = i * width as usize;
                let word = read_u64_padded(packed, bit / 8);
                // A step of up to 63 bits may straddle 9 bytes.
                let spill = if bit % 8 + width as usize > 64 {
                    (*packed.get(bit / 8 + 8).unwrap_or(&0) as u64) << (64 - bit % 8)
                } else {
                    0
                };
                let step = ((word >> (bit % 8)) | spill) & mask;
                ts = ts.wrapping_add(first_delta).wrapping_add(step as i64);
                out.push(ts);
            }
        }
        _ => return Err(CodecError("unknown timestamp mode")),
    }
    Ok(())
}

/// Whether `v` is the exact decimal `round(v * 10^scale) / 10^scale`,
/// computed as `decode_values` rebuilds it: from the integer, so -0.0
/// (whose integer is 0) and NaN never are.
fn is_decimal(v: f64, scale: u8) -> bool {
    let power = POWERS_OF_TEN[scale as usize];
    let int = (v * power).round();
    !int.is_nan()
        && int.abs() < MAX_DECIMAL_INT
        && ((int as i64) as f64 / power).to_bits() == v.to_bits()
}

/// How to store a block's values as decimals: the smallest scale at which
/// all but a few values are exact decimals, and those few (-0.0, NaN, a
/// reading of other precision), to be stored as they are. `None` when more
/// than one value in 16 would be an exception: XOR does better then.
///
/// A value that is an exact decimal at some scale is one at every larger
/// scale too (both are the correctly rounded quotient of the same number),
/// so raising the scale for a later value never spoils an earlier one.
fn decimal_plan(values: &[f64]) -> Option<(u8, Vec<usize>)> {
    let budget = values.len() / 16;
    let mut scale = 0u8;
    let mut exceptions = Vec::new();
    for (i, &v) in values.iter().enumerate() {
        match (scale..=MAX_DECIMAL_SCALE).find(|&s| is_decimal(v, s)) {
            Some(s) => scale = s,
            None => {
                exceptions.push(i);
                if exceptions.len() > budget {
                    return None;
                }
            }
        }
    }
    // A value that was a decimal at a smaller scale may not be one at the
    // final scale: its integer can pass 2^53 there (1e12 and then 1e-6 in
    // one block), and a block so encoded would not decode (found by
    // fuzzing). The exceptions are those at the final scale.
    let exceptions: Vec<usize> = (0..values.len())
        .filter(|&i| !is_decimal(values[i], scale))
        .collect();
    (exceptions.len() <= budget && exceptions.len() < values.len()).then_some((scale, exceptions))
}

fn encode_values(values: &[f64], out: &mut Vec<u8>) {
    match decimal_plan(values) {
        Some((scale, exceptions)) => encode_decimal(values, scale, &exceptions, out),
        None => encode_xor(values, out),
    }
}

/// Decimal values: `round(value * 10^scale)` as bit-packed zigzag deltas.
/// An exception repeats the previous integer (a zero delta costs nothing
/// more than any other), and its bits follow the packed deltas.
fn encode_decimal(values: &[f64], scale: u8, exceptions: &[usize], out: &mut Vec<u8>) {
    let power = POWERS_OF_TEN[scale as usize];
    let mut ints: Vec<i64> = Vec::with_capacity(values.len());
    let mut next_exception = exceptions.iter().peekable();
    let first_regular = values
        .iter()
        .enumerate()
        .find(|(i, _)| !exceptions.contains(i))
        .map_or(0, |(_, v)| (v * power).round() as i64);
    for (i, v) in values.iter().enumerate() {
        if next_exception.peek() == Some(&&i) {
            next_exception.next();
            ints.push(ints.last().copied().unwrap_or(first_regular));
        } else {
            ints.push((v * power).round() as i64);
        }
    }
    let deltas: Vec<u64> = ints.windows(2).map(|w| zigzag(w[1] - w[0])).collect();
    let width = deltas
        .iter()
        .map(|d| 64 - d.leading_zeros())
        .max()
        .unwrap_or(0) as u8;
    out.push(if exceptions.is_empty() {
        VALUES_DECIMAL
    } else {
        VALUES_DECIMAL_PATCHED
    });
    out.push(scale);
    put_varint(out, zigzag(ints[0]));
    out.push(width);
    let mut packer = BitPacker::new(out);
    for d in deltas {
        packer.put(d, width);
    }
    packer.finish();
    if !exceptions.is_empty() {
        put_varint(out, exceptions.len() as u64);
        let mut previous = 0;
        for &i in exceptions {
            put_varint(out, (i - previous) as u64);
            previous = i;
            out.extend_from_slice(&values[i].to_bits().to_le_bytes());
        }
    }
}

fn encode_xor(values: &[f64], out: &mut Vec<u8>) {
    out.push(VALUES_XOR);
    let mut previous = values[0].to_bits();
    out.extend_from_slice(&previous.to_le_bytes());
    for v in &values[1..] {
        let bits = v.to_bits();
        let xor = bits ^ previous;
        previous = bits;
        if xor == 0 {
            out.push(0);
            continue;
        }
        let trailing = xor.trailing_zeros() / 8;
        let significant = 8 - xor.leading_zeros() / 8 - trailing;
        out.push(((trailing as u8) << 4) | significant as u8);
        let shifted = (xor >> (trailing * 8)).to_le_bytes();
        out.extend_from_slice(&shifted[..significant as usize]);
    }
}

fn decode_values(reader: &mut Reader<'_>, n: usize, out: &mut Vec<f64>) -> Result<(), CodecError> {
    match reader.byte()? {
        mode @ (VALUES_DECIMAL | VALUES_DECIMAL_PATCHED) => {
            let start = out.len();
            let scale = reader.byte()?;
            let power = *POWERS_OF_TEN
                .get(scale as usize)
                .ok_or(CodecError("bad decimal scale"))?;
            let mut int = unzigzag(reader.varint()?);
            let width = reader.byte()? as u32;
            if width > 57 {
                return Err(CodecError("bad bit width"));
            }
            out.push(int as f64 / power);
            let bits_needed = (n - 1) * width as usize;
            let packed = reader.take(bits_needed.div_ceil(8))?;
            let mask = if width == 0 {
                0
            } else {
                u64::MAX >> (64 - width)
            };
            for i in 0..n - 1 {
                let bit = i * width as usize;
                let word = read_u64_padded(packed, bit / 8);
                int = int.wrapping_add(unzigzag((word >> (bit % 8)) & mask));
                out.push(int as f64 / power);
            }
            if mode == VALUES_DECIMAL_PATCHED {
                let exceptions = reader.varint()? as usize;
                if exceptions > n {
                    return Err(CodecError("more exceptions than values"));
                }
                let mut at = 0usize;
                for _ in 0..exceptions {
                    at = at.saturating_add(reader.varint()? as usize);
                    let bits = u64::from_le_bytes(
                        reader
                            .take(8)?
                            .try_into()
                            .map_err(|_| CodecError("short value"))?,
                    );
                    // `at` may have saturated: compare before adding, so
                    // hostile deltas cannot overflow the index.
                    if at >= n {
                        return Err(CodecError("an exception outside the block"));
                    }
                    out[start + at] = f64::from_bits(bits);
                }
            }
        }
        VALUES_XOR => {
            let mut bits = u64::from_le_bytes(
                reader
                    .take(8)?
                    .try_into()
                    .map_err(|_| CodecError("short value"))?,
            );
            out.push(f64::from_bits(bits));
            // The hot loop of a full-precision scan: one unaligned 8-byte load
            // and a mask per value instead of a variable-length copy.
            let bytes = reader.bytes;
            let mut at = reader.at;
            for _ in 1..n {
                let control = *bytes.get(at).ok_or(CodecError("truncated"))?;
                at += 1;
                let trailing = (control >> 4) as u32;
                let significant = (control & 0x0f) as u32;
                if significant > 8 || trailing + significant > 8 {
                    return Err(CodecError("bad xor control"));
                }
                if significant > 0 {
                    if at + significant as usize > bytes.len() {
                        return Err(CodecError("truncated"));
                    }
                    let word = read_u64_padded(bytes, at);
                    let mask = u64::MAX >> (64 - significant * 8);
                    bits ^= (word & mask) << (trailing * 8);
                    at += significant as usize;
                }
                out.push(f64::from_bits(bits));
            }
            reader.at = at;
        }
        _ => return Err(CodecError("unknown value mode")),
    }
    Ok(())
}

fn encode_qualities(qualities: &[u8], out: &mut Vec<u8>) {
    let mut runs: Vec<(u8, u64)> = Vec::new();
    for &q in qualities {
        match runs.last_mut() {
            Some((quality, length)) if *quality == q => *length += 1,
            _ => runs.push((q, 1)),
        }
    }
    put_varint(out, runs.len() as u64);
    for (quality, length) in runs {
        out.push(quality);
        put_varint(out, length);
    }
}

fn decode_qualities(
    reader: &mut Reader<'_>,
    n: usize,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    let runs = reader.varint()?;
    let mut total = 0usize;
    for _ in 0..runs {
        let quality = reader.byte()?;
        let length = reader.varint()? as usize;
        total = total.saturating_add(length);
        if total > n {
            return Err(CodecError("quality runs exceed the point count"));
        }
        out.extend(std::iter::repeat_n(quality, length));
    }
    if total != n {
        return Err(CodecError("quality runs do not cover the points"));
    }
    Ok(())
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads 8 bytes at `at`, zero-padded past the end.
fn read_u64_padded(bytes: &[u8], at: usize) -> u64 {
    match bytes.get(at..at + 8) {
        Some(word) => u64::from_le_bytes(word.try_into().unwrap_or([0; 8])),
        None => {
            let mut word = [0u8; 8];
            let tail = bytes.get(at..).unwrap_or(&[]);
            word[..tail.len()].copy_from_slice(tail);
            u64::from_le_bytes(word)
        }
    }
}

/// Packs values of `width` bits, least significant bit first.
struct BitPacker<'a> {
    out: &'a mut Vec<u8>,
    pending: u128,
    pending_bits: u32,
}

impl<'a> BitPacker<'a> {
    fn new(out: &'a mut Vec<u8>) -> Self {
        Self {
            out,
            pending: 0,
            pending_bits: 0,
        }
    }

    fn put(&mut self, value: u64, width: u8) {
        self.pending |= (value as u128) << self.pending_bits;
        self.pending_bits += width as u32;
        while self.pending_bits >= 8 {
            self.out.push(self.pending as u8);
            self.pending >>= 8;
            self.pending_bits -= 8;
        }
    }

    fn finish(self) {
        if self.pending_bits > 0 {
            self.out.push(self.pending as u8);
        }
    }
}

/// A bounds-checked cursor: a corrupt block is an error, never a panic.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, CodecError> {
        let b = *self.bytes.get(self.at).ok_or(CodecError("truncated"))?;
        self.at += 1;
        Ok(b)
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], CodecError> {
        let end = self.at.checked_add(len).ok_or(CodecError("truncated"))?;
        let bytes = self
            .bytes
            .get(self.at..end)
            .ok_or(CodecError("truncated"))?;
        self.at = end;
        Ok(bytes)
    }

    fn varint(&mut self) -> Result<u64, CodecError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            value |= ((b & 0x7f) as u64) << shift;
            if b < 0x80 {
                return Ok(value);
            }
        }
        Err(CodecError("varint too long"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Point;

    fn roundtrip(batch: &PointBatch) -> usize {
        let versions = vec![FIRST_DIRECT_VERSION; batch.len()];
        let block = encode(
            &batch.timestamps,
            &batch.values,
            &batch.qualities,
            &versions,
        );
        let mut decoded = PointBatch::default();
        let header = decode_into(&block, &mut decoded).unwrap();
        let mut decoded_versions = Vec::new();
        decode_versions(&block, &mut decoded_versions).unwrap();
        assert_eq!(decoded_versions, versions);
        assert_eq!(decoded.timestamps, batch.timestamps);
        assert_eq!(decoded.qualities, batch.qualities);
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&decoded.values), bits(&batch.values));
        assert_eq!(header.count as usize, batch.len());
        block.len()
    }

    fn batch_of(values: &[f64], timestamps: impl Fn(usize) -> i64) -> PointBatch {
        values
            .iter()
            .enumerate()
            .map(|(i, &value)| Point {
                timestamp_ms: timestamps(i),
                value,
                quality: if i % 97 == 5 { 0 } else { 192 },
            })
            .collect()
    }

    /// A small deterministic generator (xorshift) so tests need no crate.
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    /// Found by fuzzing: a value decimal at a small scale (1e12 at scale 0)
    /// whose integer passes 2^53 at the scale a later value needs (1e-6,
    /// scale 6) made a block that did not decode ("bad bit width").
    #[test]
    fn a_large_decimal_then_a_fine_one_round_trips() {
        let values = [1e12, 1.5, 0.000001, 9.9e15, 2.0, 3.0];
        let timestamps: Vec<i64> = (0..values.len() as i64).collect();
        let block = encode(&timestamps, &values, &[192; 6], &[1; 6]);
        let mut out = PointBatch::default();
        decode_into(&block, &mut out).unwrap();
        let bits: Vec<u64> = out.values.iter().map(|v| v.to_bits()).collect();
        let expected: Vec<u64> = values.iter().map(|v| v.to_bits()).collect();
        assert_eq!(bits, expected);
    }

    /// Found by fuzzing: a block failing in its values column left its
    /// timestamps appended to the batch, the columns of unequal length.
    #[test]
    fn a_failed_decode_leaves_the_batch_as_it_was() {
        let mut block = encode(&[1, 2, 3], &[1.5, 2.5, 3.5], &[192; 3], &[1; 3]);
        let values_at = HEADER_LEN + 2; // mode, delta
        block[values_at] = 9; // an unknown values mode
        let mut out = PointBatch::default();
        out.timestamps.push(0);
        out.values.push(0.0);
        out.qualities.push(0);
        assert!(decode_into(&block, &mut out).is_err());
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out.timestamps.len(), out.values.len(), out.qualities.len()),
            (1, 1, 1)
        );
    }

    #[test]
    fn awkward_values_round_trip_bit_exactly() {
        let values = [
            -0.0,
            0.0,
            f64::from_bits(1),
            f64::MIN_POSITIVE / 2.0,
            f64::NAN,
            f64::from_bits(0x7ff8_dead_beef_0001),
            -f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MAX,
            f64::MIN,
            0.1,
            1e-300,
        ];
        roundtrip(&batch_of(&values, |i| i as i64 * 1000 - 5000));
    }

    #[test]
    fn negative_zero_among_decimals_keeps_its_sign() {
        // Without a NaN in the block the decimal mode is tried first: -0.0
        // must push it to XOR instead of becoming +0.0.
        for values in [
            &[-0.0, 21.5][..],
            &[21.5, -0.0, 0.0, 1.25][..],
            &[-0.0][..],
            &[0.0, -0.0][..],
        ] {
            roundtrip(&batch_of(values, |i| 1000 * (i as i64 + 1)));
        }
        let block = encode(&[1, 2], &[21.5, 0.0], &[192, 192], &[1, 1]);
        assert_eq!(block[HEADER_LEN + 2], VALUES_DECIMAL, "+0.0 stays decimal");
    }

    #[test]
    fn a_few_odd_values_keep_a_block_decimal() {
        let mut state = 11u64;
        let mut value = 0i64;
        let mut values: Vec<f64> = (0..MAX_BLOCK_POINTS)
            .map(|_| {
                value += (xorshift(&mut state) % 21) as i64 - 10;
                value as f64 / 100.0
            })
            .collect();
        let plain = roundtrip(&batch_of(&values, |i| i as i64 * 1000));
        // A sensor failure (NaN with a payload), a -0.0 from rounding around
        // zero, an infinity, a full-precision reading: still decimal, each
        // costing about 9 bytes.
        values[0] = -0.0;
        values[17] = f64::from_bits(0x7ff8_0000_dead_beef);
        values[18] = f64::NEG_INFINITY;
        values[4000] = 0.1 + 0.2;
        values[MAX_BLOCK_POINTS - 1] = f64::NAN;
        let patched = roundtrip(&batch_of(&values, |i| i as i64 * 1000));
        assert!(patched < plain + 5 * 12, "{plain} -> {patched} bytes");
        // Too many exceptions: XOR, which keeps every bit too.
        for v in values.iter_mut().step_by(8) {
            *v = f64::NAN;
        }
        roundtrip(&batch_of(&values, |i| i as i64 * 1000));
        // Only exceptions.
        roundtrip(&batch_of(&[f64::NAN, -0.0], |i| i as i64));
    }

    #[test]
    fn irregular_steps_pack_into_their_bit_width() {
        let mut state = 3u64;
        let mut ts = 1_767_225_600_000i64;
        let timestamps: Vec<i64> = (0..MAX_BLOCK_POINTS)
            .map(|_| {
                ts += 1 + (xorshift(&mut state) % 199) as i64;
                ts
            })
            .collect();
        let values = vec![1.5; MAX_BLOCK_POINTS];
        let size = roundtrip(&batch_of(&values, |i| timestamps[i]));
        // 8 bits a step, about a byte a point in all.
        assert!(size < MAX_BLOCK_POINTS * 11 / 10, "{size} bytes");
        // Steps as wide as the timestamp range allows, mixed with small ones.
        let (min, max) = (
            crate::model::MIN_TIMESTAMP_MS,
            crate::model::MAX_TIMESTAMP_MS,
        );
        for huge in [(1i64 << 40) + 12345, (max - min) / 3] {
            let mut ts = min;
            let mut timestamps = vec![ts];
            for i in 0.. {
                let step = if i % 2 == 0 { 7 } else { huge };
                if max - ts < step {
                    break;
                }
                ts += step;
                timestamps.push(ts);
            }
            let values = vec![2.0; timestamps.len()];
            roundtrip(&batch_of(&values, |i| timestamps[i]));
        }
    }

    #[test]
    fn versions_round_trip_and_constant_runs_cost_one_varint() {
        let batch = batch_of(&[1.0, 2.0, 3.0, 4.0], |i| i as i64);
        for versions in [
            vec![7, 7, 7, 7],
            vec![u64::MAX, 3, FIRST_DIRECT_VERSION, 0],
            vec![10, 11, 13, 12],
        ] {
            let block = encode(
                &batch.timestamps,
                &batch.values,
                &batch.qualities,
                &versions,
            );
            let mut decoded = Vec::new();
            decode_versions(&block, &mut decoded).unwrap();
            assert_eq!(decoded, versions);
        }
        let constant = encode(&batch.timestamps, &batch.values, &batch.qualities, &[9; 4]);
        let header = header(&constant).unwrap();
        assert_eq!(constant.len() - header.versions_at.unwrap(), 2);
    }

    #[test]
    fn version_1_blocks_decode_with_the_first_direct_version() {
        let batch = batch_of(&[1.5, -2.25], |i| 10 + i as i64);
        let mut block = encode(&batch.timestamps, &batch.values, &batch.qualities, &[5, 6]);
        // A version 1 block is the same bytes without `versions_at` and
        // without the versions column.
        let versions_at = header(&block).unwrap().versions_at.unwrap();
        block.truncate(versions_at);
        block.drain(HEADER_LEN_1..HEADER_LEN);
        block[0] = VERSION_1;
        let mut decoded = PointBatch::default();
        decode_into(&block, &mut decoded).unwrap();
        assert_eq!(decoded, batch);
        let mut versions = Vec::new();
        decode_versions(&block, &mut versions).unwrap();
        assert_eq!(versions, vec![FIRST_DIRECT_VERSION; 2]);
    }

    #[test]
    fn decimal_values_compress_to_about_a_byte() {
        let mut state = 42u64;
        let mut value = 2000i64;
        let values: Vec<f64> = (0..MAX_BLOCK_POINTS)
            .map(|_| {
                value += (xorshift(&mut state) % 21) as i64 - 10;
                value as f64 / 100.0
            })
            .collect();
        let size = roundtrip(&batch_of(&values, |i| 1_767_225_600_000 + i as i64 * 1000));
        assert!(
            size < MAX_BLOCK_POINTS * 3 / 4,
            "{size} bytes for {MAX_BLOCK_POINTS} points"
        );
    }

    #[test]
    fn irregular_timestamps_and_extremes_round_trip() {
        let mut state = 7u64;
        let mut ts = crate::model::MIN_TIMESTAMP_MS;
        let timestamps: Vec<i64> = (0..1000)
            .map(|i| {
                let step = if i == 500 {
                    200_000_000_000_000
                } else {
                    1 + (xorshift(&mut state) % 5000) as i64
                };
                ts += step;
                ts
            })
            .collect();
        let values: Vec<f64> = (0..1000)
            .map(|_| f64::from_bits(xorshift(&mut state)))
            .collect();
        roundtrip(&batch_of(&values, |i| timestamps[i]));
        roundtrip(&batch_of(&[1.5], |_| crate::model::MAX_TIMESTAMP_MS));
        roundtrip(&batch_of(&[1.5, 2.5], |i| {
            [
                crate::model::MIN_TIMESTAMP_MS,
                crate::model::MAX_TIMESTAMP_MS,
            ][i]
        }));
    }

    #[test]
    fn corrupt_blocks_are_errors_not_panics() {
        let mut state = 99u64;
        let values: Vec<f64> = (0..300).map(|i| (i as f64).sin()).collect();
        let batch = batch_of(&values, |i| i as i64 * 7 + (i as i64 % 3));
        let versions: Vec<u64> = (0..batch.len() as u64).map(|i| i * i).collect();
        let block = encode(
            &batch.timestamps,
            &batch.values,
            &batch.qualities,
            &versions,
        );
        for len in 0..block.len() {
            let _ = decode_versions(&block[..len], &mut Vec::new());
            let _ = decode_into(&block[..len], &mut PointBatch::default());
        }
        for _ in 0..2000 {
            let mut damaged = block.clone();
            let at = xorshift(&mut state) as usize % damaged.len();
            damaged[at] ^= 1 << (xorshift(&mut state) % 8);
            let _ = decode_into(&damaged, &mut PointBatch::default());
            let _ = decode_versions(&damaged, &mut Vec::new());
        }
    }
}
