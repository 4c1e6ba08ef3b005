//! The one CSV dialect of every `--format csv` (`journal runs`, `show`,
//! `history`, `held`, `agreement`, `config-changes`, `export`), and the one
//! place a CSV cell is escaped: RFC 4180 as the `csv` crate writes it, every
//! field quoted, CRLF line ends, UTF-8 with an optional byte-order mark; and
//! every cell guarded against spreadsheet formulas.

use std::borrow::Cow;
use std::io::{self, Write};

/// What a spreadsheet reads as the start of a formula (`=`, `+`, `-`, `@`),
/// or skips before looking for one (tab, carriage return).
const FORMULA_STARTS: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// A cell as written: one that a spreadsheet would read as a formula gets
/// a leading `'`, so it is shown as the text it is. Applied to every cell:
/// what absync writes itself (ids, counts, seconds, times, hashes, words)
/// never starts with one of these, so only values from the directory, the
/// target or the journal's reasons and errors are ever changed.
pub fn guard(cell: &str) -> Cow<'_, str> {
    if cell.starts_with(FORMULA_STARTS) {
        Cow::Owned(format!("'{cell}"))
    } else {
        Cow::Borrowed(cell)
    }
}

/// A CSV table being written: its header first, then one row at a time.
/// Every row has as many cells as the header (the `csv` crate refuses
/// others).
pub struct Csv<W: Write> {
    w: csv::Writer<W>,
}

impl<W: Write> Csv<W> {
    /// Starts the table: the byte-order mark if asked for (so spreadsheets
    /// read the file as UTF-8), then the header.
    pub fn new<H: AsRef<str>>(
        mut out: W,
        bom: bool,
        header: impl IntoIterator<Item = H>,
    ) -> io::Result<Self> {
        if bom {
            out.write_all("\u{feff}".as_bytes())?;
        }
        let w = csv::WriterBuilder::new()
            .quote_style(csv::QuoteStyle::Always)
            .terminator(csv::Terminator::CRLF)
            .from_writer(out);
        let mut table = Csv { w };
        table.row(header)?;
        Ok(table)
    }

    /// One row, each cell guarded, quoted and escaped.
    pub fn row<C: AsRef<str>>(&mut self, cells: impl IntoIterator<Item = C>) -> io::Result<()> {
        for cell in cells {
            self.w.write_field(guard(cell.as_ref()).as_bytes())?;
        }
        // An empty record ends the one the fields above began.
        self.w.write_record(None::<&[u8]>)?;
        Ok(())
    }

    /// Writes out what is buffered.
    pub fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(bom: bool, rows: &[&[&str]]) -> String {
        let mut out = Vec::new();
        let mut t = Csv::new(&mut out, bom, ["a", "b"]).unwrap();
        for r in rows {
            t.row(r.iter()).unwrap();
        }
        t.flush().unwrap();
        drop(t);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn every_field_is_quoted_and_every_line_ends_in_crlf() {
        assert_eq!(
            table(false, &[&["1", "say \"hi\", then"], &["", "two\nlines"]]),
            "\"a\",\"b\"\r\n\"1\",\"say \"\"hi\"\", then\"\r\n\"\",\"two\nlines\"\r\n"
        );
    }

    #[test]
    fn the_byte_order_mark_comes_first_when_asked_for() {
        assert_eq!(table(true, &[]), "\u{feff}\"a\",\"b\"\r\n");
        assert_eq!(table(false, &[]), "\"a\",\"b\"\r\n");
    }

    #[test]
    fn cells_a_spreadsheet_would_evaluate_are_neutralised() {
        for (cell, written) in [
            (
                "=HYPERLINK(\"http://x\")",
                "\"'=HYPERLINK(\"\"http://x\"\")\"",
            ),
            ("+44 20 7946 0000", "\"'+44 20 7946 0000\""),
            ("-1+2", "\"'-1+2\""),
            ("@SUM(A1)", "\"'@SUM(A1)\""),
            ("\t=1", "\"'\t=1\""),
            ("\r=1", "\"'\r=1\""),
        ] {
            let out = table(false, &[&["x", cell]]);
            assert_eq!(
                out,
                format!("\"a\",\"b\"\r\n\"x\",{written}\r\n"),
                "{cell:?}"
            );
        }
    }

    #[test]
    fn other_cells_are_left_as_they_are() {
        for cell in [
            "",
            "a=b",
            " =1",
            "'=1",
            "42",
            "2.5",
            "2024-05-01T09:30:00Z",
            "{\"title\":{\"old\":[],\"new\":[\"=1\"]}}",
            "cn==HYPERLINK(\"x\"),OU=NHS",
        ] {
            assert_eq!(guard(cell), cell);
        }
    }

    #[test]
    fn a_row_of_another_width_is_refused() {
        let mut out = Vec::new();
        let mut t = Csv::new(&mut out, false, ["a", "b"]).unwrap();
        assert!(t.row(["1"]).is_err());
    }

    #[test]
    fn what_is_written_reads_back_as_the_guarded_cells() {
        let cells = ["=1+1", "é, \"q\"", "line\r\nbreak", "-"];
        let mut out = Vec::new();
        let mut t = Csv::new(&mut out, true, ["a", "b", "c", "d"]).unwrap();
        t.row(cells).unwrap();
        t.flush().unwrap();
        drop(t);
        let out = String::from_utf8(out).unwrap();
        let mut r = csv::Reader::from_reader(out.trim_start_matches('\u{feff}').as_bytes());
        let row = r.records().next().unwrap().unwrap();
        let read: Vec<&str> = row.iter().collect();
        assert_eq!(read, ["'=1+1", "é, \"q\"", "line\r\nbreak", "'-"]);
    }
}
