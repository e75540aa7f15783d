//! Attribute names (OpenTelemetry GenAI semantic conventions, OpenInference, OpenLLMetry, ours)
//! and the span-kind and operation mappings between them and our span kinds.

use crate::span::Kind;

// === GenAI (https://opentelemetry.io/docs/specs/semconv/gen-ai/) ===
pub const GEN_AI_OPERATION_NAME: &str = "gen_ai.operation.name";
pub const GEN_AI_PROVIDER_NAME: &str = "gen_ai.provider.name";
/// Deprecated in favour of `gen_ai.provider.name`; still read by many backends, so both are sent.
pub const GEN_AI_SYSTEM: &str = "gen_ai.system";
pub const GEN_AI_REQUEST_MODEL: &str = "gen_ai.request.model";
pub const GEN_AI_RESPONSE_MODEL: &str = "gen_ai.response.model";
pub const GEN_AI_USAGE_INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
pub const GEN_AI_USAGE_OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";
pub const GEN_AI_USAGE_CACHE_READ: &str = "gen_ai.usage.cache_read.input_tokens";
pub const GEN_AI_USAGE_CACHE_CREATION: &str = "gen_ai.usage.cache_creation.input_tokens";
pub const GEN_AI_RESPONSE_FINISH_REASONS: &str = "gen_ai.response.finish_reasons";
pub const GEN_AI_CONVERSATION_ID: &str = "gen_ai.conversation.id";
pub const GEN_AI_INPUT_MESSAGES: &str = "gen_ai.input.messages";
pub const GEN_AI_OUTPUT_MESSAGES: &str = "gen_ai.output.messages";
/// `gen_ai.request.<param>` for these request parameters (our `params` key → attribute suffix).
pub const GEN_AI_REQUEST_PARAMS: &[(&str, &str)] = &[
    ("temperature", "temperature"),
    ("top_p", "top_p"),
    ("top_k", "top_k"),
    ("max_tokens", "max_tokens"),
    ("max_completion_tokens", "max_tokens"),
    ("max_output_tokens", "max_tokens"),
    ("frequency_penalty", "frequency_penalty"),
    ("presence_penalty", "presence_penalty"),
    ("seed", "seed"),
    ("stop", "stop_sequences"),
    ("n", "choice.count"),
];
pub const GEN_AI_REQUEST_PREFIX: &str = "gen_ai.request.";
/// Older OpenLLMetry names.
pub const GEN_AI_USAGE_PROMPT_TOKENS: &str = "gen_ai.usage.prompt_tokens";
pub const GEN_AI_USAGE_COMPLETION_TOKENS: &str = "gen_ai.usage.completion_tokens";
pub const LLM_USAGE_TOTAL_TOKENS: &str = "llm.usage.total_tokens";
pub const LLM_REQUEST_TYPE: &str = "llm.request.type";
pub const GEN_AI_PROMPT_PREFIX: &str = "gen_ai.prompt.";
pub const GEN_AI_COMPLETION_PREFIX: &str = "gen_ai.completion.";

// === General ===
pub const ERROR_TYPE: &str = "error.type";
pub const SESSION_ID: &str = "session.id";
pub const USER_ID: &str = "user.id";
pub const ENDUSER_ID: &str = "enduser.id";
pub const HTTP_REQUEST_METHOD: &str = "http.request.method";
pub const HTTP_METHOD_OLD: &str = "http.method";
pub const URL_PATH: &str = "url.path";
pub const HTTP_TARGET_OLD: &str = "http.target";
pub const HTTP_RESPONSE_STATUS_CODE: &str = "http.response.status_code";
pub const HTTP_STATUS_CODE_OLD: &str = "http.status_code";
pub const SERVER_ADDRESS: &str = "server.address";
pub const SERVICE_NAME: &str = "service.name";

