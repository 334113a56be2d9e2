//! The training loop over a samples file and a [`ParamStore`]: file mode (the store
//! in-process) and cluster workers (a remote store) run this same loop.
//!
//! Threads share the reader: each takes the next `batch_size` lines under a lock, then
//! parses, pulls, predicts, records the predictions (progressive validation: before
//! learning), computes gradients and pushes them without any lock of its own —
//! Hogwild-style data parallelism over the store, which serialises per row. Lines
//! that are not usable samples are counted, warned about and skipped.

use crate::error::{Result, TrainError};
use crate::eval::{Evaluator, TaskReport};
use crate::features::Batch;
use crate::model::Model;
use odl_proto::params::{ParamError, ParamStore};
use odl_proto::stream::{Poll, RecordSource};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How a run over a samples file behaves.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Learn from the samples (`odl train`) or only predict (`odl eval`).
    pub learn: bool,
    /// Passes over the file.
    pub epochs: usize,
    /// Threads training concurrently (Hogwild over the store).
    pub threads: usize,
    /// Staleness bound: each thread synchronises the dense tensors every this many
    /// batches (1: every batch). In between it computes with the tensors it pulled at
    /// the last sync and sums its dense gradients; a sync pushes the sum, then the next
    /// batch pulls fresh tensors. Sparse rows are always pulled and pushed per batch.
    pub dense_refresh_batches: usize,
    /// This worker's share `(i, n)`: it takes the lines whose index modulo `n` is `i`.
    pub share: (usize, usize),
    /// Progress on stderr (and to the store with `report_progress`) this often.
    pub progress_interval: Duration,
    /// A retryable store error (a shard restarting) is retried with backoff for this
    /// long before the run fails.
    pub retry_deadline: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            learn: true,
            epochs: 1,
            threads: 2,
            dense_refresh_batches: 1,
            share: (0, 1),
            progress_interval: Duration::from_secs(5),
            retry_deadline: Duration::from_secs(60),
        }
    }
}

/// `report.json` (TRAIN.md "Running it").
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub samples: u64,
    pub seconds: f64,
    pub samples_per_second: f64,
    pub tasks: BTreeMap<String, TaskReport>,
}

/// What a run did besides the report (printed, not part of `report.json`).
#[derive(Clone, Debug, Default)]
pub struct RunStats {
    pub bad_lines: u64,
    /// Store calls that failed retryably and were retried (reconnects to a shard).
    pub retries: u64,
    /// Live streams: samples skipped because their `sample_id` was trained already.
    pub duplicates: u64,
}

/// Where the lines come from: a samples file (read `epochs` times), or a live record
/// stream (the joiner's samples channel in `odl run`, Kafka) read once to its end.
enum Input {
    File {
        path: PathBuf,
        reader: Option<BufReader<Box<dyn Read + Send>>>,
        epochs_left: usize,
    },
    Stream(Box<dyn RecordSource>),
}

/// How long a poll of a live stream waits before handing a partial batch to training,
/// so a slow stream still trains (and reports) promptly.
const STREAM_POLL_WAIT: Duration = Duration::from_millis(200);

/// Lines read in order, shared by the threads; yields `(first line number, lines)`.
struct SharedReader {
    input: Input,
    line_no: u64,
    bytes_read: u64,
    total_bytes: u64,
    share: (usize, usize),
}

