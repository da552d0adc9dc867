//! The OpenAI wire format: request bodies, responses, stream chunks and the error object,
//! and the checks that turn a request into sampling settings or a 4xx error.
use common::tokenizer::Message;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Most choices one request may ask for.
pub const MAX_N: usize = 16;
/// Most stop strings one request may give (OpenAI's limit).
pub const MAX_STOPS: usize = 4;

/// An error as OpenAI returns it: an HTTP status and `{"error": {message, type, param, code}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// What went wrong, for a person.
    pub message: String,
    /// `invalid_request_error`, `rate_limit_error`, `server_error`, …
    pub kind: &'static str,
    /// The request field at fault.
    pub param: Option<&'static str>,
    /// A machine-readable code (`model_not_found`, `context_length_exceeded`, …).
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A 400 `invalid_request_error` about `param`.
    pub fn invalid(param: Option<&'static str>, message: impl Into<String>) -> Self {
        ApiError {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param,
            code: None,
        }
    }

    /// The same error with another status.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// The same error with a code.
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// 429: the queue is full.
    pub fn busy(queue: usize) -> Self {
        ApiError {
            status: 429,
            message: format!("the server is busy: {queue} requests are already waiting; retry shortly"),
            kind: "rate_limit_error",
            param: None,
            code: Some("queue_full"),
        }
    }

    /// 500/503: the engine failed or is gone.
    pub fn server(message: impl Into<String>) -> Self {
        ApiError {
            status: 500,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

/// `stop`: one string or a list of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// A single stop string.
    One(String),
    /// Up to four stop strings.
    Many(Vec<String>),
}

/// The sampling fields that chat and text completions share. Fields OpenAI defines that
/// do not apply here (`user`, `logit_bias`, `stream_options`, …) are accepted and ignored,
/// as clients send them.
#[derive(Debug, Clone, Deserialize)]
pub struct SamplingFields {
    /// Model name; must be the served model's (see `/v1/models`).
    pub model: Option<String>,
    /// 0 = greedy. OpenAI's default is 1.
    pub temperature: Option<f64>,
    /// Nucleus threshold in (0, 1].
    pub top_p: Option<f64>,
    /// Most tokens generated per choice (`max_completion_tokens` is the newer name).
    pub max_tokens: Option<i64>,
    /// Newer name of `max_tokens`.
    pub max_completion_tokens: Option<i64>,
    /// Strings that end a choice (not included in its text).
    pub stop: Option<Stop>,
    /// Choices to generate.
    pub n: Option<i64>,
    /// Seed of the sampling: the same seed gives the same text, batched or not.
    pub seed: Option<i64>,
    /// Server-sent events instead of one JSON body.
    #[serde(default)]
    pub stream: bool,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    /// The conversation so far.
    pub messages: Vec<ChatMessage>,
    /// Sampling settings.
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

/// One message; `content` is a string or a list of `{"type": "text", "text": …}` parts.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    /// `system`, `developer`, `user` or `assistant`.
    pub role: String,
    /// Text, or text parts.
    pub content: Option<Value>,
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    /// The text to continue (a string, or a list of one string).
    pub prompt: Value,
    /// Sampling settings.
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

/// What the engine needs of a request, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// 0 = greedy.
    pub temperature: f64,
    /// In (0, 1].
    pub top_p: f64,
    /// Requested cap on generated tokens (`None`: up to the context).
    pub max_tokens: Option<i64>,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Choices.
    pub n: usize,
    /// Seed, if given.
    pub seed: Option<u64>,
}

impl SamplingFields {
    /// Checks ranges against OpenAI's: errors name the field.
    pub fn resolve(&self, served: &str) -> Result<Sampling, ApiError> {
        if let Some(m) = &self.model {
            if m != served {
                return Err(ApiError::invalid(
                    Some("model"),
                    format!("the model `{m}` does not exist; this server serves `{served}`"),
                )
                .with_status(404)
                .with_code("model_not_found"));
            }
        }
        let temperature = self.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::invalid(
                Some("temperature"),
                format!("temperature must be in [0, 2], got {temperature}"),
            ));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid(
                Some("top_p"),
                format!("top_p must be in (0, 1], got {top_p}"),
            ));
        }
        let max_tokens = self.max_completion_tokens.or(self.max_tokens);
        if let Some(m) = max_tokens {
            if m < 1 {
                return Err(ApiError::invalid(
                    Some("max_tokens"),
                    format!("max_tokens must be at least 1, got {m}"),
                ));
            }
        }
        let n = self.n.unwrap_or(1);
        if !(1..=MAX_N as i64).contains(&n) {
            return Err(ApiError::invalid(
                Some("n"),
                format!("n must be in [1, {MAX_N}], got {n}"),
            ));
        }
        let stop = match &self.stop {
            None => vec![],
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.len() > MAX_STOPS || stop.iter().any(String::is_empty) {
            return Err(ApiError::invalid(
                Some("stop"),
                format!("stop takes up to {MAX_STOPS} non-empty strings"),
            ));
        }
        Ok(Sampling {
            temperature,
            top_p,
            max_tokens,
            stop,
            n: n as usize,
            seed: self.seed.map(|s| s as u64),
        })
    }
}

