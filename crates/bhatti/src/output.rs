//! How commands print: aligned tables for people, JSON for programs.
//!
//! Every command produces either text through [`Table`] / plain lines, or,
//! under the global `--json`, exactly one JSON document on stdout through
//! [`print_json`]. Keeping both here means the column layout and the JSON
//! encoding are one decision each, tested once.

use std::io::Write;

use serde::Serialize;

/// A text table with left-aligned columns separated by three spaces (the
/// kubectl look the reference used).
#[derive(Debug, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<S: AsRef<str>>(headers: &[S]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.as_ref().to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text, one line per row, each ending in a newline.
    /// Trailing spaces are trimmed.
    pub fn render(&self) -> String {
        let ncols = self
            .rows
            .iter()
            .map(Vec::len)
            .chain([self.headers.len()])
            .max()
            .unwrap_or(0);
        let mut widths = vec![0usize; ncols];
        for r in std::iter::once(&self.headers).chain(&self.rows) {
            for (i, c) in r.iter().enumerate() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        for r in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, c) in r.iter().enumerate() {
                line.push_str(c);
                if i.saturating_add(1) < r.len() {
                    // widths[i] is at least this cell's width.
                    let pad = widths[i]
                        .saturating_sub(c.chars().count())
                        .saturating_add(3);
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// Prints the table to stdout.
    pub fn print(&self) {
        print_text(&self.render());
    }

    /// Prints the table, or when it has no rows says `empty` on stderr
    /// (stdout stays empty for scripts).
    pub fn print_or(&self, empty: &str) {
        if self.is_empty() {
            eprintln!("{empty}");
        } else {
            self.print();
        }
    }
}

/// `println!` that ignores a closed stdout (`bhatti ls | head`) instead of
/// panicking.
macro_rules! outln {
    () => { $crate::output::print_text("\n") };
    ($($t:tt)*) => {{
        let mut s = format!($($t)*);
        s.push('\n');
        $crate::output::print_text(&s);
    }};
}

/// Writes text to stdout, ignoring a closed pipe (`bhatti ls | head`).
pub fn print_text(s: &str) {
    print_bytes(s.as_bytes());
}

/// Writes bytes to stdout as they come (a command's or a terminal's
/// output), flushed, ignoring a closed pipe.
pub fn print_bytes(b: &[u8]) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(b);
    let _ = out.flush();
}

/// [`print_bytes`] for stderr.
pub fn eprint_bytes(b: &[u8]) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(b);
    let _ = err.flush();
}

/// Prints one value as pretty JSON followed by a newline.
pub fn print_json<T: Serialize + ?Sized>(v: &T) -> anyhow::Result<()> {
    let mut s = serde_json::to_string_pretty(v)?;
    s.push('\n');
    print_text(&s);
    Ok(())
}

/// `key: value` lines with the values aligned (the `inspect` layout).
#[derive(Debug, Default)]
pub struct Fields {
    rows: Vec<(String, String)>,
}

impl Fields {
    pub fn new() -> Fields {
        Fields::default()
    }

    pub fn add(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.rows.push((key.to_string(), value.into()));
        self
    }

    pub fn render(&self) -> String {
        let w = self
            .rows
            .iter()
            .map(|(k, _)| k.chars().count().saturating_add(1))
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for (k, v) in &self.rows {
            let key = format!("{k}:");
            out.push_str(format!("{key:<w$}  {v}").trim_end());
            out.push('\n');
        }
        out
    }

    pub fn print(&self) {
        print_text(&self.render());
    }
}

/// `yes` / `no`.
pub fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// A value or `-` when empty.
pub fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

/// `k=v,k2=v2` for label maps, `-` when empty.
pub fn labels_text(labels: &std::collections::BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "-".into();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Megabytes, with `-` for 0 (unset).
pub fn mb(n: u64) -> String {
    if n == 0 {
        "-".into()
    } else {
        format!("{n} MB")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_trim() {
        let mut t = Table::new(&["NAME", "STATUS", "IP"]);
        t.row(["web", "running", "10.0.0.2"]);
        t.row(["a-much-longer-name", "stopped", ""]);
        assert_eq!(
            t.render(),
            "NAME                 STATUS    IP\n\
             web                  running   10.0.0.2\n\
             a-much-longer-name   stopped\n"
        );
        assert!(!t.is_empty());
        assert!(Table::new(&["X"]).is_empty());
    }

    #[test]
    fn tables_count_characters_not_bytes() {
        let mut t = Table::new(&["A", "B"]);
        t.row(["héllo", "x"]);
        assert_eq!(t.render(), "A       B\nhéllo   x\n");
    }

    #[test]
    fn fields_align() {
        let mut f = Fields::new();
        f.add("Name", "web")
            .add("Status", "running")
            .add("Labels", "");
        assert_eq!(f.render(), "Name:    web\nStatus:  running\nLabels:\n");
    }

    #[test]
    fn small_formatters() {
        let mut m = std::collections::BTreeMap::new();
        assert_eq!(labels_text(&m), "-");
        m.insert("b".to_string(), "2".to_string());
        m.insert("a".to_string(), "".to_string());
        assert_eq!(labels_text(&m), "a=,b=2");
        assert_eq!(mb(0), "-");
        assert_eq!(mb(512), "512 MB");
        assert_eq!(or_dash(""), "-");
        assert_eq!(yes_no(true), "yes");
    }
}