impl SharedReader {
    fn open(path: &Path) -> Result<BufReader<Box<dyn Read + Send>>> {
        let f = std::fs::File::open(path).map_err(|source| TrainError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Ok(BufReader::with_capacity(
            1 << 20,
            Box::new(f) as Box<dyn Read + Send>,
        ))
    }

    /// Up to `n` lines of this worker's share into `buf` (cleared; one line per entry).
    /// Fewer (or none, at the end) when the input ends, or when a live stream has
    /// nothing more right now.
    fn next_lines(
        &mut self,
        n: usize,
        buf: &mut Vec<String>,
        spare: &mut Vec<String>,
    ) -> Result<()> {
        spare.append(buf);
        while buf.len() < n {
            let mut line = spare.pop().unwrap_or_default();
            line.clear();
            let read = match &mut self.input {
                Input::File {
                    path,
                    reader,
                    epochs_left,
                } => {
                    let Some(r) = reader.as_mut() else {
                        spare.push(line);
                        if *epochs_left == 0 {
                            return Ok(());
                        }
                        *epochs_left -= 1;
                        *reader = Some(Self::open(path)?);
                        self.line_no = 0;
                        continue;
                    };
                    let read = r.read_line(&mut line).map_err(|source| TrainError::Io {
                        path: path.display().to_string(),
                        source,
                    })?;
                    if read == 0 {
                        *reader = None;
                        spare.push(line);
                        continue;
                    }
                    read
                }
                Input::Stream(source) => {
                    spare.push(line);
                    match source.poll(n - buf.len(), STREAM_POLL_WAIT)? {
                        Poll::Records(records) => {
                            for r in records {
                                let mut line = spare.pop().unwrap_or_default();
                                line.clear();
                                line.push_str(&String::from_utf8_lossy(&r.value));
                                self.bytes_read += r.value.len() as u64;
                                self.keep(line, buf, spare);
                            }
                            continue;
                        }
                        Poll::Idle if buf.is_empty() => continue,
                        Poll::Idle | Poll::End => return Ok(()),
                    }
                }
            };
            self.bytes_read += read as u64;
            self.keep(line, buf, spare);
        }
        Ok(())
    }

    /// Keep `line` if it is this worker's share and not blank.
    fn keep(&mut self, line: String, buf: &mut Vec<String>, spare: &mut Vec<String>) {
        let idx = self.line_no;
        self.line_no += 1;
        if line.trim().is_empty() || idx % self.share.1 as u64 != self.share.0 as u64 {
            spare.push(line);
        } else {
            buf.push(line);
        }
    }
}

struct Shared<'a> {
    model: &'a Model,
    store: &'a dyn ParamStore,
    opts: &'a RunOptions,
    /// The shared file/channel reader, for progress (bytes read); live streams read by
    /// each thread's own source have none.
    reader: Option<&'a Mutex<SharedReader>>,
    eval: Mutex<Evaluator>,
    samples: AtomicU64,
    bad: AtomicU64,
    retries: AtomicU64,
    start: Instant,
    next_progress: Mutex<Instant>,
}

/// Run `model` over the samples file at `path` against `store`. The store must hold
/// the model's schema (`declare` first).
pub fn run_file(
    model: &Model,
    store: &dyn ParamStore,
    path: &Path,
    opts: &RunOptions,
) -> Result<(Report, RunStats)> {
    let total_bytes = std::fs::metadata(path)
        .map_err(|source| TrainError::Io {
            path: path.display().to_string(),
            source,
        })?
        .len();
    let input = Input::File {
        path: path.to_path_buf(),
        reader: Some(SharedReader::open(path)?),
        epochs_left: opts.epochs.saturating_sub(1),
    };
    run_input(
        model,
        store,
        input,
        total_bytes * opts.epochs.max(1) as u64,
        opts,
    )
}

/// Run `model` over a live stream of samples until it ends (`Poll::End`): the
/// joiner's samples channel in `odl run`, or a samples topic. `opts.epochs` is ignored:
/// a stream is read once.
pub fn run_source(
    model: &Model,
    store: &dyn ParamStore,
    source: Box<dyn RecordSource>,
    opts: &RunOptions,
) -> Result<(Report, RunStats)> {
    let opts = RunOptions {
        epochs: 1,
        ..opts.clone()
    };
    run_input(model, store, Input::Stream(source), 0, &opts)
}

/// How a run over live streams ([`run_sources`]) ends, and what it shows while it runs.
#[derive(Clone, Debug, Default)]
pub struct StreamRun {
    /// Set by the caller (SIGTERM): each thread finishes its batch, commits, returns.
    pub stop: Arc<AtomicBool>,
    /// End once a thread's source delivered nothing for this long (a drained topic in
    /// tests and benchmarks); `None`: run until `stop`.
    pub idle_exit: Option<Duration>,
    /// How many recent `sample_id`s are remembered to drop re-emitted copies (0: off).
    pub dedup_window: usize,
    /// Samples skipped as already trained, readable while the run goes on.
    pub duplicates: Arc<AtomicU64>,
}

