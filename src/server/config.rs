//! Every setting and limit of `imgclass serve`, in one struct (flags + `IMGCLASS_*` env vars).
//!
//! `ServeArgs` is what clap parses; `Settings` is the validated, derived form the server runs with.

use crate::models::ModelKind;
use crate::preprocess::DecodeLimits;
use crate::{Error, Result};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Which models the server loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Wide ResNet-50-2 answers; MobileNetV3 answers in-process when it errors or misses the deadline.
    Full,
    /// MobileNetV3-Large only.
    Lite,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::Full => "full",
            Profile::Lite => "lite",
        }
    }

    /// The model that answers normally.
    pub fn primary(self) -> ModelKind {
        match self {
            Profile::Full => ModelKind::WideResnet50_2,
            Profile::Lite => ModelKind::MobilenetV3Large,
        }
    }

    /// The in-process fallback model, if any.
    pub fn fallback(self) -> Option<ModelKind> {
        match self {
            Profile::Full => Some(ModelKind::MobilenetV3Large),
            Profile::Lite => None,
        }
    }

    /// `--max-batch-size` when not given. Full: 2. Each image of a Wide ResNet batch adds ~8 MiB
    /// to the peak resident set (its activations), batches ran no faster per image than single
    /// images within the noise, and with two instances ([`Self::default_instances`]) a whole-pool
    /// batch of 4 took the 16-client peak to 439–446 MiB, over the 450 MB budget; with 2:
    /// 421–423 MiB, the same requests per second. Lite: 8 (MobileNetV3's batches are small and
    /// gain from 8).
    pub fn default_max_batch_size(self) -> usize {
        match self {
            Profile::Full => 2,
            Profile::Lite => 8,
        }
    }

    /// `--decode-priority` when not given: lite `idle` (its passes take a few ms: a decoder that
    /// waits for one costs little, and one that preempts it stalls both compute threads; lite
    /// ~183 → ~211 req/s with per-thread arenas), full `normal` (a Wide ResNet pass takes
    /// 100–300 ms: a decoder waiting for it adds that to its request's latency; measured p99
    /// 378–395 → 438–587 ms, no more requests per second).
    pub fn default_decode_priority(self) -> DecodePriority {
        match self {
            Profile::Full => DecodePriority::Normal,
            Profile::Lite => DecodePriority::Idle,
        }
    }

    /// `--decode-on` when not given: lite `engine`, full `pool` (its image goes to two models, and
    /// is decoded once, beside the Wide ResNet pass of an earlier request).
    pub fn default_decode_on(self) -> DecodeOn {
        match self {
            Profile::Full => DecodeOn::Pool,
            Profile::Lite => DecodeOn::Engine,
        }
    }

    /// `--malloc-arenas` when not given (see [`crate::ops::alloc`]): full 1 (one arena bounds
    /// the resident set: 424 MiB right after a load against 486–498 MiB with glibc's per-thread
    /// arenas, over the 450 MB budget), lite 0 = glibc's default (per-thread arenas: ~8% more
    /// requests per second, 62 MiB under load).
    pub fn default_malloc_arenas(self) -> usize {
        match self {
            Profile::Full => 1,
            Profile::Lite => 0,
        }
    }

    /// `--instances` when not given, for `threads` compute threads (0 = one per compute thread):
    /// lite 0 (under load each image runs on one thread beside the others: 5.7–6.1 thread-ms per
    /// image against 7.9–8.5 for an image split over two threads), full 2, or 1 on one thread
    /// (on 2 threads under 4 clients 6.0–6.6 → 8.8–9.4 requests per second, p99 0.90–0.98 →
    /// 0.48–0.62 s; each instance beyond the first holds one more image's activations and scratch,
    /// ~25 MB, against the 450 MB budget, hence no more than two).
    pub fn default_instances(self, threads: usize) -> usize {
        match self {
            Profile::Full => threads.clamp(1, 2),
            Profile::Lite => 0,
        }
    }

    /// Every model this profile loads.
    pub fn models(self) -> Vec<ModelKind> {
        let mut v = vec![self.primary()];
        v.extend(self.fallback());
        v
    }
}

