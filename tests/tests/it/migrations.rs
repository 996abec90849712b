//! Both backends' migrations keep the same versions, so one schema history serves both.

use std::path::Path;

fn versions(dir: &str) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir);
    let mut versions: Vec<String> = std::fs::read_dir(&path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .map(|entry| {
            entry
                .expect("a directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.ends_with(".sql"))
        .map(|name| name.split('_').next().unwrap_or_default().to_owned())
        .collect();
    versions.sort();
    versions
}

#[test]
fn sqlite_and_postgres_migrations_have_the_same_versions() {
    let postgres = versions("migrations/postgres");
    let sqlite = versions("migrations/sqlite");
    assert!(!postgres.is_empty(), "no migrations found");
    assert_eq!(postgres, sqlite);
}
