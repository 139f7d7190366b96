//! Rendering: JSON, aligned tables, human sizes and ages, error chains.

use std::io::{self, Write};

use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Writes `text` to stdout; a closed pipe surfaces as an error that `main` treats as success.
pub fn print(text: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

pub fn print_json(v: &Value) -> anyhow::Result<()> {
    print(&format!("{}\n", serde_json::to_string_pretty(v)?))
}

/// Left-aligned columns separated by three spaces, like `docker ps`.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                line.push_str(cell);
                line.push_str(&" ".repeat(pad + 3));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `2025-01-01T00:00:00Z` → `5m ago`; unparsable input is shown as is.
pub fn age(rfc3339: &str) -> String {
    age_at(rfc3339, OffsetDateTime::now_utc())
}

fn age_at(rfc3339: &str, now: OffsetDateTime) -> String {
    let Ok(t) = OffsetDateTime::parse(rfc3339, &Rfc3339) else {
        return rfc3339.to_owned();
    };
    let secs = (now - t).whole_seconds();
    match secs {
        ..0 => "just now".to_owned(),
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        86400..2_592_000 => format!("{}d ago", secs / 86400),
        _ => format!("{}", t.date()),
    }
}

/// Bytes in binary units: `512 B`, `1.5 KiB`, `2.0 GiB`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `message: cause: cause…`, skipping causes the message already contains (client errors often
/// embed their source to read well on their own).
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let t = cause.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
    }
    out
}

pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let t = table(
            &["NAME", "STATUS"],
            &[
                vec!["a-long-name".into(), "running".into()],
                vec!["b".into(), "".into()],
            ],
        );
        assert_eq!(t, "NAME          STATUS\na-long-name   running\nb\n");
    }

    #[test]
    fn ages_and_sizes() {
        let now = OffsetDateTime::parse("2025-01-02T00:00:00Z", &Rfc3339).unwrap();
        assert_eq!(age_at("2025-01-01T23:59:30Z", now), "30s ago");
        assert_eq!(age_at("2025-01-01T23:00:00Z", now), "1h ago");
        assert_eq!(age_at("2024-01-01T00:00:00Z", now), "2024-01-01");
        assert_eq!(age_at("garbage", now), "garbage");
        assert_eq!(size(10), "10 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(3 << 30), "3.0 GiB");
    }
}
