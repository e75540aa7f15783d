//! Call statistics and time series from the `l` call records (never span JSON).

use super::*;

impl Store {
    /// Call statistics over the `l` records with start in `[since, until)`.
    ///
    /// Counts, errors, tokens and cost are exact. Quantiles are exact (nearest rank) while the
    /// window holds at most 1,000,000 calls (100,000 per `group_by=model` row, 2,000 per time
    /// bucket); beyond that they are computed from a uniform reservoir sample of that size
    /// (deterministic seed, so the same data gives the same answer), which bounds memory at a few
    /// MB per row whatever the window. With [`StatsQuery::series`], the same single scan also
    /// fills one row per time bucket (empty buckets included, so the series is dense); calls
    /// outside the series' buckets count in the totals only.
    pub fn stats(&self, q: &StatsQuery) -> Result<Stats, StoreError> {
        let (lower, upper) = call_range(q.since, q.until);
        let mut total = StatsAcc::new(STATS_SAMPLE);
        let mut groups: BTreeMap<String, StatsAcc> = BTreeMap::new();
        let mut series = q.series.map(SeriesAcc::new);
        if lower < upper {
            for item in self
                .tree
                .range::<Vec<u8>, _>((Bound::Included(lower), Bound::Excluded(upper)))
            {
                let (key, value) = item?;
                let rec = CallRec::decode(&key, &value)?;
                total.add(&rec);
                if q.group_by_model {
                    groups
                        .entry(rec.model_name().to_string())
                        .or_insert_with(|| StatsAcc::new(GROUP_STATS_SAMPLE))
                        .add(&rec);
                }
                if let Some(series) = &mut series {
                    let Some(start) = key.get(1..9).and_then(|b| b.try_into().ok()) else {
                        return Err(corrupt(&key, "call key has no start time"));
                    };
                    series.add(u64::from_be_bytes(start), &rec, q.group_by_model);
                }
            }
        }
        let groups = q.group_by_model.then(|| {
            let mut rows: Vec<StatsRow> = groups
                .into_iter()
                .map(|(m, acc)| acc.row(Some(m)))
                .collect();
            rows.sort_by(|a, b| b.calls.cmp(&a.calls).then_with(|| a.model.cmp(&b.model)));
            rows
        });
        Ok(Stats {
            total: total.row(None),
            groups,
            bucket_seconds: q.series.map(|s| s.width_us / 1_000_000),
            series: series.map(|s| s.rows(q.group_by_model)),
        })
    }

    /// Start times (µs) of the first and the last call in `[since, until)`, `None` when there is
    /// none: two index seeks, no scan. Lets the API size a bucketed series before asking for it.
    pub fn call_bounds(
        &self,
        since: Option<Timestamp>,
        until: Option<Timestamp>,
    ) -> Result<Option<(u64, u64)>, StoreError> {
        let (lower, upper) = call_range(since, until);
        if lower >= upper {
            return Ok(None);
        }
        let mut range = self
            .tree
            .range::<Vec<u8>, _>((Bound::Included(lower), Bound::Excluded(upper)));
        let start_of = |key: &[u8]| {
            key.get(1..9)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| corrupt(key, "call key has no start time"))
        };
        let Some(first) = range.next() else {
            return Ok(None);
        };
        let first = start_of(&first?.0)?;
        let last = match range.next_back() {
            Some(item) => start_of(&item?.0)?,
            None => first,
        };
        Ok(Some((first, last)))
    }
}

/// What `l` holds per call: just what stats need, so they never read span JSON.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct CallRec {
    pub(super) model: Option<String>,
    pub(super) error: bool,
    pub(super) duration_ms: f64,
    pub(super) input_tokens: u64,
    pub(super) output_tokens: u64,
    pub(super) cost_usd: Option<f64>,
    /// Only for streamed calls.
    pub(super) ttft_ms: Option<f64>,
}

impl CallRec {
    pub(super) fn of(span: &Span) -> CallRec {
        let llm = span.llm.as_ref();
        CallRec {
            model: span.model().map(str::to_string),
            error: span.status == Status::Error,
            duration_ms: span.start_time.ms_until(span.end_time),
            input_tokens: llm.and_then(|l| l.input_tokens).unwrap_or(0),
            output_tokens: llm.and_then(|l| l.output_tokens).unwrap_or(0),
            cost_usd: llm.and_then(|l| l.cost_usd),
            ttft_ms: llm
                .filter(|l| l.stream)
                .and_then(|l| l.ttft_ms)
                .filter(|t| t.is_finite()),
        }
    }
}

