//! The inference engine: one per model, owning the loaded `Classifier`, on dedicated OS threads
//! (one per instance, see [`run_instance`]).
//!
//! Requests arrive through a bounded queue. Continuous batching: whenever the engine is free it
//! takes everything already queued (up to `max_batch_size`) and runs one forward pass; it never
//! waits for a batch to fill, so a lone request runs at once. Every job carries a deadline: jobs
//! whose deadline passed or whose requester went away are dropped before the forward pass, so an
//! abandoned request costs no compute. Inference never runs on a tokio worker thread.

use super::metrics::Metrics;
use crate::labels::{top_k, Prediction};
use crate::models::{Classifier, ModelKind};
use crate::preprocess::Transform;
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Why an engine did not produce predictions.
#[derive(Debug)]
pub enum EngineError {
    /// The forward pass failed.
    Failed(Error),
    /// The job's deadline passed before its forward pass started.
    Deadline,
    /// The queue is full (admission control should prevent this).
    QueueFull,
    /// The engine thread is gone.
    Stopped,
    /// The job's image could not be preprocessed (a [`Input::Deferred`] input that failed: bad
    /// input, not a failure of the engine).
    Input(Error),
}

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EngineError::Failed(e) => write!(f, "{e}"),
            EngineError::Deadline => f.write_str("deadline passed before inference"),
            EngineError::QueueFull => f.write_str("inference queue full"),
            EngineError::Stopped => f.write_str("inference engine stopped"),
            EngineError::Input(e) => write!(f, "{e}"),
        }
    }
}

/// Engine behaviour knobs.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub max_batch_size: usize,
    /// Forward passes that may run at once (see [`run_instance`]); 1: one at a time, each on the
    /// whole compute pool.
    pub instances: usize,
    /// Classify requests the server is processing, when known: an instance that finds the others
    /// idle still runs a lone job on one thread when other requests are on their way (being
    /// received or decoded), leaving the other cores to them, and on the whole pool only when
    /// it is the only one.
    pub requests_in_process: Option<RequestsProbe>,
    /// Jobs the queue holds at most.
    pub queue_capacity: usize,
    /// TEST ONLY: sleep before every forward pass.
    pub test_delay: Duration,
    /// TEST ONLY: every forward pass fails.
    pub test_fault: bool,
    /// TEST ONLY: the warm-up waits until this file exists.
    pub test_warmup_gate: Option<std::path::PathBuf>,
}

/// Counts the requests in process (see [`EngineConfig::requests_in_process`]).
#[derive(Clone)]
pub struct RequestsProbe(pub Arc<dyn Fn() -> usize + Send + Sync>);

impl std::fmt::Debug for RequestsProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RequestsProbe({})", (self.0)())
    }
}

/// The image of a job.
pub enum Input {
    /// Preprocessed already (CHW f32 of [`input_len`] values).
    Ready(Arc<Vec<f32>>),
    /// Preprocessed by the instance that takes the job, on its own thread, just before the
    /// forward pass (`--decode-on engine`). An error is answered as [`EngineError::Input`].
    Deferred(Box<dyn FnOnce() -> Result<Vec<f32>> + Send>),
}

struct Job {
    input: Input,
    k: usize,
    deadline: Instant,
    reply: oneshot::Sender<std::result::Result<Vec<Prediction>, EngineError>>,
}

/// Handle to one model's engine thread. Dropping every handle stops the thread.
pub struct Engine {
    kind: ModelKind,
    tx: SyncSender<Job>,
    metrics: Metrics,
    alive: Arc<AtomicBool>,
}

/// Clears the engine's `alive` flag when its thread ends, however it ends (panics included).
struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Length of one preprocessed image (CHW f32).
pub fn input_len() -> usize {
    let c = Transform::IMAGENET.crop as usize;
    3 * c * c
}

impl Engine {
    /// Start the engine thread. It runs one warm-up inference first; the returned receiver says
    /// whether that worked.
    pub fn start(
        model: Classifier,
        cfg: EngineConfig,
        metrics: Metrics,
    ) -> Result<(Engine, oneshot::Receiver<Result<()>>)> {
        let kind = model.kind();
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(cfg.queue_capacity.max(1));
        let (warm_tx, warm_rx) = oneshot::channel();
        let m = metrics.clone();
        let alive = Arc::new(AtomicBool::new(true));
        let guard = AliveGuard(alive.clone());
        std::thread::Builder::new()
            .name(format!("engine-{}", kind.name()))
            .spawn(move || {
                let _guard = guard;
                engine_thread(model, cfg, rx, m, warm_tx)
            })
            .map_err(|e| Error::Internal(format!("cannot start the engine thread: {e}")))?;
        Ok((
            Engine {
                kind,
                tx,
                metrics,
                alive,
            },
            warm_rx,
        ))
    }

