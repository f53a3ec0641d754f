//! Shared server state: settings, metrics, engines, readiness, admission control.

use super::config::Settings;
use super::engine::{Engine, RequestsProbe};
use super::metrics::Metrics;
use super::status::ApiError;
use prometheus::IntGauge;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// The loaded models: the primary answers; the fallback (full profile) answers when it cannot.
pub struct Engines {
    pub primary: Engine,
    pub fallback: Option<Engine>,
}

pub struct AppState {
    pub settings: Settings,
    pub metrics: Metrics,
    /// Set once every model is loaded and warmed up.
    pub engines: OnceLock<Engines>,
    ready: AtomicBool,
    shutting_down: AtomicBool,
    pub admission: Admission,
    /// Bounds concurrent decodes (each may hold a large pixel buffer).
    pub decode_permits: Arc<Semaphore>,
}

impl AppState {
    pub fn new(settings: Settings, metrics: Metrics) -> AppState {
        let admission = Admission::new(
            settings.max_concurrent,
            settings.queue_depth,
            metrics.queue_depth.clone(),
        );
        let decode_permits = Arc::new(Semaphore::new(settings.decode_threads.max(1)));
        AppState {
            settings,
            metrics,
            engines: OnceLock::new(),
            ready: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            admission,
            decode_permits,
        }
    }

    pub fn set_ready(&self, engines: Engines) {
        let _ = self.engines.set(engines);
        self.ready.store(true, Ordering::SeqCst);
        if !self.is_shutting_down() {
            self.metrics.ready.set(1);
        }
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.metrics.ready.set(0);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Liveness (`/healthz`): every started engine thread is still running.
    pub fn check_alive(&self) -> Result<(), ApiError> {
        if let Some(e) = self.engines.get() {
            for engine in std::iter::once(&e.primary).chain(e.fallback.as_ref()) {
                if !engine.is_alive() && !self.is_shutting_down() {
                    return Err(ApiError::EngineStopped(engine.kind().name()));
                }
            }
        }
        Ok(())
    }

    /// Ok when classify requests may be served (this is `/readyz`).
    pub fn check_ready(&self) -> Result<&Engines, ApiError> {
        if self.is_shutting_down() {
            return Err(ApiError::ShuttingDown);
        }
        if !self.ready.load(Ordering::SeqCst) {
            return Err(ApiError::NotReady);
        }
        self.check_alive()?;
        self.engines.get().ok_or(ApiError::NotReady)
    }
}

/// Admission control: `max_concurrent` requests are processed at once, up to `queue_depth` more
/// wait for a slot, anything beyond is refused at once (503 `overloaded`).
pub struct Admission {
    slots: Arc<Semaphore>,
    max_concurrent: usize,
    waiting: AtomicUsize,
    queue_depth: usize,
    gauge: IntGauge,
    /// Requests admitted so far (for noticing that traffic happened since some moment).
    admitted: AtomicU64,
}

struct WaitGuard<'a>(&'a Admission);

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
        self.0.gauge.dec();
    }
}

impl Admission {
    pub fn new(max_concurrent: usize, queue_depth: usize, gauge: IntGauge) -> Admission {
        Admission {
            slots: Arc::new(Semaphore::new(max_concurrent)),
            max_concurrent,
            waiting: AtomicUsize::new(0),
            queue_depth,
            gauge,
            admitted: AtomicU64::new(0),
        }
    }

    /// Requests admitted since start.
    pub fn admitted(&self) -> u64 {
        self.admitted.load(Ordering::SeqCst)
    }

    /// Counts the requests being processed (admitted, holding a slot), for the engines.
    pub fn probe(&self) -> RequestsProbe {
        let (slots, max) = (self.slots.clone(), self.max_concurrent);
        RequestsProbe(Arc::new(move || {
            max.saturating_sub(slots.available_permits())
        }))
    }

    /// No request is being processed or waiting for a slot.
    pub fn is_idle(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) == 0
            && self.slots.available_permits() == self.max_concurrent
    }

    /// A processing slot, waiting for one until `deadline` if the queue has room.
    pub async fn admit(&self, deadline: Instant) -> Result<OwnedSemaphorePermit, ApiError> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            self.admitted.fetch_add(1, Ordering::SeqCst);
            return Ok(p);
        }
        let before = self.waiting.fetch_add(1, Ordering::SeqCst);
        self.gauge.inc();
        let _guard = WaitGuard(self);
        if before >= self.queue_depth {
            return Err(ApiError::Overloaded);
        }
        match tokio::time::timeout_at(deadline, self.slots.clone().acquire_owned()).await {
            Ok(Ok(p)) => {
                self.admitted.fetch_add(1, Ordering::SeqCst);
                Ok(p)
            }
            Ok(Err(_)) => Err(ApiError::ShuttingDown),
            Err(_) => Err(ApiError::Timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn admission_queues_then_sheds() {
        let g = IntGauge::new("g", "g").unwrap();
        let a = Arc::new(Admission::new(1, 1, g.clone()));
        let far = Instant::now() + Duration::from_secs(60);
        let p1 = a.admit(far).await.unwrap();
        // second waits in the queue
        let a2 = a.clone();
        let waiter = tokio::spawn(async move { a2.admit(far).await.map(|_| ()) });
        while g.get() == 0 {
            tokio::task::yield_now().await;
        }
        // third is over the queue depth: refused at once
        let e = a.admit(far).await.unwrap_err();
        assert_eq!(e.error_type(), "overloaded");
        assert!(!a.is_idle());
        drop(p1);
        waiter.await.unwrap().unwrap();
        assert_eq!(g.get(), 0);
        // the refused request was never admitted; the waiter's permit is dropped with its task
        assert_eq!(a.admitted(), 2);
        assert!(a.is_idle());
    }

    #[tokio::test]
    async fn queued_request_times_out_at_its_deadline() {
        let g = IntGauge::new("g", "g").unwrap();
        let a = Admission::new(1, 4, g.clone());
        let _p = a
            .admit(Instant::now() + Duration::from_secs(60))
            .await
            .unwrap();
        let e = a
            .admit(Instant::now() + Duration::from_millis(10))
            .await
            .unwrap_err();
        assert_eq!(e.error_type(), "timeout");
        assert_eq!(g.get(), 0);
    }
}
