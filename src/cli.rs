//! The command line of `imgclass` (clap derive). Every flag also reads an `IMGCLASS_*` variable.

use crate::models::ModelKind;
use crate::server::config::Profile;
use crate::{Error, Result};
use clap::builder::BoolishValueParser;
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, Parser, Subcommand};
use std::path::PathBuf;

/// Exit codes, as printed by `--help` (values from `crate::error::exit_code`; a test keeps them in sync).
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success: every input classified / every command step done
  1  internal error (inference failed, output could not be written)
  2  usage error (unknown flag, bad value such as --top-k 0)
  3  an input file could not be read (missing, permission denied, a directory)
  4  an input is empty, not an image, an unsupported format, corrupt/truncated, or over the pixel limit
  5  weights missing or invalid, or the download failed
With several inputs, every input gets its own JSON line and the exit code is the code of the
first input that failed, in command-line order. Failures of the whole run (usage, weights) print a
message on stderr and no JSON line.

Logs go to stderr (filter: IMGCLASS_LOG, e.g. IMGCLASS_LOG=debug); stdout carries results only.";

const CLASSIFY_AFTER_HELP: &str = "\
Output (stdout): one JSON object per input, one per line, in input order:
  {\"file\":\"cat.jpg\",\"model\":\"mobilenet_v3_large\",\"predictions\":[{\"label\":\"tabby\",\"index\":281,\"probability\":0.71}, ...]}
predictions sorted by softmax probability, descending. An input that fails gets
  {\"file\":\"notes.jpg\",\"error\":\"<message>\",\"error_type\":\"not_an_image\"}
and the other inputs are still classified.

Weights: --weights FILE, else <dir>/<model>.safetensors with <dir> = --weights-dir >
IMGCLASS_WEIGHTS_DIR > ./weights (when it holds the file) > ~/.cache/imgclass. Missing weights
are downloaded (official torchvision URL, sha256-checked) unless --offline.

Exit codes:
  0 all inputs classified, 1 internal error, 2 usage error, 3 unreadable file,
  4 bad image (empty, not an image, unsupported, corrupt, too large), 5 weights missing/invalid/download failed.
  With several inputs: the code of the first input that failed.";

/// Fast, dependable ImageNet classification (Wide ResNet-50-2, MobileNetV3-Large) on candle, CPU.
#[derive(Debug, Parser)]
#[command(name = "imgclass", version, after_help = EXIT_CODES_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Classify images: one JSON line per input on stdout (FILE may be '-' for stdin).
    #[command(after_help = CLASSIFY_AFTER_HELP)]
    Classify(ClassifyArgs),
    /// Download, verify and list model weights.
    #[command(subcommand)]
    Weights(WeightsCommand),
    /// Serve POST /classify over HTTP (see the README's HTTP reference).
    Serve(crate::server::ServeArgs),
    /// Benchmark inference and preprocessing.
    Bench(crate::bench::BenchArgs),
}

/// Flags of `imgclass classify`.
#[derive(Debug, Clone, Args)]
pub struct ClassifyArgs {
    /// Model to run.
    #[arg(long, env = "IMGCLASS_MODEL", value_enum, default_value_t = ModelKind::WideResnet50_2)]
    pub model: ModelKind,

    /// Directory holding <model>.safetensors (and where missing weights are downloaded to).
    #[arg(long, env = "IMGCLASS_WEIGHTS_DIR", value_name = "DIR")]
    pub weights_dir: Option<PathBuf>,

    /// Load exactly this weights file (.safetensors or torchvision .pth) for the chosen model.
    #[arg(long, env = "IMGCLASS_WEIGHTS", value_name = "FILE")]
    pub weights: Option<PathBuf>,

    /// Number of predictions per input (1..=1000).
    #[arg(long, env = "IMGCLASS_TOP_K", default_value_t = 5,
          value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub top_k: u16,

    /// Never download: fail (exit 5) when the weights are not on disk.
    #[arg(long, env = "IMGCLASS_OFFLINE", value_parser = BoolishValueParser::new())]
    pub offline: bool,

    /// Write the exact 224x224 RGB crop the model saw as DIR/<input file stem>.png (stdin: stdin.png).
    #[arg(long, env = "IMGCLASS_SAVE_INPUT", value_name = "DIR")]
    pub save_input: Option<PathBuf>,

    /// Refuse images whose declared width*height exceeds this many pixels.
    #[arg(long, env = "IMGCLASS_MAX_PIXELS", default_value_t = 100_000_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_pixels: u64,

    /// Image files to classify; '-' reads one image from stdin.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

/// `imgclass weights ...`
#[derive(Debug, Subcommand)]
pub enum WeightsCommand {
    /// Download the official torchvision weights, verify their sha256 and convert them to
    /// <dir>/<model>.safetensors (atomically; a progress bar shows on a terminal).
    Fetch(FetchArgs),
    /// Show, per model, the weights file, its size and its status (verified, present, missing, invalid).
    List(ListArgs),
}

/// Flags of `imgclass weights fetch`.
#[derive(Debug, Clone, Args)]
pub struct FetchArgs {
    /// Fetch the weights of this model only (not together with --profile).
    #[arg(long, env = "IMGCLASS_MODEL", value_enum)]
    pub model: Option<ModelKind>,

    /// Fetch the weights a serving profile needs (default: full, i.e. both models).
    #[arg(long, env = "IMGCLASS_PROFILE", value_enum)]
    pub profile: Option<Profile>,

    /// Where to put them (default: IMGCLASS_WEIGHTS_DIR, ./weights when it holds them, ~/.cache/imgclass).
    #[arg(long, env = "IMGCLASS_WEIGHTS_DIR", value_name = "DIR")]
    pub weights_dir: Option<PathBuf>,

    /// Download again even when the weights are present and verified.
    #[arg(long, env = "IMGCLASS_FETCH_FORCE", value_parser = BoolishValueParser::new())]
    pub force: bool,
}

impl FetchArgs {
    /// The models to fetch: --model or --profile (a flag on the command line beats the
    /// environment; both from the same place is a usage error), else every model.
    /// `matches` are the `weights fetch` matches (for where each value came from).
    pub fn kinds(&self, matches: Option<&ArgMatches>) -> Result<Vec<ModelKind>> {
        let from_cli =
            |id: &str| matches.and_then(|m| m.value_source(id)) == Some(ValueSource::CommandLine);
        match (self.model, self.profile) {
            (Some(m), Some(p)) => match (from_cli("model"), from_cli("profile")) {
                (true, false) => Ok(vec![m]),
                (false, true) => Ok(p.models()),
                _ => Err(Error::Usage(
                    "weights fetch: give either --model (IMGCLASS_MODEL) or --profile (IMGCLASS_PROFILE), not both"
                        .into(),
                )),
            },
            (Some(m), None) => Ok(vec![m]),
            (None, Some(p)) => Ok(p.models()),
            (None, None) => Ok(ModelKind::ALL.to_vec()),
        }
    }
}

/// Parse the command line (or exit as clap does: help/version 0, usage errors 2), keeping the raw
/// matches for where values came from.
pub fn parse_from<I, T>(args: I) -> std::result::Result<(Cli, ArgMatches), clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().try_get_matches_from(args)?;
    let cli = Cli::from_arg_matches(&matches)?;
    Ok((cli, matches))
}

/// The `weights fetch` matches inside the top-level matches.
pub fn fetch_matches(m: &ArgMatches) -> Option<&ArgMatches> {
    m.subcommand_matches("weights")
        .and_then(|w| w.subcommand_matches("fetch"))
}

/// Flags of `imgclass weights list`.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Directory to inspect (default: as for fetch).
    #[arg(long, env = "IMGCLASS_WEIGHTS_DIR", value_name = "DIR")]
    pub weights_dir: Option<PathBuf>,

    /// Also load every present file strictly (as classify would) to check it.
    #[arg(long, env = "IMGCLASS_LIST_CHECK", value_parser = BoolishValueParser::new())]
    pub check: bool,

    /// One JSON object per model instead of a table.
    #[arg(long, env = "IMGCLASS_LIST_JSON", value_parser = BoolishValueParser::new())]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::exit_code;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_documents_every_exit_code() {
        for (code, word) in [
            (exit_code::OK, "success"),
            (exit_code::INTERNAL, "internal"),
            (exit_code::USAGE, "usage"),
            (exit_code::UNREADABLE, "could not be read"),
            (exit_code::BAD_IMAGE, "not an image"),
            (exit_code::WEIGHTS, "weights"),
        ] {
            let line = format!("  {code}  ");
            let found = EXIT_CODES_HELP
                .lines()
                .any(|l| l.starts_with(&line) && l.contains(word));
            assert!(found, "exit code {code} ({word}) not documented");
        }
    }

    #[test]
    fn every_flag_reads_an_imgclass_env_var() {
        fn check(cmd: &clap::Command) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if a.is_positional() || id == "help" || id == "version" {
                    continue;
                }
                let env = a.get_env().and_then(|e| e.to_str()).unwrap_or("");
                assert!(
                    env.starts_with("IMGCLASS_"),
                    "{} --{id} has no IMGCLASS_* env var",
                    cmd.get_name()
                );
            }
            for s in cmd.get_subcommands() {
                check(s);
            }
        }
        let cmd = Cli::command();
        for name in ["classify", "weights", "serve", "bench"] {
            let sub = cmd.find_subcommand(name).unwrap();
            check(sub);
        }
    }

    #[test]
    fn top_k_is_validated_by_clap() {
        for bad in ["0", "1001", "-3", "five"] {
            let r = Cli::try_parse_from(["imgclass", "classify", "--top-k", bad, "x.jpg"]);
            assert_eq!(r.unwrap_err().exit_code(), 2, "--top-k {bad}");
        }
        let Command::Classify(a) =
            Cli::try_parse_from(["imgclass", "classify", "--top-k", "1000", "x.jpg"])
                .unwrap()
                .command
        else {
            panic!("not classify")
        };
        assert_eq!(a.top_k, 1000);
        assert_eq!(a.model, ModelKind::WideResnet50_2);
    }

    fn fetch_kinds_of(args: &[&str]) -> Result<Vec<ModelKind>> {
        let mut v = vec!["imgclass", "weights", "fetch"];
        v.extend_from_slice(args);
        let (cli, m) = parse_from(v).unwrap();
        match cli.command {
            Command::Weights(WeightsCommand::Fetch(f)) => f.kinds(fetch_matches(&m)),
            _ => panic!("not fetch"),
        }
    }

    #[test]
    fn fetch_kinds() {
        // (IMGCLASS_MODEL / IMGCLASS_PROFILE are not set in the test environment.)
        assert_eq!(fetch_kinds_of(&[]).unwrap(), ModelKind::ALL.to_vec());
        assert_eq!(
            fetch_kinds_of(&["--profile", "lite"]).unwrap(),
            vec![ModelKind::MobilenetV3Large]
        );
        assert_eq!(
            fetch_kinds_of(&["--profile", "full"]).unwrap(),
            ModelKind::ALL.to_vec()
        );
        assert_eq!(
            fetch_kinds_of(&["--model", "wide_resnet50_2"]).unwrap(),
            vec![ModelKind::WideResnet50_2]
        );
        let both = fetch_kinds_of(&["--model", "wide_resnet50_2", "--profile", "lite"]);
        assert_eq!(both.unwrap_err().exit_code(), 2);
    }
}
