//! Configuration, in layers: defaults, then a TOML file (`--config` / `CREDEX_CONFIG`), then
//! `CREDEX_*` environment variables (and `DATABASE_URL`), then command-line options. Secrets
//! (the database URL may carry a password) never print: [`Config`]'s `Debug` hides them and
//! logs show [`redacted`] URLs.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use credex_pricing::CrFaceValue;
use rust_decimal::Decimal;
use serde::Deserialize;

use crate::market::FraudPolicy;

pub const DEFAULT_BIND: &str = "127.0.0.1:8080";
pub const DEFAULT_DATA_DIR: &str = "./data";

/// The options as given on the command line or in the environment; each overrides the file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigArgs {
    /// A TOML file with any of: bind, data_dir, database_url, admin_email, admin_password,
    /// jwt_secret, jwt_previous_secrets, cr_face_value_usd, market_min_verification_level,
    /// market_min_org_age_days, market_paid_plan_required, market_sell_cap_basis_points,
    /// market_orders_per_minute, smtp_url, smtp_host, smtp_port, smtp_from, outbox_dir,
    /// webhooks_allow_private.
    #[arg(long = "config", env = "CREDEX_CONFIG")]
    pub config_file: Option<PathBuf>,

    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "CREDEX_BIND")]
    pub bind: Option<String>,

    /// Directory of the embedded SQLite database, used when no database URL is given
    /// [default: ./data].
    #[arg(long, env = "CREDEX_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// `postgres://…` to use PostgreSQL, or `sqlite:…`; default: SQLite in the data directory.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// The first admin's e-mail, used on a first start when there is no admin yet.
    #[arg(long, env = "CREDEX_ADMIN_EMAIL")]
    pub admin_email: Option<String>,

    /// The first admin's password (with CREDEX_ADMIN_EMAIL); without it a first start makes
    /// one up and prints it once.
    #[arg(long, env = "CREDEX_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,

    /// The key (at least 32 bytes) that signs access tokens; without it, every process of the
    /// deployment shares one made up on the first start and kept in the database.
    #[arg(long, env = "CREDEX_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Keys that signed access tokens before CREDEX_JWT_SECRET, comma-separated: tokens they
    /// signed stay valid until they expire, so the key can rotate without signing anyone out.
    #[arg(
        long,
        env = "CREDEX_JWT_PREVIOUS_SECRETS",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub jwt_previous_secrets: Vec<String>,

    /// What one CR is worth in USD, a decimal such as `1` or `0.01` (more than 0, at most
    /// 1000000, at most 6 decimal places) [default: 1].
    #[arg(long, env = "CREDEX_CR_FACE_VALUE_USD")]
    pub cr_face_value_usd: Option<String>,

    /// The lowest identity verification level an org needs to sell tokens [default: 1].
    #[arg(long, env = "CREDEX_MARKET_MIN_VERIFICATION_LEVEL")]
    pub market_min_verification_level: Option<u8>,

    /// How many days old an org must be to sell tokens [default: 14].
    #[arg(long, env = "CREDEX_MARKET_MIN_ORG_AGE_DAYS")]
    pub market_min_org_age_days: Option<u32>,

    /// Whether only orgs on a paid plan may sell tokens [default: true].
    #[arg(long, env = "CREDEX_MARKET_PAID_PLAN_REQUIRED")]
    pub market_paid_plan_required: Option<bool>,

    /// How much of a cycle's allotment an org may sell, in basis points (10000 = 100%)
    /// [default: 10000].
    #[arg(long, env = "CREDEX_MARKET_SELL_CAP_BASIS_POINTS")]
    pub market_sell_cap_basis_points: Option<u32>,

    /// The most listings, amendments, cancels, orders and buybacks one org may send per
    /// minute [default: 120].
    #[arg(long, env = "CREDEX_MARKET_ORDERS_PER_MINUTE")]
    pub market_orders_per_minute: Option<u32>,

    /// The SMTP relay e-mail goes through, `smtp://host[:port]` (plain SMTP, port 25 by
    /// default). Without it (or CREDEX_SMTP_HOST), e-mails are written to the outbox directory
    /// and price alerts by e-mail are refused.
    #[arg(long, env = "CREDEX_SMTP_URL")]
    pub smtp_url: Option<String>,

    /// The SMTP relay's host: the older spelling of CREDEX_SMTP_URL (give one of the two).
    #[arg(long, env = "CREDEX_SMTP_HOST")]
    pub smtp_host: Option<String>,

    /// The SMTP relay's port with CREDEX_SMTP_HOST [default: 25].
    #[arg(long, env = "CREDEX_SMTP_PORT")]
    pub smtp_port: Option<u16>,

    /// The sender of alert and report e-mails [default: alerts@credex.localhost].
    #[arg(long, env = "CREDEX_SMTP_FROM")]
    pub smtp_from: Option<String>,

    /// Where e-mails are written, one `.eml` file each, when no SMTP relay is configured
    /// [default: <data dir>/outbox].
    #[arg(long, env = "CREDEX_OUTBOX_DIR")]
    pub outbox_dir: Option<PathBuf>,

    /// Whether price-alert webhooks may target loopback and private addresses [default:
    /// false]; for tests and single-host setups.
    #[arg(long, env = "CREDEX_WEBHOOKS_ALLOW_PRIVATE")]
    pub webhooks_allow_private: Option<bool>,

    /// Fill an empty database with a demo provider (orgs, users, two cycles of usage, market
    /// activity, budgets) through the API and print how to sign in; on a database that holds
    /// orgs already, only print the sign-in hint.
    #[arg(long, env = "CREDEX_DEMO")]
    pub demo: bool,
}

