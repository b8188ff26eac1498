//! Human byte sizes: `4GiB`, `512MiB`, `64k`, `1048576`.

use std::fmt;
use std::str::FromStr;

/// A size in bytes, parsed from and shown as a human string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

/// Why a size string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid size {input:?}: {reason} (examples: 4GiB, 512MiB, 64KiB, 4096)")]
pub struct ParseSizeError {
    input: String,
    reason: &'static str,
}

impl FromStr for ByteSize {
    type Err = ParseSizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParseSizeError { input: s.to_string(), reason };
        let t = s.trim();
        let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        if num.is_empty() {
            return Err(err("no number"));
        }
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            "t" | "tb" | "tib" => 1 << 40,
            _ => return Err(err("unknown unit")),
        };
        let bytes = if let Some((int, frac)) = num.split_once('.') {
            let int: u64 = if int.is_empty() { 0 } else { int.parse().map_err(|_| err("bad number"))? };
            if frac.is_empty() || frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err("bad fraction"));
            }
            let frac_val: u64 = frac.parse().map_err(|_| err("bad fraction"))?;
            let scale = 10u64.pow(frac.len() as u32);
            let whole = int.checked_mul(mult).ok_or_else(|| err("too large"))?;
            let part = (frac_val as u128 * mult as u128 / scale as u128) as u64;
            whole.checked_add(part).ok_or_else(|| err("too large"))?
        } else {
            let n: u64 = num.parse().map_err(|_| err("bad number"))?;
            n.checked_mul(mult).ok_or_else(|| err("too large"))?
        };
        Ok(ByteSize(bytes))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
        for (name, size) in UNITS {
            if self.0 >= size {
                return if self.0.is_multiple_of(size) {
                    write!(f, "{}{name}", self.0 / size)
                } else {
                    write!(f, "{:.1}{name}", self.0 as f64 / size as f64)
                };
            }
        }
        write!(f, "{}B", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        let p = |s: &str| s.parse::<ByteSize>().unwrap().0;
        assert_eq!(p("4GiB"), 4 << 30);
        assert_eq!(p("512MiB"), 512 << 20);
        assert_eq!(p("64k"), 64 << 10);
        assert_eq!(p("4096"), 4096);
        assert_eq!(p("1.5GiB"), 3 << 29);
        assert_eq!(p(" 2 MB "), 2 << 20);
    }

    #[test]
    fn refuses_nonsense() {
        for s in ["", "GiB", "12XB", "-1", "1.2.3G", "99999999999999999999", "20000000TiB"] {
            assert!(s.parse::<ByteSize>().is_err(), "{s} should not parse");
        }
    }

    #[test]
    fn displays_round_numbers() {
        assert_eq!(ByteSize(1 << 30).to_string(), "1GiB");
        assert_eq!(ByteSize(1536 << 20).to_string(), "1.5GiB");
        assert_eq!(ByteSize(100).to_string(), "100B");
    }
}