/// Run `model` over live sources, one thread each (a consumer-group member per thread
/// on a samples topic: the group spreads the partitions). Each thread polls a batch,
/// drops the samples whose `sample_id` was trained already, trains, and only then
/// commits, so a committed record has its gradients in the store, and a partition
/// that moves to another worker (a rebalance, this worker killed) is trained from the
/// last commit on. `opts.share` and `opts.epochs` do not apply.
pub fn run_sources(
    model: &Model,
    store: &dyn ParamStore,
    sources: Vec<Box<dyn RecordSource>>,
    opts: &RunOptions,
    stream: &StreamRun,
) -> Result<(Report, RunStats)> {
    let shared = Shared::new(model, store, opts, None);
    let seen = Mutex::new(crate::dedup::SeenIds::new(stream.dedup_window));
    let loops = sources
        .into_iter()
        .map(|source| {
            let (shared, seen) = (&shared, &seen);
            move || source_loop(shared, source, seen, stream)
        })
        .collect();
    let (report, mut stats) = run_threads(&shared, loops, Some(&stream.stop))?;
    stats.duplicates = stream.duplicates.load(Ordering::Relaxed);
    Ok((report, stats))
}

/// One thread of [`run_sources`].
fn source_loop(
    shared: &Shared,
    mut source: Box<dyn RecordSource>,
    seen: &Mutex<crate::dedup::SeenIds>,
    stream: &StreamRun,
) -> Result<()> {
    let batch_size = shared.model.config().batch_size;
    let mut trainer = BatchTrainer::new(shared.model);
    let mut lines = Vec::with_capacity(batch_size);
    let mut line_no = 0u64;
    let mut last_record = Instant::now();
    let mut outage = Backoff::default();
    while !stream.stop.load(Ordering::Relaxed) {
        let records = match source.poll(batch_size, STREAM_POLL_WAIT) {
            Ok(Poll::Records(records)) => records,
            Ok(Poll::End) => break,
            Ok(Poll::Idle) if stream.idle_exit.is_some_and(|d| last_record.elapsed() >= d) => break,
            // Progress goes on being reported while the topic is quiet, so what the
            // worker shows (and the publisher's gates see) is never stale; gradients
            // held for the next dense sync are pushed and their records committed.
            Ok(Poll::Idle) => {
                flush(&mut trainer, shared, &mut *source)?;
                maybe_progress(shared)?;
                continue;
            }
            // A broker outage: wait and poll again; nothing was returned, nothing is lost.
            Err(e) if e.retryable() => {
                outage.wait(&e);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        outage = Backoff::default();
        last_record = Instant::now();
        lines.clear();
        {
            let mut seen = lock(seen);
            for r in &records {
                let id = crate::dedup::sample_id(r.key.as_deref(), &r.value);
                if id.is_some_and(|id| !seen.insert(id)) {
                    stream.duplicates.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                lines.push(String::from_utf8_lossy(&r.value).into_owned());
            }
        }
        trainer.train(shared, &lines, line_no)?;
        line_no += records.len() as u64;
        // Once every gradient of the batches so far is in the store (at each dense
        // sync), their records may be committed.
        if trainer.synced() {
            commit(&mut *source);
        }
    }
    flush(&mut trainer, shared, &mut *source)
}

/// Push the gradients `trainer` holds, if any, and commit the records they came from.
fn flush(trainer: &mut BatchTrainer, shared: &Shared, source: &mut dyn RecordSource) -> Result<()> {
    if !trainer.synced() {
        trainer.sync(shared)?;
        commit(source);
    }
    Ok(())
}

/// Commit what was polled so far. A failed commit is retried by the next one (they are
/// cumulative); until then a new owner of the partition would train those records again.
fn commit(source: &mut dyn RecordSource) {
    if let Err(e) = source.commit() {
        tracing::warn!("committing the samples' offsets failed ({e}); the next commit retries");
    }
}

/// Exponential backoff (50 ms to 2 s) while a broker is unreachable, logged as it goes.
#[derive(Default)]
struct Backoff {
    attempts: u32,
}

impl Backoff {
    fn wait(&mut self, e: &odl_proto::stream::StreamError) {
        let delay = Duration::from_millis(50 << self.attempts.min(5)).min(Duration::from_secs(2));
        self.attempts += 1;
        tracing::warn!(
            "samples stream unavailable ({e}); retry {} in {delay:?}",
            self.attempts
        );
        std::thread::sleep(delay);
    }
}

fn run_input(
    model: &Model,
    store: &dyn ParamStore,
    input: Input,
    total_bytes: u64,
    opts: &RunOptions,
) -> Result<(Report, RunStats)> {
    check_share(opts)?;
    let reader = Mutex::new(SharedReader {
        input,
        line_no: 0,
        bytes_read: 0,
        total_bytes,
        share: opts.share,
    });
    let shared = Shared::new(model, store, opts, Some(&reader));
    if opts.epochs == 0 {
        return Ok(finish(&shared));
    }
    let threads = opts.threads.max(1);
    run_threads(
        &shared,
        (0..threads)
            .map(|_| || worker_loop(&shared, &reader))
            .collect(),
        None,
    )
}

fn check_share(opts: &RunOptions) -> Result<()> {
    if opts.share.1 == 0 || opts.share.0 >= opts.share.1 {
        return Err(TrainError::Config(format!(
            "bad worker share {}/{}",
            opts.share.0, opts.share.1
        )));
    }
    Ok(())
}

impl<'a> Shared<'a> {
    fn new(
        model: &'a Model,
        store: &'a dyn ParamStore,
        opts: &'a RunOptions,
        reader: Option<&'a Mutex<SharedReader>>,
    ) -> Self {
        Shared {
            model,
            store,
            opts,
            reader,
            eval: Mutex::new(Evaluator::new(model.tasks(), model.config().current_window)),
            samples: AtomicU64::new(0),
            bad: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            start: Instant::now(),
            next_progress: Mutex::new(Instant::now() + opts.progress_interval),
        }
    }
}

/// Run each loop on its own thread; then the report, with a final progress report to
/// the store (the publisher's gates see the end of the run), retried unless the run
/// was stopped.
fn run_threads<'s, F>(
    shared: &Shared<'_>,
    loops: Vec<F>,
    stop: Option<&AtomicBool>,
) -> Result<(Report, RunStats)>
where
    F: FnOnce() -> Result<()> + Send + 's,
{
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = loops.into_iter().map(|f| s.spawn(f)).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(TrainError::Shape("a training thread panicked".into())))
            })
            .collect()
    });
    for r in results {
        r?;
    }
    let (report, stats) = finish(shared);
    if shared.opts.learn {
        let progress = lock(&shared.eval).progress(report.samples);
        if !stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
            retry(shared, || Ok(shared.store.report_progress(&progress)?))?;
        } else if let Err(e) = shared.store.report_progress(&progress) {
            // A stopped worker does not wait for a PS that is stopping too: its
            // gradients are in, only this last progress figure is lost.
            tracing::warn!("the final progress report did not reach the PS ({e})");
        }
    }
    Ok((report, stats))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn finish(shared: &Shared) -> (Report, RunStats) {
    let seconds = shared.start.elapsed().as_secs_f64();
    let samples = shared.samples.load(Ordering::Relaxed);
    let tasks = lock(&shared.eval).report().into_iter().collect();
    let report = Report {
        samples,
        seconds,
        samples_per_second: samples as f64 / seconds.max(1e-9),
        tasks,
    };
    let stats = RunStats {
        bad_lines: shared.bad.load(Ordering::Relaxed),
        retries: shared.retries.load(Ordering::Relaxed),
        duplicates: 0,
    };
    (report, stats)
}

