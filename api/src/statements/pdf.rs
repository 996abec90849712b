//! A statement as a PDF: A4 pages in the standard Helvetica fonts (nothing embedded), a title
//! block, then one table per part of the statement, a new page whenever one fills (a table
//! carried over repeats its header), and a footer with the page number on every page.
//!
//! Layout is in whole points with integer arithmetic (widths come from Helvetica's metrics);
//! text is written in WinAnsiEncoding, characters outside it shown as `?`.

use pdf_writer::{Content, Finish, Name, Pdf, Rect, Ref, Str, TextStr};

use super::{Statement, Unit};
use crate::views::rfc3339;

const PAGE_WIDTH: i32 = 595;
const PAGE_HEIGHT: i32 = 842;
const LEFT: i32 = 42;
const RIGHT: i32 = 553;
const TOP: i32 = 800;
const BOTTOM: i32 = 56;
const ROW: i32 = 12;
const TABLE_SIZE: u8 = 8;

const REGULAR: Name<'static> = Name(b"F1");
const BOLD: Name<'static> = Name(b"F2");

/// Helvetica's advance widths (per 1,000 em) of the printable ASCII characters, from its AFM.
const WIDTHS: [u16; 95] = [
    278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278, // ' '../
    556, 556, 556, 556, 556, 556, 556, 556, 556, 556, // 0..9
    278, 278, 584, 584, 584, 556, 1015, // :..@
    667, 667, 722, 722, 667, 611, 778, 722, 278, 500, 667, 556, 833, 722, 778, 667, 778, 722, 667,
    611, 722, 667, 944, 667, 667, 611, // A..Z
    278, 278, 278, 469, 556, 333, // [..`
    556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500, 222, 833, 556, 556, 556, 556, 333, 500,
    278, 556, 500, 722, 500, 500, 500, // a..z
    334, 260, 334, 584, // {..~
];

/// A character's byte in WinAnsiEncoding, `?` when it has none.
fn win_ansi(c: char) -> u8 {
    match c {
        ' '..='~' => u8::try_from(c).unwrap_or(b'?'),
        '\u{a0}'..='\u{ff}' => u8::try_from(u32::from(c)).unwrap_or(b'?'),
        '€' => 0x80,
        '…' => 0x85,
        '‘' => 0x91,
        '’' => 0x92,
        '“' => 0x93,
        '”' => 0x94,
        '•' => 0x95,
        '–' => 0x96,
        '—' => 0x97,
        _ => b'?',
    }
}

fn encode(text: &str) -> Vec<u8> {
    text.chars().map(win_ansi).collect()
}

/// A text's width in points at `size` (bold set about 10% wider, digits as regular).
fn width(text: &str, size: u8, bold: bool) -> i32 {
    let mut total: i32 = 0;
    for byte in encode(text) {
        let advance = match byte {
            32..=126 => i32::from(WIDTHS[usize::from(byte - 32)]),
            _ => 556,
        };
        let advance = if bold && !byte.is_ascii_digit() {
            advance * 110 / 100
        } else {
            advance
        };
        total += advance;
    }
    total * i32::from(size) / 1000
}

/// The text cut (with `...`) to fit `room` points.
fn fit(text: &str, size: u8, bold: bool, room: i32) -> String {
    if width(text, size, bold) <= room {
        return text.to_owned();
    }
    let mut cut: String = text.to_owned();
    while !cut.is_empty() {
        cut.pop();
        let candidate = format!("{cut}...");
        if width(&candidate, size, bold) <= room {
            return candidate;
        }
    }
    String::new()
}

/// Digits grouped by thousands: `-1,234,567`.
fn grouped(digits: &str) -> String {
    let (sign, digits) = match digits.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", digits),
    };
    let mut out = String::new();
    for (index, c) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

/// An amount for the page: CR with six decimals, tokens whole, both grouped by thousands.
fn amount(unit: Unit, value: i128) -> String {
    let text = unit.text(value);
    match text.split_once('.') {
        Some((whole, fraction)) => format!("{}.{fraction}", grouped(whole)),
        None => grouped(&text),
    }
}

/// Whole points as the writer's numbers (every coordinate is within a page).
fn pt(value: i32) -> f32 {
    f32::from(i16::try_from(value).unwrap_or(0))
}

#[derive(Debug, Clone)]
enum Draw {
    Text {
        x: i32,
        y: i32,
        size: u8,
        bold: bool,
        gray: bool,
        text: String,
    },
    Rule {
        y: i32,
    },
    Band {
        y: i32,
        height: i32,
    },
}

