//! `imgclass classify`: images in, one JSON line per input out.
//!
//! Contract: one JSON object per input, in input order, on its own line:
//! `{"file":..,"model":..,"predictions":[{"label":..,"index":..,"probability":..},..]}` or, for an
//! input that failed, `{"file":..,"error":..,"error_type":..}`. The exit code is 0 when every input
//! was classified, else the exit code of the first failed input (in input order).

use crate::cli::ClassifyArgs;
use crate::error::exit_code;
use crate::labels::Prediction;
use crate::models::{Classifier, ModelKind};
use crate::preprocess::{self, DecodeLimits, Preprocessed, Transform};
use crate::weights::{dir, fetch};
use crate::{Error, Result};
use serde::Serialize;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Inputs preprocessed and run through the network together.
const BATCH: usize = 4;

/// One line of output.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Line<'a> {
    Ok {
        file: &'a str,
        model: &'a str,
        predictions: Vec<Prediction>,
    },
    Failed {
        file: &'a str,
        error: String,
        error_type: &'static str,
    },
}

/// One command-line input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    Stdin,
    File(PathBuf),
}

impl Input {
    pub fn from_arg(p: &Path) -> Input {
        if p.as_os_str() == "-" {
            Input::Stdin
        } else {
            Input::File(p.to_path_buf())
        }
    }

    /// The `file` field of the output line: the argument as given (`-` for stdin).
    pub fn display_name(&self) -> String {
        match self {
            Input::Stdin => "-".to_string(),
            Input::File(p) => p.to_string_lossy().into_owned(),
        }
    }

    /// File name used by `--save-input`: `<stem>.png` (stdin: `stdin.png`).
    pub fn saved_name(&self) -> String {
        match self {
            Input::Stdin => "stdin.png".to_string(),
            Input::File(p) => {
                let stem = p
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "input".to_string());
                format!("{stem}.png")
            }
        }
    }

    /// The input's bytes, refusing (as unreadable) an input longer than `max_bytes`.
    fn read(&self, stdin: &mut dyn Read, max_bytes: u64) -> Result<Vec<u8>> {
        let (path, r) = match self {
            Input::Stdin => (PathBuf::from("<stdin>"), read_at_most(stdin, max_bytes)),
            Input::File(p) => (
                p.clone(),
                std::fs::File::open(p).and_then(|mut f| read_at_most(&mut f, max_bytes)),
            ),
        };
        r.map_err(|source| Error::Unreadable { path, source })
    }
}

/// All of `r`, or an error once it is longer than `max_bytes` (never holding more than that).
fn read_at_most(r: &mut dyn Read, max_bytes: u64) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    r.take(max_bytes.saturating_add(1)).read_to_end(&mut buf)?;
    if buf.len() as u64 > max_bytes {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!(
                "more than {max_bytes} bytes, larger than any image within the pixel limit \
                 (--max-pixels) can be"
            ),
        ));
    }
    Ok(buf)
}

/// Load the classifier the flags ask for: `--weights FILE` exactly, else the resolved directory's
/// file (fetched first when missing, unless `--offline`).
pub fn load_classifier(args: &ClassifyArgs) -> Result<Classifier> {
    let kind = args.model;
    let path = match &args.weights {
        Some(file) => {
            if !file.exists() {
                return Err(Error::WeightsMissing(format!(
                    "weights missing: --weights {} does not exist",
                    file.display()
                )));
            }
            file.clone()
        }
        None => {
            let resolved = dir::resolve(args.weights_dir.as_deref(), &[kind]);
            fetch::ensure_weights(kind, &resolved, args.offline)?
        }
    };
    tracing::debug!(model = kind.name(), path = %path.display(), "loading weights");
    Classifier::load(kind, &path).map_err(|e| match e {
        e @ (Error::WeightsInvalid { .. } | Error::WeightsMissing(_)) => e,
        other => Error::WeightsInvalid {
            path: path.display().to_string(),
            reason: other.to_string(),
        },
    })
}

/// Checks that need no weights: stdin at most once; the --save-input directory exists or can be made.
pub fn validate(args: &ClassifyArgs) -> Result<Vec<Input>> {
    let inputs: Vec<Input> = args.files.iter().map(|p| Input::from_arg(p)).collect();
    if inputs.iter().filter(|i| **i == Input::Stdin).count() > 1 {
        return Err(Error::Usage(
            "'-' (stdin) may be given at most once".to_string(),
        ));
    }
    if let Some(d) = &args.save_input {
        std::fs::create_dir_all(d).map_err(|e| {
            Error::Usage(format!(
                "--save-input {}: cannot create the directory: {e}",
                d.display()
            ))
        })?;
    }
    Ok(inputs)
}