// === OpenInference (https://github.com/Arize-ai/openinference) ===
pub const OPENINFERENCE_SPAN_KIND: &str = "openinference.span.kind";
pub const INPUT_VALUE: &str = "input.value";
pub const INPUT_MIME_TYPE: &str = "input.mime_type";
pub const OUTPUT_VALUE: &str = "output.value";
pub const OUTPUT_MIME_TYPE: &str = "output.mime_type";
pub const LLM_MODEL_NAME: &str = "llm.model_name";
pub const LLM_PROVIDER: &str = "llm.provider";
pub const LLM_SYSTEM: &str = "llm.system";
pub const LLM_TOKEN_COUNT_PROMPT: &str = "llm.token_count.prompt";
pub const LLM_TOKEN_COUNT_COMPLETION: &str = "llm.token_count.completion";
pub const LLM_TOKEN_COUNT_TOTAL: &str = "llm.token_count.total";
pub const LLM_INVOCATION_PARAMETERS: &str = "llm.invocation_parameters";
pub const LLM_INPUT_MESSAGES_PREFIX: &str = "llm.input_messages.";
pub const LLM_OUTPUT_MESSAGES_PREFIX: &str = "llm.output_messages.";
pub const TAG_TAGS: &str = "tag.tags";
pub const JSON_MIME: &str = "application/json";

// === OpenLLMetry / Traceloop ===
pub const TRACELOOP_SPAN_KIND: &str = "traceloop.span.kind";
pub const TRACELOOP_ENTITY_INPUT: &str = "traceloop.entity.input";
pub const TRACELOOP_ENTITY_OUTPUT: &str = "traceloop.entity.output";
pub const TRACELOOP_SESSION: &str = "traceloop.association.properties.session_id";
pub const TRACELOOP_USER: &str = "traceloop.association.properties.user_id";

// === Ours (`llm_tracer.` prefix) ===
pub const P: &str = "llm_tracer.";
pub const LT_TRACE_ID: &str = "llm_tracer.trace_id";
pub const LT_SPAN_ID: &str = "llm_tracer.span_id";
pub const LT_PARENT_SPAN_ID: &str = "llm_tracer.parent_span_id";
pub const LT_KIND: &str = "llm_tracer.kind";
pub const LT_STATUS: &str = "llm_tracer.status";
/// The span's own duration (the proxy measures it with a monotonic clock, so it can differ from
/// end − start by a few microseconds).
pub const LT_DURATION_MS: &str = "llm_tracer.duration_ms";
pub const LT_ERROR_TYPE: &str = "llm_tracer.error.type";
pub const LT_ERROR_MESSAGE: &str = "llm_tracer.error.message";
pub const LT_SESSION_ID: &str = "llm_tracer.session_id";
pub const LT_USER_ID: &str = "llm_tracer.user_id";
pub const LT_TAGS: &str = "llm_tracer.tags";
pub const LT_METADATA_PREFIX: &str = "llm_tracer.metadata.";
pub const LT_UPSTREAM: &str = "llm_tracer.upstream";
pub const LT_OPERATION: &str = "llm_tracer.operation";
pub const LT_STREAM: &str = "llm_tracer.stream";
pub const LT_PARAMS: &str = "llm_tracer.params";
pub const LT_TOTAL_TOKENS: &str = "llm_tracer.usage.total_tokens";
pub const LT_REASONING_TOKENS: &str = "llm_tracer.usage.reasoning_tokens";
pub const LT_USAGE_SOURCE: &str = "llm_tracer.usage_source";
pub const LT_TTFT_MS: &str = "llm_tracer.ttft_ms";
pub const LT_COST_USD: &str = "llm_tracer.cost_usd";
pub const LT_FINISH_REASON: &str = "llm_tracer.finish_reason";
pub const LT_CAPTURE_TRUNCATED: &str = "llm_tracer.capture.truncated";
pub const LT_CAPTURE_BYTES_IN: &str = "llm_tracer.capture.bytes_in";
pub const LT_CAPTURE_BYTES_OUT: &str = "llm_tracer.capture.bytes_out";
pub const LT_CAPTURE_CHUNKS: &str = "llm_tracer.capture.chunks";