#[derive(Debug, Clone, Copy)]
enum Align {
    Left,
    Right,
}

/// A table column: where it starts, how wide it is, how its cells align.
#[derive(Debug, Clone, Copy)]
struct Column {
    x: i32,
    width: i32,
    align: Align,
}

const fn column(x: i32, width: i32, align: Align) -> Column {
    Column { x, width, align }
}

const BALANCE_COLUMNS: [Column; 7] = [
    column(LEFT, 108, Align::Left),
    column(152, 52, Align::Left),
    column(206, 66, Align::Right),
    column(274, 66, Align::Right),
    column(342, 66, Align::Right),
    column(410, 76, Align::Right),
    column(488, 65, Align::Right),
];

const LINE_COLUMNS: [Column; 5] = [
    column(LEFT, 108, Align::Left),
    column(152, 52, Align::Left),
    column(206, 200, Align::Left),
    column(408, 50, Align::Right),
    column(460, 93, Align::Right),
];

#[derive(Debug, Default)]
struct Layout {
    pages: Vec<Vec<Draw>>,
    y: i32,
}

impl Layout {
    fn new() -> Self {
        Self {
            pages: vec![Vec::new()],
            y: TOP,
        }
    }

    fn draw(&mut self, draw: Draw) {
        if let Some(page) = self.pages.last_mut() {
            page.push(draw);
        }
    }

    fn text(&mut self, x: i32, size: u8, bold: bool, text: &str) {
        let y = self.y;
        self.draw(Draw::Text {
            x,
            y,
            size,
            bold,
            gray: false,
            text: text.to_owned(),
        });
    }

    /// Starts a new page when less than `height` points are left; true when it did.
    fn room(&mut self, height: i32) -> bool {
        if self.y - height >= BOTTOM {
            return false;
        }
        self.pages.push(Vec::new());
        self.y = TOP;
        true
    }

    /// Lines of text wrapped at word boundaries to the page's width.
    fn paragraph(&mut self, size: u8, text: &str) {
        let mut line = String::new();
        for word in text.split_whitespace() {
            let candidate = if line.is_empty() {
                word.to_owned()
            } else {
                format!("{line} {word}")
            };
            if width(&candidate, size, false) > RIGHT - LEFT && !line.is_empty() {
                self.room(ROW);
                self.text(LEFT, size, false, &line);
                self.y -= i32::from(size) + 3;
                line = word.to_owned();
            } else {
                line = candidate;
            }
        }
        if !line.is_empty() {
            self.room(ROW);
            self.text(LEFT, size, false, &line);
            self.y -= i32::from(size) + 3;
        }
    }

    fn heading(&mut self, text: &str) {
        // A heading never ends a page: it keeps its header row and a first row with it.
        self.room(24 + 3 * ROW);
        self.y -= 14;
        self.text(LEFT, 11, true, text);
        self.y -= 6;
    }

    fn row(&mut self, columns: &[Column], cells: &[String], bold: bool) {
        self.y -= ROW;
        for (column, cell) in columns.iter().zip(cells) {
            let text = fit(cell, TABLE_SIZE, bold, column.width - 4);
            let x = match column.align {
                Align::Left => column.x,
                Align::Right => column.x + column.width - width(&text, TABLE_SIZE, bold),
            };
            self.text(x, TABLE_SIZE, bold, &text);
        }
    }

    fn header(&mut self, columns: &[Column], titles: &[&str]) {
        let y = self.y;
        self.draw(Draw::Band {
            y: y - ROW - 3,
            height: ROW + 1,
        });
        let titles: Vec<String> = titles.iter().map(|t| (*t).to_owned()).collect();
        self.row(columns, &titles, true);
    }

    /// A table: its header, then its rows (`true` for a bold row), carried over page breaks.
    fn table(&mut self, columns: &[Column], titles: &[&str], rows: &[(Vec<String>, bool)]) {
        self.header(columns, titles);
        let mut ruled = false;
        for (cells, bold) in rows {
            if self.room(ROW + 2) {
                self.header(columns, titles);
            }
            // One rule above the totals, which come last.
            if *bold && !ruled {
                ruled = true;
                let y = self.y - 3;
                self.draw(Draw::Rule { y });
            }
            self.row(columns, cells, *bold);
        }
        self.y -= 4;
    }
}

fn date(at: credex_ledger::Timestamp) -> String {
    rfc3339(at).get(..10).unwrap_or_default().to_owned()
}

