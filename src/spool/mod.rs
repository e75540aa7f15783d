//! Spool: the capture queue's overflow, on disk.
//!
//! When the writer is busy (the store takes a span in tens of microseconds, the proxy serves one
//! in a few), captured calls are appended here instead of waiting in memory, where a full queue
//! would drop them. The writer drains the spool, oldest first, whenever it has time; what is
//! still spooled at shutdown (or at a crash) is stored after the next start. So a burst costs
//! disk space for a while, not captures: only a full spool (`spool_max_bytes`) drops them again.
//!
//! Layout: `<data_dir>/spool/` holds segment files `<seq>.seg` (20-digit sequence numbers,
//! appended to until [`SEGMENT_BYTES`], then a new one) and `cursor` (16 bytes: the segment and
//! offset the writer has stored up to). Each segment is a run of frames,
//! `len: u32 LE | crc32(payload): u32 LE | payload`, the payload one call (see [`record`]).
//! A frame that does not check out (a crash cut the last append) ends its segment: the calls
//! after it are counted as dropped (`reason="spool_corrupt"`), never guessed at.
//!
//! Not fsynced: a record is as durable as the page cache (it survives the process, not a power
//! cut); the cursor is written after the store has accepted a batch, so at worst a batch is
//! stored twice (a write replaces a span with the same id, so twice is the same as once).

mod record;

use std::{
    collections::VecDeque,
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{atomic::Ordering::Relaxed, Arc, Mutex, PoisonError},
};

use crate::{metrics::Metrics, tap::CallRecord, varint::Enc};

/// A segment is closed for appends once it holds this much.
const SEGMENT_BYTES: u64 = if cfg!(test) { 64 << 10 } else { 32 << 20 };
/// Frame header: payload length and its CRC-32.
const HEADER: usize = 8;
/// The spool never takes the last of its filesystem's free space, which the store needs to
/// recover from a full disk: below this much free, appends are refused (the calls then wait in
/// memory, as without a spool).
const MIN_FREE: u64 = 64 << 20;

/// Appends are written in pieces of about this size, or one record when it is larger (small, so
/// that a woken request thread rarely waits long behind one `write`'s copy).
const WRITE_CHUNK: usize = 64 << 10;
/// A frame claiming more than this is corrupt (a call is bounded by the capture caps).
const MAX_FRAME: u32 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool: {dir}: {source}")]
    Io { dir: PathBuf, source: io::Error },
    #[error("spool is full ({pending} bytes waiting, spool_max_bytes = {max})")]
    Full { pending: u64, max: u64 },
    #[error("spool: only {free} bytes free on its disk; the last 64 MiB are left to the store")]
    DiskLow { free: u64 },
}

/// The on-disk overflow of the capture queue. One appender (the queue's intake) and one reader
/// (the writer thread) at a time; both lock briefly, and the reader reads outside the lock.
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
    /// The reader's open segment, kept between batches.
    reading: Mutex<Option<(u64, File)>>,
    metrics: Arc<Metrics>,
}

struct State {
    /// Oldest first; the last one is the one appended to (when `tail` is open).
    segments: VecDeque<Segment>,
    tail: Option<File>,
    next_seq: u64,
    /// Bytes appended and not yet stored.
    pending: u64,
}

struct Segment {
    seq: u64,
    /// Bytes that hold whole frames (appended by this process, or the file's length at open).
    len: u64,
    /// Bytes the writer has stored.
    read: u64,
}

/// Calls read from the spool, and where to move the cursor once they are stored.
pub struct Taken {
    pub records: Vec<CallRecord>,
    /// Frames that did not check out: counted, skipped.
    pub corrupt: u64,
    upto: Cursor,
}

/// A position in the spool: (segment, offset). What [`Spool::commit`] takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor(u64, u64);

impl Taken {
    pub fn into_parts(self) -> (Vec<CallRecord>, Cursor) {
        (self.records, self.upto)
    }
}

