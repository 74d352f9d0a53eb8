//! Rules shared by both kinds: names, labels, byte sizes.

use super::Report;
use crate::manifest::raw::{self, S};
use std::collections::BTreeMap;

/// Port 0 names no port: an error at it.
pub(super) fn port_not_zero(file: &str, port: &S<u16>, field: &str, r: &mut Report) {
    if port.value == 0 {
        r.error(file, port.at, field, "port 0 is not a port");
    }
}

/// RFC 1123 label: `a-z0-9` and `-`, alphanumeric at both ends, at most 63.
pub(super) fn dns_label(file: &str, name: &S<String>, field: &str, r: &mut Report) {
    let n = &name.value;
    let ok = !n.is_empty()
        && n.len() <= 63
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !n.starts_with('-')
        && !n.ends_with('-');
    if !ok {
        r.error(
            file,
            name.at,
            field,
            format!("`{n}` is not a DNS label (RFC 1123): lowercase letters, digits and `-`, at most 63, starting and ending with a letter or digit"),
        );
    }
}

pub(super) fn labels(file: &str, meta: &raw::Metadata, r: &mut Report) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (k, v) in &meta.labels {
        let key_ok = !k.is_empty()
            && k.len() <= 63
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
        if !key_ok {
            r.error(
                file,
                v.at,
                format!("metadata.labels.{k}"),
                "a label key is letters, digits, `-`, `_`, `.` and `/`, at most 63",
            );
        } else if v.value.len() > 63
            || v.value
                .chars()
                .any(|c| c.is_control() || c == ',' || c == '=')
        {
            r.error(
                file,
                v.at,
                format!("metadata.labels.{k}"),
                "a label value has at most 63 characters and no `,` or `=`",
            );
        }
        out.insert(k.clone(), v.value.clone());
    }
    out
}

pub(super) fn bytes_field(
    file: &str,
    v: &S<raw::ByteSize>,
    field: &str,
    r: &mut Report,
) -> Option<u64> {
    match parse_bytes(&v.value.0) {
        Ok(b) => Some(b),
        Err(why) => {
            r.error(file, v.at, field, why);
            None
        }
    }
}

/// `512MiB`, `1.5GiB`, `2GB`, `100kB`, `1048576` → bytes. IEC units are
/// powers of 1024, SI units powers of 1000; bare `M`/`G` are refused as ambiguous.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = (&t[..split], t[split..].trim_start());
    let mult: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        u => {
            let hint = match u.chars().next().map(|c| c.to_ascii_uppercase()) {
                Some(p @ ('K' | 'M' | 'G' | 'T')) => {
                    let n = if num.is_empty() { "512" } else { num };
                    let iec = if p == 'K' {
                        "Ki".to_string()
                    } else {
                        format!("{p}i")
                    };
                    let si = if p == 'K' {
                        "k".to_string()
                    } else {
                        p.to_string()
                    };
                    format!(": `{u}` is ambiguous, write {n}{iec}B (or {n}{si}B)")
                }
                _ => ": units are B, KiB, MiB, GiB, TiB or kB, MB, GB, TB".to_string(),
            };
            return Err(format!("`{s}` is not a size{hint}"));
        }
    };
    let bad = || format!("`{s}` is not a size like 512MiB or 1.5GiB");
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') || num.matches('.').count() > 1
    {
        return Err(bad());
    }
    let bytes = if let Some((whole, frac)) = num.split_once('.') {
        let whole: u64 = whole.parse().map_err(|_| bad())?;
        let scale = 10u64.checked_pow(frac.len() as u32).ok_or_else(bad)?;
        let frac: u64 = frac.parse().map_err(|_| bad())?;
        let w = whole.checked_mul(mult).ok_or_else(bad)?;
        let f = (frac as u128 * mult as u128 / scale as u128) as u64;
        w.checked_add(f).ok_or_else(bad)?
    } else {
        num.parse::<u64>()
            .map_err(|_| bad())?
            .checked_mul(mult)
            .ok_or_else(bad)?
    };
    Ok(bytes)
}

/// Bytes for people, in IEC units: `384MiB`, `1.8GiB`, `1.72GiB`.
pub fn format_bytes(b: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (u, m) in UNITS {
        if b >= m {
            let v = b as f64 / m as f64;
            let s = format!("{v:.2}");
            let s = s.trim_end_matches('0').trim_end_matches('.');
            return format!("{s}{u}");
        }
    }
    format!("{b}B")
}
