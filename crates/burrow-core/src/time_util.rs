//! RFC 3339 UTC timestamps, the only time format on the wire and in the store.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub fn now_rfc3339() -> String {
    let now = OffsetDateTime::now_utc();
    // Millisecond precision keeps strings short and sortable.
    let now = now
        .replace_nanosecond(now.millisecond() as u32 * 1_000_000)
        .unwrap_or(now);
    now.format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}
