//! Byte-stable safetensors files. burn-store writes the header's `__metadata__` from a HashMap,
//! so two saves of identical weights differ in header key order; forge's artifacts must be the
//! same bytes for the same inputs, so headers are rewritten canonically (keys sorted, padded to 8
//! bytes as the format requires). Tensor data and offsets are untouched.

use std::collections::BTreeMap;

/// Rewrite a safetensors buffer with a canonical header.
pub fn canonical_safetensors(bytes: &[u8]) -> Result<Vec<u8>, String> {
    if bytes.len() < 8 {
        return Err("safetensors buffer too short".into());
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header = bytes
        .get(8..8 + n)
        .ok_or("safetensors header out of bounds")?;
    let data = &bytes[8 + n..];
    let parsed: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(header).map_err(|e| e.to_string())?;
    let mut text = String::from("{");
    for (i, (k, v)) in parsed.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(&serde_json::to_string(k).expect("string"));
        text.push(':');
        text.push_str(&canonical_json(v));
    }
    text.push('}');
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut out = Vec::with_capacity(8 + text.len() + data.len());
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(data);
    Ok(out)
}

fn canonical_json(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Object(m) => {
            let sorted: BTreeMap<&String, &serde_json::Value> = m.iter().collect();
            let parts: Vec<String> = sorted
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{}:{}",
                        serde_json::to_string(k).expect("string"),
                        canonical_json(v)
                    )
                })
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        serde_json::Value::Array(a) => format!(
            "[{}]",
            a.iter().map(canonical_json).collect::<Vec<_>>().join(",")
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_order_no_longer_matters() {
        let make = |header: &str| {
            let mut h = header.to_string();
            while !h.len().is_multiple_of(8) {
                h.push(' ');
            }
            let mut b = (h.len() as u64).to_le_bytes().to_vec();
            b.extend_from_slice(h.as_bytes());
            b.extend_from_slice(&[0, 0, 128, 63]);
            b
        };
        let a = make(
            r#"{"__metadata__":{"b":"2","a":"1"},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
        );
        let b = make(
            r#"{"w":{"shape":[1],"dtype":"F32","data_offsets":[0,4]},"__metadata__":{"a":"1","b":"2"}}"#,
        );
        assert_ne!(a, b);
        let (ca, cb) = (
            canonical_safetensors(&a).unwrap(),
            canonical_safetensors(&b).unwrap(),
        );
        assert_eq!(ca, cb);
        assert_eq!(&ca[ca.len() - 4..], &[0, 0, 128, 63]);
        assert_eq!((ca.len() - 12) % 8, 0);
    }
}
