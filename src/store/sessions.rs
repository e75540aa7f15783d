//! Sessions: read from the session index and the time index, totalled from summaries.

use super::*;

impl Store {
    /// Sessions, most recently active first. A session is listed at the position of its newest
    /// trace (the newest one that started before `until`), and only if that trace started at or
    /// after `since`; `next_cursor` continues from there. Walks the `t` index like
    /// [`Store::list_traces`] (at most 100,000 entries per page), checks "newest of its session"
    /// with one seek in the session's `x` index, and totals each listed session from at most
    /// [`MAX_SESSION_TRACES`] of its newest summaries. Never reads spans.
    pub fn list_sessions(&self, q: &SessionQuery) -> Result<SessionPage, StoreError> {
        let limit = q.limit.max(1);
        let empty = SessionPage {
            sessions: Vec::new(),
            next_cursor: None,
        };
        let Some((lower, upper)) = index_window(&[P_TIME], q.since, q.until, q.cursor.as_ref())
        else {
            return Ok(empty);
        };
        let needle = q.q.as_deref().map(str::to_lowercase);
        let mut sessions = Vec::new();
        let mut more = false;
        let mut last_examined: Option<Cursor> = None;
        let mut examined = 0usize;
        for item in self
            .tree
            .range::<Vec<u8>, _>((Bound::Included(lower), Bound::Excluded(upper)))
        {
            let (key, value) = item?;
            let Some((start, trace_id)) = key.get(1..).and_then(parse_position) else {
                return Err(corrupt(&key, "time index key has no start and trace id"));
            };
            examined += 1;
            let position = Cursor {
                start_us: start,
                trace_id: trace_id.to_string(),
            };
            let row = self.time_entry_row(&key, &value, trace_id)?;
            let session = row
                .as_ref()
                .filter(|row| row.start_time.micros() == start)
                .and_then(|row| Some((row.session_id.as_deref()?, row.user_id.as_deref())));
            if let Some((session, user)) = session {
                let wanted = needle.as_deref().is_none_or(|n| {
                    session.to_lowercase().contains(n)
                        || user.is_some_and(|u| u.to_lowercase().contains(n))
                });
                if wanted && self.is_newest_in_session(session, &position, q.until)? {
                    if sessions.len() == limit {
                        more = true;
                        break;
                    }
                    let (summary, _) = self.session_traces(session, MAX_SESSION_TRACES)?;
                    if let Some(summary) = summary {
                        sessions.push((summary, position.clone()));
                    }
                }
            }
            last_examined = Some(position);
            if examined >= MAX_EXAMINED {
                more = true;
                break;
            }
        }
        let next_cursor = if !more {
            None
        } else if sessions.len() == limit {
            sessions.last().map(|(_, c)| c.clone())
        } else {
            last_examined
        };
        Ok(SessionPage {
            sessions: sessions.into_iter().map(|(s, _)| s).collect(),
            next_cursor: next_cursor.map(|c| c.encode()),
        })
    }

    /// One session: its totals and up to `limit` of its newest traces, returned oldest first
    /// (conversation order). `None` when no trace carries this session id.
    pub fn get_session(
        &self,
        session_id: &str,
        limit: usize,
    ) -> Result<Option<(SessionSummary, Vec<TraceSummary>)>, StoreError> {
        let (summary, mut traces) = self.session_traces(session_id, limit.max(1))?;
        traces.reverse();
        Ok(summary.map(|s| (s, traces)))
    }

    /// Whether `position` is the newest entry (before `until`) in `session`'s index.
    pub(super) fn is_newest_in_session(
        &self,
        session: &str,
        position: &Cursor,
        until: Option<Timestamp>,
    ) -> Result<bool, StoreError> {
        let prefix = index_prefix(F_SESSION, session);
        let Some((lower, upper)) = index_window(&prefix, None, until, None) else {
            return Ok(false);
        };
        let Some(item) = self
            .tree
            .range::<Vec<u8>, _>((Bound::Included(lower), Bound::Excluded(upper)))
            .next()
        else {
            return Ok(false);
        };
        let (key, _) = item?;
        let Some((start, trace_id)) = key.get(prefix.len()..).and_then(parse_position) else {
            return Err(corrupt(&key, "index key has no start and trace id"));
        };
        Ok(start == position.start_us && trace_id == position.trace_id)
    }

    /// The session's totals and up to `limit` of its newest trace summaries (newest first),
    /// from its `x` index.
    pub(super) fn session_traces(
        &self,
        session: &str,
        limit: usize,
    ) -> Result<(Option<SessionSummary>, Vec<TraceSummary>), StoreError> {
        let prefix = index_prefix(F_SESSION, session);
        let mut traces = Vec::new();
        let mut complete = true;
        for item in self.tree.scan_prefix(&prefix) {
            let (key, _) = item?;
            if traces.len() == limit {
                complete = false;
                break;
            }
            let Some((start, trace_id)) = key.get(prefix.len()..).and_then(parse_position) else {
                return Err(corrupt(&key, "index key has no start and trace id"));
            };
            if let Some(read) = self.load_read_agg(trace_id, &[])? {
                if read.agg().start == start {
                    traces.push(read.agg().summary());
                }
            }
        }
        Ok((session_summary(session, &traces, complete), traces))
    }
}

/// Totals over a session's traces (given newest first); `None` for no traces.
pub fn session_summary(
    session: &str,
    newest_first: &[TraceSummary],
    complete: bool,
) -> Option<SessionSummary> {
    let newest = newest_first.first()?;
    let oldest = newest_first.last()?;
    let mut s = SessionSummary {
        session_id: session.to_string(),
        trace_count: newest_first.len() as u64,
        complete,
        start_time: oldest.start_time,
        end_time: newest.end_time,
        duration_ms: 0.0,
        status: Status::Ok,
        errors: 0,
        span_count: 0,
        llm_calls: 0,
        input_tokens: 0,
        output_tokens: 0,
        cost_usd: None,
        models: Vec::new(),
        user_ids: Vec::new(),
        first_input_preview: oldest.input_preview.clone(),
        last_output_preview: newest.output_preview.clone(),
        last_trace_id: newest.trace_id.clone(),
    };
    let mut cost_pico: Option<u64> = None;
    let mut models = BTreeSet::new();
    let mut users = BTreeSet::new();
    for t in newest_first {
        s.start_time = s.start_time.min(t.start_time);
        s.end_time = s.end_time.max(t.end_time);
        s.status = s.status.worst(t.status);
        s.errors += u64::from(t.status == Status::Error);
        s.span_count += t.span_count;
        s.llm_calls += t.llm_calls;
        s.input_tokens = s.input_tokens.saturating_add(t.input_tokens);
        s.output_tokens = s.output_tokens.saturating_add(t.output_tokens);
        if let Some(pico) = t.cost_usd.and_then(to_pico) {
            cost_pico = Some(cost_pico.unwrap_or(0).saturating_add(pico));
        }
        for m in &t.models {
            insert_capped(&mut models, m);
        }
        if let Some(u) = &t.user_id {
            insert_capped(&mut users, u);
        }
    }
    s.duration_ms = s.start_time.ms_until(s.end_time);
    s.cost_usd = cost_pico.map(from_pico);
    s.models = models.into_iter().collect();
    s.user_ids = users.into_iter().collect();
    Some(s)
}
