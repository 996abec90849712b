//! The journal in Beancount syntax, so that an auditor can check the books with an independent
//! tool (`bean-check`).
//!
//! Every posted movement (single-phase transfers and posts of pending ones) becomes a
//! transaction with two postings: `+amount` on the credit account, `-amount` on the debit
//! account. Pending amounts that were never posted moved nothing and are left out. After the
//! last transaction, a `balance` assertion per account and asset states the balance Credex has
//! stored, so `bean-check` fails if the stored balances and the journal ever disagree.
//!
//! CR amounts are written in CR with six decimals (µCR exactly); tokens as integers.

use std::collections::BTreeMap;
use std::io::Write;

use credex_ledger::{Account, AccountKind, AssetClass, AssetCode, Owner, Timestamp};

use crate::{AccountView, BooksSink, JournalEntry, Store, StoreError};

/// What an export wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportSummary {
    pub accounts: usize,
    pub transactions: u64,
    pub assertions: usize,
}

/// Writes the whole ledger, read at one instant, as a Beancount file.
pub async fn export_beancount(
    store: &dyn Store,
    out: &mut (dyn Write + Send),
) -> Result<ExportSummary, StoreError> {
    let mut writer = BeancountWriter {
        out,
        accounts: BTreeMap::new(),
        last_day: None,
        summary: ExportSummary::default(),
        error: None,
    };
    writeln_or_keep(&mut writer, |out| {
        writeln!(
            out,
            "; The Credex ledger, exported by `credex export beancount`."
        )?;
        writeln!(out, "option \"title\" \"Credex ledger\"")?;
        writeln!(out, "1970-01-01 commodity CR")
    });
    store.read_books(&mut writer).await?;
    writer.finish()?;
    Ok(writer.summary)
}

struct BeancountWriter<'w> {
    out: &'w mut (dyn Write + Send),
    accounts: BTreeMap<credex_ledger::AccountId, AccountView>,
    last_day: Option<i64>,
    summary: ExportSummary,
    error: Option<std::io::Error>,
}

fn writeln_or_keep(
    writer: &mut BeancountWriter<'_>,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) {
    if writer.error.is_none() {
        if let Err(error) = write(writer.out) {
            writer.error = Some(error);
        }
    }
}

impl BooksSink for BeancountWriter<'_> {
    fn account(&mut self, view: &AccountView) {
        self.accounts.insert(view.account.id(), view.clone());
        self.summary.accounts += 1;
    }

    fn entry(&mut self, entry: &JournalEntry) {
        let record = &entry.record;
        if !record.kind.moves_posted() {
            return;
        }
        let (Some(debit), Some(credit)) = (
            self.accounts.get(&record.debit_account_id),
            self.accounts.get(&record.credit_account_id),
        ) else {
            self.error = Some(std::io::Error::other(format!(
                "transfer {} names an account the snapshot does not hold",
                record.id
            )));
            return;
        };
        let day = day_of(record.timestamp);
        self.last_day = Some(self.last_day.map_or(day, |last| last.max(day)));
        let amount = quantity(record.asset.class(), i128::from(record.amount.get()));
        let currency = currency(&record.asset);
        let (debit, credit) = (account_name(&debit.account), account_name(&credit.account));
        let narration = escape(record.metadata.as_str());
        let code = record.code.name();
        let (id, kind) = (record.id, record.kind.name());
        writeln_or_keep(self, |out| {
            writeln!(out, "{} * \"{code}\" \"{narration}\"", date(day))?;
            writeln!(out, "  transfer: \"{id}\"")?;
            writeln!(out, "  kind: \"{kind}\"")?;
            writeln!(out, "  {credit}  {amount} {currency}")?;
            writeln!(out, "  {debit}  -{amount} {currency}")
        });
        self.summary.transactions += 1;
    }
}

impl BeancountWriter<'_> {
    /// Opens every Beancount account once, with the commodities it holds, and asserts every
    /// stored balance, exactly (`~ 0`), the day after the last transaction.
    fn finish(&mut self) -> Result<(), StoreError> {
        let mut opens: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for view in self.accounts.values() {
            opens
                .entry(account_name(&view.account))
                .or_default()
                .push(currency(view.account.asset()));
        }
        for (name, currencies) in opens {
            let currencies = currencies.join(",");
            writeln_or_keep(self, |out| {
                writeln!(out, "1970-01-01 open {name} {currencies}")
            });
        }
        let day = self.last_day.unwrap_or(0) + 1;
        let views: Vec<AccountView> = self.accounts.values().cloned().collect();
        for view in views {
            let name = account_name(&view.account);
            let currency = currency(view.account.asset());
            let amount = quantity(view.account.asset().class(), view.balance.net_posted());
            writeln_or_keep(self, |out| {
                writeln!(out, "{} balance {name}  {amount} ~ 0 {currency}", date(day))
            });
            self.summary.assertions += 1;
        }
        match self.error.take() {
            None => Ok(()),
            Some(error) => Err(StoreError::Corrupt(format!("export failed: {error}"))),
        }
    }
}

/// The Beancount account of a ledger account: one per owner and kind, holding one commodity
/// per asset.
fn account_name(account: &Account) -> String {
    let kind = account.kind();
    let title = {
        let name = kind.name();
        let mut chars = name.chars();
        let first = chars.next().map(|c| c.to_ascii_uppercase()).unwrap_or('X');
        format!("{first}{}", chars.as_str())
    };
    match account.owner() {
        Owner::Provider => {
            let root = match kind {
                AccountKind::Issuance => "Equity",
                AccountKind::Treasury => "Assets",
                _ => "Income",
            };
            format!("{root}:Provider:{title}")
        }
        Owner::Org(org) => format!("Assets:Org:O{}:{title}", org.as_uuid().simple()),
    }
}

/// A Beancount commodity: the asset code upper-cased (`TOK.PRO.2026-11`).
fn currency(asset: &AssetCode) -> String {
    asset.as_str().to_ascii_uppercase()
}

/// An amount in the asset's display unit: CR with six decimals, tokens whole.
fn quantity(class: AssetClass, minor: i128) -> String {
    match class {
        AssetClass::Token => minor.to_string(),
        AssetClass::Credit => {
            let sign = if minor < 0 { "-" } else { "" };
            let magnitude = minor.unsigned_abs();
            format!(
                "{sign}{}.{:06}",
                magnitude / 1_000_000,
                magnitude % 1_000_000
            )
        }
    }
}

fn escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Days since the Unix epoch of a timestamp, in UTC.
fn day_of(at: Timestamp) -> i64 {
    at.as_micros().div_euclid(86_400_000_000)
}

/// `YYYY-MM-DD` of a day number (Howard Hinnant's civil-from-days).
fn date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_quantities() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(20_418), "2025-11-26");
        assert_eq!(date(19_782), "2024-02-29");
        assert_eq!(quantity(AssetClass::Credit, 1_500_000), "1.500000");
        assert_eq!(quantity(AssetClass::Credit, -7), "-0.000007");
        assert_eq!(quantity(AssetClass::Token, -7), "-7");
        assert_eq!(escape(r#"a "b" \c"#), r#"a \"b\" \\c"#);
    }
}
