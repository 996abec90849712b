//! The body of the `tokens` fuzz target (`fuzz/fuzz_targets/tokens.rs`), shared with its
//! regression test (`api/tests/fuzz_regressions.rs`), which replays every file of
//! `fuzz/regressions/tokens/` through it. Not part of the crate's API.
//!
//! The input is read as UTF-8 (lossily): its first line names the model, the rest is the text;
//! the text split at each `\u{1e}` (record separator) is also counted as chat messages whose
//! fields are split at `\u{1f}` (unit separator): role, content, name.

use crate::tokens::{
    count_chat, count_text, ChatMessage, Encoding, ModelTokenizer, REPLY_PRIMING_TOKENS,
};

/// The most chat messages one input makes.
const MESSAGES_MAX: usize = 16;

/// Runs one input. Panics when a property breaks.
pub fn tokens(data: &[u8]) {
    let input = String::from_utf8_lossy(data);
    let (model, text) = input.split_once('\n').unwrap_or((&input, ""));
    let Ok(tokenizer) = ModelTokenizer::for_model(model) else {
        assert!(
            count_text(model, text).is_err(),
            "a refused model counts nothing"
        );
        return;
    };
    let encoding = tokenizer.encoding();
    assert_eq!(
        Encoding::for_model(model),
        Ok(encoding),
        "resolution is deterministic"
    );
    let empty = tokenizer.count_text("").expect("the empty text is counted");
    assert_eq!(empty.tokens(), 0, "the empty text is 0 tokens");

    let first = tokenizer.count_text(text).expect("a small text is counted");
    let again = count_text(model, text).expect("a small text is counted");
    assert_eq!(first, again, "counts are deterministic");
    assert_eq!(first.encoding(), encoding);
    if !first.is_estimated() {
        // Byte-level BPE: every token covers at least one byte.
        assert!(first.tokens() <= u64::try_from(text.len()).expect("small"));
    }
    if !text.is_empty() && encoding != Encoding::Estimated {
        assert!(
            first.tokens() >= 1,
            "a non-empty text is at least one token"
        );
    }

    let messages: Vec<ChatMessage> = text
        .split('\u{1e}')
        .take(MESSAGES_MAX)
        .map(|record| {
            let mut fields = record.splitn(3, '\u{1f}');
            ChatMessage {
                role: fields.next().unwrap_or_default().to_owned(),
                content: fields.next().unwrap_or_default().to_owned(),
                name: fields.next().map(str::to_owned),
            }
        })
        .collect();
    let chat = tokenizer
        .count_chat(&messages)
        .expect("a small chat is counted");
    assert_eq!(
        Ok(chat),
        count_chat(model, &messages),
        "counts are deterministic"
    );
    if !chat.is_estimated() {
        assert!(
            chat.tokens() >= REPLY_PRIMING_TOKENS + u64::try_from(messages.len()).expect("few")
        );
    }
    let none = tokenizer.count_chat(&[]).expect("no messages are counted");
    if !none.is_estimated() {
        assert_eq!(none.tokens(), REPLY_PRIMING_TOKENS);
    }
}
