//! Request and response bodies, and turning request bytes into them with errors that name
//! the field at fault. Shapes follow text-embeddings-inference (`/embed`, `/rerank`) and
//! TEI's OpenAI-compatible `/v1/embeddings`.

use super::errors::ApiError;
use serde::de::{self, DeserializeOwned, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::error::Category;

/// `"text"` or `["text", ...]`.
#[derive(Debug, Clone, PartialEq)]
pub enum Inputs {
    One(String),
    Many(Vec<String>),
}

impl Inputs {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Inputs::One(s) => vec![s],
            Inputs::Many(v) => v,
        }
    }

    pub fn is_one(&self) -> bool {
        matches!(self, Inputs::One(_))
    }
}

// By hand rather than `#[serde(untagged)]`, whose only error is "did not match any variant":
// this one says what was expected, and for a bad element which one (`inputs[2]`).
impl<'de> Deserialize<'de> for Inputs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct InputsVisitor;
        impl<'de> Visitor<'de> for InputsVisitor {
            type Value = Inputs;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Inputs, E> {
                Ok(Inputs::One(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Inputs, E> {
                Ok(Inputs::One(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Inputs, A::Error> {
                // No preallocation from the size hint: the body size bounds the list.
                let mut texts = Vec::new();
                while let Some(text) = seq.next_element::<String>()? {
                    texts.push(text);
                }
                Ok(Inputs::Many(texts))
            }
        }
        d.deserialize_any(InputsVisitor)
    }
}

fn yes() -> bool {
    true
}

/// TEI's `POST /embed`.
#[derive(Debug, Deserialize)]
pub struct EmbedRequest {
    pub inputs: Inputs,
    /// Not TEI's: the decoder's id asks for LLM embeddings (`tandem serve --llm`).
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub truncate: bool,
    #[serde(default = "yes")]
    pub normalize: bool,
    /// TEI: "Right" (default) or "Left"; tandem truncates on the right only.
    #[serde(default)]
    pub truncation_direction: Option<String>,
    /// TEI: the named prompt prepended to each input: "query" or "passage" for a model with
    /// prompts (E5); none: "passage" for such a model.
    #[serde(default)]
    pub prompt_name: Option<String>,
    /// TEI: Matryoshka truncation; tandem gives the model's full dimension only.
    #[serde(default)]
    pub dimensions: Option<usize>,
}

/// TEI's `POST /rerank`.
#[derive(Debug, Deserialize)]
pub struct RerankRequest {
    pub query: String,
    pub texts: Vec<String>,
    #[serde(default)]
    pub truncate: bool,
    #[serde(default)]
    pub raw_scores: bool,
    #[serde(default)]
    pub return_text: bool,
    #[serde(default)]
    pub truncation_direction: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Rank {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    pub score: f32,
}

/// OpenAI's `POST /v1/embeddings` (as TEI implements it).
#[derive(Debug, Deserialize)]
pub struct OpenAiRequest {
    pub input: Inputs,
    /// Accepted and echoed back; this server has one embedding model.
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub encoding_format: Option<String>,
    #[serde(default)]
    pub dimensions: Option<usize>,
    // `user` and other fields are accepted and ignored, like every unknown field.
    /// Not OpenAI's; TEI truncates here when started with --auto-truncate, tandem when asked.
    #[serde(default)]
    pub truncate: bool,
}

#[derive(Debug, Serialize)]
pub struct OpenAiEmbedding {
    pub object: &'static str,
    pub embedding: OpenAiVector,
    pub index: usize,
}

/// Floats, or base64 of little-endian f32 bytes (what the OpenAI Python client asks for by
/// default and decodes).
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum OpenAiVector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Serialize)]
pub struct OpenAiUsage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

#[derive(Debug, Serialize)]
pub struct OpenAiResponse {
    pub object: &'static str,
    pub data: Vec<OpenAiEmbedding>,
    pub model: String,
    pub usage: OpenAiUsage,
}

/// Parses a JSON body: 400 when it is not UTF-8 or not JSON, 422 when it is JSON of the
/// wrong shape, naming the field (`inputs[1]: invalid type: integer ...`).
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        ApiError::malformed(format!("the request body is not valid UTF-8 (bad byte at offset {})", e.valid_up_to()))
    })?;
    if text.trim().is_empty() {
        return Err(ApiError::malformed("the request body is empty; expected a JSON object"));
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            Category::Data if path == "." => ApiError::invalid(inner.to_string()),
            Category::Data => ApiError::invalid(format!("`{path}`: {inner}")),
            Category::Syntax | Category::Eof | Category::Io => ApiError::malformed(format!("invalid JSON: {inner}")),
        }
    })?;
    de.end().map_err(|e| ApiError::malformed(format!("invalid JSON: {e}")))?;
    // serde also fills a struct from a list of its fields in order; a body is an object.
    if !text.trim_start().starts_with('{') {
        return Err(ApiError::invalid("the request body must be a JSON object"));
    }
    Ok(value)
}

/// Standard base64 with padding.
pub fn base64_f32(values: &[f32]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n =
            (chunk[0] as u32) << 16 | (*chunk.get(1).unwrap_or(&0) as u32) << 8 | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_a_string_or_a_list_of_strings() {
        let r: EmbedRequest = parse_json(br#"{"inputs": "red shoes"}"#).unwrap();
        assert_eq!(r.inputs, Inputs::One("red shoes".into()));
        assert!(r.normalize && !r.truncate);
        let r: EmbedRequest = parse_json(br#"{"inputs": ["a", "b"], "truncate": true, "extra": 1}"#).unwrap();
        assert_eq!(r.inputs, Inputs::Many(vec!["a".into(), "b".into()]));
        assert!(r.truncate);
    }

    #[test]
    fn errors_name_the_field_and_pick_the_status() {
        let cases: &[(&[u8], u16, &str)] = &[
            (br#"{"inputs": ["a", 3]}"#, 422, "`inputs[1]`: invalid type: integer `3`, expected a string"),
            (br#"{"inputs": 3}"#, 422, "`inputs`: invalid type: integer `3`, expected a string or a list of strings"),
            (br#"{"inputs": "a", "truncate": "yes"}"#, 422, "`truncate`: invalid type: string"),
            (br#"{"input": "a"}"#, 422, "missing field `inputs`"),
            (br#"["a"]"#, 422, "must be a JSON object"),
            (br#"42"#, 422, "invalid type: integer `42`, expected struct EmbedRequest"),
            (br#"{"inputs": "a""#, 400, "invalid JSON: EOF"),
            (br#"{"inputs": "a"} x"#, 400, "invalid JSON: trailing characters"),
            (b"", 400, "body is empty"),
            (b"{\"inputs\": \"\xff\"}", 400, "not valid UTF-8 (bad byte at offset 12)"),
        ];
        for (body, status, message) in cases {
            let Err(err) = parse_json::<EmbedRequest>(body) else {
                panic!("{} parsed", String::from_utf8_lossy(body));
            };
            assert_eq!(err.status.as_u16(), *status, "{}: {err}", String::from_utf8_lossy(body));
            assert!(err.message.contains(message), "{}: {err}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn base64_matches_the_standard_alphabet() {
        // 1.0f32 = 00 00 80 3f; 2.0f32 = 00 00 00 40.
        assert_eq!(base64_f32(&[1.0]), "AACAPw==");
        assert_eq!(base64_f32(&[1.0, 2.0]), "AACAPwAAAEA=");
        assert_eq!(base64_f32(&[]), "");
    }
}
