//! The JSON text of a generic event's payload, written as PostgreSQL's JSONB gives it back, and
//! the check that JSONB can hold it at all.
//!
//! A generic event's payload is stored as JSONB and read back when the state is rebuilt; the fold
//! tells a redelivery from a conflicting reuse of an identity by the event's content, so the text
//! the decoder makes and the text read back must be the same. serde_json (without
//! `preserve_order`) already sorts keys and keeps the last of repeated keys, as JSONB does, and
//! writes strings the same way on both sides; numbers are what JSONB rewrites (`1E2` → `100`,
//! `-0` → `0`, `1.0e1` → `10`). [`canonical`] writes every number as PostgreSQL's `numeric` prints
//! it, so decoding, storing and reading back agree byte for byte.
//!
//! What JSONB refuses is refused here first, with a reason naming the path: a NUL character in a
//! string or key (`\u0000`), and numbers beyond NUMERIC's range. Numbers longer than
//! [`MAX_NUMBER_DIGITS`] when written out are refused too: no EVM value is that long, and an entry
//! of short numbers with huge exponents would otherwise expand to gigabytes of text.

use std::fmt::Write as _;

use serde_json::Value;

/// Most digits a number may have written out in full (an uint256 has 78).
pub const MAX_NUMBER_DIGITS: usize = 1024;

/// Why a JSON value cannot be stored as JSONB.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unstorable {
    #[error("`{path}` contains a NUL character, which PostgreSQL's JSONB cannot hold")]
    Nul { path: String },
    #[error("`{path}` is the number {number}, which the event log cannot store ({why})")]
    Number {
        path: String,
        number: String,
        why: &'static str,
    },
}

/// The JSON text of `v` as JSONB writes it back (compact, keys sorted, numbers as `numeric`
/// prints them), or why JSONB cannot hold it.
pub fn canonical(v: &Value) -> Result<String, Unstorable> {
    let mut out = String::new();
    let mut path = String::from("$");
    write_value(v, &mut out, &mut path)?;
    Ok(out)
}

/// Like [`canonical`] for an object, leaving out the entries whose key `skip` names.
pub fn canonical_object(
    obj: &serde_json::Map<String, Value>,
    skip: impl Fn(&str) -> bool,
) -> Result<String, Unstorable> {
    let mut out = String::new();
    let mut path = String::from("$");
    write_object(obj.iter().filter(|(k, _)| !skip(k)), &mut out, &mut path)?;
    Ok(out)
}

fn write_value(v: &Value, out: &mut String, path: &mut String) -> Result<(), Unstorable> {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::String(s) => write_string(s, out, path)?,
        Value::Number(n) => {
            let text = n.to_string();
            match numeric_text(&text) {
                Ok(t) => out.push_str(&t),
                Err(why) => {
                    return Err(Unstorable::Number {
                        path: path.clone(),
                        number: shorten(&text),
                        why,
                    })
                }
            }
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let len = path.len();
                let _ = write!(path, "[{i}]");
                write_value(item, out, path)?;
                path.truncate(len);
            }
            out.push(']');
        }
        Value::Object(obj) => write_object(obj.iter(), out, path)?,
    }
    Ok(())
}

fn write_object<'a>(
    entries: impl Iterator<Item = (&'a String, &'a Value)>,
    out: &mut String,
    path: &mut String,
) -> Result<(), Unstorable> {
    out.push('{');
    for (i, (k, v)) in entries.enumerate() {
        if i > 0 {
            out.push(',');
        }
        let len = path.len();
        path.push('.');
        path.push_str(&shorten(k));
        write_string(k, out, path)?;
        out.push(':');
        write_value(v, out, path)?;
        path.truncate(len);
    }
    out.push('}');
    Ok(())
}

fn write_string(s: &str, out: &mut String, path: &str) -> Result<(), Unstorable> {
    if s.contains('\0') {
        return Err(Unstorable::Nul {
            path: path.to_owned(),
        });
    }
    // serde_json's escaping, the same on the way in and on the way back.
    out.push_str(&Value::String(s.to_owned()).to_string());
    Ok(())
}

/// At most 40 characters of `s`, NUL written as `\u0000` (the reason must be storable too).
fn shorten(s: &str) -> String {
    let cut = match s.char_indices().nth(40) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    };
    cut.replace('\0', "\\u0000")
}