impl ChatRequest {
    /// The conversation as the tokenizer's messages (text parts joined).
    pub fn messages(&self) -> Result<Vec<Message>, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid(Some("messages"), "messages must not be empty"));
        }
        self.messages
            .iter()
            .map(|m| {
                let role = match m.role.as_str() {
                    "developer" => "system",
                    r @ ("system" | "user" | "assistant") => r,
                    r => {
                        return Err(ApiError::invalid(
                            Some("messages"),
                            format!("unsupported role `{r}` (expected system, developer, user or assistant)"),
                        ))
                    }
                };
                Ok(Message::new(role, content_text(m.content.as_ref())?))
            })
            .collect()
    }
}

fn content_text(content: Option<&Value>) -> Result<String, ApiError> {
    let bad = || ApiError::invalid(Some("messages"), "content must be a string or a list of text parts");
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for p in parts {
                match (p["type"].as_str(), p["text"].as_str()) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    _ => return Err(bad()),
                }
            }
            Ok(text)
        }
        Some(_) => Err(bad()),
    }
}

impl CompletionRequest {
    /// The prompt text: a string or a list holding one string.
    pub fn prompt_text(&self) -> Result<String, ApiError> {
        match &self.prompt {
            Value::String(s) => Ok(s.clone()),
            Value::Array(v) if v.len() == 1 && v[0].is_string() => Ok(v[0].as_str().unwrap_or_default().to_string()),
            _ => Err(ApiError::invalid(
                Some("prompt"),
                "prompt must be a string (or a list of one string)",
            )),
        }
    }
}

/// Token counts of a response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Usage {
    /// Tokens of the rendered prompt.
    pub prompt_tokens: usize,
    /// Tokens sampled over all choices (stop tokens included).
    pub completion_tokens: usize,
    /// Their sum.
    pub total_tokens: usize,
}

/// Seconds since the epoch (OpenAI's `created`).
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(v: Value) -> SamplingFields {
        serde_json::from_value(v).expect("fields parse")
    }

    #[test]
    fn resolves_openai_defaults_and_names_bad_fields() {
        let s = fields(json!({"model": "m"})).resolve("m").expect("valid");
        assert_eq!((s.temperature, s.top_p, s.n, s.max_tokens), (1.0, 1.0, 1, None));
        let e = fields(json!({"model": "other"})).resolve("m").unwrap_err();
        assert_eq!((e.status, e.code), (404, Some("model_not_found")));
        for (v, param) in [
            (json!({"max_tokens": -1}), "max_tokens"),
            (json!({"temperature": 3.0}), "temperature"),
            (json!({"top_p": 0.0}), "top_p"),
            (json!({"n": 0}), "n"),
            (json!({"stop": ["a", "b", "c", "d", "e"]}), "stop"),
        ] {
            let e = fields(v).resolve("m").unwrap_err();
            assert_eq!((e.status, e.param), (400, Some(param)));
        }
        let s = fields(json!({"stop": "x", "max_completion_tokens": 5, "seed": 3})).resolve("m");
        assert_eq!(
            s.map(|s| (s.stop, s.max_tokens, s.seed)),
            Ok((vec!["x".into()], Some(5), Some(3)))
        );
    }

    #[test]
    fn chat_content_parts_join_and_developer_is_system() -> Result<(), serde_json::Error> {
        let r: ChatRequest = serde_json::from_value(json!({"messages": [
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
        ], "user": "ignored"}))?;
        let m = r.messages().expect("valid");
        assert_eq!(m, vec![Message::new("system", "be brief"), Message::new("user", "ab")]);
        let bad: ChatRequest = serde_json::from_value(json!({"messages": [{"role": "tool", "content": "x"}]}))?;
        assert_eq!(bad.messages().unwrap_err().param, Some("messages"));
        Ok(())
    }
}