/// `gen_ai.operation.name` for one of our spans: the LLM operation for calls, and the GenAI
/// names for tool and agent spans.
pub fn operation_name(kind: Kind, operation: Option<&str>) -> Option<&'static str> {
    match (kind, operation) {
        (_, Some("chat" | "messages" | "responses")) => Some("chat"),
        (_, Some("completion")) => Some("text_completion"),
        (_, Some("embeddings")) => Some("embeddings"),
        (Kind::Embedding, _) => Some("embeddings"),
        (Kind::Llm, _) => Some("chat"),
        (Kind::Tool, _) => Some("execute_tool"),
        (Kind::Agent, _) => Some("invoke_agent"),
        _ => None,
    }
}

/// Our operation for a GenAI `gen_ai.operation.name`.
pub fn our_operation(gen_ai: &str) -> Option<&'static str> {
    match gen_ai {
        "chat" | "generate_content" => Some("chat"),
        "text_completion" | "completion" => Some("completion"),
        "embeddings" | "embedding" => Some("embeddings"),
        _ => None,
    }
}

/// OpenInference `openinference.span.kind` → our kind.
pub fn kind_from_openinference(v: &str) -> Option<Kind> {
    Some(match v.to_ascii_uppercase().as_str() {
        "LLM" => Kind::Llm,
        "CHAIN" | "GUARDRAIL" | "EVALUATOR" | "PROMPT" | "UNKNOWN" => Kind::Chain,
        "TOOL" => Kind::Tool,
        "AGENT" => Kind::Agent,
        "RETRIEVER" | "RERANKER" => Kind::Retriever,
        "EMBEDDING" => Kind::Embedding,
        _ => return None,
    })
}

/// OpenLLMetry `traceloop.span.kind` → our kind.
pub fn kind_from_traceloop(v: &str) -> Option<Kind> {
    Some(match v.to_ascii_lowercase().as_str() {
        "workflow" | "task" => Kind::Chain,
        "agent" => Kind::Agent,
        "tool" => Kind::Tool,
        "llm" => Kind::Llm,
        _ => return None,
    })
}

/// GenAI `gen_ai.operation.name` → our kind.
pub fn kind_from_gen_ai_operation(v: &str) -> Option<Kind> {
    Some(match v {
        "chat" | "text_completion" | "generate_content" => Kind::Llm,
        "embeddings" => Kind::Embedding,
        "execute_tool" => Kind::Tool,
        "invoke_agent" | "create_agent" => Kind::Agent,
        _ => return None,
    })
}

/// OpenLLMetry `llm.request.type` → our kind.
pub fn kind_from_llm_request_type(v: &str) -> Option<Kind> {
    Some(match v {
        "chat" | "completion" => Kind::Llm,
        "embedding" => Kind::Embedding,
        "rerank" => Kind::Retriever,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_kinds_map_from_every_convention() {
        let cases: [(Option<Kind>, Kind); 12] = [
            (kind_from_openinference("CHAIN"), Kind::Chain),
            (kind_from_openinference("LLM"), Kind::Llm),
            (kind_from_openinference("RERANKER"), Kind::Retriever),
            (kind_from_openinference("GUARDRAIL"), Kind::Chain),
            (kind_from_openinference("EMBEDDING"), Kind::Embedding),
            (kind_from_traceloop("workflow"), Kind::Chain),
            (kind_from_traceloop("task"), Kind::Chain),
            (kind_from_traceloop("tool"), Kind::Tool),
            (kind_from_gen_ai_operation("execute_tool"), Kind::Tool),
            (kind_from_gen_ai_operation("invoke_agent"), Kind::Agent),
            (kind_from_gen_ai_operation("embeddings"), Kind::Embedding),
            (kind_from_llm_request_type("chat"), Kind::Llm),
        ];
        for (i, (got, want)) in cases.into_iter().enumerate() {
            assert_eq!(got, Some(want), "case {i}");
        }
        assert_eq!(kind_from_openinference("SOMETHING"), None);
    }

    #[test]
    fn operations_map_to_gen_ai_names() {
        assert_eq!(operation_name(Kind::Llm, Some("messages")), Some("chat"));
        assert_eq!(
            operation_name(Kind::Llm, Some("completion")),
            Some("text_completion")
        );
        assert_eq!(operation_name(Kind::Embedding, None), Some("embeddings"));
        assert_eq!(operation_name(Kind::Tool, None), Some("execute_tool"));
        assert_eq!(operation_name(Kind::Chain, None), None);
    }
}
