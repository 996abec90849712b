//! A statement as CSV (RFC 4180, CRLF line ends): one header line, then rows whose `section`
//! column says what they are:
//!
//! - `statement`: the statement's facts (`item` names one, `value` holds it);
//! - `balance`: one row per account and figure (`opening_at`, `opening`, `credits`, `debits`,
//!   `closing_at`, `closing`, `held`);
//! - a section's name (`allotments`, `usage`, `trades`, …): its lines, `item` being what moved
//!   (a model id, `bought`, `sold`, …), `count` how many transfers, `amount` the signed sum in
//!   the asset's unit;
//! - the section's name with `_total`: its total per account.
//!
//! `amount` is an integer in `unit` (`micro_cr` or `tokens`); `value` repeats it as text, µCR
//! as CR with six decimals.

use super::{Statement, Unit};
use crate::views::{csv_field, rfc3339};

pub const HEADER: &str = "section,asset,unit,account,item,count,amount,value\r\n";

/// A cell: text (quoted as RFC 4180 needs, and defused if a spreadsheet would run it as a
/// formula), or a number this module formatted (digits, an optional leading `-` and `.`),
/// written as it is so that spreadsheets read negative amounts as numbers.
#[derive(Debug, Clone, Copy)]
enum Cell<'a> {
    Text(&'a str),
    Number(&'a str),
}

/// One row: (section, asset, unit, account, item, count, amount, value).
fn row(out: &mut String, cells: [Cell<'_>; 8]) {
    for (index, cell) in cells.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        match cell {
            Cell::Text(text) => csv_field(out, text),
            Cell::Number(number) => {
                debug_assert!(number
                    .trim_start_matches('-')
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b == b'.'));
                out.push_str(number);
            }
        }
    }
    out.push_str("\r\n");
}

fn fact(out: &mut String, item: &str, value: &str) {
    use Cell::{Number as N, Text as T};
    row(
        out,
        [
            T("statement"),
            N(""),
            N(""),
            N(""),
            T(item),
            N(""),
            N(""),
            T(value),
        ],
    );
}

/// The statement as CSV text.
pub fn render(statement: &Statement) -> String {
    use Cell::{Number as N, Text as T};
    let mut out = String::from(HEADER);
    fact(&mut out, "org_id", &statement.org.to_string());
    fact(&mut out, "org", &statement.org_name);
    fact(&mut out, "cycle", &statement.cycle.to_string());
    fact(&mut out, "period_start", &rfc3339(statement.period_start()));
    fact(&mut out, "period_end", &rfc3339(statement.period_end()));
    fact(&mut out, "state", statement.state.name());
    fact(&mut out, "generated_at", &rfc3339(statement.generated_at));
    fact(&mut out, "note", super::WINDOWS_NOTE);
    for account in &statement.accounts {
        let unit = account.unit();
        let asset = account.asset.as_str();
        let kind = account.kind.name();
        let instant = |out: &mut String, item: &str, at| {
            let at = rfc3339(at);
            let cells = [
                T("balance"),
                T(asset),
                N(""),
                T(kind),
                T(item),
                N(""),
                N(""),
                T(&at),
            ];
            row(out, cells);
        };
        let figure = |out: &mut String, item: &str, amount: i128| {
            let text = amount.to_string();
            let value = unit.text(amount);
            let unit = unit.name();
            let cells = [
                T("balance"),
                T(asset),
                T(unit),
                T(kind),
                T(item),
                N(""),
                N(&text),
                N(&value),
            ];
            row(out, cells);
        };
        instant(&mut out, "opening_at", account.opening_at);
        figure(&mut out, "opening", account.opening);
        figure(&mut out, "credits", i128::from(account.credits));
        figure(&mut out, "debits", i128::from(account.debits));
        instant(&mut out, "closing_at", account.closing_at);
        figure(&mut out, "closing", account.closing);
        figure(&mut out, "held", i128::from(account.held));
    }
    for section in &statement.sections {
        let name = section.kind.name();
        for line in &section.lines {
            let unit = Unit::of(&line.asset);
            row(
                &mut out,
                [
                    T(name),
                    T(line.asset.as_str()),
                    T(unit.name()),
                    T(line.kind.name()),
                    T(&line.item),
                    N(&line.count.to_string()),
                    N(&line.amount.to_string()),
                    N(&unit.text(line.amount)),
                ],
            );
        }
        let total = format!("{name}_total");
        for (asset, kind, amount) in &section.totals {
            let unit = Unit::of(asset);
            row(
                &mut out,
                [
                    T(&total),
                    T(asset.as_str()),
                    T(unit.name()),
                    T(kind.name()),
                    T("total"),
                    N(""),
                    N(&amount.to_string()),
                    N(&unit.text(*amount)),
                ],
            );
        }
    }
    out
}