fn lay_out(statement: &Statement) -> Layout {
    let mut layout = Layout::new();
    layout.text(
        LEFT,
        16,
        true,
        &format!("Statement: {}", statement.org_name),
    );
    layout.y -= 20;
    let state = match statement.state {
        super::CycleState::Open => "open: figures to the statement's instant",
        super::CycleState::Ended => "ended, not yet closed: its tokens have not expired yet",
        super::CycleState::Closed => "closed",
    };
    let facts = [
        format!(
            "Cycle {}: {} to {} ({state})",
            statement.cycle,
            date(statement.period_start()),
            date(statement.period_end())
        ),
        format!("Org {}", statement.org),
        format!("Generated {}", rfc3339(statement.generated_at)),
    ];
    for fact in &facts {
        layout.text(LEFT, 10, false, fact);
        layout.y -= 13;
    }
    layout.y -= 2;
    layout.paragraph(
        8,
        &format!(
            "{} Amounts: CR with six decimals, tokens whole; into an account positive, out of it negative.",
            super::WINDOWS_NOTE
        ),
    );

    layout.heading("Balances");
    let rows: Vec<(Vec<String>, bool)> = statement
        .accounts
        .iter()
        .map(|account| {
            let unit = account.unit();
            let cells = vec![
                account.asset.to_string(),
                account.kind.name().to_owned(),
                amount(unit, account.opening),
                amount(unit, i128::from(account.credits)),
                amount(unit, -i128::from(account.debits)),
                amount(unit, account.closing),
                amount(unit, i128::from(account.held)),
            ];
            (cells, false)
        })
        .collect();
    layout.table(
        &BALANCE_COLUMNS,
        &[
            "Asset", "Account", "Opening", "In", "Out", "Closing", "Held",
        ],
        &rows,
    );
    if statement.accounts.is_empty() {
        layout.paragraph(
            8,
            "No account of the org held or moved anything in this cycle.",
        );
    }

    for section in &statement.sections {
        layout.heading(section.kind.title());
        let mut rows: Vec<(Vec<String>, bool)> = section
            .lines
            .iter()
            .map(|line| {
                let cells = vec![
                    line.asset.to_string(),
                    line.kind.name().to_owned(),
                    line.item.clone(),
                    grouped(&line.count.to_string()),
                    amount(Unit::of(&line.asset), line.amount),
                ];
                (cells, false)
            })
            .collect();
        for (asset, kind, total) in &section.totals {
            let cells = vec![
                asset.to_string(),
                kind.name().to_owned(),
                "Total".to_owned(),
                String::new(),
                amount(Unit::of(asset), *total),
            ];
            rows.push((cells, true));
        }
        layout.table(
            &LINE_COLUMNS,
            &["Asset", "Account", "Item", "Transfers", "Amount"],
            &rows,
        );
    }
    layout
}

/// The statement as a PDF document.
pub fn render(statement: &Statement) -> Vec<u8> {
    let layout = lay_out(statement);
    let catalog = Ref::new(1);
    let tree = Ref::new(2);
    let regular = Ref::new(3);
    let bold = Ref::new(4);
    let info = Ref::new(5);
    let count = i32::try_from(layout.pages.len()).unwrap_or(i32::MAX);
    let page_ids: Vec<Ref> = (0..count).map(|i| Ref::new(6 + 2 * i)).collect();

    let mut pdf = Pdf::new();
    pdf.catalog(catalog).pages(tree);
    pdf.pages(tree).kids(page_ids.iter().copied()).count(count);
    pdf.type1_font(regular)
        .base_font(Name(b"Helvetica"))
        .encoding_predefined(Name(b"WinAnsiEncoding"));
    pdf.type1_font(bold)
        .base_font(Name(b"Helvetica-Bold"))
        .encoding_predefined(Name(b"WinAnsiEncoding"));
    let title = format!(
        "Credex statement {} {}",
        statement.org_name, statement.cycle
    );
    pdf.document_info(info)
        .title(TextStr(&title))
        .creator(TextStr("Credex"));

    for (index, draws) in layout.pages.iter().enumerate() {
        let number = i32::try_from(index).unwrap_or(0);
        let page_id = Ref::new(6 + 2 * number);
        let content_id = Ref::new(7 + 2 * number);
        let mut content = Content::new();
        for draw in draws {
            paint(&mut content, draw);
        }
        let footer = format!(
            "Credex statement - {} - cycle {} - page {} of {count}",
            statement.org_name,
            statement.cycle,
            number + 1
        );
        paint(
            &mut content,
            &Draw::Text {
                x: LEFT,
                y: 30,
                size: 7,
                bold: false,
                gray: true,
                text: footer,
            },
        );
        let stream = content.finish();
        let mut page = pdf.page(page_id);
        page.parent(tree)
            .media_box(Rect::new(0.0, 0.0, pt(PAGE_WIDTH), pt(PAGE_HEIGHT)))
            .contents(content_id);
        page.resources()
            .fonts()
            .pair(REGULAR, regular)
            .pair(BOLD, bold);
        page.finish();
        pdf.stream(content_id, &stream);
    }
    pdf.finish()
}