/// A JSON number's text as PostgreSQL's `numeric` prints it: plain decimal, as many fraction
/// digits as the text had after moving the point by the exponent (`1.50` → `1.50`, `1.5e1` →
/// `15`, `1e-2` → `0.01`), no sign on zero.
pub fn numeric_text(text: &str) -> Result<String, &'static str> {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    };
    let exponent: i64 = if exponent.is_empty() {
        0
    } else {
        exponent
            .strip_prefix('+')
            .unwrap_or(exponent)
            .parse()
            .map_err(|_| "its exponent is out of range")?
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int_part.is_empty()
        || !int_part.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
    {
        return Err("not a JSON number");
    }
    // PostgreSQL's limits: exponents within ±(2³¹−1)/2, at most 16,383 digits after the point.
    if exponent.unsigned_abs() >= 1_073_741_823 {
        return Err("its exponent is out of range");
    }
    let digits: String = format!("{int_part}{frac_part}");
    // The value is digits × 10^(point), point = exponent − fraction digits.
    let point = exponent - frac_part.len() as i64;
    let scale = (-point).max(0) as usize;
    if scale > 16_383 {
        return Err("more than 16,383 digits after the decimal point");
    }
    let significant = digits.trim_start_matches('0');
    let zero = significant.is_empty();
    // Written out: the significant digits, then `point` zeros when positive.
    let int_digits = if zero {
        1
    } else {
        (significant.len() as i64 + point).max(1) as usize
    };
    if int_digits + scale > MAX_NUMBER_DIGITS {
        return Err("more than 1,024 digits written out");
    }
    let mut all = String::with_capacity(int_digits + scale + 1);
    if point >= 0 {
        all.push_str(if zero { "0" } else { significant });
        if !zero {
            all.extend(std::iter::repeat_n('0', point as usize));
        }
        // scale is 0 here.
    } else {
        // Pad on the left so there is at least one digit before the point.
        let body = if zero { "0" } else { significant };
        let need = scale + 1;
        let padded = if body.len() < need {
            format!("{}{body}", "0".repeat(need - body.len()))
        } else {
            body.to_owned()
        };
        let (i, f) = padded.split_at(padded.len() - scale);
        all.push_str(i);
        all.push('.');
        all.push_str(f);
    }
    if negative && !zero {
        all.insert(0, '-');
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_print_as_postgres_numeric_does() {
        // What `SELECT 'x'::jsonb::text` answers on PostgreSQL 15.
        for (input, pg) in [
            ("0", "0"),
            ("-0", "0"),
            ("-0.0", "0.0"),
            ("1E2", "100"),
            ("1e+2", "100"),
            ("1.0e1", "10"),
            ("1.5e1", "15"),
            ("1.50", "1.50"),
            ("123.4500", "123.4500"),
            ("0.000", "0.000"),
            ("1e-3", "0.001"),
            ("-1.5e-1", "-0.15"),
            ("0e200000", "0"),
            ("10e2", "1000"),
            (
                "115792089237316195423570985008687907853269984665640564039457584007913129639935",
                "115792089237316195423570985008687907853269984665640564039457584007913129639935",
            ),
            ("0.1e1", "1"),
            ("12.34e-1", "1.234"),
        ] {
            assert_eq!(numeric_text(input).as_deref(), Ok(pg), "{input}");
        }
    }

    #[test]
    fn numbers_jsonb_cannot_hold_are_refused() {
        for bad in [
            "1e1000000",
            "1e131072",
            "0e-16384",
            "1.5e-16383",
            "1e99999999999999999999",
            "1e1024",
        ] {
            assert!(numeric_text(bad).is_err(), "{bad}");
        }
        assert!(numeric_text("1e1023").is_ok());
    }

    #[test]
    fn canonical_text_sorts_keys_and_names_the_bad_path() {
        let v: Value = serde_json::from_str(r#"{"b":1E2,"a":[true,null,"x"]}"#).expect("json");
        assert_eq!(
            canonical(&v).as_deref(),
            Ok(r#"{"a":[true,null,"x"],"b":100}"#)
        );
        let nul = json!({"a": [1, {"k\u{0}": 2}]});
        assert!(
            matches!(canonical(&nul), Err(Unstorable::Nul { path }) if path == "$.a[1].k\\u0000")
        );
        let big: Value = serde_json::from_str(r#"{"n":[1e1000000]}"#).expect("json");
        let err = canonical(&big).expect_err("too big");
        assert!(
            err.to_string().starts_with("`$.n[0]` is the number 1e"),
            "{err}"
        );
    }

    #[test]
    fn canonical_text_survives_a_round_trip() {
        let v: Value =
            serde_json::from_str(r#"{"z":{"y":-0.0,"x":"\u00e9\n"},"a":[1.0e1,2]}"#).expect("json");
        let once = canonical(&v).expect("storable");
        let again = canonical(&serde_json::from_str(&once).expect("json")).expect("storable");
        assert_eq!(once, again);
    }
}