    pub fn kind(&self) -> ModelKind {
        self.kind
    }

    /// False once the engine thread has ended (it only ends on shutdown, or by a bug).
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// Queue one image and wait for its top-`k` predictions.
    pub async fn infer(
        &self,
        input: Input,
        k: usize,
        deadline: Instant,
    ) -> std::result::Result<Vec<Prediction>, EngineError> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            input,
            k,
            deadline,
            reply,
        };
        let gauge = self
            .metrics
            .engine_queue_depth
            .with_label_values(&[self.kind.name()]);
        gauge.inc();
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                gauge.dec();
                return Err(EngineError::QueueFull);
            }
            Err(TrySendError::Disconnected(_)) => {
                gauge.dec();
                return Err(EngineError::Stopped);
            }
        }
        rx.await.unwrap_or(Err(EngineError::Stopped))
    }
}

fn engine_thread(
    model: Classifier,
    cfg: EngineConfig,
    rx: Receiver<Job>,
    metrics: Metrics,
    warm_tx: oneshot::Sender<Result<()>>,
) {
    let kind = model.kind();
    let name = kind.name();
    if let Some(gate) = &cfg.test_warmup_gate {
        tracing::warn!(model = name, gate = %gate.display(), "test hook: warm-up waits for the gate file");
        while !gate.exists() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let t0 = Instant::now();
    let warm = Tensor::zeros((1, 3, 224, 224), candle_core::DType::F32, &Device::Cpu)
        .map_err(Error::from)
        .and_then(|t| run_forward(&model, &t))
        .map(|_| ());
    match &warm {
        Ok(()) => tracing::info!(
            model = name,
            ms = t0.elapsed().as_millis() as u64,
            "warm-up inference done"
        ),
        Err(e) => tracing::error!(model = name, error = %e, "warm-up inference failed"),
    }
    let failed = warm.is_err();
    let _ = warm_tx.send(warm);
    if failed {
        return;
    }

    let model = &model;
    let shared = Shared {
        rx: Mutex::new(rx),
        busy: AtomicUsize::new(0),
        gate: RwLock::new(()),
        policy: Mutex::new(BatchPolicy::new(cfg.max_batch_size)),
    };
    let instances = cfg.instances.max(1);
    std::thread::scope(|s| {
        for i in 1..instances {
            let (cfg, shared, metrics) = (&cfg, &shared, &metrics);
            let spawned = std::thread::Builder::new()
                .name(format!("engine-{name}-{i}"))
                .spawn_scoped(s, move || run_instance(model, cfg, shared, metrics, i));
            if let Err(e) = spawned {
                tracing::warn!(model = name, instance = i, error = %e, "cannot start an engine instance");
            }
        }
        run_instance(model, &cfg, &shared, &metrics, 0);
    });
    tracing::debug!(model = name, "engine stopped");
}

/// What the instances of one engine share.
struct Shared {
    rx: Mutex<Receiver<Job>>,
    /// Instances that have taken jobs and not yet answered them.
    busy: AtomicUsize,
    /// A pass on the whole pool holds it exclusively; one-thread passes share it.
    gate: RwLock<()>,
    policy: Mutex<BatchPolicy>,
}

/// Lock a mutex whatever a panicking holder left: the queue and the policy stay usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Decrements [`Shared::busy`] when an instance is done with its jobs.
struct Busy<'a>(&'a AtomicUsize);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One instance of the engine: takes jobs from the shared queue and runs their forward pass.
///
/// With one instance every pass runs on the whole compute pool. With several (`instances`), an
/// instance that finds the others idle still does (lowest latency at low load: each kernel split
/// over the pool's threads), and takes everything queued; an instance that finds another one busy
/// takes one job and runs it on its own one-thread pool, beside the others, once no whole-pool
/// pass is running. Under load the passes thus run side by side, one image per thread, instead of
/// one image split over every thread (measured for MobileNetV3, 2 threads: a single image costs
/// 7.9–8.5 thread-ms split over two threads, 5.7–6.1 on one; for the full server, two Wide ResNet
/// instances against one under 4 clients: 6.0–6.6 → 8.8–9.4 requests per second).
fn run_instance(
    model: &Classifier,
    cfg: &EngineConfig,
    shared: &Shared,
    metrics: &Metrics,
    index: usize,
) {
    let name = model.kind().name();
    let depth = metrics.engine_queue_depth.with_label_values(&[name]);
    let inference = metrics.inference_duration.with_label_values(&[name]);
    let batch_hist = metrics.batch_size.with_label_values(&[name]);
    let own_pool = if cfg.instances > 1 {
        match rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(move |_| format!("imgclass-instance-{index}"))
            .build()
        {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(model = name, instance = index, error = %e, "cannot start an instance's thread; this instance uses the whole pool");
                None
            }
        }
    } else {
        None
    };
    let mode_label = |wide: bool| if wide { "pool" } else { "instance" };
    loop {
        let (jobs, wide) = {
            let rx = lock(&shared.rx);
            let Ok(first) = rx.recv() else {
                return;
            };
            let others = shared.busy.fetch_add(1, Ordering::AcqRel);
            let mut wide = own_pool.is_none() || others == 0;
            let limit = if wide {
                lock(&shared.policy).limit()
            } else {
                1
            };
            let mut jobs = vec![first];
            while jobs.len() < limit {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            if wide && own_pool.is_some() && jobs.len() == 1 {
                // a lone job: the whole pool only if no other request is on its way
                wide = cfg
                    .requests_in_process
                    .as_ref()
                    .is_none_or(|p| (p.0)() <= 1);
            }
            (jobs, wide)
        };
        let _busy = Busy(&shared.busy);
        depth.sub(jobs.len() as i64);
        let now = Instant::now();
        let mut live = Vec::with_capacity(jobs.len());
        for j in jobs {
            if j.reply.is_closed() {
                continue; // the requester gave up (fallback, timeout, client gone)
            }
            if j.deadline <= now {
                let _ = j.reply.send(Err(EngineError::Deadline));
                continue;
            }
            live.push(j);
        }
        // deferred inputs are preprocessed here, on this instance's thread (or pool), before any
        // whole-pool pass takes the gate
        let mut live = match (&own_pool, wide) {
            (Some(pool), false) => pool.install(|| prepare(live)),
            _ => prepare(live),
        };
        if live.is_empty() {
            continue;
        }
        if !cfg.test_delay.is_zero() {
            std::thread::sleep(cfg.test_delay);
        }
        let mut run = || {
            if cfg.test_fault {
                Err(Error::Inference(format!(
                    "test hook IMGCLASS_TEST_PRIMARY_FAULT: {name} forward pass forced to fail"
                )))
            } else {
                forward_batch(model, &mut live)
            }
        };
        let (result, secs) = match (&own_pool, wide) {
            (Some(pool), false) => {
                let _shared = shared.gate.read().unwrap_or_else(|e| e.into_inner());
                let t = Instant::now();
                (pool.install(run), t.elapsed().as_secs_f64())
            }
            _ => {
                let _alone = shared.gate.write().unwrap_or_else(|e| e.into_inner());
                let t = Instant::now();
                (run(), t.elapsed().as_secs_f64())
            }
        };
        inference.observe(secs);
        batch_hist.observe(live.len() as f64);
        metrics
            .passes
            .with_label_values(&[name, mode_label(wide)])
            .inc();
        if result.is_ok() && wide {
            if let Some(on) = lock(&shared.policy).observe(live.len(), secs) {
                tracing::debug!(model = name, batching = on, "batching policy changed");
            }
        }
        match result {
            Ok(rows) => {
                for (j, row) in live.into_iter().zip(rows) {
                    let _ = j.reply.send(Ok(top_k(&row, j.k)));
                }
            }
            Err(e) => {
                tracing::warn!(model = name, batch = live.len(), error = %e, "forward pass failed");
                let msg = e.to_string();
                for j in live {
                    let _ = j
                        .reply
                        .send(Err(EngineError::Failed(Error::Inference(msg.clone()))));
                }
            }
        }
    }
}