/// Scheduling priority of the image decoders (`--decode-priority`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DecodePriority {
    /// Linux `SCHED_IDLE`: decode only on cores the forward passes leave idle (the default).
    Idle,
    /// The same priority as inference.
    Normal,
}

/// Where images are decoded and preprocessed (`--decode-on`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DecodeOn {
    /// On the blocking thread pool (`--decode-threads` at once, at `--decode-priority`), before
    /// the image is queued for its forward pass.
    Pool,
    /// On the engine instance that takes the image from the queue, just before its forward pass
    /// (lite profile only): a core that finishes a pass decodes the next image itself.
    Engine,
}

/// Fault injection for the ingress tests (`--fault`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fault {
    /// No fault (the default).
    None,
    /// Every classify request answers 500, as a broken pod would.
    Error,
    /// Every classify request hangs without answering.
    Stall,
}

/// Flags of `imgclass serve` (each also read from an `IMGCLASS_*` environment variable).
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// `full`: Wide ResNet-50-2 with in-process MobileNetV3 fallback; `lite`: MobileNetV3 only.
    #[arg(long, value_enum, default_value_t = Profile::Full, env = "IMGCLASS_PROFILE")]
    pub profile: Profile,

    /// Address to listen on (`127.0.0.1:0` picks a free port; the bound address is logged).
    #[arg(long, default_value = "0.0.0.0:8080", env = "IMGCLASS_ADDR")]
    pub addr: SocketAddr,

    /// Directory holding `<model>.safetensors`. The server never downloads weights.
    #[arg(long, env = "IMGCLASS_WEIGHTS_DIR")]
    pub weights_dir: Option<PathBuf>,

    /// Largest accepted request body in bytes (larger: 413).
    #[arg(long, default_value_t = 20 * 1024 * 1024, env = "IMGCLASS_MAX_BODY_BYTES")]
    pub max_body_bytes: u64,

    /// Largest accepted image, in declared pixels (width*height; larger: 422).
    #[arg(long, default_value_t = DecodeLimits::default().max_pixels, env = "IMGCLASS_MAX_PIXELS")]
    pub max_pixels: u64,

    /// Classify requests processed at once (reading the body, decoding, inference).
    #[arg(long, default_value_t = 16, env = "IMGCLASS_MAX_CONCURRENT")]
    pub max_concurrent: usize,

    /// Classify requests that may wait for a processing slot; beyond it: immediate 503 + Retry-After.
    #[arg(long, default_value_t = 64, env = "IMGCLASS_QUEUE_DEPTH")]
    pub queue_depth: usize,

    /// Largest number of queued images run together in one forward pass (continuous batching).
    /// Default: 2 for the full profile, 8 for lite ([`Profile::default_max_batch_size`]).
    #[arg(long, env = "IMGCLASS_MAX_BATCH_SIZE")]
    pub max_batch_size: Option<usize>,

    /// Full profile: when Wide ResNet has not answered this long after the request arrived,
    /// MobileNetV3 answers instead (`"fallback_reason":"deadline"`).
    #[arg(long, default_value_t = 2000, env = "IMGCLASS_PRIMARY_DEADLINE_MS")]
    pub primary_deadline_ms: u64,

    /// A client must send the request headers within this time, or the connection is closed.
    /// This is also how long an idle keep-alive connection stays open: keep it above the proxy's
    /// upstream keep-alive timeout (ingress-nginx: 60 s), or the proxy may reuse a closing connection.
    #[arg(
        long,
        default_value_t = 65_000,
        env = "IMGCLASS_HEADER_READ_TIMEOUT_MS"
    )]
    pub header_read_timeout_ms: u64,

    /// Whole-request budget after the headers: body upload (408 when exceeded) and processing
    /// (503 when exceeded).
    #[arg(long, default_value_t = 30_000, env = "IMGCLASS_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: u64,

    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish before the process exits.
    #[arg(long, default_value_t = 20_000, env = "IMGCLASS_SHUTDOWN_GRACE_MS")]
    pub shutdown_grace_ms: u64,

    /// Seconds sent in `Retry-After` with 503 answers.
    #[arg(long, default_value_t = 1, env = "IMGCLASS_RETRY_AFTER_SECS")]
    pub retry_after_secs: u64,

    /// Compute threads (inference thread pool, decoding pool, async runtime).
    /// 0: the CPUs this process may use (cgroup/affinity aware).
    #[arg(long, default_value_t = 0, env = "IMGCLASS_THREADS")]
    pub threads: usize,

    /// Images decoded at once (on the blocking pool). 0: as many as compute threads with
    /// `--decode-priority idle` (decoders then only use the cores inference leaves idle), half of
    /// them (at least 1) with `normal` (a decoder beside a forward pass preempts its kernels).
    #[arg(long, default_value_t = 0, env = "IMGCLASS_DECODE_THREADS")]
    pub decode_threads: usize,

    /// Scheduling priority of image decoding: `idle` (Linux `SCHED_IDLE`: a decoder never preempts
    /// a forward pass, and takes every core the passes leave idle) or `normal`.
    /// Default: `idle` for the lite profile, `normal` for full (whose passes are long).
    #[arg(long, value_enum, env = "IMGCLASS_DECODE_PRIORITY")]
    pub decode_priority: Option<DecodePriority>,

    /// Where images are decoded: `pool` (a thread pool, before the image is queued) or `engine`
    /// (the engine instance that runs its forward pass decodes it first; lite only).
    /// Default: `engine` for the lite profile, `pool` for full.
    #[arg(long, value_enum, env = "IMGCLASS_DECODE_ON")]
    pub decode_on: Option<DecodeOn>,

    /// Forward passes of one model that may run at once (model instances sharing one copy of
    /// the weights). 1: one at a time, each on every compute thread. N > 1: a pass that starts
    /// while another runs takes one image and runs it on a thread of its own. 0: one per compute
    /// thread. Default: 0 for the lite profile, 2 for full (1 with one compute thread).
    #[arg(long, env = "IMGCLASS_INSTANCES")]
    pub instances: Option<usize>,

    /// glibc malloc arenas (`M_ARENA_MAX`): 1 shares one arena between all threads (smallest
    /// resident set), 0 keeps glibc's default (one per thread, up to 8 per core: fastest).
    /// Default: 1 for the full profile, 0 for lite.
    #[arg(long, env = "IMGCLASS_MALLOC_ARENAS")]
    pub malloc_arenas: Option<usize>,

    /// Keep the compute pool's threads spinning during a forward pass instead of sleeping between
    /// kernels (faster passes, but the spinning takes CPU from JPEG decoding: off by default here).
    #[arg(long, env = "IMGCLASS_SPIN", value_parser = clap::builder::BoolishValueParser::new())]
    pub spin: bool,

    /// JSON log lines (for containers) instead of human-readable ones.
    #[arg(long, env = "IMGCLASS_JSON_LOGS", value_parser = clap::builder::BoolishValueParser::new())]
    pub json_logs: bool,

    /// Log filter (tracing EnvFilter syntax), e.g. `info`, `debug`, `imgclass=debug,hyper=info`.
    #[arg(long, default_value = "info", env = "IMGCLASS_LOG")]
    pub log: String,

    /// Fault injection for ingress tests: `error` answers 500 to every classify request,
    /// `stall` never answers them. Off by default; loudly logged when on.
    #[arg(long, value_enum, default_value_t = Fault::None, env = "IMGCLASS_FAULT")]
    pub fault: Fault,

    /// TEST ONLY: the primary model sleeps this long before every forward pass (forces deadline fallback).
    #[arg(
        long,
        hide = true,
        default_value_t = 0,
        env = "IMGCLASS_TEST_PRIMARY_DELAY_MS"
    )]
    pub test_primary_delay_ms: u64,

    /// TEST ONLY: every forward pass of the primary model fails (forces error fallback).
    #[arg(long, hide = true, env = "IMGCLASS_TEST_PRIMARY_FAULT", value_parser = clap::builder::BoolishValueParser::new())]
    pub test_primary_fault: bool,

    /// TEST ONLY: the warm-up inference waits until this file exists (keeps `/readyz` at 503).
    #[arg(long, hide = true, env = "IMGCLASS_TEST_WARMUP_GATE")]
    pub test_warmup_gate: Option<PathBuf>,
}

