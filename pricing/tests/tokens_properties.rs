//! Properties of token counting that hold for any input, and its behaviour at the edges.

use credex_pricing::tokens::{
    count_chat, count_text, ChatMessage, Encoding, TokenError, MAX_INPUT_BYTES,
};
use proptest::prelude::*;

const MODELS: [&str; 4] = ["gpt-4", "gpt-4o", "gpt-oss-20b", "claude-sonnet-4"];

fn tokens(model: &str, text: &str) -> u64 {
    count_text(model, text).expect("counts").tokens()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Every BPE token covers at least one byte, so an exact count never exceeds the bytes.
    #[test]
    fn exact_counts_never_exceed_the_bytes(text in any::<String>()) {
        for model in &MODELS[..3] {
            let count = count_text(model, &text).expect("counts");
            prop_assert!(!count.is_estimated());
            prop_assert!(count.tokens() <= text.len() as u64);
            prop_assert_eq!(count.tokens() == 0, text.is_empty());
        }
    }

    /// A chat count is the cookbook sum of its parts' text counts.
    #[test]
    fn chat_counts_are_the_sum_of_their_parts(
        parts in prop::collection::vec(("[a-z]{1,9}", any::<String>(), prop::option::of("[A-Za-z_]{0,8}")), 0..6)
    ) {
        let messages: Vec<ChatMessage> = parts
            .iter()
            .map(|(role, content, name)| ChatMessage {
                role: role.clone(),
                content: content.clone(),
                name: name.clone(),
            })
            .collect();
        for model in ["gpt-4o", "gpt-3.5-turbo-0301"] {
            let (per_message, per_name): (u64, i64) =
                if model == "gpt-3.5-turbo-0301" { (4, -1) } else { (3, 1) };
            let mut expected = 3;
            for message in &messages {
                expected += per_message + tokens(model, &message.role) + tokens(model, &message.content);
                if let Some(name) = &message.name {
                    expected = (expected + tokens(model, name)).saturating_add_signed(per_name);
                }
            }
            prop_assert_eq!(count_chat(model, &messages).expect("counts").tokens(), expected);
        }
    }
}

#[test]
fn special_token_names_are_ordinary_text_in_every_encoding() {
    // As one special token each would be 1; as text they are several ordinary tokens.
    for model in MODELS {
        for name in [
            "<|endoftext|>",
            "<|endofprompt|>",
            "<|start|>",
            "<|reserved_200100|>",
        ] {
            assert!(tokens(model, name) >= 4, "{model} {name}");
        }
    }
}

/// A run of ~a million whitespace characters exhausts the regex engine's backtracking stack
/// (Python tiktoken raises a PanicException). The count falls back to chunks, marked estimated.
#[test]
fn huge_whitespace_runs_fall_back_to_chunks_without_panicking() {
    let text = format!("{}x", " ".repeat(1_200_000));
    let count = count_text("gpt-4o", &text).expect("counts");
    assert_eq!(count.encoding(), Encoding::O200k);
    assert!(count.is_estimated());
    // o200k has tokens of long space runs: far fewer tokens than bytes, but not zero.
    assert!(
        count.tokens() > 1_000 && count.tokens() < 100_000,
        "{count:?}"
    );
    // A prefix the engine handles is exact.
    let short = count_text("gpt-4o", &text[text.len() - 100_001..]).expect("counts");
    assert!(!short.is_estimated());
}

#[test]
fn the_input_cap_is_inclusive() {
    let text = "ab ".repeat(MAX_INPUT_BYTES / 3);
    assert!(text.len() <= MAX_INPUT_BYTES);
    assert!(count_text("gpt-4o", &text).is_ok());
    let over = format!("{text}{}", "x".repeat(MAX_INPUT_BYTES - text.len() + 1));
    assert_eq!(
        count_text("gpt-4o", &over),
        Err(TokenError::InputTooLarge {
            bytes: MAX_INPUT_BYTES + 1,
            max: MAX_INPUT_BYTES
        })
    );
}