impl CallRec {
    /// The `l` value: a flags byte (model, error, cost, ttft present), duration, tokens, then
    /// the optional fields (see [`Enc`]).
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut e = Enc::with_capacity(48);
        let flags = u8::from(self.model.is_some())
            | u8::from(self.error) << 1
            | u8::from(self.cost_usd.is_some()) << 2
            | u8::from(self.ttft_ms.is_some()) << 3;
        e.u8(flags);
        e.f64(self.duration_ms);
        e.u64(self.input_tokens);
        e.u64(self.output_tokens);
        if let Some(m) = &self.model {
            e.str(m);
        }
        if let Some(c) = self.cost_usd {
            e.f64(c);
        }
        if let Some(t) = self.ttft_ms {
            e.f64(t);
        }
        e.0
    }

    pub(super) fn decode(key: &[u8], value: &[u8]) -> Result<CallRec, StoreError> {
        decode_bin(key, value, |d| {
            let flags = d.u8()?;
            if flags > 0x0F {
                return None;
            }
            let duration_ms = d.f64()?;
            let input_tokens = d.u64()?;
            let output_tokens = d.u64()?;
            Some(CallRec {
                model: if flags & 1 != 0 {
                    Some(d.string()?)
                } else {
                    None
                },
                error: flags & 2 != 0,
                duration_ms,
                input_tokens,
                output_tokens,
                cost_usd: if flags & 4 != 0 { Some(d.f64()?) } else { None },
                ttft_ms: if flags & 8 != 0 { Some(d.f64()?) } else { None },
            })
        })
    }

    pub(super) fn model_name(&self) -> &str {
        self.model.as_deref().unwrap_or(UNKNOWN_MODEL)
    }
}

/// Exact per-model counts (no quantiles) for one series bucket.
#[derive(Default)]
pub(super) struct Counts {
    pub(super) calls: u64,
    pub(super) errors: u64,
    pub(super) input_tokens: u64,
    pub(super) output_tokens: u64,
    pub(super) cost_pico: Option<u64>,
}

impl Counts {
    pub(super) fn add(&mut self, rec: &CallRec) {
        self.calls += 1;
        self.errors += u64::from(rec.error);
        self.input_tokens = self.input_tokens.saturating_add(rec.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(rec.output_tokens);
        if let Some(pico) = rec.cost_usd.and_then(to_pico) {
            self.cost_pico = Some(self.cost_pico.unwrap_or(0).saturating_add(pico));
        }
    }
}

/// The buckets of a series being filled by one scan.
pub(super) struct SeriesAcc {
    pub(super) spec: Series,
    pub(super) buckets: Vec<StatsAcc>,
    pub(super) models: Vec<BTreeMap<String, Counts>>,
    /// Models named so far (at most [`MAX_SERIES_MODELS`]).
    pub(super) named: BTreeSet<String>,
}

impl SeriesAcc {
    pub(super) fn new(spec: Series) -> SeriesAcc {
        SeriesAcc {
            spec,
            buckets: (0..spec.count)
                .map(|_| StatsAcc::new(BUCKET_STATS_SAMPLE))
                .collect(),
            models: Vec::new(),
            named: BTreeSet::new(),
        }
    }

    pub(super) fn add(&mut self, start_us: u64, rec: &CallRec, by_model: bool) {
        let Some(offset) = start_us.checked_sub(self.spec.first_us) else {
            return;
        };
        let Ok(i) = usize::try_from(offset / self.spec.width_us.max(1)) else {
            return;
        };
        let Some(bucket) = self.buckets.get_mut(i) else {
            return;
        };
        bucket.add(rec);
        if by_model {
            if self.models.is_empty() {
                self.models = (0..self.spec.count).map(|_| BTreeMap::new()).collect();
            }
            let name = rec.model_name();
            let name = if self.named.contains(name) {
                name
            } else if self.named.len() < MAX_SERIES_MODELS {
                self.named.insert(name.to_string());
                name
            } else {
                OTHER_MODELS
            };
            if let Some(models) = self.models.get_mut(i) {
                match models.get_mut(name) {
                    Some(c) => c.add(rec),
                    None => {
                        let mut c = Counts::default();
                        c.add(rec);
                        models.insert(name.to_string(), c);
                    }
                }
            }
        }
    }

