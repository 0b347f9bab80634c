//! Reading the history back: series chosen by name or prefix, downsampled into steps with
//! an aggregation, on a connection of its own (the sampler never waits for a query).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::chunk::{decode, SPAN_SECONDS};
use super::collect::Unit;
use super::store::configure;

/// Most points one query may return, over all its series.
pub const MAX_POINTS: u64 = 50_000;

/// How the samples of a step become its value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    #[default]
    Avg,
    Min,
    Max,
    Last,
}

/// A query, times in seconds since the epoch.
#[derive(Clone, Debug)]
pub struct Query {
    pub names: Vec<String>,
    pub since: i64,
    pub until: i64,
    pub step: i64,
    pub aggregation: Aggregation,
}

/// One series' points: `[time, value]` with the time of the step's start.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct Series {
    pub name: String,
    /// Unit of the values: percent, bytes, bytes_per_second, celsius, count or flag.
    pub unit: String,
    /// `[seconds since the epoch at the step's start, value]`, oldest first; steps without
    /// samples are left out.
    pub points: Vec<(i64, f64)>,
}

/// A query that cannot be answered as asked, with what to ask instead.
#[derive(Debug)]
pub enum QueryError {
    Invalid(String),
    Unavailable(String),
}

impl From<rusqlite::Error> for QueryError {
    fn from(e: rusqlite::Error) -> QueryError {
        QueryError::Unavailable(format!("the metrics database could not be read: {e}"))
    }
}

/// Whether series `name` is asked for by `pattern`: the name itself, a dotted prefix of it
/// (`cpu` or `disk./boot`), or any prefix ending in `*` (`net.eth*`).
pub fn matches(pattern: &str, name: &str) -> bool {
    if let Some(prefix) = pattern.strip_suffix('*') {
        return name.starts_with(prefix);
    }
    name == pattern || (name.starts_with(pattern) && name.as_bytes().get(pattern.len()) == Some(&b'.'))
}

/// A reading connection to the database.
pub struct Reader {
    conn: Connection,
}

impl Reader {
    pub fn open(path: &Path) -> Result<Reader, QueryError> {
        if !path.exists() {
            return Err(QueryError::Unavailable(format!("{} does not exist yet", path.display())));
        }
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // A reader waits at most this for a process that locked the whole database.
        configure(&conn, Duration::from_millis(500))?;
        Ok(Reader { conn })
    }

    /// Every series: name and unit, by name.
    pub fn series(&self) -> Result<Vec<(i64, String, Unit)>, QueryError> {
        let mut stmt = self.conn.prepare("SELECT id, name, unit FROM series ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, name, unit) = row?;
            if let Some(unit) = Unit::from_name(&unit) {
                out.push((id, name, unit));
            }
        }
        Ok(out)
    }

    /// Answers a query. The caller has checked `since < until` and `step > 0`.
    pub fn query(&self, q: &Query) -> Result<Vec<Series>, QueryError> {
        let all = self.series()?;
        let chosen: Vec<&(i64, String, Unit)> = if q.names.is_empty() {
            all.iter().collect()
        } else {
            for pattern in &q.names {
                if !all.iter().any(|(_, name, _)| matches(pattern, name)) {
                    let known: Vec<&str> = all.iter().map(|(_, n, _)| n.as_str()).collect();
                    return Err(QueryError::Invalid(format!(
                        "no series is named {pattern:?} or starts with it; known series: {}",
                        if known.is_empty() { "none yet".to_string() } else { known.join(", ") }
                    )));
                }
            }
            all.iter().filter(|(_, name, _)| q.names.iter().any(|p| matches(p, name))).collect()
        };
        let first = q.since.div_euclid(q.step) * q.step;
        let steps = ((q.until - first) / q.step + 1) as u64;
        let points = steps.saturating_mul(chosen.len() as u64);
        if points > MAX_POINTS {
            let series = chosen.len() as u64;
            let step = ((q.until - q.since) as u64 * series).div_ceil(MAX_POINTS).max(1);
            return Err(QueryError::Invalid(format!(
                "{series} series over {steps} steps would be {points} points, more than {MAX_POINTS}: \
                 ask for a step of at least {step} s, a shorter range, or fewer names"
            )));
        }
        let units: Vec<Unit> = chosen.iter().map(|(_, _, unit)| *unit).collect();
        let mut out: Vec<(Unit, Vec<Bucket>)> = units.iter().map(|u| (*u, Vec::new())).collect();
        let ids: Vec<i64> = chosen.iter().map(|(id, _, _)| *id).collect();
        self.scan(&ids, q.since, q.until, |i, t, v| {
            let at = t.div_euclid(q.step) * q.step;
            let buckets = &mut out[i].1;
            match buckets.last_mut() {
                Some(b) if b.at == at => b.add(v),
                // Chunks of one series come in time order, and so do their samples.
                _ => buckets.push(Bucket::new(at, v)),
            }
        })?;
        Ok(chosen
            .iter()
            .zip(out)
            .map(|((_, name, _), (unit, buckets))| Series {
                name: name.clone(),
                unit: unit.name().to_string(),
                points: buckets.iter().map(|b| (b.at, round(unit, unit.from_stored(b.value(q.aggregation))))).collect(),
            })
            .collect())
    }
}