/// Run `f`, retrying retryable store errors with exponential backoff (capped at 2 s)
/// until the run's retry deadline.
fn retry<T>(shared: &Shared, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = Instant::now() + shared.opts.retry_deadline;
    let mut backoff = Duration::from_millis(50);
    loop {
        match f() {
            Err(e) if e.retryable() && Instant::now() < deadline => {
                let n = shared.retries.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!("parameter store unavailable ({e}); retry {n} in {backoff:?}");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            r => return r,
        }
    }
}

fn worker_loop(shared: &Shared, reader: &Mutex<SharedReader>) -> Result<()> {
    let batch_size = shared.model.config().batch_size;
    let mut lines = Vec::with_capacity(batch_size);
    let mut spare = Vec::new();
    let mut trainer = BatchTrainer::new(shared.model);
    loop {
        let first_line = {
            let mut r = lock(reader);
            let first = r.line_no;
            r.next_lines(batch_size, &mut lines, &mut spare)?;
            first
        };
        if lines.is_empty() {
            return trainer.sync(shared);
        }
        trainer.train(shared, &lines, first_line)?;
    }
}

/// One thread's batch pipeline: parse the lines, pull, predict (recorded before
/// learning), push the gradients; dense tensors are synchronised every
/// `dense_refresh_batches` batches ([`RunOptions::dense_refresh_batches`]).
struct BatchTrainer<'m> {
    batch: Batch,
    builder: crate::features::BatchBuilder<'m>,
    /// The dense tensors computed with, pulled at the first batch after a sync.
    dense: Option<Arc<Vec<Vec<f32>>>>,
    /// Dense gradients summed since the last sync (`None`: nothing held).
    pending: Option<Vec<Vec<f32>>>,
    since_sync: usize,
}

