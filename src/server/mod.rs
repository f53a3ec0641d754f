//! `imgclass serve`: the HTTP service (hyper 1 + tokio).
//!
//! Layout: `config` (every flag and limit), `state` (readiness, admission control), `engine`
//! (models on dedicated threads, continuous batching), `classify` (the classify pipeline and the
//! in-process fallback), `routes` (the hyper service, request log, request metrics), `status`
//! (the one error → HTTP status mapping), `metrics`, `openapi`, `shutdown`, `logging`.
//!
//! Start-up: weights files checked (missing: exit non-zero before listening) → listen (the bound
//! address is logged as `listening on http://ADDR`) → load weights and run one warm-up inference
//! per model on the engine threads → `/readyz` 200. Invalid weights or a failed warm-up stop the
//! server with a non-zero exit.

pub mod classify;
pub mod config;
pub mod engine;
pub mod logging;
pub mod metrics;
pub mod openapi;
pub mod routes;
pub mod shutdown;
pub mod state;
pub mod status;

pub use config::ServeArgs;

use crate::models::Classifier;
use crate::weights::dir::weights_path;
use crate::{Error, Result};
use config::{Fault, Settings};
use engine::{Engine, EngineConfig};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use metrics::Metrics;
use state::{AppState, Engines};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Run the server until SIGTERM/SIGINT (then drain and return `Ok`).
pub fn run(args: ServeArgs) -> Result<()> {
    let settings = Settings::from_args(&args)?;
    // before any other thread starts: see `release_memory_when_idle` and `ops::alloc`
    crate::ops::alloc::set_arena_max(settings.malloc_arenas);
    logging::init(settings.json_logs, &settings.log)?;
    configure_compute_threads(settings.threads);
    crate::ops::set_spin(settings.spin);
    log_settings(&settings);
    check_weights_present(&settings)?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.threads.max(1))
        .max_blocking_threads(settings.threads.max(1) + 2)
        .thread_name("imgclass-rt")
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("cannot start the async runtime: {e}")))?;
    let result = rt.block_on(serve(settings));
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

/// How often the server checks whether it went idle after traffic (see [`release_memory_when_idle`]).
const IDLE_TRIM_INTERVAL: Duration = Duration::from_millis(500);

/// Give freed memory back to the OS once traffic stops.
///
/// Under load the allocator keeps freed activation tensors and decode buffers and reuses them
/// (policy and measurements in `ops::alloc`). When no request has been in flight for a whole
/// interval after some traffic, `malloc_trim` hands the free pages back (one arena for all
/// threads, set at start, so that this reaches all of them): RSS after a burst returns to its
/// steady level.
async fn release_memory_when_idle(state: Arc<AppState>) {
    let mut trimmed_at = state.admission.admitted();
    let mut idle_since: Option<u64> = None;
    loop {
        tokio::time::sleep(IDLE_TRIM_INTERVAL).await;
        let admitted = state.admission.admitted();
        if admitted == trimmed_at || !state.admission.is_idle() {
            idle_since = None;
            continue;
        }
        // idle now; trim if it stayed idle (no new request) for a whole interval
        if idle_since != Some(admitted) {
            idle_since = Some(admitted);
            continue;
        }
        let released = tokio::task::spawn_blocking(crate::ops::alloc::release_free_memory)
            .await
            .unwrap_or(false);
        tracing::debug!(released, "idle: returned free memory to the OS");
        trimmed_at = admitted;
        idle_since = None;
    }
}

/// Size rayon's compute pool (which runs every kernel in `ops`, and gemm's) to the threads we may
/// use, so inference does not oversubscribe the CPUs. candle's own elementwise pool is kept to one
/// thread by `ops::configure_threads` (called first thing in `main`).
fn configure_compute_threads(n: usize) {
    let n = n.max(1);
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    crate::ops::configure_threads();
    if rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("imgclass-compute-{i}"))
        .build_global()
        .is_err()
    {
        tracing::debug!("rayon global pool already initialised");
    }
}

