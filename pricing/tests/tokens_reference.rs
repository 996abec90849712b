//! Token counts must equal Python tiktoken's, exactly, on a fixed corpus.
//!
//! `fixtures/tokens/corpus.json` holds the inputs; `fixtures/tokens/reference.json` the counts
//! Python tiktoken made of them (see `fixtures/tokens/make_reference.py` for how, offline).

use std::collections::HashMap;

use credex_pricing::tokens::{
    count_chat, count_text, ChatMessage, Encoding, EstimateFamily, ModelTokenizer,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Corpus {
    texts: Vec<Text>,
    chats: Vec<Chat>,
    models: Vec<String>,
}

#[derive(Deserialize)]
struct Text {
    id: String,
    text: String,
}

#[derive(Deserialize)]
struct Chat {
    id: String,
    model: String,
    messages: Vec<ChatMessage>,
}

#[derive(Deserialize)]
struct Reference {
    tiktoken_version: String,
    texts: Vec<TextCounts>,
    chats: Vec<ChatCount>,
    models: Vec<ModelEncoding>,
}

#[derive(Deserialize)]
struct TextCounts {
    id: String,
    bytes: usize,
    cl100k_base: u64,
    o200k_base: u64,
    o200k_harmony: u64,
}

#[derive(Deserialize)]
struct ChatCount {
    id: String,
    model: String,
    encoding: String,
    tokens: u64,
}

#[derive(Deserialize)]
struct ModelEncoding {
    model: String,
    encoding: String,
}

fn load() -> (Corpus, Reference) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tokens");
    let corpus = std::fs::read_to_string(format!("{dir}/corpus.json")).expect("corpus.json");
    let reference =
        std::fs::read_to_string(format!("{dir}/reference.json")).expect("reference.json");
    (
        serde_json::from_str(&corpus).expect("corpus.json parses"),
        serde_json::from_str(&reference).expect("reference.json parses"),
    )
}

/// Counts `text` for `model` and checks it is an exact count in `encoding`.
fn exact_count(model: &str, encoding: Encoding, text: &str) -> u64 {
    let count = count_text(model, text).expect("counts");
    assert_eq!(count.encoding(), encoding, "{model}");
    assert!(!count.is_estimated(), "{model}: exact count expected");
    count.tokens()
}

#[test]
fn text_counts_match_python_tiktoken() {
    let (corpus, reference) = load();
    assert!(reference.tiktoken_version.starts_with("0.14"));
    assert!(corpus.texts.len() >= 40);
    assert_eq!(corpus.texts.len(), reference.texts.len());
    let mut mismatches = Vec::new();
    for (text, expected) in corpus.texts.iter().zip(&reference.texts) {
        assert_eq!(text.id, expected.id);
        assert_eq!(text.text.len(), expected.bytes, "{}: same bytes", text.id);
        let actual = [
            exact_count("gpt-4", Encoding::Cl100k, &text.text),
            exact_count("gpt-4o", Encoding::O200k, &text.text),
            exact_count("gpt-oss-120b", Encoding::O200kHarmony, &text.text),
        ];
        let wanted = [
            expected.cl100k_base,
            expected.o200k_base,
            expected.o200k_harmony,
        ];
        if actual != wanted {
            mismatches.push(format!("{}: {actual:?} != {wanted:?}", text.id));
        }
    }
    assert!(mismatches.is_empty(), "{mismatches:#?}");
}

#[test]
fn chat_counts_match_the_cookbook_in_python() {
    let (corpus, reference) = load();
    assert_eq!(corpus.chats.len(), reference.chats.len());
    for (chat, expected) in corpus.chats.iter().zip(&reference.chats) {
        assert_eq!((&chat.id, &chat.model), (&expected.id, &expected.model));
        let count = count_chat(&chat.model, &chat.messages).expect("counts");
        assert_eq!(count.encoding().as_str(), expected.encoding, "{}", chat.id);
        assert!(!count.is_estimated(), "{}", chat.id);
        assert_eq!(count.tokens(), expected.tokens, "{}", chat.id);
    }
}

#[test]
fn model_encodings_match_tiktoken_encoding_for_model() {
    let (corpus, reference) = load();
    assert_eq!(corpus.models.len(), reference.models.len());
    for expected in &reference.models {
        let encoding = Encoding::for_model(&expected.model).expect("known model");
        assert_eq!(encoding.as_str(), expected.encoding, "{}", expected.model);
        // Hosted and upper-case spellings resolve the same way.
        let hosted = format!("azure/{}", expected.model.to_uppercase());
        assert_eq!(Encoding::for_model(&hosted), Ok(encoding), "{hosted}");
    }
}

#[test]
fn estimates_scale_the_o200k_reference_by_the_family_ratio() {
    let (corpus, reference) = load();
    let o200k: HashMap<&str, u64> = reference
        .texts
        .iter()
        .map(|counts| (counts.id.as_str(), counts.o200k_base))
        .collect();
    for model in [
        "claude-sonnet-4-5",
        "gemini-2.5-flash",
        "mistral-large-2411",
        "unknown-model",
    ] {
        let tokenizer = ModelTokenizer::for_model(model).expect("resolves");
        let ratio = tokenizer
            .estimate_family()
            .map(EstimateFamily::ratio)
            .expect("an estimated model");
        for text in &corpus.texts {
            let count = tokenizer.count_text(&text.text).expect("counts");
            assert_eq!(count.encoding(), Encoding::Estimated);
            assert!(count.is_estimated());
            let expected = (o200k[text.id.as_str()] * ratio.numerator).div_ceil(ratio.denominator);
            assert_eq!(count.tokens(), expected, "{model} {}", text.id);
        }
    }
}
