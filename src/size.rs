//! Human-readable byte sizes, used by the config, the API and the CLI.
//!
//! Grammar (documented in docs/operations.md): a non-negative number, optionally with
//! a fractional part, followed by an optional binary unit. Units are powers of 1024 and
//! case-insensitive: `B`, `K`/`KiB`, `M`/`MiB`, `G`/`GiB`, `T`/`TiB`, `P`/`PiB`.
//! `10G` = `10GiB` = 10 × 2³⁰. A fraction is accepted only when the result is a whole
//! number of bytes (`1.5G` is fine, `0.3K` is not). Decimal units (`GB`, `MB`) are
//! rejected rather than guessed, because `10GB` means 10⁹ to some people and 2³⁰ to
//! others. Invariant: `parse_size(&format_size(n)) == Ok(n)` for every `n`.

use std::fmt;

/// Why a size string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SizeError {
    /// Empty or whitespace-only input.
    #[error("empty size")]
    Empty,
    /// The input is not `<number>[unit]`.
    #[error("invalid size {0:?}: expected a number with an optional unit K, M, G, T, P (powers of 1024), e.g. \"10G\"")]
    Syntax(String),
    /// A decimal unit such as `GB`, which is ambiguous.
    #[error("invalid size {0:?}: decimal units (KB, MB, GB...) are ambiguous; use K/M/G (or KiB/MiB/GiB), which are powers of 1024")]
    DecimalUnit(String),
    /// The fraction does not give a whole number of bytes.
    #[error("invalid size {0:?}: not a whole number of bytes")]
    Fractional(String),
    /// Larger than `u64::MAX` bytes.
    #[error("invalid size {0:?}: too large")]
    Overflow(String),
}

/// Parse a human-readable size (see the module docs for the grammar).
pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(SizeError::Empty);
    }
    let syntax = || SizeError::Syntax(input.to_string());
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(num_end);
    let unit = unit.trim_start();
    let shift: u32 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        "p" | "pib" => 50,
        "kb" | "mb" | "gb" | "tb" | "pb" => return Err(SizeError::DecimalUnit(input.to_string())),
        _ => return Err(syntax()),
    };
    let (int_part, frac_part) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if int_part.is_empty()
        || !int_part.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
        || (num.contains('.') && frac_part.is_empty())
    {
        return Err(syntax());
    }
    let overflow = || SizeError::Overflow(input.to_string());
    let int: u128 = int_part.parse().map_err(|_| overflow())?;
    let mult: u128 = 1u128 << shift;
    let mut total = int.checked_mul(mult).ok_or_else(overflow)?;
    if !frac_part.is_empty() {
        // Trailing zeros never matter; beyond 18 significant digits no fraction of
        // 2^50 is a whole number of bytes anyway.
        let frac = frac_part.trim_end_matches('0');
        if frac.len() > 18 {
            return Err(SizeError::Fractional(input.to_string()));
        }
        if !frac.is_empty() {
            let numer: u128 = frac.parse().map_err(|_| syntax())?;
            let denom: u128 = 10u128.pow(frac.len() as u32);
            let scaled = numer * mult;
            if !scaled.is_multiple_of(denom) {
                return Err(SizeError::Fractional(input.to_string()));
            }
            total = total.checked_add(scaled / denom).ok_or_else(overflow)?;
        }
    }
    u64::try_from(total).map_err(|_| overflow())
}

/// Format `bytes` with the largest unit that divides it exactly (`10G`, `1536M`, `4097`).
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(u32, &str); 5] = [(50, "P"), (40, "T"), (30, "G"), (20, "M"), (10, "K")];
    if bytes == 0 {
        return "0".to_string();
    }
    for (shift, unit) in UNITS {
        if bytes.trailing_zeros() >= shift {
            return format!("{}{}", bytes >> shift, unit);
        }
    }
    bytes.to_string()
}

/// A byte count that deserializes from either an integer or a size string and
/// displays in the human-readable form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_size(self.0))
    }
}

impl std::str::FromStr for ByteSize {
    type Err = SizeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_size(s).map(ByteSize)
    }
}

impl serde::Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_size(self.0))
    }
}

impl<'de> serde::Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"10G\", \"512M\" or a number of bytes")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("invalid size {v}: negative")))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<ByteSize, E> {
                Err(E::custom(format!(
                    "invalid size {v}: use an integer number of bytes or a string such as \"1.5G\""
                )))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_size(v).map(ByteSize).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("10g"), Ok(10 << 30));
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size("10 GiB"), Ok(10 << 30));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("2P"), Ok(2 << 50));
        assert_eq!(parse_size("100B"), Ok(100));
        assert_eq!(parse_size(" 1G "), Ok(1 << 30));
    }

    #[test]
    fn fractions_must_give_whole_bytes() {
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("0.5K"), Ok(512));
        assert_eq!(parse_size("1.50M"), Ok(3 << 19));
        assert_eq!(parse_size("2.0"), Ok(2));
        assert!(matches!(parse_size("0.3K"), Err(SizeError::Fractional(_))));
        assert!(matches!(parse_size("1.5"), Err(SizeError::Fractional(_))));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "", "  ", "G", "abc", "-1", "-1G", "1.G", ".5G", "1..5G", "1X", "10 G B", "1e9", "0x10",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
        assert!(matches!(parse_size("10GB"), Err(SizeError::DecimalUnit(_))));
        assert!(matches!(parse_size("1mb"), Err(SizeError::DecimalUnit(_))));
    }

    #[test]
    fn overflow_is_an_error() {
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
        assert!(matches!(
            parse_size("18446744073709551616"),
            Err(SizeError::Overflow(_))
        ));
        assert!(matches!(parse_size("16384P"), Err(SizeError::Overflow(_))));
        assert!(matches!(
            parse_size("99999999999999999999999999999999999999999"),
            Err(SizeError::Overflow(_))
        ));
    }

    #[test]
    fn format_round_trips() {
        for n in [
            0u64,
            1,
            512,
            4096,
            4097,
            10 << 30,
            3 << 29,
            1 << 50,
            u64::MAX,
            1536 << 20,
        ] {
            assert_eq!(parse_size(&format_size(n)), Ok(n), "{n}");
        }
        assert_eq!(format_size(10 << 30), "10G");
        assert_eq!(format_size(1536 << 20), "1536M");
        assert_eq!(format_size(4097), "4097");
    }

    #[test]
    fn deserializes_numbers_and_strings() {
        #[derive(serde::Deserialize)]
        struct T {
            s: ByteSize,
        }
        let t: T = serde_json::from_str(r#"{"s": "2G"}"#).unwrap();
        assert_eq!(t.s, ByteSize(2 << 30));
        let t: T = serde_json::from_str(r#"{"s": 4096}"#).unwrap();
        assert_eq!(t.s, ByteSize(4096));
        assert!(serde_json::from_str::<T>(r#"{"s": -1}"#).is_err());
        assert!(serde_json::from_str::<T>(r#"{"s": 1.5}"#).is_err());
        assert!(serde_json::from_str::<T>(r#"{"s": "lots"}"#).is_err());
    }
}