/// The keys a configuration file may hold; any other key is an error, not a silent no-op.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    bind: Option<String>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    admin_email: Option<String>,
    admin_password: Option<String>,
    jwt_secret: Option<String>,
    #[serde(default)]
    jwt_previous_secrets: Vec<String>,
    /// A decimal in a string (`"1"`, `"0.01"`): never a TOML float.
    cr_face_value_usd: Option<String>,
    market_min_verification_level: Option<u8>,
    market_min_org_age_days: Option<u32>,
    market_paid_plan_required: Option<bool>,
    market_sell_cap_basis_points: Option<u32>,
    market_orders_per_minute: Option<u32>,
    smtp_url: Option<String>,
    smtp_host: Option<String>,
    smtp_port: Option<u16>,
    smtp_from: Option<String>,
    outbox_dir: Option<PathBuf>,
    webhooks_allow_private: Option<bool>,
}

/// A value that must not reach logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The resolved configuration of a `credex` process.
#[derive(Debug, Clone)]
pub struct Config {
    pub bind: String,
    pub data_dir: PathBuf,
    database_url: Option<Secret>,
    pub admin_email: Option<String>,
    pub admin_password: Option<Secret>,
    pub jwt_secret: Option<Secret>,
    pub jwt_previous_secrets: Vec<Secret>,
    /// What one CR is worth in USD (1 by default).
    pub cr_face_value: CrFaceValue,
    /// Who may sell on the market, and how much.
    pub market_policy: FraudPolicy,
    /// Market writes (listings, amendments, cancels, orders, buybacks) per org per minute.
    pub market_orders_per_minute: u32,
    /// The SMTP relay for e-mails: host, port, sender. Without it e-mails go to `outbox_dir`.
    pub smtp: Option<(String, u16, String)>,
    /// The sender of e-mails (also the sender in `smtp`).
    pub mail_from: String,
    /// Where e-mails are written as `.eml` files when there is no SMTP relay.
    pub outbox_dir: PathBuf,
    /// Whether alert webhooks may target loopback and private addresses.
    pub webhooks_allow_private: bool,
    /// Whether `serve` fills an empty database with demo data (see [`crate::demo`]).
    pub demo: bool,
}