/// Whether batching pays off for this model on this machine, learned from the forward passes
/// themselves: per-image time at batch size 1 vs batched (moving averages). When batching is not
/// clearly faster per image (e.g. a compute-bound model whose kernels lose cache locality on large batches), the
/// engine runs queued requests one by one, which also gives the first of them its answer sooner;
/// every `PROBE_EVERY` passes it tries a batch again to notice when that changes.
struct BatchPolicy {
    max: usize,
    /// Seconds per image at batch size 1.
    single: Option<f64>,
    /// Seconds per image at batch sizes >= 2.
    batched: Option<f64>,
    since_probe: u32,
}

const PROBE_EVERY: u32 = 50;
/// Batching must save at least 10% per image: every image of a batch waits for the whole batch,
/// so a draw is a loss in latency (and noise would flip the decision back and forth).
const BATCH_GAIN: f64 = 0.9;
const EMA: f64 = 0.3;

impl BatchPolicy {
    fn new(max: usize) -> Self {
        BatchPolicy {
            max: max.max(1),
            single: None,
            batched: None,
            since_probe: 0,
        }
    }

    fn batching(&self) -> bool {
        match (self.single, self.batched) {
            (Some(s), Some(b)) => b <= s * BATCH_GAIN,
            _ => true,
        }
    }