impl Spool {
    /// Opens (creating) `dir`. Segments already there are calls a previous run spooled and did
    /// not store: they are pending again, from the cursor on.
    pub fn open(dir: &Path, max_bytes: u64, metrics: Arc<Metrics>) -> Result<Spool, SpoolError> {
        let io_err = |source| SpoolError::Io {
            dir: dir.to_owned(),
            source,
        };
        fs::create_dir_all(dir).map_err(io_err)?;
        let (cursor_seq, cursor_off) = read_cursor(&dir.join("cursor"));
        let mut found: Vec<(u64, u64)> = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err)? {
            let entry = entry.map_err(io_err)?;
            let name = entry.file_name();
            let Some(seq) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let len = entry.metadata().map_err(io_err)?.len();
            if seq < cursor_seq || len == 0 {
                // Stored already (the writer deletes these; a crash can leave one behind).
                let _ = fs::remove_file(entry.path());
                continue;
            }
            found.push((seq, len));
        }
        found.sort_unstable();
        let mut state = State {
            segments: VecDeque::new(),
            tail: None,
            next_seq: found.last().map_or(cursor_seq, |&(seq, _)| seq) + 1,
            pending: 0,
        };
        for (seq, len) in found {
            let read = if seq == cursor_seq {
                cursor_off.min(len)
            } else {
                0
            };
            state.pending += len - read;
            state.segments.push_back(Segment { seq, len, read });
        }
        if state.pending > 0 {
            tracing::info!(
                bytes = state.pending,
                segments = state.segments.len(),
                "spool: calls captured before the last stop are stored now"
            );
        }
        metrics.spool_bytes.store(state.pending, Relaxed);
        Ok(Spool {
            dir: dir.to_owned(),
            max_bytes,
            state: Mutex::new(state),
            reading: Mutex::new(None),
            metrics,
        })
    }

    /// Bytes spooled and not yet stored.
    pub fn pending(&self) -> u64 {
        self.lock().pending
    }

    pub fn is_empty(&self) -> bool {
        self.pending() == 0
    }

    /// Appends `records` at the end of the spool, encoding them through one small reused buffer
    /// (never the whole batch in memory at once). Refused when the spool already holds
    /// `max_bytes` (so it overshoots by at most one batch). On failure nothing is spooled (a
    /// partial write is cut off again) and the records come back, so the caller can still
    /// store them another way.
    pub fn append(&self, records: Vec<CallRecord>) -> Result<(), (SpoolError, Vec<CallRecord>)> {
        let mut state = self.lock();
        if state.pending > 0 && state.pending >= self.max_bytes {
            let err = SpoolError::Full {
                pending: state.pending,
                max: self.max_bytes,
            };
            return Err((err, records));
        }
        if let Some(free) = crate::backend::free_bytes(&self.dir).filter(|&f| f < MIN_FREE) {
            return Err((SpoolError::DiskLow { free }, records));
        }
        match self.write_frames(&mut state, &records) {
            Ok(written) => {
                state.pending += written;
                self.metrics.spool_bytes.store(state.pending, Relaxed);
                self.metrics
                    .spooled_calls
                    .fetch_add(records.len() as u64, Relaxed);
                Ok(())
            }
            Err(source) => {
                self.metrics.spool_errors.fetch_add(1, Relaxed);
                let err = SpoolError::Io {
                    dir: self.dir.clone(),
                    source,
                };
                Err((err, records))
            }
        }
    }

    /// Writes one frame per record at the end of the tail segment (a new one when there is
    /// none or it is full), in writes of about [`WRITE_CHUNK`]; the bytes written. A failed
    /// write is cut off and closes the segment, so no later frame follows a torn one.
    fn write_frames(&self, state: &mut State, records: &[CallRecord]) -> io::Result<u64> {
        let full = state.segments.back().is_none_or(|s| s.len >= SEGMENT_BYTES);
        if state.tail.is_none() || full {
            let seq = state.next_seq;
            let file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(self.segment_path(seq))?;
            state.next_seq += 1;
            state.tail = Some(file);
            state.segments.push_back(Segment {
                seq,
                len: 0,
                read: 0,
            });
        }
        let (Some(file), Some(seg)) = (state.tail.as_mut(), state.segments.back_mut()) else {
            return Err(io::Error::other("spool tail segment missing"));
        };
        match self.write_records(file, records) {
            Ok(written) => {
                seg.len += written;
                Ok(written)
            }
            Err(e) => {
                let _ = file.set_len(seg.len);
                state.tail = None;
                Err(e)
            }
        }
    }

    /// Encodes one frame per record and writes them to `file` in pieces of about
    /// [`WRITE_CHUNK`]; the bytes written. A record too large for a frame is left out (counted).
    fn write_records(&self, file: &mut File, records: &[CallRecord]) -> io::Result<u64> {
        let mut written = 0u64;
        let mut enc = Enc::with_capacity(WRITE_CHUNK + 4096);
        for r in records {
            let start = enc.0.len();
            enc.raw(&[0; HEADER]);
            record::encode(r, &mut enc);
            let len = enc.0.len() - start - HEADER;
            let Some(len32) = u32::try_from(len).ok().filter(|&l| l <= MAX_FRAME) else {
                // Beyond any capture cap; cannot happen with the config's bounds.
                enc.0.truncate(start);
                self.metrics.spool_errors.fetch_add(1, Relaxed);
                tracing::error!(
                    bytes = len,
                    "spool: a call too large to spool is not stored"
                );
                continue;
            };
            let crc = crc32fast::hash(&enc.0[start + HEADER..]);
            enc.0[start..start + 4].copy_from_slice(&len32.to_le_bytes());
            enc.0[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
            if enc.0.len() >= WRITE_CHUNK {
                file.write_all(&enc.0)?;
                written += enc.0.len() as u64;
                enc.0.clear();
            }
        }
        file.write_all(&enc.0)?;
        written += enc.0.len() as u64;
        Ok(written)
    }

    /// Reads up to `max_records` calls (and about `max_bytes` of frames, at least one call)
    /// from the oldest segment with calls not yet stored. `None` when everything is stored.
    pub fn take(&self, max_records: usize, max_bytes: usize) -> Result<Option<Taken>, SpoolError> {
        let (seq, mut off, len) = {
            let mut state = self.lock();
            loop {
                let Some(head) = state.segments.front() else {
                    return Ok(None);
                };
                if head.read < head.len {
                    break (head.seq, head.read, head.len);
                }
                if state.segments.len() == 1 && state.tail.is_some() {
                    return Ok(None); // the tail, read to its end: appends go on here
                }
                // An empty or fully stored segment left behind: gone.
                let seq = head.seq;
                state.segments.pop_front();
                let _ = fs::remove_file(self.segment_path(seq));
            }
        };
        let mut reading = self.reading.lock().unwrap_or_else(PoisonError::into_inner);
        if reading.as_ref().is_none_or(|(s, _)| *s != seq) {
            let file = File::open(self.segment_path(seq)).map_err(|source| SpoolError::Io {
                dir: self.dir.clone(),
                source,
            })?;
            *reading = Some((seq, file));
        }
        let Some((_, file)) = reading.as_ref() else {
            return Ok(None);
        };
        let mut taken = Taken {
            records: Vec::new(),
            corrupt: 0,
            upto: Cursor(seq, off),
        };
        let mut bytes = 0usize;
        let mut payload = Vec::new();
        while off < len && taken.records.len() < max_records.max(1) && bytes < max_bytes.max(1) {
            match read_frame(file, off, len, &mut payload) {
                Some(frame_len) => match record::decode(&payload) {
                    Some(r) => {
                        taken.records.push(r);
                        off += frame_len;
                        bytes += frame_len as usize;
                    }
                    None => {
                        taken.corrupt += 1;
                        off += frame_len;
                    }
                },
                None => {
                    // No way to find the next frame: the rest of this segment is lost.
                    tracing::error!(
                        segment = seq,
                        offset = off,
                        skipped_bytes = len - off,
                        "spool: a frame does not check out (cut by a crash?); the rest of its segment is skipped"
                    );
                    taken.corrupt += 1;
                    off = len;
                }
            }
        }
        taken.upto = Cursor(seq, off);
        Ok(Some(taken))
    }

    /// Marks what `taken` read as stored: the cursor moves past it and a segment stored to its
    /// end is deleted (unless appends still go to it).
    pub fn commit(&self, cursor: Cursor) {
        let Cursor(seq, off) = cursor;
        let mut state = self.lock();
        let Some(pos) = state.segments.iter().position(|s| s.seq == seq) else {
            return;
        };
        let seg = &mut state.segments[pos];
        let advanced = off.saturating_sub(seg.read);
        seg.read = seg.read.max(off);
        let done = seg.read >= seg.len;
        let is_tail = pos + 1 == state.segments.len() && state.tail.is_some();
        state.pending = state.pending.saturating_sub(advanced);
        if done && !is_tail {
            state.segments.remove(pos);
            let _ = fs::remove_file(self.segment_path(seq));
        } else if done && state.pending == 0 {
            // Everything is stored: start the next append on a fresh, empty segment.
            state.tail = None;
            state.segments.remove(pos);
            let _ = fs::remove_file(self.segment_path(seq));
        }
        self.metrics.spool_bytes.store(state.pending, Relaxed);
        drop(state);
        if let Err(e) = write_cursor(&self.dir.join("cursor"), seq, off) {
            tracing::warn!(error = %e, "spool: cursor not saved (calls may be stored twice after a restart)");
        }
    }

    fn segment_path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.seg"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Reads the frame at `off` into `payload`; its total length, or `None` when it is cut off,
/// oversized or fails its CRC.
fn read_frame(file: &File, off: u64, len: u64, payload: &mut Vec<u8>) -> Option<u64> {
    let mut header = [0u8; HEADER];
    if off + HEADER as u64 > len {
        return None;
    }
    file.read_exact_at(&mut header, off).ok()?;
    let size = u32::from_le_bytes(header[..4].try_into().ok()?);
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    let total = HEADER as u64 + u64::from(size);
    if size > MAX_FRAME || off + total > len {
        return None;
    }
    payload.clear();
    payload.resize(size as usize, 0);
    file.read_exact_at(payload, off + HEADER as u64).ok()?;
    (crc32fast::hash(payload) == crc).then_some(total)
}

fn read_cursor(path: &Path) -> (u64, u64) {
    let Ok(raw) = fs::read(path) else {
        return (0, 0);
    };
    match (raw.get(..8), raw.get(8..16)) {
        (Some(a), Some(b)) if raw.len() == 16 => (
            u64::from_le_bytes(a.try_into().unwrap_or_default()),
            u64::from_le_bytes(b.try_into().unwrap_or_default()),
        ),
        _ => {
            tracing::warn!(path = %path.display(), "spool: cursor unreadable; spooled calls are stored from the start");
            (0, 0)
        }
    }
}

fn write_cursor(path: &Path, seq: u64, off: u64) -> io::Result<()> {
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&seq.to_le_bytes());
    raw[8..].copy_from_slice(&off.to_le_bytes());
    fs::write(path, raw)
}

#[cfg(test)]
mod tests;
