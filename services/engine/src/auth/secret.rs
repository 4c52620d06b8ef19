//! Token secrets: how they look, how they are made, how they are kept.
//!
//! A secret is `stse_` + 64 hex digits (256 random bits from the operating
//! system) + `_` + 8 hex digits of CRC-32 over everything before it. The
//! fixed prefix lets secret scanners (GitHub, gitleaks) recognise a leaked
//! token; the checksum lets them, and us, tell a real secret from a typo
//! without a lookup. Only the SHA-256 of a secret is ever stored.

use ring::rand::{SecureRandom, SystemRandom};

/// The fixed prefix of every secret ("sensor time-series engine").
pub const PREFIX: &str = "stse_";
const RANDOM_BYTES: usize = 32;
/// Length of a well-formed secret.
pub const SECRET_LEN: usize = PREFIX.len() + RANDOM_BYTES * 2 + 1 + 8;

/// The SHA-256 of a secret: the only form in which it is stored and the key
/// it is looked up by.
pub type SecretHash = [u8; 32];

/// `n` random bytes from the operating system's generator.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // The system generator only fails when the OS has none (no getrandom,
    // no /dev/urandom): nothing secure can be done then.
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the operating system's random generator failed");
    bytes
}

/// A new secret with 256 random bits.
pub fn generate() -> String {
    let mut secret = String::with_capacity(SECRET_LEN);
    secret.push_str(PREFIX);
    secret.push_str(&hex(&random_bytes::<RANDOM_BYTES>()));
    let checksum = crc32fast::hash(secret.as_bytes());
    secret.push('_');
    secret.push_str(&format!("{checksum:08x}"));
    secret
}

/// Whether `text` has the shape of a secret: prefix, 64 lower-case hex
/// digits, `_`, and a matching checksum.
pub fn well_formed(text: &str) -> bool {
    if text.len() != SECRET_LEN || !text.starts_with(PREFIX) {
        return false;
    }
    let (body, tail) = text.split_at(SECRET_LEN - 9);
    let random = &body[PREFIX.len()..];
    if !random.bytes().all(is_lower_hex) {
        return false;
    }
    let Some(checksum) = tail.strip_prefix('_') else {
        return false;
    };
    if !checksum.bytes().all(is_lower_hex) {
        return false;
    }
    u32::from_str_radix(checksum, 16).ok() == Some(crc32fast::hash(body.as_bytes()))
}

fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

/// SHA-256 of `secret`.
pub fn hash(secret: &str) -> SecretHash {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Compares two hashes in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

/// The bytes of lower- or upper-case hex, or `None`.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_are_well_formed_and_distinct() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert_eq!(a.len(), SECRET_LEN);
        assert!(well_formed(&a), "{a}");
        assert!(a.starts_with(PREFIX));
    }

    #[test]
    fn a_changed_character_breaks_the_checksum() {
        let secret = generate();
        let mut bytes = secret.clone().into_bytes();
        let i = PREFIX.len() + 3;
        bytes[i] = if bytes[i] == b'0' { b'1' } else { b'0' };
        assert!(!well_formed(&String::from_utf8(bytes).unwrap()));
        assert!(!well_formed(&secret[1..]));
        assert!(!well_formed(&secret.to_uppercase()));
        assert!(!well_formed(""));
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(
            unhex(&hex(&[0, 1, 254, 255])).unwrap(),
            vec![0, 1, 254, 255]
        );
        assert!(unhex("zz").is_none());
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
    }
}
