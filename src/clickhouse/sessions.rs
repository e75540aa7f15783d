//! Sessions on ClickHouse, as the sled store answers them: a session is listed at the position
//! of its newest trace (the newest that started before `until`; ties by trace id), only if that
//! trace started at or after `since`; its totals come from at most [`MAX_SESSION_TRACES`] of its
//! newest trace summaries (computed from spans, like every summary here).
//!
//! One query finds the page of sessions; each listed session's totals are one more query (a
//! page of `limit` sessions costs `limit + 1` queries; fine for the UI's pages of 50).

use serde::Deserialize;

use super::query::summary_columns;
use super::{sql, ClickHouseError, ClickHouseStore};
use crate::store::{
    session_summary, Cursor, SessionPage, SessionQuery, SessionSummary, TraceQuery, TraceSummary,
    MAX_SESSION_TRACES,
};

impl ClickHouseStore {
    /// Sessions, most recently active first, with cursor pagination (see the module docs).
    pub async fn list_sessions(&self, q: &SessionQuery) -> Result<SessionPage, ClickHouseError> {
        let limit = q.limit.max(1);
        let db = &self.db;
        let (mut inner_where, mut inner_having) = (String::new(), String::new());
        if let Some(u) = q.until {
            inner_where = format!(
                "WHERE trace_id IN (SELECT trace_id FROM {db}.trace_times WHERE start_us < {})",
                u.micros()
            );
            inner_having = format!("AND t_start < {}", u.micros());
        }
        let mut outer = Vec::new();
        if let Some(s) = q.since {
            outer.push(format!("t_start >= {}", s.micros()));
        }
        if let Some(c) = &q.cursor {
            outer.push(format!(
                "(t_start < {start} OR (t_start = {start} AND trace_id > {id}))",
                start = c.start_us,
                id = sql::string(&c.trace_id)
            ));
        }
        let with_clause = match &q.q {
            Some(text) => {
                outer.push(
                    "(positionCaseInsensitiveUTF8(t_session, needle) > 0 \
                     OR ifNull(positionCaseInsensitiveUTF8(t_user, needle), 0) > 0)"
                        .to_string(),
                );
                format!("WITH {} AS needle", sql::string(text))
            }
            None => String::new(),
        };
        let outer_where = if outer.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", outer.join(" AND "))
        };
        #[derive(Deserialize)]
        struct Newest {
            session: String,
            trace_id: String,
            t_start: u64,
        }
        let newest: Vec<Newest> = self
            .select(&format!(
                "{with_clause}
                 SELECT assumeNotNull(t_session) AS session, trace_id, t_start FROM (
                    SELECT {cols} FROM {db}.spans FINAL {inner_where}
                    GROUP BY trace_id HAVING isNotNull(t_session) {inner_having}
                    ORDER BY t_start DESC, trace_id ASC
                    LIMIT 1 BY t_session
                 ) {outer_where}
                 ORDER BY t_start DESC, trace_id ASC
                 LIMIT {fetch} FORMAT JSONEachRow",
                cols = summary_columns(),
                fetch = limit + 1
            ))
            .await?;
        let more = newest.len() > limit;
        let mut sessions = Vec::new();
        let mut last = None;
        for n in newest.into_iter().take(limit) {
            let (summary, _) = self.session_traces(&n.session, MAX_SESSION_TRACES).await?;
            if let Some(summary) = summary {
                sessions.push(summary);
            }
            last = Some(Cursor {
                start_us: n.t_start,
                trace_id: n.trace_id,
            });
        }
        Ok(SessionPage {
            sessions,
            next_cursor: more.then_some(last).flatten().map(|c| c.encode()),
        })
    }

    /// One session: its totals and up to `limit` of its newest traces, oldest first. `None` when
    /// no trace carries this session id.
    pub async fn get_session(
        &self,
        session_id: &str,
        limit: usize,
    ) -> Result<Option<(SessionSummary, Vec<TraceSummary>)>, ClickHouseError> {
        let (summary, mut traces) = self.session_traces(session_id, limit.max(1)).await?;
        traces.reverse();
        Ok(summary.map(|s| (s, traces)))
    }

    /// The session's totals and up to `limit` of its newest trace summaries (newest first).
    async fn session_traces(
        &self,
        session: &str,
        limit: usize,
    ) -> Result<(Option<SessionSummary>, Vec<TraceSummary>), ClickHouseError> {
        let page = self
            .list_traces(&TraceQuery {
                limit,
                session_id: Some(session.to_string()),
                ..TraceQuery::default()
            })
            .await?;
        let complete = page.next_cursor.is_none();
        Ok((
            session_summary(session, &page.traces, complete),
            page.traces,
        ))
    }
}