fn paint(content: &mut Content, draw: &Draw) {
    match draw {
        Draw::Text {
            x,
            y,
            size,
            bold,
            gray,
            text,
        } => {
            if *gray {
                content.set_fill_gray(0.4);
            }
            content.begin_text();
            content.set_font(if *bold { BOLD } else { REGULAR }, f32::from(*size));
            content.next_line(pt(*x), pt(*y));
            content.show(Str(&encode(text)));
            content.end_text();
            if *gray {
                content.set_fill_gray(0.0);
            }
        }
        Draw::Rule { y } => {
            content.set_line_width(0.5);
            content.move_to(pt(LEFT), pt(*y));
            content.line_to(pt(RIGHT), pt(*y));
            content.stroke();
        }
        Draw::Band { y, height } => {
            content.set_fill_gray(0.9);
            content.rect(pt(LEFT - 2), pt(*y), pt(RIGHT - LEFT + 4), pt(*height));
            content.fill_nonzero();
            content.set_fill_gray(0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_grouped_exactly() {
        assert_eq!(amount(Unit::Tokens, 0), "0");
        assert_eq!(amount(Unit::Tokens, 1_000_000), "1,000,000");
        assert_eq!(amount(Unit::Tokens, -999), "-999");
        assert_eq!(amount(Unit::MicroCr, -1_234_567_890), "-1,234.567890");
        assert_eq!(amount(Unit::MicroCr, 5), "0.000005");
    }

    #[test]
    fn long_statements_break_pages_and_keep_within_margins() {
        use crate::statements::{CycleState, Line, Section, SectionKind};
        use credex_ledger::{AccountKind, AssetCode, OrgId, Timestamp};
        let cycle = crate::cycles::CycleId::parse("2026-11").expect("a cycle");
        let token = cycle.asset("pro").expect("an asset");
        let lines: Vec<Line> = (0..150)
            .map(|i| Line {
                asset: token.clone(),
                kind: AccountKind::Alloc,
                item: format!("model-{i:03}-with-a-rather-long-name-that-does-not-fit-its-column"),
                count: 1,
                amount: -1_000,
            })
            .collect();
        let statement = Statement {
            org: OrgId::generate(),
            org_name: "Ünïcode & Co (東京)".to_owned(),
            cycle,
            state: CycleState::Open,
            generated_at: Timestamp::EPOCH,
            accounts: Vec::new(),
            sections: vec![Section {
                kind: SectionKind::Usage,
                lines,
                totals: vec![(AssetCode::credit(), AccountKind::Wallet, -150_000)],
            }],
        };
        let layout = lay_out(&statement);
        assert!(layout.pages.len() >= 3, "{} pages", layout.pages.len());
        for page in &layout.pages {
            let mut headers = 0;
            for draw in page {
                if let Draw::Text {
                    x,
                    y,
                    text,
                    size,
                    bold,
                    ..
                } = draw
                {
                    assert!((BOTTOM..=TOP).contains(y), "{text} at {y}");
                    assert!(
                        *x >= LEFT && x + width(text, *size, *bold) <= RIGHT + 1,
                        "{text}"
                    );
                    headers += usize::from(text == "Transfers");
                }
            }
            assert_eq!(headers, 1, "every page repeats the table's header");
        }
        let pdf = render(&statement);
        assert!(pdf.starts_with(b"%PDF-"));
    }

    #[test]
    fn text_is_win_ansi_and_fits() {
        assert_eq!(encode("Café µ€ 東"), b"Caf\xe9 \xb5\x80 ?");
        assert_eq!(width("0000", 10, false), 22);
        let cut = fit("a-very-long-model-name-indeed", 8, false, 40);
        assert!(cut.ends_with("...") && width(&cut, 8, false) <= 40, "{cut}");
        assert_eq!(fit("short", 8, false, 100), "short");
    }
}
