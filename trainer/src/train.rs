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
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// Staleness bound: dense tensors are pulled every this many batches (1: always).
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
                Input::File { path, reader, epochs_left } => {
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
    reader: Mutex<SharedReader>,
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
    run_input(model, store, input, total_bytes * opts.epochs.max(1) as u64, opts)
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
    let opts = RunOptions { epochs: 1, ..opts.clone() };
    run_input(model, store, Input::Stream(source), 0, &opts)
}

fn run_input(
    model: &Model,
    store: &dyn ParamStore,
    input: Input,
    total_bytes: u64,
    opts: &RunOptions,
) -> Result<(Report, RunStats)> {
    if opts.share.1 == 0 || opts.share.0 >= opts.share.1 {
        return Err(TrainError::Config(format!(
            "bad worker share {}/{}",
            opts.share.0, opts.share.1
        )));
    }
    let shared = Shared {
        model,
        store,
        opts,
        reader: Mutex::new(SharedReader {
            input,
            line_no: 0,
            bytes_read: 0,
            total_bytes,
            share: opts.share,
        }),
        eval: Mutex::new(Evaluator::new(model.tasks(), model.config().current_window)),
        samples: AtomicU64::new(0),
        bad: AtomicU64::new(0),
        retries: AtomicU64::new(0),
        start: Instant::now(),
        next_progress: Mutex::new(Instant::now() + opts.progress_interval),
    };
    if opts.epochs == 0 {
        return Ok(finish(&shared));
    }
    let threads = opts.threads.max(1);
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| s.spawn(|| worker_loop(&shared)))
            .collect();
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
    let (report, stats) = finish(&shared);
    if opts.learn {
        let progress = lock(&shared.eval).progress(report.samples);
        retry(&shared, || Ok(store.report_progress(&progress)?))?;
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

fn worker_loop(shared: &Shared) -> Result<()> {
    let model = shared.model;
    let batch_size = model.config().batch_size;
    let mut lines = Vec::with_capacity(batch_size);
    let mut spare = Vec::new();
    let mut batch = Batch::default();
    let mut builder = model.batch_builder();
    let mut dense: Option<Arc<Vec<Vec<f32>>>> = None;
    let mut since_refresh = 0usize;
    loop {
        let first_line = {
            let mut r = lock(&shared.reader);
            let first = r.line_no;
            r.next_lines(batch_size, &mut lines, &mut spare)?;
            first
        };
        if lines.is_empty() {
            return Ok(());
        }
        for (k, line) in lines.iter().enumerate() {
            if let Err(e) = builder.push_sample_json(line.trim_end()) {
                let n = shared.bad.fetch_add(1, Ordering::Relaxed);
                if n < 10 {
                    tracing::warn!("skipping line ~{}: {e}", first_line + k as u64 + 1);
                } else if n == 10 {
                    tracing::warn!("more bad lines; only their count is reported from now on");
                }
            }
        }
        builder.swap_into(&mut batch);
        if batch.len == 0 {
            continue;
        }
        let refresh = match dense {
            None => true,
            // A frozen model's dense tensors never change.
            Some(_) if !shared.opts.learn => false,
            Some(_) => since_refresh + 1 >= shared.opts.dense_refresh_batches,
        };
        if refresh {
            dense = Some(retry(shared, || model.pull_dense(shared.store))?);
            since_refresh = 0;
        } else {
            since_refresh += 1;
        }
        let preds = retry(shared, || {
            if shared.opts.learn {
                model.train_batch(shared.store, &batch, dense.clone())
            } else {
                let p = model.pull(shared.store, &batch, dense.clone())?;
                model.predict_params(&batch, &p)
            }
        })?;
        lock(&shared.eval).record(&batch, &preds);
        shared
            .samples
            .fetch_add(batch.len as u64, Ordering::Relaxed);
        maybe_progress(shared)?;
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
    let (read, total) = {
        let r = lock(&shared.reader);
        (r.bytes_read, r.total_bytes)
    };
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
        "{} {samples} samples, {:.0} samples/s, {}, ETA {eta:.0}s",
        if shared.opts.learn { "train:" } else { "eval:" },
        samples as f64 / elapsed.max(1e-9),
        aucs.join(", ")
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

    #[test]
    fn undeclared_store_fails_the_run() {
        let m = model();
        let f = write_samples(20, 0);
        let e = run_file(&m, &MemStore::default(), f.path(), &RunOptions::default()).unwrap_err();
        assert!(matches!(e, TrainError::Params(_)), "{e}");
    }
}