    /// Most jobs to take for the next forward pass.
    fn limit(&mut self) -> usize {
        if self.batching() {
            return self.max;
        }
        self.since_probe += 1;
        if self.since_probe >= PROBE_EVERY {
            self.since_probe = 0;
            return self.max;
        }
        1
    }

    /// Record a forward pass of `n` images; returns the new decision when it changed.
    fn observe(&mut self, n: usize, secs: f64) -> Option<bool> {
        if n == 0 || self.max == 1 {
            return None;
        }
        let before = self.batching();
        let per = secs / n as f64;
        let slot = if n == 1 {
            &mut self.single
        } else {
            &mut self.batched
        };
        *slot = Some(match *slot {
            None => per,
            Some(old) => old * (1.0 - EMA) + per * EMA,
        });
        let after = self.batching();
        (before != after).then_some(after)
    }
}

/// Preprocess the jobs' deferred inputs (several at once on the current pool); a job whose image
/// fails gets its error and is dropped.
fn prepare(mut jobs: Vec<Job>) -> Vec<Job> {
    use rayon::iter::{IntoParallelRefMutIterator, ParallelIterator};
    if !jobs.iter().any(|j| matches!(j.input, Input::Deferred(_))) {
        return jobs; // preprocessed before queueing (`--decode-on pool`, the full profile)
    }
    let run = |j: &mut Job| -> Option<Error> {
        match std::mem::replace(&mut j.input, Input::Ready(Arc::default())) {
            Input::Ready(a) => {
                j.input = Input::Ready(a);
                None
            }
            Input::Deferred(f) => match std::panic::catch_unwind(AssertUnwindSafe(f)) {
                Ok(Ok(chw)) => {
                    j.input = Input::Ready(Arc::new(chw));
                    None
                }
                Ok(Err(e)) => Some(e),
                // a decoder that panics on some input: the input is bad, not the server
                Err(_) => Some(Error::CorruptImage(
                    "the decoder failed on this input".into(),
                )),
            },
        }
    };
    let failed: Vec<Option<Error>> = if jobs.len() > 1 {
        jobs.par_iter_mut().map(run).collect()
    } else {
        jobs.iter_mut().map(run).collect()
    };
    jobs.into_iter()
        .zip(failed)
        .filter_map(|(j, failed)| match failed {
            None => Some(j),
            Some(e) => {
                let _ = j.reply.send(Err(EngineError::Input(e)));
                None
            }
        })
        .collect()
}

