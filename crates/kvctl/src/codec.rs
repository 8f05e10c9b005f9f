//! How keys and values are read from arguments and input lines, and shown.

use anyhow::{bail, Context, Result};
use bytes::Bytes;

/// Whether keys and values are written as hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// As given: arguments are UTF-8, output is the raw bytes.
    Raw,
    /// Hex digits, two per byte.
    Hex,
}

impl Encoding {
    /// The encoding chosen by `--hex`.
    pub fn from_flag(hex: bool) -> Encoding {
        if hex {
            Encoding::Hex
        } else {
            Encoding::Raw
        }
    }

    /// Reads a key or value given as text.
    pub fn decode(self, text: &str) -> Result<Bytes> {
        match self {
            Encoding::Raw => Ok(Bytes::copy_from_slice(text.as_bytes())),
            Encoding::Hex => hex_decode(text).map(Bytes::from),
        }
    }

    /// Shows bytes as text: hex, or UTF-8 with invalid sequences replaced
    /// (for JSON, which cannot carry raw bytes).
    pub fn to_text(self, bytes: &[u8]) -> String {
        match self {
            Encoding::Raw => String::from_utf8_lossy(bytes).into_owned(),
            Encoding::Hex => hex_encode(bytes),
        }
    }

    /// Shows bytes for a terminal or a pipe: hex, or the raw bytes.
    pub fn to_raw(self, bytes: &[u8]) -> Vec<u8> {
        match self {
            Encoding::Raw => bytes.to_vec(),
            Encoding::Hex => hex_encode(bytes).into_bytes(),
        }
    }
}

/// Lower-case hex of `bytes`.
pub fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

/// Bytes of a hex string (either case, an optional `0x` prefix).
pub fn hex_decode(text: &str) -> Result<Vec<u8>> {
    let digits = text.strip_prefix("0x").unwrap_or(text).as_bytes();
    if !digits.len().is_multiple_of(2) {
        bail!("hex {text:?} has an odd number of digits");
    }
    let nibble = |c: u8| -> Result<u8> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => bail!("hex {text:?} has a non-hex character {:?}", char::from(c)),
        }
    };
    digits
        .chunks_exact(2)
        .map(|pair| Ok(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

/// The format of `batch-put` input lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineFormat {
    /// `key<TAB>value`; the value is everything after the first tab.
    Tsv,
    /// `{"key": "...", "value": "..."}`.
    JsonLines,
}

/// Reads one input line (without its newline) into a pair; `None` for a
/// blank line. `line_number` counts from 1, for messages.
pub fn parse_line(
    line: &str,
    format: LineFormat,
    encoding: Encoding,
    line_number: u64,
) -> Result<Option<(Bytes, Bytes)>> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.trim().is_empty() {
        return Ok(None);
    }
    let (key, value) = match format {
        LineFormat::Tsv => {
            let (key, value) = line
                .split_once('\t')
                .with_context(|| format!("line {line_number}: expected key<TAB>value"))?;
            (key.to_owned(), value.to_owned())
        }
        LineFormat::JsonLines => {
            let object: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("line {line_number}: not JSON"))?;
            let field = |name: &str| -> Result<String> {
                match object.get(name) {
                    Some(serde_json::Value::String(text)) => Ok(text.clone()),
                    Some(_) => bail!("line {line_number}: {name:?} is not a string"),
                    None => bail!("line {line_number}: no {name:?} field"),
                }
            };
            (field("key")?, field("value")?)
        }
    };
    let key = encoding
        .decode(&key)
        .with_context(|| format!("line {line_number}: key"))?;
    let value = encoding
        .decode(&value)
        .with_context(|| format!("line {line_number}: value"))?;
    if key.is_empty() {
        bail!("line {line_number}: the key is empty");
    }
    Ok(Some((key, value)))
}

/// A pair as a JSON object: the format `range --output json` prints and
/// `batch-put --json-lines` reads.
pub fn pair_json(key: &[u8], value: &[u8], encoding: Encoding) -> serde_json::Value {
    serde_json::json!({ "key": encoding.to_text(key), "value": encoding.to_text(value) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_every_byte() {
        let all: Vec<u8> = (0..=255).collect();
        let text = hex_encode(&all);
        assert_eq!(text.len(), 512);
        assert_eq!(hex_decode(&text).ok(), Some(all.clone()));
        assert_eq!(hex_decode(&text.to_uppercase()).ok(), Some(all));
        assert_eq!(hex_decode("0x00ff").ok(), Some(vec![0, 255]));
        assert_eq!(hex_decode("").ok(), Some(vec![]));
    }

    #[test]
    fn bad_hex_is_refused_with_the_reason() {
        let odd = hex_decode("abc").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(odd.contains("odd"), "{odd}");
        let bad = hex_decode("zz").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(bad.contains("non-hex"), "{bad}");
    }

    #[test]
    fn tsv_lines_split_at_the_first_tab() {
        let pair = parse_line("k\tv\twith tab\r", LineFormat::Tsv, Encoding::Raw, 1)
            .ok()
            .flatten();
        assert_eq!(pair, Some((Bytes::from("k"), Bytes::from("v\twith tab"))));
        let empty_value = parse_line("k\t", LineFormat::Tsv, Encoding::Raw, 1).ok().flatten();
        assert_eq!(empty_value, Some((Bytes::from("k"), Bytes::new())));
        assert_eq!(parse_line("   ", LineFormat::Tsv, Encoding::Raw, 1).ok(), Some(None));
    }

    #[test]
    fn bad_lines_name_their_line_number() {
        for (line, format) in [
            ("no tab here", LineFormat::Tsv),
            ("\tvalue", LineFormat::Tsv),
            ("{not json", LineFormat::JsonLines),
            (r#"{"key": "k"}"#, LineFormat::JsonLines),
            (r#"{"key": 1, "value": "v"}"#, LineFormat::JsonLines),
        ] {
            let error = parse_line(line, format, Encoding::Raw, 42)
                .err()
                .map(|e| format!("{e:#}"));
            assert!(
                error.as_deref().is_some_and(|e| e.contains("line 42")),
                "{line}: {error:?}"
            );
        }
    }

    #[test]
    fn hex_lines_are_decoded() {
        let pair = parse_line("00ff\t6869", LineFormat::Tsv, Encoding::Hex, 1)
            .ok()
            .flatten();
        assert_eq!(pair, Some((Bytes::from_static(&[0, 255]), Bytes::from("hi"))));
        let json = parse_line(r#"{"key":"01","value":"02"}"#, LineFormat::JsonLines, Encoding::Hex, 1)
            .ok()
            .flatten();
        assert_eq!(json, Some((Bytes::from_static(&[1]), Bytes::from_static(&[2]))));
        assert!(parse_line("0g\t00", LineFormat::Tsv, Encoding::Hex, 1).is_err());
    }

    #[test]
    fn json_output_reads_back_as_input() {
        // `range --output json | batch-put --json-lines` copies data.
        for encoding in [Encoding::Raw, Encoding::Hex] {
            let line = pair_json(b"k\"ey", b"va\tlue\n", encoding).to_string();
            let pair = parse_line(&line, LineFormat::JsonLines, encoding, 1).ok().flatten();
            assert_eq!(
                pair,
                Some((Bytes::from("k\"ey"), Bytes::from("va\tlue\n"))),
                "{encoding:?}"
            );
        }
    }
}