impl<'m> BatchTrainer<'m> {
    fn new(model: &'m Model) -> Self {
        BatchTrainer {
            batch: Batch::default(),
            builder: model.batch_builder(),
            dense: None,
            pending: None,
            since_sync: 0,
        }
    }

    /// Whether every gradient of the batches trained so far is in the store.
    fn synced(&self) -> bool {
        self.pending.is_none()
    }

    /// Push the dense gradients held since the last sync; the next batch pulls fresh
    /// tensors (a frozen model's never change, so it keeps them).
    fn sync(&mut self, shared: &Shared) -> Result<()> {
        if let Some(pending) = &self.pending {
            retry(shared, || {
                Ok(shared.model.push_dense(shared.store, pending)?)
            })?;
            self.pending = None;
        }
        if shared.opts.learn {
            self.dense = None;
        }
        self.since_sync = 0;
        Ok(())
    }

    fn hold_dense(&mut self, grads: Vec<Vec<f32>>) {
        match &mut self.pending {
            None => self.pending = Some(grads),
            Some(sum) => {
                for (s, g) in sum.iter_mut().zip(&grads) {
                    for (a, b) in s.iter_mut().zip(g) {
                        *a += b;
                    }
                }
            }
        }
    }

    /// Train on `lines` (`first_line`: the number of the first, for warnings). When it
    /// returns Ok, the batch's sparse gradients have reached the store, and its dense
    /// ones too if [`synced`](Self::synced).
    fn train(&mut self, shared: &Shared, lines: &[String], first_line: u64) -> Result<()> {
        let model = shared.model;
        for (k, line) in lines.iter().enumerate() {
            if let Err(e) = self.builder.push_sample_json(line.trim_end()) {
                let n = shared.bad.fetch_add(1, Ordering::Relaxed);
                if n < 10 {
                    tracing::warn!("skipping line ~{}: {e}", first_line + k as u64 + 1);
                } else if n == 10 {
                    tracing::warn!("more bad lines; only their count is reported from now on");
                }
            }
        }
        self.builder.swap_into(&mut self.batch);
        if self.batch.len == 0 {
            return Ok(());
        }
        if self.dense.is_none() {
            self.dense = Some(retry(shared, || model.pull_dense(shared.store))?);
        }
        let (batch, dense) = (&self.batch, &self.dense);
        let (preds, dense_grads) = retry(shared, || {
            let p = model.pull(shared.store, batch, dense.clone())?;
            if !shared.opts.learn {
                return Ok((model.predict_params(batch, &p)?, None));
            }
            let (preds, grads) = model.gradients(batch, &p)?;
            model.push_sparse(shared.store, batch, &grads.tables)?;
            Ok((preds, Some(grads.dense)))
        })?;
        lock(&shared.eval).record(&self.batch, &preds);
        if let Some(g) = dense_grads {
            self.hold_dense(g);
            self.since_sync += 1;
            if self.since_sync >= shared.opts.dense_refresh_batches {
                self.sync(shared)?;
            }
        }
        shared
            .samples
            .fetch_add(self.batch.len as u64, Ordering::Relaxed);
        maybe_progress(shared)
    }
}

fn maybe_progress(shared: &Shared) -> Result<()> {
    let now = Instant::now();
    {
        let Ok(mut next) = shared.next_progress.try_lock() else {
            return Ok(());
        };
        if now < *next {
            return Ok(());
        }
        *next = now + shared.opts.progress_interval;
    }
    let samples = shared.samples.load(Ordering::Relaxed);
    let elapsed = shared.start.elapsed().as_secs_f64();
    let (read, total) = shared.reader.map_or((0, 0), |r| {
        let r = lock(r);
        (r.bytes_read, r.total_bytes)
    });
    let eta = if read > 0 && total > read {
        elapsed * (total - read) as f64 / read as f64
    } else {
        0.0
    };
    let mut eval = lock(&shared.eval);
    let progress = eval.progress(samples);
    drop(eval);
    let aucs: Vec<String> = progress
        .tasks
        .iter()
        .map(|t| {
            format!(
                "{} auc {:.4} (current {:.4})",
                t.task, t.global_auc, t.current_auc
            )
        })
        .collect();
    eprintln!(
        "{} {samples} samples, {:.0} samples/s, {}{}",
        if shared.opts.learn { "train:" } else { "eval:" },
        samples as f64 / elapsed.max(1e-9),
        aucs.join(", "),
        if total > 0 {
            format!(", ETA {eta:.0}s")
        } else {
            String::new()
        }
    );
    if shared.opts.learn {
        // Progress for the publisher's gates; a store that is restarting gets the
        // next report instead.
        if let Err(e) = shared.store.report_progress(&progress) {
            if !matches!(e, ParamError::Unavailable(_)) {
                return Err(e.into());
            }
        }
    }
    Ok(())
}