/// The default sender of alert e-mails.
pub const DEFAULT_SMTP_FROM: &str = "alerts@credex.localhost";

/// The default of [`Config::market_orders_per_minute`].
pub const DEFAULT_MARKET_ORDERS_PER_MINUTE: u32 = 120;

impl Config {
    /// Resolves the layers: options and environment over the file over the defaults.
    pub fn load(args: ConfigArgs) -> anyhow::Result<Self> {
        let file = match &args.config_file {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let data_dir = args
            .data_dir
            .clone()
            .or(file.data_dir.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let mail_from = args
            .smtp_from
            .clone()
            .or(file.smtp_from.clone())
            .unwrap_or_else(|| DEFAULT_SMTP_FROM.to_owned());
        let relay = match (
            args.smtp_url.clone().or(file.smtp_url.clone()),
            args.smtp_host.clone().or(file.smtp_host.clone()),
        ) {
            (Some(_), Some(_)) => {
                anyhow::bail!("smtp_url and smtp_host: give one of the two, not both")
            }
            (Some(url), None) => Some(smtp_url(&url)?),
            (None, Some(host)) => Some((host, args.smtp_port.or(file.smtp_port).unwrap_or(25))),
            (None, None) => None,
        };
        Ok(Self {
            bind: args
                .bind
                .or(file.bind)
                .unwrap_or_else(|| DEFAULT_BIND.to_owned()),
            outbox_dir: args
                .outbox_dir
                .or(file.outbox_dir)
                .unwrap_or_else(|| data_dir.join("outbox")),
            data_dir,
            database_url: args.database_url.or(file.database_url).map(Secret),
            admin_email: args.admin_email.or(file.admin_email),
            admin_password: args.admin_password.or(file.admin_password).map(Secret),
            jwt_secret: args.jwt_secret.or(file.jwt_secret).map(Secret),
            jwt_previous_secrets: if args.jwt_previous_secrets.is_empty() {
                file.jwt_previous_secrets
            } else {
                args.jwt_previous_secrets
            }
            .into_iter()
            .map(Secret)
            .collect(),
            cr_face_value: match args.cr_face_value_usd.or(file.cr_face_value_usd) {
                Some(text) => face_value(&text)?,
                None => CrFaceValue::ONE_USD,
            },
            market_policy: {
                let defaults = FraudPolicy::default();
                let policy = FraudPolicy {
                    min_verification_level: args
                        .market_min_verification_level
                        .or(file.market_min_verification_level)
                        .unwrap_or(defaults.min_verification_level),
                    min_org_age_days: args
                        .market_min_org_age_days
                        .or(file.market_min_org_age_days)
                        .unwrap_or(defaults.min_org_age_days),
                    paid_plan_required: args
                        .market_paid_plan_required
                        .or(file.market_paid_plan_required)
                        .unwrap_or(defaults.paid_plan_required),
                    sell_cap_basis_points: args
                        .market_sell_cap_basis_points
                        .or(file.market_sell_cap_basis_points)
                        .unwrap_or(defaults.sell_cap_basis_points),
                };
                policy
                    .validate()
                    .map_err(|error| anyhow::anyhow!("market_{error}"))?;
                policy
            },
            market_orders_per_minute: {
                let rate = args
                    .market_orders_per_minute
                    .or(file.market_orders_per_minute)
                    .unwrap_or(DEFAULT_MARKET_ORDERS_PER_MINUTE);
                if rate == 0 {
                    anyhow::bail!("market_orders_per_minute: at least 1");
                }
                rate
            },
            smtp: relay.map(|(host, port)| (host, port, mail_from.clone())),
            mail_from,
            webhooks_allow_private: args
                .webhooks_allow_private
                .or(file.webhooks_allow_private)
                .unwrap_or(false),
            demo: args.demo,
        })
    }

    /// The configuration for a server on `bind` keeping its data in `data_dir`.
    pub fn new(bind: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        Self {
            bind: bind.into(),
            outbox_dir: data_dir.join("outbox"),
            data_dir,
            database_url: None,
            admin_email: None,
            admin_password: None,
            jwt_secret: None,
            jwt_previous_secrets: Vec::new(),
            cr_face_value: CrFaceValue::ONE_USD,
            market_policy: FraudPolicy::default(),
            market_orders_per_minute: DEFAULT_MARKET_ORDERS_PER_MINUTE,
            smtp: None,
            mail_from: DEFAULT_SMTP_FROM.to_owned(),
            webhooks_allow_private: false,
            demo: false,
        }
    }

    pub fn with_database_url(mut self, url: impl Into<String>) -> Self {
        self.database_url = Some(Secret(url.into()));
        self
    }

    /// The database URL to connect to, creating the data directory for the default SQLite
    /// database.
    pub fn database_url(&self) -> anyhow::Result<String> {
        if let Some(url) = &self.database_url {
            return Ok(url.expose().to_owned());
        }
        std::fs::create_dir_all(&self.data_dir)
            .with_context(|| format!("create the data directory {}", self.data_dir.display()))?;
        Ok(format!(
            "sqlite://{}",
            self.data_dir.join("credex.db").display()
        ))
    }
}

/// The host and port of an SMTP URL: `smtp://host[:port]` (port 25 by default). Plain SMTP
/// only: this build has no TLS, and credentials would cross the network in clear, so user
/// info, other schemes, paths and queries are refused.
fn smtp_url(url: &str) -> anyhow::Result<(String, u16)> {
    let refused = |why: &str| anyhow::anyhow!("smtp_url {url:?}: {why}");
    let rest = url
        .strip_prefix("smtp://")
        .ok_or_else(|| refused("must be smtp://host[:port] (no TLS in this build)"))?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['@', '/', '?', '#']) {
        return Err(refused("user info, paths and queries are not supported"));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, _)) if !host.ends_with(']') && host.contains(':') => (authority, None),
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = |b: u8| b.is_ascii_alphanumeric() || b"-._:".contains(&b);
    if host.is_empty() || !host.bytes().all(name) {
        return Err(refused("has no valid host"));
    }
    let port = match port {
        None => 25,
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|&port| port != 0)
            .ok_or_else(|| refused("has an invalid port"))?,
    };
    Ok((host.to_owned(), port))
}