fn forward_batch(model: &Classifier, jobs: &mut [Job]) -> Result<Vec<Vec<f32>>> {
    let len = input_len();
    let mut inputs = Vec::with_capacity(jobs.len());
    for j in jobs.iter_mut() {
        match std::mem::replace(&mut j.input, Input::Ready(Arc::default())) {
            Input::Ready(a) if a.len() == len => inputs.push(a),
            Input::Ready(a) => {
                return Err(Error::Internal(format!(
                    "preprocessed input has {} values, expected {len}",
                    a.len()
                )))
            }
            Input::Deferred(_) => {
                return Err(Error::Internal(
                    "input not preprocessed before the pass".into(),
                ))
            }
        }
    }
    let flat = if inputs.len() == 1 {
        // one image: its buffer becomes the batch without a copy when nothing else holds it (the
        // lite profile; in the full profile the fallback keeps a reference until the answer)
        let input = inputs.swap_remove(0);
        Arc::try_unwrap(input).unwrap_or_else(|shared| shared.as_ref().clone())
    } else {
        let mut flat = Vec::with_capacity(inputs.len() * len);
        for a in &inputs {
            flat.extend_from_slice(a);
        }
        flat
    };
    let batch = Tensor::from_vec(flat, (jobs.len(), 3, 224, 224), &Device::Cpu)?;
    let logits = run_forward(model, &batch)?;
    let rows = logits.to_vec2::<f32>()?;
    if rows.len() != jobs.len() {
        return Err(Error::Internal(format!(
            "model returned {} rows for a batch of {}",
            rows.len(),
            jobs.len()
        )));
    }
    Ok(rows)
}

