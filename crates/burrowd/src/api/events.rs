//! `GET /v1/sandboxes/{name}/events`: server-sent events for one sandbox (state changes,
//! checkpoints, sessions). `?since=SEQ` (or `Last-Event-ID`) replays what the daemon still
//! remembers after that event first.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};

use super::extract::query_pairs;
use super::{ApiError, AppState};

fn sse(e: &burrow_core::events::Event) -> Event {
    Event::default()
        .id(e.seq.to_string())
        .event(e.kind.clone())
        .data(serde_json::to_string(e).unwrap_or_default())
}

pub async fn events(
    State(s): State<AppState>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    s.mgr.get(&name)?;
    let mut since: u64 = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    for (k, v) in query_pairs(q.as_deref())? {
        match k.as_str() {
            "since" => {
                since = v.parse().map_err(|_| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        format!("since '{v}' is not a number"),
                    )
                })?
            }
            other => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("unknown query parameter '{other}'"),
                ));
            }
        }
    }
    let (past, rx) = s.mgr.events.subscribe(&name, since);
    let past = futures::stream::iter(past.into_iter().map(|e| Ok(sse(&e))));
    let live = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(move |r| {
        let name = name.clone();
        async move {
            match r {
                Ok(e) if e.sandbox == name => Some(Ok(sse(&e))),
                Ok(_) => None,
                // A slow subscriber missed events: say so, the client can re-read with `since`.
                Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                    Some(Ok(Event::default()
                        .event("lagged")
                        .data(format!("{{\"missed\":{n}}}"))))
                }
            }
        }
    });
    Ok(Sse::new(past.chain(live)).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