/// A CR's face value in USD from its decimal text: plain digits with an optional fraction (no
/// sign, no exponent), more than 0, at most 1,000,000, at most 6 decimal places.
pub(crate) fn face_value(text: &str) -> anyhow::Result<CrFaceValue> {
    let plain = text
        .split_once('.')
        .map_or(!text.is_empty(), |(whole, fraction)| {
            !whole.is_empty() && !fraction.is_empty() && !fraction.contains('.')
        })
        && text.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    let value = plain
        .then(|| text.parse::<Decimal>().ok())
        .flatten()
        .and_then(|usd| CrFaceValue::new(usd).ok());
    value.with_context(|| {
        format!(
            "cr_face_value_usd {text:?}: a decimal such as 1 or 0.01, more than 0, at most \
             1000000, at most 6 decimal places"
        )
    })
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read the configuration file {}", path.display()))?;
    toml::from_str(&text)
        .with_context(|| format!("the configuration file {} is not valid", path.display()))
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
    use super::*;

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
        let config =
            Config::new("127.0.0.1:0", "/tmp").with_database_url("postgres://u:s3cret@h/d");
        assert!(!format!("{config:?}").contains("s3cret"), "{config:?}");
    }

    #[test]
    fn layers_resolve_options_over_file_over_defaults() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("credex.toml");
        std::fs::write(
            &path,
            "bind = \"0.0.0.0:9000\"\ndata_dir = \"/var/lib/credex\"\n",
        )
        .expect("write the file");
        let defaults = Config::load(ConfigArgs::default()).expect("defaults");
        assert_eq!(
            (defaults.bind.as_str(), defaults.data_dir.as_path()),
            (DEFAULT_BIND, Path::new(DEFAULT_DATA_DIR))
        );
        let from_file = Config::load(ConfigArgs {
            config_file: Some(path.clone()),
            ..ConfigArgs::default()
        })
        .expect("the file");
        assert_eq!(from_file.bind, "0.0.0.0:9000");
        assert_eq!(from_file.data_dir, Path::new("/var/lib/credex"));
        let overridden = Config::load(ConfigArgs {
            config_file: Some(path),
            bind: Some("127.0.0.1:7000".to_owned()),
            ..ConfigArgs::default()
        })
        .expect("options over the file");
        assert_eq!(overridden.bind, "127.0.0.1:7000");
        assert_eq!(overridden.data_dir, Path::new("/var/lib/credex"));
    }

    #[test]
    fn the_face_value_of_a_cr_is_a_bounded_decimal() {
        let load = |value: &str| {
            Config::load(ConfigArgs {
                cr_face_value_usd: Some(value.to_owned()),
                ..ConfigArgs::default()
            })
            .map(|config| config.cr_face_value.usd_per_cr().to_string())
        };
        assert_eq!(
            Config::load(ConfigArgs::default())
                .expect("defaults")
                .cr_face_value,
            CrFaceValue::ONE_USD
        );
        assert_eq!(load("0.01").expect("a cent"), "0.01");
        assert_eq!(load("2.50").expect("2.5 USD"), "2.5");
        for refused in [
            "",
            "0",
            "-1",
            "1e2",
            "0.0000001",
            "1000001",
            ".5",
            "5.",
            "1.2.3",
            " 1",
        ] {
            assert!(load(refused).is_err(), "{refused:?}");
        }
    }

    #[test]
    fn smtp_urls_name_a_plain_relay() {
        assert_eq!(
            smtp_url("smtp://127.0.0.1:2525").expect("a relay"),
            ("127.0.0.1".to_owned(), 2525)
        );
        assert_eq!(
            smtp_url("smtp://mail.example/").expect("a relay"),
            ("mail.example".to_owned(), 25)
        );
        assert_eq!(
            smtp_url("smtp://[::1]:25").expect("a relay"),
            ("::1".to_owned(), 25)
        );
        for refused in [
            "smtps://mail.example",
            "mail.example:25",
            "smtp://",
            "smtp://u:p@mail.example",
            "smtp://mail.example:0",
            "smtp://mail.example:99999",
            "smtp://mail.example/x",
            "smtp://mail example",
        ] {
            assert!(smtp_url(refused).is_err(), "{refused}");
        }
        let both = Config::load(ConfigArgs {
            smtp_url: Some("smtp://a:25".to_owned()),
            smtp_host: Some("b".to_owned()),
            ..ConfigArgs::default()
        });
        assert!(both.is_err());
        let config = Config::load(ConfigArgs {
            smtp_url: Some("smtp://relay.example:2525".to_owned()),
            data_dir: Some(PathBuf::from("/srv/credex")),
            ..ConfigArgs::default()
        })
        .expect("a relay by URL");
        assert_eq!(
            config.smtp,
            Some((
                "relay.example".to_owned(),
                2525,
                DEFAULT_SMTP_FROM.to_owned()
            ))
        );
        assert_eq!(config.outbox_dir, Path::new("/srv/credex/outbox"));
    }

    #[test]
    fn unknown_keys_and_missing_files_are_errors() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("credex.toml");
        std::fs::write(&path, "bnd = \"0.0.0.0:9000\"\n").expect("write the file");
        let error = Config::load(ConfigArgs {
            config_file: Some(path),
            ..ConfigArgs::default()
        })
        .expect_err("a misspelt key is refused");
        assert!(
            format!("{error:#}").contains("unknown field `bnd`"),
            "{error:#}"
        );
        let missing = Config::load(ConfigArgs {
            config_file: Some(dir.path().join("absent.toml")),
            ..ConfigArgs::default()
        });
        assert!(missing.is_err());
    }
}