impl Reader {
    /// Calls `each(index in ids, time, stored value)` for every sample of the series `ids`
    /// from `since` to `until`, each series' samples in time order.
    fn scan(
        &self,
        ids: &[i64],
        since: i64,
        until: i64,
        mut each: impl FnMut(usize, i64, i64),
    ) -> Result<(), QueryError> {
        let index: HashMap<i64, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        let one = (ids.len() == 1).then(|| ids[0]);
        let sql = if one.is_some() {
            "SELECT start, series, data FROM samples WHERE start > ?1 AND start <= ?2 AND series = ?3"
        } else {
            "SELECT start, series, data FROM samples WHERE start > ?1 AND start <= ?2 AND ?3 IS NULL"
        };
        let mut stmt = self.conn.prepare(sql)?;
        let mut rows = stmt.query(rusqlite::params![since - SPAN_SECONDS, until, one])?;
        while let Some(row) = rows.next()? {
            let series: i64 = row.get(1)?;
            let Some(&i) = index.get(&series) else { continue };
            let start: i64 = row.get(0)?;
            let data = row.get_ref(2)?.as_blob().map_err(|e| QueryError::Unavailable(e.to_string()))?;
            for sample in decode(start, data) {
                // A damaged chunk gives what it holds up to the damage.
                let Ok((t, v)) = sample else { break };
                if (since..=until).contains(&t) {
                    each(i, t, v);
                }
            }
        }
        Ok(())
    }

    /// Every series' minimum, average, maximum and last value from `since` to `until`.
    pub fn summary(&self, since: i64, until: i64) -> Result<Vec<Summary>, QueryError> {
        let all = self.series()?;
        let ids: Vec<i64> = all.iter().map(|(id, _, _)| *id).collect();
        let mut buckets: Vec<Option<Bucket>> = (0..ids.len()).map(|_| None).collect();
        self.scan(&ids, since, until, |i, _, v| match &mut buckets[i] {
            Some(b) => b.add(v),
            none => *none = Some(Bucket::new(0, v)),
        })?;
        Ok(all
            .into_iter()
            .zip(buckets)
            .filter_map(|((_, name, unit), b)| {
                let b = b?;
                let value = |a| round(unit, unit.from_stored(b.value(a)));
                Some(Summary {
                    name,
                    unit: unit.name().to_string(),
                    min: value(Aggregation::Min),
                    avg: value(Aggregation::Avg),
                    max: value(Aggregation::Max),
                    last: value(Aggregation::Last),
                    samples: b.count,
                })
            })
            .collect())
    }
}

/// One series over a range, in a line.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct Summary {
    pub name: String,
    pub unit: String,
    pub min: f64,
    pub avg: f64,
    pub max: f64,
    pub last: f64,
    pub samples: u32,
}

/// A value to the precision it was stored with (and one digit more for averages).
fn round(unit: Unit, value: f64) -> f64 {
    let digits = match unit {
        Unit::Percent | Unit::Count => 1000.0,
        Unit::Celsius => 10000.0,
        Unit::Bytes | Unit::BytesPerSecond => 1.0,
        Unit::Flag => 100.0,
    };
    (value * digits).round() / digits
}

struct Bucket {
    at: i64,
    sum: i128,
    count: u32,
    min: i64,
    max: i64,
    last: i64,
}

impl Bucket {
    fn new(at: i64, v: i64) -> Bucket {
        Bucket { at, sum: i128::from(v), count: 1, min: v, max: v, last: v }
    }
    fn add(&mut self, v: i64) {
        self.sum += i128::from(v);
        self.count += 1;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.last = v;
    }
    fn value(&self, aggregation: Aggregation) -> f64 {
        match aggregation {
            Aggregation::Avg => self.sum as f64 / f64::from(self.count),
            Aggregation::Min => self.min as f64,
            Aggregation::Max => self.max as f64,
            Aggregation::Last => self.last as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_matches_itself_its_dotted_prefixes_and_star_prefixes() {
        assert!(matches("cpu.percent", "cpu.percent"));
        assert!(matches("cpu", "cpu.core0.percent"));
        assert!(matches("disk./boot", "disk./boot.used_percent"));
        assert!(!matches("disk./boot", "disk./boot/firmware.used_percent"));
        assert!(!matches("cpu.core1", "cpu.core10.percent"));
        assert!(matches("net.eth*", "net.eth0.rx_bytes_per_second"));
        assert!(!matches("net.eth", "net.eth0.rx_bytes_per_second"));
    }
}