    pub(super) fn rows(self, by_model: bool) -> Vec<SeriesRow> {
        let SeriesAcc {
            spec,
            buckets,
            mut models,
            ..
        } = self;
        let width = spec.width_us;
        buckets
            .into_iter()
            .enumerate()
            .map(|(i, acc)| {
                let start = spec.first_us.saturating_add(width.saturating_mul(i as u64));
                let models = by_model.then(|| {
                    let counts = models.get_mut(i).map(std::mem::take).unwrap_or_default();
                    let mut rows: Vec<ModelCounts> = counts
                        .into_iter()
                        .map(|(model, c)| ModelCounts {
                            model,
                            calls: c.calls,
                            errors: c.errors,
                            input_tokens: c.input_tokens,
                            output_tokens: c.output_tokens,
                            cost_usd: c.cost_pico.map(from_pico),
                        })
                        .collect();
                    rows.sort_by(|a, b| b.calls.cmp(&a.calls).then_with(|| a.model.cmp(&b.model)));
                    rows
                });
                SeriesRow {
                    start: Timestamp(start),
                    end: Timestamp(start.saturating_add(width)),
                    stats: acc.row(None),
                    models,
                }
            })
            .collect()
    }
}

pub(super) struct StatsAcc {
    pub(super) calls: u64,
    pub(super) errors: u64,
    pub(super) input_tokens: u64,
    pub(super) output_tokens: u64,
    pub(super) cost_pico: Option<u64>,
    pub(super) latencies: Reservoir,
    pub(super) ttfts: Reservoir,
}

impl StatsAcc {
    /// Quantiles from at most `sample` values each.
    pub(super) fn new(sample: usize) -> StatsAcc {
        StatsAcc {
            calls: 0,
            errors: 0,
            input_tokens: 0,
            output_tokens: 0,
            cost_pico: None,
            latencies: Reservoir::new(sample),
            ttfts: Reservoir::new(sample),
        }
    }

    pub(super) fn add(&mut self, rec: &CallRec) {
        self.calls += 1;
        self.errors += u64::from(rec.error);
        self.input_tokens = self.input_tokens.saturating_add(rec.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(rec.output_tokens);
        if let Some(pico) = rec.cost_usd.and_then(to_pico) {
            self.cost_pico = Some(self.cost_pico.unwrap_or(0).saturating_add(pico));
        }
        if rec.duration_ms.is_finite() {
            self.latencies.add(rec.duration_ms);
        }
        if let Some(t) = rec.ttft_ms {
            self.ttfts.add(t);
        }
    }

    pub(super) fn row(self, model: Option<String>) -> StatsRow {
        StatsRow {
            model,
            calls: self.calls,
            errors: self.errors,
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            cost_usd: self.cost_pico.map(from_pico),
            latency_ms: quantiles(self.latencies.values),
            ttft_ms: quantiles(self.ttfts.values),
        }
    }
}

/// Keeps every value until `cap` is reached, then a uniform random sample of `cap` of them
/// (Vitter's algorithm R) from a fixed-seed generator: bounded memory, reproducible answers.
pub(super) struct Reservoir {
    pub(super) cap: usize,
    pub(super) seen: u64,
    pub(super) values: Vec<f64>,
    pub(super) rng: u64,
}

impl Reservoir {
    const SEED: u64 = 0x5EED_11E7_7ACE_0001;

    pub(super) fn new(cap: usize) -> Reservoir {
        Reservoir {
            cap,
            seen: 0,
            values: Vec::new(),
            rng: Self::SEED,
        }
    }

    pub(super) fn add(&mut self, value: f64) {
        self.seen += 1;
        if self.values.len() < self.cap {
            self.values.push(value);
            return;
        }
        // Replace a random slot with probability cap / seen.
        let j = self.next_random() % self.seen;
        if let Some(slot) = usize::try_from(j).ok().and_then(|j| self.values.get_mut(j)) {
            *slot = value;
        }
    }

    /// splitmix64.
    pub(super) fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Nearest-rank p50/p95/p99; all `None` when there are no values.
pub(super) fn quantiles(mut values: Vec<f64>) -> Quantiles {
    values.sort_by(f64::total_cmp);
    let at = |p: usize| {
        let n = values.len();
        let rank = (p * n).div_ceil(100).max(1);
        values.get(rank - 1).copied()
    };
    Quantiles {
        p50: at(50),
        p95: at(95),
        p99: at(99),
    }
}

/// The `l` key range of calls that started in `[since, until)`.
pub(super) fn call_range(since: Option<Timestamp>, until: Option<Timestamp>) -> (Vec<u8>, Vec<u8>) {
    let mut lower = vec![P_CALL];
    lower.extend_from_slice(&since.map_or(0, Timestamp::micros).to_be_bytes());
    let upper = match until {
        Some(until) => {
            let mut k = vec![P_CALL];
            k.extend_from_slice(&until.micros().to_be_bytes());
            k
        }
        None => vec![P_CALL + 1],
    };
    (lower, upper)
}
