//! Typed blake3 digests.
//!
//! Every hash in the store is a [`Digest<K>`] whose phantom kind `K` says *what* was hashed, so a
//! step key can never be passed where an object (artifact) digest is expected — the mistake is a
//! compile error, not a cache bug (buck2's `CasDigest<Kind>` idea). On disk and in JSON a digest is
//! its 64-character lowercase hex form.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a digest was computed over. Implemented by the zero-sized marker types below.
pub trait DigestKind: 'static {
    /// Short human name used in error messages ("object", "step key").
    const NAME: &'static str;
}

/// Marker: the blake3 of an object's bytes (a blob, or a tree manifest).
#[derive(Debug)]
pub enum Object {}
impl DigestKind for Object {
    const NAME: &'static str = "object";
}

/// Marker: the blake3 of a step's canonical key pre-image.
#[derive(Debug)]
pub enum Key {}
impl DigestKind for Key {
    const NAME: &'static str = "step key";
}

/// Marker: the blake3 of a memo entry's canonical key pre-image (see [`crate::memo`]).
#[derive(Debug)]
pub enum Memo {}
impl DigestKind for Memo {
    const NAME: &'static str = "memo key";
}

/// A blake3 digest of something of kind `K`.
pub struct Digest<K: DigestKind> {
    bytes: [u8; 32],
    kind: PhantomData<fn() -> K>,
}

/// Digest of a stored object: a blob or a tree manifest. Step outputs are object digests.
pub type ObjectDigest = Digest<Object>;
/// Digest identifying one step's action (its cache key).
pub type StepKey = Digest<Key>;
/// Digest identifying one memo entry.
pub type MemoKey = Digest<Memo>;

impl<K: DigestKind> Digest<K> {
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self {
            bytes,
            kind: PhantomData,
        }
    }

    /// Hash `data` in one go.
    pub fn of(data: &[u8]) -> Self {
        Self::from_bytes(*blake3::hash(data).as_bytes())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.bytes)
    }

    /// The first 12 hex characters, for display.
    pub fn short(&self) -> String {
        let mut s = self.to_hex();
        s.truncate(12);
        s
    }
}

impl<K: DigestKind> From<blake3::Hash> for Digest<K> {
    fn from(h: blake3::Hash) -> Self {
        Self::from_bytes(*h.as_bytes())
    }
}

impl<K: DigestKind> Clone for Digest<K> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K: DigestKind> Copy for Digest<K> {}
impl<K: DigestKind> PartialEq for Digest<K> {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}
impl<K: DigestKind> Eq for Digest<K> {}
impl<K: DigestKind> Hash for Digest<K> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.bytes.hash(state);
    }
}
impl<K: DigestKind> PartialOrd for Digest<K> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<K: DigestKind> Ord for Digest<K> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.bytes.cmp(&other.bytes)
    }
}
impl<K: DigestKind> fmt::Display for Digest<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}
impl<K: DigestKind> fmt::Debug for Digest<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", K::NAME, self.short())
    }
}

/// A string that is not a 64-character hex blake3 digest.
#[derive(Debug, thiserror::Error)]
#[error("`{input}` is not a valid {kind} digest (expected 64 lowercase hex characters)")]
pub struct ParseDigestError {
    pub input: String,
    pub kind: &'static str,
}

impl<K: DigestKind> FromStr for Digest<K> {
    type Err = ParseDigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseDigestError {
            input: s.to_owned(),
            kind: K::NAME,
        };
        if s.len() != 64
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(err());
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| err())?;
        Ok(Self::from_bytes(bytes))
    }
}

impl<K: DigestKind> Serialize for Digest<K> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}
impl<'de, K: DigestKind> Deserialize<'de> for Digest<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let d = ObjectDigest::of(b"abc");
        // blake3("abc"), from the reference test vectors.
        assert_eq!(
            d.to_hex(),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
        assert_eq!(d.to_hex().parse::<ObjectDigest>().unwrap(), d);
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<ObjectDigest>(&json).unwrap(), d);
    }

    #[test]
    fn rejects_bad_hex() {
        assert!("xyz".parse::<StepKey>().is_err());
        assert!("A".repeat(64).parse::<StepKey>().is_err());
        let e = "00".parse::<StepKey>().unwrap_err();
        assert!(e.to_string().contains("step key"));
    }
}