/// Test-only hooks (never set in production; logged loudly when set).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TestHooks {
    #[serde(serialize_with = "ser_ms", rename = "primary_delay_ms")]
    pub primary_delay: Duration,
    pub primary_fault: bool,
    pub warmup_gate: Option<PathBuf>,
}

impl TestHooks {
    pub fn any(&self) -> bool {
        *self != TestHooks::default()
    }
}

/// The validated settings the server runs with.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Settings {
    pub profile: Profile,
    pub addr: SocketAddr,
    pub weights_dir: PathBuf,
    pub max_body_bytes: u64,
    pub decode_limits: DecodeLimits,
    pub max_concurrent: usize,
    pub queue_depth: usize,
    pub max_batch_size: usize,
    #[serde(serialize_with = "ser_ms", rename = "primary_deadline_ms")]
    pub primary_deadline: Duration,
    #[serde(serialize_with = "ser_ms", rename = "header_read_timeout_ms")]
    pub header_read_timeout: Duration,
    #[serde(serialize_with = "ser_ms", rename = "request_timeout_ms")]
    pub request_timeout: Duration,
    #[serde(serialize_with = "ser_ms", rename = "shutdown_grace_ms")]
    pub shutdown_grace: Duration,
    pub retry_after_secs: u64,
    pub threads: usize,
    pub decode_threads: usize,
    pub decode_priority: DecodePriority,
    pub decode_on: DecodeOn,
    /// Forward passes of one model at once (see `ServeArgs::instances`), resolved (>= 1).
    pub instances: usize,
    /// `M_ARENA_MAX` (0: glibc's default).
    pub malloc_arenas: usize,
    pub spin: bool,
    pub json_logs: bool,
    pub log: String,
    pub fault: Fault,
    pub test_hooks: TestHooks,
}

fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

/// CPUs this process may use: affinity mask and cgroup CPU quota aware on Linux.
pub fn available_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

impl Settings {
    pub fn from_args(a: &ServeArgs) -> Result<Settings> {
        fn positive(name: &str, v: u64) -> Result<()> {
            if v == 0 {
                return Err(Error::Usage(format!("--{name} must be at least 1")));
            }
            Ok(())
        }
        positive("max-body-bytes", a.max_body_bytes)?;
        positive("max-pixels", a.max_pixels)?;
        positive("max-concurrent", a.max_concurrent as u64)?;
        let max_batch_size = a
            .max_batch_size
            .unwrap_or(a.profile.default_max_batch_size());
        positive("max-batch-size", max_batch_size as u64)?;
        positive("primary-deadline-ms", a.primary_deadline_ms)?;
        positive("header-read-timeout-ms", a.header_read_timeout_ms)?;
        positive("request-timeout-ms", a.request_timeout_ms)?;
        // Upper bounds far above any sensible setting, low enough that nothing derived from them
        // can overflow or panic: deadlines (`Instant + Duration`), semaphore permits, the
        // engine's preallocated queue (2 × max-concurrent + 1 slots), thread pools, the body buffer
        // (preallocated up to the declared Content-Length).
        fn at_most(name: &str, v: u64, max: u64) -> Result<()> {
            if v > max {
                return Err(Error::Usage(format!(
                    "--{name} must be at most {max}, got {v}"
                )));
            }
            Ok(())
        }
        const DAY_MS: u64 = 24 * 60 * 60 * 1000;
        at_most("max-body-bytes", a.max_body_bytes, 4 << 30)?;
        at_most("max-concurrent", a.max_concurrent as u64, 65_536)?;
        at_most("threads", a.threads as u64, 1024)?;
        at_most("decode-threads", a.decode_threads as u64, 1024)?;
        let malloc_arenas = a.malloc_arenas.unwrap_or(a.profile.default_malloc_arenas());
        at_most("malloc-arenas", malloc_arenas as u64, 1024)?;
        let threads = if a.threads == 0 {
            available_cpus()
        } else {
            a.threads
        };
        let instances = a.instances.unwrap_or(a.profile.default_instances(threads));
        at_most("instances", instances as u64, 1024)?;
        let decode_priority = a
            .decode_priority
            .unwrap_or(a.profile.default_decode_priority());
        let decode_on = a.decode_on.unwrap_or(a.profile.default_decode_on());
        if decode_on == DecodeOn::Engine && a.profile.fallback().is_some() {
            return Err(Error::Usage(
                "--decode-on engine needs the lite profile (the full profile's image goes to two models)".into(),
            ));
        }
        at_most("primary-deadline-ms", a.primary_deadline_ms, DAY_MS)?;
        at_most("header-read-timeout-ms", a.header_read_timeout_ms, DAY_MS)?;
        at_most("request-timeout-ms", a.request_timeout_ms, DAY_MS)?;
        at_most("shutdown-grace-ms", a.shutdown_grace_ms, DAY_MS)?;
        let weights_dir =
            crate::weights::dir::resolve_weights_dir(a.weights_dir.as_deref(), &a.profile.models());
        Ok(Settings {
            profile: a.profile,
            addr: a.addr,
            weights_dir,
            max_body_bytes: a.max_body_bytes,
            decode_limits: DecodeLimits {
                max_pixels: a.max_pixels,
            },
            max_concurrent: a.max_concurrent,
            queue_depth: a.queue_depth,
            max_batch_size,
            primary_deadline: Duration::from_millis(a.primary_deadline_ms),
            header_read_timeout: Duration::from_millis(a.header_read_timeout_ms),
            request_timeout: Duration::from_millis(a.request_timeout_ms),
            shutdown_grace: Duration::from_millis(a.shutdown_grace_ms),
            retry_after_secs: a.retry_after_secs,
            threads,
            decode_threads: match (a.decode_threads, decode_priority) {
                (0, DecodePriority::Idle) => threads,
                (0, DecodePriority::Normal) => (threads / 2).max(1),
                (n, _) => n,
            },
            decode_priority,
            decode_on,
            instances: match instances {
                0 => threads,
                n => n,
            },
            malloc_arenas,
            spin: a.spin,
            json_logs: a.json_logs,
            log: a.log.clone(),
            fault: a.fault,
            test_hooks: TestHooks {
                primary_delay: Duration::from_millis(a.test_primary_delay_ms),
                primary_fault: a.test_primary_fault,
                warmup_gate: a.test_warmup_gate.clone(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        let s = Settings::from_args(&cli.serve).unwrap();
        assert_eq!(s.profile, Profile::Full);
        assert_eq!(s.addr.to_string(), "0.0.0.0:8080");
        assert_eq!(s.max_body_bytes, 20 * 1024 * 1024);
        assert_eq!(s.fault, Fault::None);
        assert!(s.threads >= 1);
        assert!(!s.test_hooks.any());
        assert_eq!(s.max_batch_size, 2);
        let lite = Cli::try_parse_from(["x", "--profile", "lite"]).unwrap();
        assert_eq!(Settings::from_args(&lite.serve).unwrap().max_batch_size, 8);
        let set = Cli::try_parse_from(["x", "--max-batch-size", "6"]).unwrap();
        assert_eq!(Settings::from_args(&set.serve).unwrap().max_batch_size, 6);
        assert_eq!(
            Profile::Full.models(),
            vec![ModelKind::WideResnet50_2, ModelKind::MobilenetV3Large]
        );
        assert_eq!(Profile::Lite.models(), vec![ModelKind::MobilenetV3Large]);
    }

    #[test]
    fn zero_limits_are_usage_errors() {
        let cli = Cli::try_parse_from(["x", "--max-batch-size", "0"]).unwrap();
        let e = Settings::from_args(&cli.serve).unwrap_err();
        assert_eq!(e.error_type(), "usage_error");
        assert!(e.to_string().contains("max-batch-size"), "{e}");
    }

    #[test]
    fn absurd_limits_are_usage_errors_naming_the_flag() {
        let huge = u64::MAX.to_string();
        for flag in [
            "--max-body-bytes",
            "--max-concurrent",
            "--threads",
            "--decode-threads",
            "--malloc-arenas",
            "--primary-deadline-ms",
            "--header-read-timeout-ms",
            "--request-timeout-ms",
            "--shutdown-grace-ms",
        ] {
            let cli = Cli::try_parse_from(["x", flag, &huge]).unwrap();
            let e = Settings::from_args(&cli.serve).unwrap_err();
            assert_eq!(e.error_type(), "usage_error", "{flag}");
            assert!(e.to_string().contains(&flag[2..]), "{flag}: {e}");
        }
        // the bounds themselves are accepted
        let cli =
            Cli::try_parse_from(["x", "--request-timeout-ms", "86400000", "--threads", "1024"])
                .unwrap();
        assert!(Settings::from_args(&cli.serve).is_ok());
    }

    #[test]
    fn fault_parses() {
        let cli = Cli::try_parse_from(["x", "--fault", "stall", "--profile", "lite"]).unwrap();
        assert_eq!(cli.serve.fault, Fault::Stall);
        assert_eq!(cli.serve.profile, Profile::Lite);
        assert!(Cli::try_parse_from(["x", "--fault", "explode"]).is_err());
        let cli = Cli::try_parse_from(["x", "--json-logs"]).unwrap();
        assert!(cli.serve.json_logs);
    }

    #[test]
    fn decode_priority_decode_threads_arenas_and_instances_follow_the_profile() {
        let s = |args: &[&str]| {
            let mut v = vec!["x"];
            v.extend_from_slice(args);
            Settings::from_args(&Cli::try_parse_from(v).unwrap().serve).unwrap()
        };
        use DecodePriority::{Idle, Normal};
        for (args, priority, threads) in [
            ("--threads 4 --profile lite", Idle, 4),
            ("--threads 4 --profile full", Normal, 2),
            ("--threads 4 --profile full --decode-priority idle", Idle, 4),
            (
                "--threads 4 --profile lite --decode-priority normal",
                Normal,
                2,
            ),
            ("--threads 1 --decode-priority normal", Normal, 1),
            ("--threads 4 --decode-threads 3", Normal, 3),
            ("--threads 4 --profile lite --decode-threads 3", Idle, 3),
        ] {
            let got = s(&args.split(' ').collect::<Vec<_>>());
            assert_eq!(
                (got.decode_priority, got.decode_threads),
                (priority, threads),
                "{args}"
            );
        }
        assert!(Cli::try_parse_from(["x", "--decode-priority", "high"]).is_err());
        assert_eq!(s(&["--profile", "full"]).malloc_arenas, 1);
        assert_eq!(s(&["--profile", "lite"]).malloc_arenas, 0);
        assert_eq!(
            s(&["--profile", "full", "--malloc-arenas", "0"]).malloc_arenas,
            0
        );
        assert_eq!(
            s(&["--profile", "lite", "--malloc-arenas", "2"]).malloc_arenas,
            2
        );
        // instances: one per compute thread for lite, two for full (one on one thread); 0 = one
        // per thread
        for (args, instances) in [
            ("--threads 2 --profile lite", 2),
            ("--threads 3 --profile lite", 3),
            ("--threads 1 --profile lite", 1),
            ("--threads 4 --profile full", 2),
            ("--threads 2 --profile full", 2),
            ("--threads 1 --profile full", 1),
            ("--threads 4 --profile lite --instances 1", 1),
            ("--threads 4 --profile full --instances 0", 4),
            ("--threads 4 --profile full --instances 2", 2),
        ] {
            let got = s(&args.split(' ').collect::<Vec<_>>());
            assert_eq!(got.instances, instances, "{args}");
        }
        let too_many = Cli::try_parse_from(["x", "--instances", "5000"]).unwrap();
        assert!(Settings::from_args(&too_many.serve).is_err());
        // decoding: on the engine for lite, on the pool for full, which cannot decode on its engine
        assert_eq!(s(&["--profile", "lite"]).decode_on, DecodeOn::Engine);
        assert_eq!(s(&["--profile", "full"]).decode_on, DecodeOn::Pool);
        assert_eq!(
            s(&["--profile", "lite", "--decode-on", "pool"]).decode_on,
            DecodeOn::Pool
        );
        let cli = Cli::try_parse_from(["x", "--profile", "full", "--decode-on", "engine"]).unwrap();
        let e = Settings::from_args(&cli.serve).unwrap_err();
        assert_eq!(e.error_type(), "usage_error");
        assert!(e.to_string().contains("--decode-on engine"), "{e}");
        assert!(Cli::try_parse_from(["x", "--decode-on", "gpu"]).is_err());
    }

    #[test]
    fn spinning_is_off_unless_asked_for() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert!(!Settings::from_args(&cli.serve).unwrap().spin);
        let cli = Cli::try_parse_from(["x", "--spin"]).unwrap();
        assert!(Settings::from_args(&cli.serve).unwrap().spin);
    }
}