fn prepare(
    input: &Input,
    stdin: &mut dyn Read,
    limits: &DecodeLimits,
    save_dir: Option<&Path>,
) -> Result<Preprocessed> {
    let bytes = input.read(stdin, limits.max_input_bytes())?;
    let pre = preprocess::preprocess(&bytes, limits, &Transform::IMAGENET)?;
    if let Some(d) = save_dir {
        let path = d.join(input.saved_name());
        pre.crop
            .save_with_format(&path, image::ImageFormat::Png)
            .map_err(|e| {
                Error::Internal(format!(
                    "--save-input: cannot write {}: {e}",
                    path.display()
                ))
            })?;
    }
    Ok(pre)
}

/// Classify every input with an already loaded classifier, writing one line per input to `out`.
/// Returns the exit code (0, or the code of the first failed input). A failure to write `out`
/// is returned as an error.
pub fn classify_inputs(
    classifier: &Classifier,
    inputs: &[Input],
    args: &ClassifyArgs,
    stdin: &mut dyn Read,
    out: &mut dyn Write,
) -> Result<i32> {
    let model: ModelKind = classifier.kind();
    let limits = DecodeLimits {
        max_pixels: args.max_pixels,
    };
    let k = usize::from(args.top_k);
    let mut code = exit_code::OK;
    for chunk in inputs.chunks(BATCH) {
        let prepared: Vec<Result<Preprocessed>> = chunk
            .iter()
            .map(|i| prepare(i, stdin, &limits, args.save_input.as_deref()))
            .collect();
        let ok: Vec<&[f32]> = prepared
            .iter()
            .filter_map(|p| p.as_ref().ok().map(|p| p.chw.as_slice()))
            .collect();
        let mut predicted = if ok.is_empty() {
            Ok(Vec::new())
        } else {
            classifier.classify(&ok, k)
        };
        if let Ok(p) = &predicted {
            if p.len() != ok.len() {
                predicted = Err(Error::Internal(format!(
                    "the classifier returned {} results for {} inputs",
                    p.len(),
                    ok.len()
                )));
            }
        }
        let mut predictions = match &mut predicted {
            Ok(p) => std::mem::take(p).into_iter(),
            Err(_) => Vec::new().into_iter(),
        };
        for (input, prep) in chunk.iter().zip(prepared) {
            let name = input.display_name();
            let result = match prep {
                Err(e) => Err(e),
                Ok(_) => match (&predicted, predictions.next()) {
                    (Ok(_), Some(p)) => Ok(p),
                    (Err(e), _) => Err(Error::Inference(e.to_string())),
                    (Ok(_), None) => Err(Error::Internal("missing result".into())),
                },
            };
            let line = match result {
                Ok(predictions) => Line::Ok {
                    file: &name,
                    model: model.name(),
                    predictions,
                },
                Err(e) => {
                    tracing::debug!(file = %name, error = %e, "input failed");
                    if code == exit_code::OK {
                        code = e.exit_code();
                    }
                    Line::Failed {
                        file: &name,
                        error: e.to_string(),
                        error_type: e.error_type(),
                    }
                }
            };
            let json = serde_json::to_string(&line)
                .map_err(|e| Error::Internal(format!("cannot serialise a result: {e}")))?;
            writeln!(out, "{json}")
                .map_err(|e| Error::Internal(format!("cannot write to stdout: {e}")))?;
        }
        out.flush()
            .map_err(|e| Error::Internal(format!("cannot write to stdout: {e}")))?;
    }
    Ok(code)
}

/// The whole command: validate, load the weights, classify; returns the exit code.
pub fn run(args: &ClassifyArgs, stdin: &mut dyn Read, out: &mut dyn Write) -> Result<i32> {
    let inputs = validate(args)?;
    let classifier = load_classifier(args)?;
    classify_inputs(&classifier, &inputs, args, stdin, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_names() {
        let i = Input::from_arg(Path::new("-"));
        assert_eq!(i, Input::Stdin);
        assert_eq!(i.display_name(), "-");
        assert_eq!(i.saved_name(), "stdin.png");
        let f = Input::from_arg(Path::new("some/dir/cat.photo.jpg"));
        assert_eq!(f.display_name(), "some/dir/cat.photo.jpg");
        assert_eq!(f.saved_name(), "cat.photo.png");
    }

    #[test]
    fn lines_have_the_contract_shape() {
        let ok = Line::Ok {
            file: "cat.jpg",
            model: "mobilenet_v3_large",
            predictions: vec![Prediction {
                label: "tabby".into(),
                index: 281,
                probability: 0.5,
            }],
        };
        assert_eq!(
            serde_json::to_string(&ok).unwrap(),
            r#"{"file":"cat.jpg","model":"mobilenet_v3_large","predictions":[{"label":"tabby","index":281,"probability":0.5}]}"#
        );
        let e = Error::EmptyInput;
        let failed = Line::Failed {
            file: "x.jpg",
            error: e.to_string(),
            error_type: e.error_type(),
        };
        assert_eq!(
            serde_json::to_string(&failed).unwrap(),
            r#"{"file":"x.jpg","error":"empty input: there are no bytes to decode","error_type":"empty_input"}"#
        );
    }
}
