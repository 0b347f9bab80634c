//! A chunk: the samples of one series over at most an hour, packed as varints.
//!
//! Values are scaled integers (hundredths of a percent, millidegrees, KiB). The first
//! sample is its time offset from the chunk's start and its value; every further sample
//! is the seconds since the previous one and the change of value, zigzag-encoded. A
//! sample taken every minute that moves little costs two or three bytes.

/// Longest span of a chunk: a query for a time reads the chunks that started up to this
/// long before it, and retention removes whole chunks.
pub const SPAN_SECONDS: i64 = 3600;
/// A chunk is closed once its bytes reach this, so that a row stays on one page of the
/// database (a row rewritten every round must not spill to overflow pages).
pub const MAX_BYTES: usize = 480;

/// A chunk being decoded or extended: where it starts, its bytes, and its last sample.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub start: i64,
    pub data: Vec<u8>,
    pub count: u32,
    last: Option<(i64, i64)>,
}

/// Why a chunk's bytes could not be read.
#[derive(Debug, PartialEq, Eq)]
pub struct Damaged;

impl Chunk {
    pub fn new(start: i64) -> Chunk {
        Chunk { start, data: Vec::new(), count: 0, last: None }
    }

    /// A stored chunk, decoded once to find its last sample so it can be extended.
    pub fn open(start: i64, data: Vec<u8>) -> Result<Chunk, Damaged> {
        let mut last = None;
        let mut count = 0u32;
        for sample in decode(start, &data) {
            last = Some(sample?);
            count += 1;
        }
        Ok(Chunk { start, data, count, last })
    }

    /// Whether a sample at `t` belongs in this chunk, or a new one must start.
    pub fn takes(&self, t: i64) -> bool {
        match self.last {
            None => t >= self.start && t - self.start < SPAN_SECONDS,
            Some((last_t, _)) => t > last_t && t - self.start < SPAN_SECONDS && self.data.len() < MAX_BYTES,
        }
    }

    /// Appends a sample; the caller has checked [`Chunk::takes`].
    pub fn push(&mut self, t: i64, v: i64) {
        match self.last {
            None => {
                put_varint(&mut self.data, (t - self.start) as u64);
                put_varint(&mut self.data, zigzag(v));
            }
            Some((last_t, last_v)) => {
                put_varint(&mut self.data, (t - last_t) as u64);
                put_varint(&mut self.data, zigzag(v.wrapping_sub(last_v)));
            }
        }
        self.last = Some((t, v));
        self.count += 1;
    }

    pub fn last(&self) -> Option<(i64, i64)> {
        self.last
    }
}

/// The samples of a chunk's bytes, in time order; a damaged chunk ends with an error.
pub fn decode(start: i64, data: &[u8]) -> impl Iterator<Item = Result<(i64, i64), Damaged>> + '_ {
    let mut at = 0usize;
    let mut last: Option<(i64, i64)> = None;
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || at >= data.len() {
            return None;
        }
        let next = (|| {
            let dt = get_varint(data, &mut at)?;
            let dv = unzigzag(get_varint(data, &mut at)?);
            let dt = i64::try_from(dt).map_err(|_| Damaged)?;
            Ok(match last {
                None => (start.checked_add(dt).ok_or(Damaged)?, dv),
                Some((t, v)) if dt > 0 => (t.checked_add(dt).ok_or(Damaged)?, v.wrapping_add(dv)),
                Some(_) => return Err(Damaged),
            })
        })();
        match next {
            Ok(sample) => {
                last = Some(sample);
                Some(Ok(sample))
            }
            Err(e) => {
                failed = true;
                Some(Err(e))
            }
        }
    })
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(u: u64) -> i64 {
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, mut u: u64) {
    while u >= 0x80 {
        out.push((u as u8) | 0x80);
        u >>= 7;
    }
    out.push(u as u8);
}

fn get_varint(data: &[u8], at: &mut usize) -> Result<u64, Damaged> {
    let mut u = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *data.get(*at).ok_or(Damaged)?;
        *at += 1;
        u |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(u);
        }
    }
    Err(Damaged)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn all(chunk: &Chunk) -> Vec<(i64, i64)> {
        decode(chunk.start, &chunk.data).collect::<Result<_, _>>().unwrap()
    }

    #[test]
    fn samples_come_back_exactly_and_a_steady_minute_costs_two_bytes() {
        let mut c = Chunk::new(1_800_000_000);
        let samples = [(1_800_000_000, 4_250), (1_800_000_060, 4_300), (1_800_000_120, 4_290), (1_800_000_181, 4_290)];
        for (t, v) in samples {
            assert!(c.takes(t));
            c.push(t, v);
        }
        assert_eq!(all(&c), samples);
        assert_eq!(c.count, 4);
        // 0, 4250 (two bytes) | 60, +50 | 60, -10 | 61, 0
        assert_eq!(c.data.len(), 3 + 2 + 2 + 2);
    }

    #[test]
    fn extremes_survive_and_a_reopened_chunk_continues_where_it_stopped() {
        let mut c = Chunk::new(100);
        for (t, v) in [(100, i64::MIN), (101, i64::MAX), (3699, -1), (3699 - 1, 0)] {
            if c.takes(t) {
                c.push(t, v);
            }
        }
        assert_eq!(all(&c), [(100, i64::MIN), (101, i64::MAX), (3699, -1)]);
        let mut reopened = Chunk::open(c.start, c.data.clone()).unwrap();
        assert_eq!((reopened.last(), reopened.count), (Some((3699, -1)), 3));
        assert!(!reopened.takes(3700), "an hour after its start a new chunk begins");
        assert!(!reopened.takes(3699), "time only moves forward");
        reopened.data.truncate(reopened.data.len() - 1);
        assert!(Chunk::open(c.start, reopened.data).is_err());
    }

    #[test]
    fn a_chunk_closes_before_it_outgrows_a_page_row() {
        let mut c = Chunk::new(0);
        let mut t = 0;
        while c.takes(t) {
            c.push(t, t * 1_000_003);
            t += 1;
        }
        assert!(c.data.len() >= MAX_BYTES && c.data.len() < MAX_BYTES + 20, "{}", c.data.len());
    }

    #[test]
    fn damaged_bytes_are_an_error_never_a_panic() {
        for data in [&[0x80u8][..], &[0, 0, 0], &[0xff; 11], &[0, 0, 0, 0]] {
            let r: Result<Vec<_>, _> = decode(0, data).collect();
            assert_eq!(r, Err(Damaged), "{data:?}");
        }
    }
}