/// Fill an empty field list from the first `discover_samples` lines of `path`
/// (see `configs/model.toml`); a listed one is kept as it is.
pub fn resolve_fields(cfg: &mut crate::config::ModelConfig, path: &Path) -> Result<()> {
    if !cfg.fields.is_empty() {
        return Ok(());
    }
    let f = SharedReader::open(path)?;
    let mut lines = Vec::new();
    for line in f.lines().take(cfg.discover_samples) {
        lines.push(line.map_err(|source| TrainError::Io {
            path: path.display().to_string(),
            source,
        })?);
    }
    cfg.fields = crate::features::discover_fields(cfg, lines.iter().map(String::as_str));
    if cfg.fields.is_empty() {
        return Err(TrainError::Config(format!(
            "no fields listed and none found in the first {} lines of {}",
            cfg.discover_samples,
            path.display()
        )));
    }
    tracing::info!(
        "fields discovered from {}: {}",
        path.display(),
        cfg.fields
            .iter()
            .map(|f| format!("{}:{:?}", f.name, f.kind))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FieldConfig, FieldKind, ModelConfig};
    use crate::memstore::MemStore;
    use std::io::Write;

    fn model() -> Model {
        let mut c = ModelConfig::load(None).unwrap();
        c.batch_size = 16;
        c.embedding_dim = 4;
        c.fields = vec![FieldConfig {
            name: "u".into(),
            kind: FieldKind::Sparse,
            pooling: None,
            boundaries: vec![],
        }];
        Model::from_config(&c).unwrap()
    }

    fn write_samples(n: usize, bad_every: usize) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        for i in 0..n {
            if bad_every > 0 && i % bad_every == 0 {
                writeln!(f, "{{not json").unwrap();
            } else {
                let c = (i % 3 == 0) as u8;
                writeln!(
                    f,
                    r#"{{"labels":{{"click":{c}}},"features":{{"u":"u{}","click_label":{c}}}}}"#,
                    i % 3
                )
                .unwrap();
            }
        }
        f
    }

    #[test]
    fn counts_samples_bad_lines_epochs_and_shares() {
        let m = model();
        let store = MemStore::default();
        store.declare(m.schema()).unwrap();
        let f = write_samples(100, 10);
        let opts = RunOptions {
            epochs: 2,
            ..RunOptions::default()
        };
        let (r, stats) = run_file(&m, &store, f.path(), &opts).unwrap();
        assert_eq!(r.samples, 180);
        assert_eq!(stats.bad_lines, 20);
        let click = &r.tasks["click"];
        assert_eq!(click.samples, 180);
        assert_eq!(
            r.tasks["detail_click"].skipped, 180,
            "no detail_click labels at all"
        );
        // The signal is a pure function of u: learnt within two passes.
        assert!(click.current.auc.unwrap() > 0.9, "{click:?}");
        let share = RunOptions {
            share: (1, 4),
            threads: 1,
            learn: false,
            ..RunOptions::default()
        };
        let (r, stats) = run_file(&m, &store, f.path(), &share).unwrap();
        assert_eq!(r.samples + stats.bad_lines, 25);
    }

    #[test]
    fn missing_file_and_bad_share_are_errors() {
        let m = model();
        let store = MemStore::default();
        store.declare(m.schema()).unwrap();
        let e = run_file(
            &m,
            &store,
            Path::new("/nonexistent/s.jsonl"),
            &RunOptions::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/s.jsonl"));
        let f = write_samples(5, 0);
        let bad = RunOptions {
            share: (2, 2),
            ..RunOptions::default()
        };
        assert!(run_file(&m, &store, f.path(), &bad).is_err());
    }

    /// A source playing a script of polls, which checks at each commit that the
    /// batches returned since the last one had their gradients pushed first: a
    /// commit after new batches must follow a dense push (the last gradients to leave).
    struct ScriptedSource {
        script: std::collections::VecDeque<odl_proto::stream::Result<Poll>>,
        batches_returned: u64,
        /// `batches_returned` and pushes seen at the last commit.
        at_commit: (u64, u64),
        pushes: Arc<AtomicU64>,
        commits: Arc<AtomicU64>,
    }

    impl RecordSource for ScriptedSource {
        fn poll(&mut self, _: usize, _: Duration) -> odl_proto::stream::Result<Poll> {
            let p = self.script.pop_front().unwrap_or(Ok(Poll::Idle));
            if matches!(p, Ok(Poll::Records(_))) {
                self.batches_returned += 1;
            }
            p
        }
        fn commit(&mut self) -> odl_proto::stream::Result<()> {
            let pushes = self.pushes.load(Ordering::SeqCst);
            assert!(
                self.batches_returned == self.at_commit.0 || pushes > self.at_commit.1,
                "committed before the batches reached the store"
            );
            self.at_commit = (self.batches_returned, pushes);
            self.commits.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    /// Counts dense pushes: one per trained batch.
    struct CountingStore {
        inner: MemStore,
        pushes: Arc<AtomicU64>,
    }

    impl odl_proto::params::ParamRead for CountingStore {
        fn pull_sparse(
            &self,
            t: &str,
            k: &[odl_proto::hashing::FeatureId],
            o: &mut [f32],
        ) -> odl_proto::params::Result<()> {
            self.inner.pull_sparse(t, k, o)
        }
        fn pull_dense(&self, n: &[String]) -> odl_proto::params::Result<Vec<Vec<f32>>> {
            self.inner.pull_dense(n)
        }
    }

    impl ParamStore for CountingStore {
        fn declare(&self, s: &odl_proto::params::ModelSchema) -> odl_proto::params::Result<()> {
            self.inner.declare(s)
        }
        fn push_sparse(
            &self,
            t: &str,
            k: &[odl_proto::hashing::FeatureId],
            g: &[f32],
        ) -> odl_proto::params::Result<()> {
            self.inner.push_sparse(t, k, g)
        }
        fn push_dense(&self, g: &[(String, Vec<f32>)]) -> odl_proto::params::Result<()> {
            self.inner.push_dense(g)?;
            self.pushes.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn report_progress(
            &self,
            p: &odl_proto::params::TrainProgress,
        ) -> odl_proto::params::Result<()> {
            self.inner.report_progress(p)
        }
    }

    fn keyed(ids: std::ops::Range<u32>, keyed: bool) -> Poll {
        Poll::Records(
            ids.map(|i| odl_proto::stream::Record {
                key: keyed.then(|| bytes::Bytes::from(format!("pv{i}:it"))),
                value: bytes::Bytes::from(format!(
                    r#"{{"sample_id":"pv{i}:it","labels":{{"click":{}}},"features":{{"u":"u{}"}}}}"#,
                    i % 2,
                    i % 2
                )),
                position: Default::default(),
            })
            .collect(),
        )
    }

    #[test]
    fn live_sources_skip_trained_ids_commit_after_pushing_and_ride_out_outages() {
        let m = model();
        let pushes = Arc::new(AtomicU64::new(0));
        let store = CountingStore {
            inner: MemStore::default(),
            pushes: pushes.clone(),
        };
        store.declare(m.schema()).unwrap();
        let commits = Arc::new(AtomicU64::new(0));
        let source = |script: Vec<odl_proto::stream::Result<Poll>>| -> Box<dyn RecordSource> {
            Box::new(ScriptedSource {
                script: script.into(),
                batches_returned: 0,
                at_commit: (0, 0),
                pushes: pushes.clone(),
                commits: commits.clone(),
            })
        };
        let outage = || Err(odl_proto::stream::StreamError::Broker("down".into()));
        let a = source(vec![
            Ok(keyed(0..40, true)),
            outage(),
            Ok(keyed(40..80, true)),
        ]);
        // The second source re-delivers 30..50 (a restarted joiner's re-emits), by key
        // and, unkeyed, by the line's own sample_id.
        let b = source(vec![
            Ok(Poll::Idle),
            outage(),
            Ok(keyed(30..50, false)),
            Ok(keyed(80..100, true)),
        ]);
        let stream = StreamRun {
            idle_exit: Some(Duration::from_millis(300)),
            dedup_window: 1000,
            ..StreamRun::default()
        };
        let (r, stats) =
            run_sources(&m, &store, vec![a, b], &RunOptions::default(), &stream).unwrap();
        assert_eq!(r.samples, 100, "each sample learnt once");
        assert_eq!(stats.duplicates, 20);
        assert_eq!(stream.duplicates.load(Ordering::SeqCst), 20);
        assert_eq!(commits.load(Ordering::SeqCst), 4, "one commit per batch");
    }

    #[test]
    fn dense_gradients_are_summed_between_syncs_and_pushed_before_a_commit() {
        let m = model();
        let pushes = Arc::new(AtomicU64::new(0));
        let store = CountingStore {
            inner: MemStore::default(),
            pushes: pushes.clone(),
        };
        store.declare(m.schema()).unwrap();
        let opts = RunOptions {
            dense_refresh_batches: 3,
            threads: 1,
            ..RunOptions::default()
        };
        // File mode: 10 batches of 16 are synced after batches 3, 6 and 9, and the last
        // one when the input ends.
        let f = write_samples(160, 0);
        let (r, _) = run_file(&m, &store, f.path(), &opts).unwrap();
        assert_eq!(r.samples, 160);
        assert_eq!(pushes.swap(0, Ordering::SeqCst), 4);

        // A live source: commits only at syncs: after 3 batches, and when it goes idle
        // with the gradients of 2 more held (nothing is held at the end).
        let commits = Arc::new(AtomicU64::new(0));
        let polls = (0..5).map(|b| Ok(keyed(b * 16..(b + 1) * 16, true)));
        let source = Box::new(ScriptedSource {
            script: polls.chain([Ok(Poll::Idle)]).collect(),
            batches_returned: 0,
            at_commit: (0, 0),
            pushes: pushes.clone(),
            commits: commits.clone(),
        });
        let stream = StreamRun {
            idle_exit: Some(Duration::from_millis(300)),
            ..StreamRun::default()
        };
        let (r, _) = run_sources(&m, &store, vec![source], &opts, &stream).unwrap();
        assert_eq!(r.samples, 80);
        assert_eq!(
            pushes.load(Ordering::SeqCst),
            2,
            "a sync after 3 batches, one when idle"
        );
        assert_eq!(commits.load(Ordering::SeqCst), 2);
    }

    /// A sync pushes the element-wise sum of the gradients held since the last one
    /// (for SGD and FTRL's linear accumulators, the first-order effect of k pushes).
    #[test]
    fn a_sync_pushes_the_sum_of_the_held_gradients() {
        let m = model();
        let mut t = BatchTrainer::new(&m);
        t.hold_dense(vec![vec![1.0, 2.0], vec![3.0]]);
        t.hold_dense(vec![vec![0.5, -2.0], vec![1.0]]);
        assert!(!t.synced());
        assert_eq!(t.pending, Some(vec![vec![1.5, 0.0], vec![4.0]]));
    }

    #[test]
    fn live_sources_stop_when_asked_and_fail_on_a_fatal_error() {
        let m = model();
        let store = MemStore::default();
        store.declare(m.schema()).unwrap();
        let stream = StreamRun::default();
        let stop = stream.stop.clone();
        let (tx, rx) = odl_proto::stream::channel("samples", 16);
        let stopper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            stop.store(true, Ordering::SeqCst);
            tx // kept open: the run ends by the flag, not by the end of the stream
        });
        let (r, _) = run_sources(
            &m,
            &store,
            vec![Box::new(rx)],
            &RunOptions::default(),
            &stream,
        )
        .unwrap();
        assert_eq!(r.samples, 0);
        drop(stopper.join().unwrap());

        let fatal = Box::new(ScriptedSource {
            script: vec![Err(odl_proto::stream::StreamError::Closed {
                name: "s".into(),
            })]
            .into(),
            batches_returned: 0,
            at_commit: (0, 0),
            pushes: Arc::default(),
            commits: Arc::default(),
        });
        let e = run_sources(
            &m,
            &store,
            vec![fatal],
            &RunOptions::default(),
            &StreamRun::default(),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("closed") || format!("{e:?}").contains("Closed"),
            "{e:?}"
        );
    }

    #[test]
    fn undeclared_store_fails_the_run() {
        let m = model();
        let f = write_samples(20, 0);
        let e = run_file(&m, &MemStore::default(), f.path(), &RunOptions::default()).unwrap_err();
        assert!(matches!(e, TrainError::Params(_)), "{e}");
    }
}
