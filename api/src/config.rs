//! Configuration: command-line options and `CREDEX_*` / `DATABASE_URL` environment variables.

use std::path::PathBuf;

use anyhow::Context;

/// Where the server listens and keeps its data.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "CREDEX_BIND", default_value = "127.0.0.1:8080")]
    pub bind: String,

    /// Directory of the embedded SQLite database (used when no DATABASE_URL is given).
    #[arg(long, env = "CREDEX_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// `postgres://…` to use PostgreSQL, or `sqlite:…`; default: SQLite in the data directory.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

impl Config {
    /// The database URL to connect to, creating the data directory for the default SQLite
    /// database.
    pub fn database_url(&self) -> anyhow::Result<String> {
        if let Some(url) = &self.database_url {
            return Ok(url.clone());
        }
        std::fs::create_dir_all(&self.data_dir)
            .with_context(|| format!("create the data directory {}", self.data_dir.display()))?;
        Ok(format!(
            "sqlite://{}",
            self.data_dir.join("credex.db").display()
        ))
    }
}

/// A database URL with its password hidden, for logs.
pub fn redacted(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let Some(at) = rest.find('@') else {
        return url.to_owned();
    };
    let credentials = &rest[..at];
    match credentials.find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &url[..scheme_end + 3],
            &credentials[..colon],
            &rest[at..]
        ),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(
            redacted("postgres://credex:s3cret@db:5432/credex"),
            "postgres://credex:***@db:5432/credex"
        );
        assert_eq!(
            redacted("postgres://root@db/credex"),
            "postgres://root@db/credex"
        );
        assert_eq!(
            redacted("sqlite://./data/credex.db"),
            "sqlite://./data/credex.db"
        );
    }
}