/// A forward pass that turns a panic inside the model into an error.
fn run_forward(model: &Classifier, batch: &Tensor) -> Result<Tensor> {
    match std::panic::catch_unwind(AssertUnwindSafe(|| model.forward(batch))) {
        Ok(r) => r,
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(Error::Internal(format!("model panicked: {what}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[test]
    fn batching_stops_when_it_is_slower_per_image_and_is_probed_again() {
        let mut p = BatchPolicy::new(8);
        assert_eq!(p.limit(), 8); // nothing known: take what is queued
        assert_eq!(p.observe(1, 0.120), None);
        assert_eq!(p.observe(4, 0.690), Some(false)); // 172 ms/image > 120
        let limits: Vec<usize> = (0..PROBE_EVERY).map(|_| p.limit()).collect();
        assert_eq!(limits.iter().filter(|&&l| l == 8).count(), 1, "one probe");
        assert!(limits[..PROBE_EVERY as usize - 1].iter().all(|&l| l == 1));
        // kernels that batch well: batching comes back
        for _ in 0..10 {
            p.observe(8, 0.4);
        }
        assert!(p.batching());
        assert_eq!(p.limit(), 8);
        // a draw is not worth the latency
        let mut d = BatchPolicy::new(8);
        d.observe(1, 0.170);
        assert_eq!(d.observe(4, 4.0 * 0.165), Some(false));
        // a model that batches well keeps batching
        let mut m = BatchPolicy::new(8);
        m.observe(1, 0.025);
        assert_eq!(m.observe(8, 0.100), None);
        assert_eq!(m.limit(), 8);
        // max 1: never batches, nothing to learn
        let mut one = BatchPolicy::new(1);
        assert_eq!(one.limit(), 1);
        assert_eq!(one.observe(1, 0.1), None);
    }

    fn mobilenet() -> Classifier {
        let kind = ModelKind::MobilenetV3Large;
        Classifier::from_tensors(kind, crate::weights::synthetic::generate(kind), "synthetic")
            .unwrap()
    }

    fn input(seed: u32) -> Input {
        Input::Ready(raw(seed))
    }

    fn raw(seed: u32) -> Arc<Vec<f32>> {
        Arc::new(
            (0..input_len() as u32)
                .map(|i| {
                    let x = i.wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(40_503);
                    (x % 1000) as f32 / 500.0 - 1.0
                })
                .collect(),
        )
    }

    /// A test engine's knobs: `instances`, a sleep before every pass, every pass failing.
    fn config(instances: usize, delay_ms: u64, fault: bool) -> EngineConfig {
        EngineConfig {
            max_batch_size: 8,
            instances,
            requests_in_process: None,
            queue_capacity: 16,
            test_delay: Duration::from_millis(delay_ms),
            test_fault: fault,
            test_warmup_gate: None,
        }
    }

    /// An engine of `model`, warmed up; its metrics and its queue-depth gauge.
    async fn started(
        model: Classifier,
        cfg: EngineConfig,
    ) -> (Engine, Metrics, prometheus::IntGauge) {
        let metrics = Metrics::new().unwrap();
        let (engine, warm) = Engine::start(model, cfg, metrics.clone()).unwrap();
        warm.await.unwrap().unwrap();
        let depth = metrics
            .engine_queue_depth
            .with_label_values(&["mobilenet_v3_large"]);
        (engine, metrics, depth)
    }

    /// The top-5 of each image alone (batch 1, the whole pool).
    fn alone(model: &Classifier, images: u32) -> Vec<Vec<Prediction>> {
        (0..images)
            .map(|s| model.classify(&[&raw(s)], 5).unwrap().remove(0))
            .collect()
    }

    /// Same classes in the same order, probabilities within 1e-5.
    fn assert_same(got: &[Vec<Prediction>], want: &[Vec<Prediction>]) {
        assert_eq!(got.len(), want.len());
        for (g, a) in got.iter().zip(want) {
            assert_eq!(g.len(), 5);
            for (x, y) in g.iter().zip(a) {
                assert_eq!((x.index, &x.label), (y.index, &y.label));
                assert!((x.probability - y.probability).abs() < 1e-5);
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_jobs_share_one_forward_pass_and_keep_their_own_results() {
        let model = mobilenet();
        let alone = alone(&model, 5);
        // holds the engine busy with the first job while the others queue up
        let (engine, metrics, depth) = started(model, config(1, 1000, false)).await;
        let far = Instant::now() + Duration::from_secs(600);

        let mut first = Box::pin(engine.infer(input(0), 5, far));
        assert!((&mut first).now_or_never().is_none()); // queued
        while depth.get() != 0 {
            tokio::time::sleep(Duration::from_millis(1)).await; // until the engine took it
        }
        let mut rest: Vec<_> = (1..5)
            .map(|s| Box::pin(engine.infer(input(s), 5, far)))
            .collect();
        for f in &mut rest {
            assert!(f.now_or_never().is_none());
        }
        assert_eq!(depth.get(), 4);
        let mut got = vec![first.await.unwrap()];
        for f in rest {
            got.push(f.await.unwrap());
        }
        assert_same(&got, &alone);
        let batches = metrics
            .batch_size
            .with_label_values(&["mobilenet_v3_large"]);
        assert_eq!(batches.get_sample_count(), 2, "two forward passes");
        assert_eq!(batches.get_sample_sum(), 5.0, "1 + 4 images");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_two_instances_a_job_that_arrives_during_a_pass_runs_beside_it() {
        let model = mobilenet();
        let alone = alone(&model, 3);
        // holds each pass long enough for the next job to arrive during it
        let (engine, metrics, depth) = started(model, config(2, 500, false)).await;
        let far = Instant::now() + Duration::from_secs(600);
        let taken = || async {
            while depth.get() != 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        // the first job finds the other instance idle: a pass on the whole pool
        let mut first = Box::pin(engine.infer(input(0), 5, far));
        assert!((&mut first).now_or_never().is_none());
        taken().await;
        // the next two arrive while it runs: the second instance takes one (on its own thread),
        // the third waits for a free instance instead of joining that pass
        let mut second = Box::pin(engine.infer(input(1), 5, far));
        assert!((&mut second).now_or_never().is_none());
        taken().await;
        let mut third = Box::pin(engine.infer(input(2), 5, far));
        assert!((&mut third).now_or_never().is_none());
        assert_eq!(
            depth.get(),
            1,
            "both instances busy: the third job waits in the queue"
        );
        let got = [
            first.await.unwrap(),
            second.await.unwrap(),
            third.await.unwrap(),
        ];
        assert_same(&got, &alone);
        let passes = |mode: &str| {
            metrics
                .passes
                .with_label_values(&["mobilenet_v3_large", mode])
                .get()
        };
        assert_eq!(
            passes("pool"),
            1,
            "only the first job ran on the whole pool"
        );
        assert_eq!(passes("instance"), 2, "the later ones ran one per instance");
        let batches = metrics
            .batch_size
            .with_label_values(&["mobilenet_v3_large"]);
        assert_eq!(batches.get_sample_count(), 3);
        assert_eq!(batches.get_sample_sum(), 3.0, "one image per instance pass");
        // every instance ends when the last handle is gone (shutdown does not hang on one)
        let alive = engine.alive.clone();
        drop(engine);
        let limit = Instant::now() + Duration::from_secs(30);
        while alive.load(Ordering::SeqCst) {
            assert!(Instant::now() < limit, "an engine instance did not stop");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn expired_and_abandoned_jobs_cost_no_forward_pass() {
        let metrics = Metrics::new().unwrap();
        let cfg = config(1, 0, false);
        let (engine, warm) = Engine::start(mobilenet(), cfg, metrics.clone()).unwrap();
        warm.await.unwrap().unwrap();
        let past = Instant::now() - Duration::from_millis(1);
        let e = engine.infer(input(1), 5, past).await.unwrap_err();
        assert!(matches!(e, EngineError::Deadline), "{e}");
        let batches = metrics
            .batch_size
            .with_label_values(&["mobilenet_v3_large"]);
        assert_eq!(batches.get_sample_count(), 0);
        let far = Instant::now() + Duration::from_secs(600);
        let p = engine.infer(input(1), 3, far).await.unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(batches.get_sample_count(), 1);
        // the thread ends when every handle is gone, and says so
        assert!(engine.is_alive());
        let alive = engine.alive.clone();
        drop(engine);
        while alive.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deferred_inputs_are_preprocessed_by_the_instance_and_their_errors_stay_theirs() {
        let model = mobilenet();
        let alone = alone(&model, 3);
        for instances in [1, 2] {
            let (engine, metrics, depth) =
                started(mobilenet(), config(instances, 300, false)).await;
            let far = Instant::now() + Duration::from_secs(600);
            let on = std::sync::Mutex::new(Vec::new());
            let on = Arc::new(on);
            let deferred = |seed: u32, outcome: u8| {
                let on = on.clone();
                Input::Deferred(Box::new(move || {
                    lock(&on).push(std::thread::current().name().map(str::to_owned));
                    match outcome {
                        0 => Ok(raw(seed).as_ref().clone()),
                        1 => Err(Error::CorruptImage("bad bytes".into())),
                        _ => panic!("a decoder bug"),
                    }
                }))
            };
            // the first job holds the engine; the others queue up and share the next pass(es)
            let mut first = Box::pin(engine.infer(deferred(0, 0), 5, far));
            assert!((&mut first).now_or_never().is_none());
            while depth.get() != 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let bad = Box::pin(engine.infer(deferred(9, 1), 5, far));
            let panics = Box::pin(engine.infer(deferred(9, 2), 5, far));
            let second = Box::pin(engine.infer(deferred(1, 0), 5, far));
            let third = Box::pin(engine.infer(input(2), 5, far));
            let got = [
                first.await.unwrap(),
                second.await.unwrap(),
                third.await.unwrap(),
            ];
            assert_same(&got, &alone);
            let e = bad.await.unwrap_err();
            assert!(
                matches!(&e, EngineError::Input(Error::CorruptImage(m)) if m == "bad bytes"),
                "{e}"
            );
            let e = panics.await.unwrap_err();
            assert!(
                matches!(&e, EngineError::Input(Error::CorruptImage(m)) if m.contains("decoder failed")),
                "{e}"
            );
            // every deferred input ran on the engine's side (its threads or the compute pool),
            // none on the async runtime; the first one on an instance's own thread (either
            // instance may take it)
            let threads = lock(&on).clone();
            assert_eq!(threads.len(), 4);
            let first_on = threads[0].as_deref().unwrap_or("");
            assert!(
                first_on.starts_with("engine-mobilenet_v3_large"),
                "{instances} instances: the first image preprocessed on {first_on:?}"
            );
            for t in &threads {
                assert!(
                    !t.as_deref().unwrap_or("").starts_with("tokio"),
                    "{instances} instances: preprocessed on {t:?}"
                );
            }
            // the failed images took no place in a pass: 3 images in all
            let batches = metrics
                .batch_size
                .with_label_values(&["mobilenet_v3_large"]);
            assert_eq!(batches.get_sample_sum(), 3.0, "{instances} instances");
            // and the engine still works
            let p = engine.infer(deferred(2, 0), 5, far).await.unwrap();
            assert_same(&[p], &alone[2..]);
        }
    }

    #[tokio::test]
    async fn a_failing_model_reports_errors_to_every_job() {
        let metrics = Metrics::new().unwrap();
        let cfg = config(1, 0, true);
        let (engine, warm) = Engine::start(mobilenet(), cfg, metrics).unwrap();
        warm.await.unwrap().unwrap(); // the hook never affects the warm-up
        let far = Instant::now() + Duration::from_secs(600);
        let e = engine.infer(input(2), 5, far).await.unwrap_err();
        assert!(matches!(e, EngineError::Failed(Error::Inference(_))), "{e}");
    }
}