fn log_settings(s: &Settings) {
    let json = serde_json::to_string(s).unwrap_or_default();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        profile = s.profile.name(),
        settings = %json,
        "imgclass serve starting"
    );
    match s.fault {
        Fault::None => {}
        Fault::Error => tracing::warn!(
            "FAULT INJECTION ON (--fault error / IMGCLASS_FAULT=error): every classify request will answer 500"
        ),
        Fault::Stall => tracing::warn!(
            "FAULT INJECTION ON (--fault stall / IMGCLASS_FAULT=stall): every classify request will hang without answering"
        ),
    }
    if s.test_hooks.any() {
        tracing::warn!(hooks = ?s.test_hooks, "TEST-ONLY HOOKS ON (IMGCLASS_TEST_*): never use these in production");
    }
}

fn check_weights_present(s: &Settings) -> Result<()> {
    for kind in s.profile.models() {
        let path = weights_path(&s.weights_dir, kind);
        if !path.is_file() {
            return Err(Error::WeightsMissing(format!(
                "weights for {kind} not found at {}: `imgclass serve` never downloads weights; \
                 fetch them first (`{}`), or point --weights-dir (IMGCLASS_WEIGHTS_DIR) at a \
                 directory holding {}.safetensors",
                path.display(),
                crate::weights::dir::fetch_command(kind, &s.weights_dir),
                kind.name()
            )));
        }
    }
    Ok(())
}

