//! Every input in `fuzz/regressions/<target>/` (the seeds, and each crash `scripts/fuzz` ever
//! found) replayed through the very body its fuzz target runs (`fuzz/fuzz_targets/<target>.rs`
//! calls the same function). Part of `cargo nextest run --workspace`; needs neither nightly nor
//! cargo-fuzz.
//!
//! A target's directory missing or empty fails, and so does a directory no target claims: a
//! regression is never silently skipped.

use std::path::{Path, PathBuf};

/// A fuzz target's body: panics when a property breaks.
type Body = fn(&[u8]);

/// Each fuzz target and its body. `fuzz/Cargo.toml` lists the same names.
const TARGETS: &[(&str, Body)] = &[
    ("money", credex_api::fuzzing::money),
    ("dto", credex_api::fuzzing::dto),
    ("order_book", credex_matching::fuzzing::order_book),
    ("tokens", credex_pricing::fuzzing::tokens),
];

fn regressions() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions")
}

fn inputs(target: &str) -> Vec<PathBuf> {
    let dir = regressions().join(target);
    let entries =
        std::fs::read_dir(&dir).unwrap_or_else(|error| panic!("{}: {error}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "{} holds no input: keep at least one seed",
        dir.display()
    );
    files
}

fn replay(target: &str) {
    let (_, body) = TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("a known target");
    for path in inputs(target) {
        let data = std::fs::read(&path).expect("a readable input");
        let outcome = std::panic::catch_unwind(|| body(&data));
        assert!(
            outcome.is_ok(),
            "{} fails (reproduce with `scripts/fuzz --replay {target} {}`)",
            path.display(),
            path.display()
        );
    }
}

#[test]
fn money() {
    replay("money");
}

#[test]
fn dto() {
    replay("dto");
}

#[test]
fn order_book() {
    replay("order_book");
}

#[test]
fn tokens() {
    replay("tokens");
}

#[test]
fn every_regression_directory_belongs_to_a_target() {
    let entries = std::fs::read_dir(regressions()).expect("fuzz/regressions exists");
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        assert!(
            TARGETS.iter().any(|(target, _)| *target == name),
            "{} is not a fuzz target's directory",
            path.display()
        );
    }
    for (target, _) in TARGETS {
        assert!(!inputs(target).is_empty());
    }
}