async fn serve(settings: Settings) -> Result<()> {
    let metrics =
        Metrics::new().map_err(|e| Error::Internal(format!("cannot create metrics: {e}")))?;
    let names: Vec<&str> = settings.profile.models().iter().map(|m| m.name()).collect();
    metrics.init_series(&names);
    let mut signals = shutdown::Signals::register()?;

    let listener = TcpListener::bind(settings.addr)
        .await
        .map_err(|e| Error::Internal(format!("cannot listen on {}: {e}", settings.addr)))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::Internal(format!("cannot read the bound address: {e}")))?;
    tracing::info!(addr = %local, "listening on http://{local}");

    let state = Arc::new(AppState::new(settings.clone(), metrics));
    tokio::spawn(release_memory_when_idle(state.clone()));
    let (fatal_tx, mut fatal_rx) = oneshot::channel::<Error>();
    tokio::spawn(load_and_warm(state.clone(), fatal_tx));

    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .keep_alive(true);

    let mut loader_done = false;
    let outcome: Result<&'static str> = loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => spawn_connection(&http, &graceful, &state, stream),
                Err(e) => {
                    // e.g. out of file descriptors: back off a little instead of spinning
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            sig = signals.recv() => break Ok(sig),
            r = &mut fatal_rx, if !loader_done => {
                loader_done = true;
                if let Ok(e) = r {
                    break Err(e);
                }
            }
        }
    };

    state.begin_shutdown();
    let sig = match outcome {
        Ok(sig) => sig,
        Err(e) => {
            tracing::error!(error = %e, error_type = e.error_type(), "cannot serve; exiting");
            return Err(e);
        }
    };
    tracing::info!(
        signal = sig,
        grace_ms = settings.shutdown_grace.as_millis() as u64,
        "shutting down: /readyz is 503, no new connections, draining in-flight requests"
    );
    // Connections the kernel already accepted (in the listen backlog) get an answer (a classify
    // request now gets 503 `shutting_down`) instead of a reset; then the listener closes.
    let mut last_http = http1::Builder::new();
    last_http
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .keep_alive(false);
    let mut backlog = tokio::task::JoinSet::new();
    match listener.into_std() {
        Ok(std_listener) => {
            while let Ok((s, _)) = std_listener.accept() {
                if s.set_nonblocking(true).is_ok() {
                    if let Ok(stream) = TcpStream::from_std(s) {
                        backlog.spawn(connection(&last_http, &state, stream));
                    }
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot drain the listen backlog"),
    }
    tokio::spawn(async move {
        let s = signals.recv().await;
        tracing::warn!(signal = s, "second signal: exiting without draining");
        std::process::exit(130);
    });
    let open = graceful.count() + backlog.len();
    let drained = async {
        graceful.shutdown().await;
        while backlog.join_next().await.is_some() {}
    };
    match tokio::time::timeout(settings.shutdown_grace, drained).await {
        Ok(()) => tracing::info!(connections = open, "drained; exiting"),
        Err(_) => tracing::warn!(
            connections = open,
            "grace period over with requests still in flight; exiting"
        ),
    }
    Ok(())
}

fn spawn_connection(
    http: &http1::Builder,
    graceful: &GracefulShutdown,
    state: &Arc<AppState>,
    stream: TcpStream,
) {
    let fut = graceful.watch(connection(http, state, stream));
    tokio::spawn(async move {
        if let Err(e) = fut.await {
            tracing::debug!(error = %e, "connection closed with an error");
        }
    });
}

/// One HTTP/1 connection served by `routes::handle`.
fn connection(
    http: &http1::Builder,
    state: &Arc<AppState>,
    stream: TcpStream,
) -> impl hyper_util::server::graceful::GracefulConnection<Error = hyper::Error> {
    let _ = stream.set_nodelay(true);
    let st = state.clone();
    let svc = service_fn(move |req| {
        let st = st.clone();
        async move { Ok::<_, Infallible>(routes::handle(st, req).await) }
    });
    http.serve_connection(TokioIo::new(stream), svc)
}

/// Load every model, start its engine, wait for the warm-ups, then mark the server ready.
async fn load_and_warm(state: Arc<AppState>, fatal: oneshot::Sender<Error>) {
    let t0 = Instant::now();
    let s = state.settings.clone();
    let loaded = tokio::task::spawn_blocking(move || -> Result<Vec<Classifier>> {
        s.profile
            .models()
            .into_iter()
            .map(|kind| {
                let path = weights_path(&s.weights_dir, kind);
                let t = Instant::now();
                let c = Classifier::load(kind, &path)?;
                tracing::info!(model = kind.name(), path = %path.display(),
                    ms = t.elapsed().as_millis() as u64, "weights loaded");
                Ok(c)
            })
            .collect()
    })
    .await;
    let models = match loaded {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => {
            let _ = fatal.send(e);
            return;
        }
        Err(e) => {
            let _ = fatal.send(Error::Internal(format!("loading weights failed: {e}")));
            return;
        }
    };

    let s = &state.settings;
    let base = EngineConfig {
        max_batch_size: s.max_batch_size,
        instances: s.instances,
        requests_in_process: Some(state.admission.probe()),
        queue_capacity: 2 * s.max_concurrent + 1,
        test_delay: Duration::ZERO,
        test_fault: false,
        test_warmup_gate: s.test_hooks.warmup_gate.clone(),
    };
    let mut started = Vec::new();
    for (i, model) in models.into_iter().enumerate() {
        let cfg = if i == 0 {
            // hooks only ever affect the primary model of the profile
            EngineConfig {
                test_delay: s.test_hooks.primary_delay,
                test_fault: s.test_hooks.primary_fault,
                ..base.clone()
            }
        } else {
            base.clone()
        };
        match Engine::start(model, cfg, state.metrics.clone()) {
            Ok(e) => started.push(e),
            Err(e) => {
                let _ = fatal.send(e);
                return;
            }
        }
    }
    let mut engines = Vec::new();
    for (engine, warm) in started {
        match warm.await {
            Ok(Ok(())) => engines.push(engine),
            Ok(Err(e)) => {
                let _ = fatal.send(Error::Internal(format!(
                    "warm-up inference of {} failed: {e}",
                    engine.kind()
                )));
                return;
            }
            Err(_) => {
                let _ = fatal.send(Error::Internal(format!(
                    "the engine thread of {} died during warm-up",
                    engine.kind()
                )));
                return;
            }
        }
    }
    let mut it = engines.into_iter();
    let Some(primary) = it.next() else {
        let _ = fatal.send(Error::Internal("no model loaded".into()));
        return;
    };
    let fallback = it.next();
    state.set_ready(Engines { primary, fallback });
    tracing::info!(
        ms = t0.elapsed().as_millis() as u64,
        "ready: models loaded and warmed up"
    );
}
