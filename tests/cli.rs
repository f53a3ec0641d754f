//! The `classify` command's contract: JSON lines, exit codes, stdin, --save-input, weights lookup.
//! Runs the real binary with synthetic weights (see tests/common).

mod common;

use common::*;
use imgclass::error::exit_code;
use imgclass::labels::categories;
use imgclass::models::ModelKind;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

const MB: ModelKind = ModelKind::MobilenetV3Large;
const WRN: ModelKind = ModelKind::WideResnet50_2;

fn mb_dir() -> String {
    synthetic_weights_dir(MB).display().to_string()
}

/// `imgclass classify --model <model> <args>` in `home` (hermetic, see `imgclass_cmd`).
fn classify_cmd(home: &Path, model: &str, args: &[&str]) -> Command {
    let mut cmd = imgclass_cmd(home);
    cmd.args(["classify", "--model", model]).args(args);
    cmd
}

/// `imgclass classify --model mobilenet_v3_large <args>` in `home`, run.
fn mb(home: &Path, args: &[&str]) -> Output {
    classify_cmd(home, "mobilenet_v3_large", args)
        .output()
        .unwrap()
}

/// `imgclass classify --model mobilenet_v3_large --weights-dir <synthetic> --offline <args>` in `home`.
fn classify_mb_cmd(home: &Path, args: &[&str]) -> Command {
    let mut cmd = classify_cmd(
        home,
        "mobilenet_v3_large",
        &["--weights-dir", &mb_dir(), "--offline"],
    );
    cmd.args(args);
    cmd
}

/// `classify_mb_cmd`, run.
fn classify_mb(home: &Path, args: &[&str]) -> Output {
    classify_mb_cmd(home, args).output().unwrap()
}

/// Asserts the success shape of one line and returns its predictions.
fn assert_prediction_line(v: &Value, file: &str, model: &str, k: usize) -> Vec<Value> {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"));
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["file", "model", "predictions"], "{v}");
    assert_eq!(v["file"], file);
    assert_eq!(v["model"], model);
    let preds = v["predictions"].as_array().unwrap().clone();
    assert_eq!(preds.len(), k, "{v}");
    let mut last = f64::INFINITY;
    let mut seen = std::collections::HashSet::new();
    for p in &preds {
        let mut keys: Vec<&str> = p.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["index", "label", "probability"]);
        let idx = p["index"].as_u64().unwrap() as usize;
        assert!(idx < 1000);
        assert!(seen.insert(idx), "index {idx} twice");
        assert_eq!(p["label"], categories()[idx]);
        let prob = p["probability"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&prob), "{prob}");
        assert!(prob <= last, "not sorted descending: {v}");
        last = prob;
    }
    preds
}

/// A success line's predictions as (index, probability).
fn index_and_probability(v: &Value) -> Vec<(u64, f64)> {
    v["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["index"].as_u64().unwrap(),
                p["probability"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn assert_error_line(v: &Value, file: &str, error_type: &str) {
    let obj = v.as_object().unwrap();
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["error", "error_type", "file"], "{v}");
    assert_eq!(v["file"], file);
    assert_eq!(v["error_type"], error_type, "{v}");
    assert!(!v["error"].as_str().unwrap().is_empty());
}

#[test]
fn classify_prints_one_sorted_json_line_per_input_in_order() {
    let home = tempfile::tempdir().unwrap();
    write_png(&home.path().join("a.png"), 320, 240, 1);
    write_png(&home.path().join("b.png"), 200, 300, 2);
    let o = classify_mb(home.path(), &["a.png", "b.png"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let lines = json_lines(&o);
    assert_eq!(lines.len(), 2);
    assert_prediction_line(&lines[0], "a.png", "mobilenet_v3_large", 5);
    assert_prediction_line(&lines[1], "b.png", "mobilenet_v3_large", 5);
    // The whole softmax sums to one.
    let o = classify_mb(home.path(), &["--top-k", "1000", "a.png"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let preds = assert_prediction_line(&json_lines(&o)[0], "a.png", "mobilenet_v3_large", 1000);
    let total: f64 = preds
        .iter()
        .map(|p| p["probability"].as_f64().unwrap())
        .sum();
    assert!((total - 1.0).abs() < 1e-3, "{total}");
}

#[test]
fn top_k_from_flag_and_environment() {
    let home = tempfile::tempdir().unwrap();
    write_png(&home.path().join("a.png"), 256, 256, 3);
    let o = classify_mb(home.path(), &["--top-k", "3", "a.png"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_prediction_line(&json_lines(&o)[0], "a.png", "mobilenet_v3_large", 3);

    let dir = mb_dir();
    let o = imgclass_cmd(home.path())
        .env("IMGCLASS_TOP_K", "7")
        .env("IMGCLASS_MODEL", "mobilenet_v3_large")
        .env("IMGCLASS_WEIGHTS_DIR", &dir)
        .env("IMGCLASS_OFFLINE", "true")
        .args(["classify", "a.png"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_prediction_line(&json_lines(&o)[0], "a.png", "mobilenet_v3_large", 7);
}

#[test]
fn usage_errors_exit_2_with_nothing_on_stdout() {
    let home = tempfile::tempdir().unwrap();
    write_png(&home.path().join("a.png"), 64, 64, 1);
    let cases: &[&[&str]] = &[
        &["classify"],
        &["classify", "--top-k", "0", "a.png"],
        &["classify", "--top-k", "1001", "a.png"],
        &["classify", "--top-k", "many", "a.png"],
        &["classify", "--model", "resnet18", "a.png"],
        &["classify", "--no-such-flag", "a.png"],
        &["no-such-command"],
        &[
            "weights",
            "fetch",
            "--model",
            "mobilenet_v3_large",
            "--profile",
            "lite",
        ],
    ];
    for args in cases {
        let o = run(home.path(), args);
        assert_eq!(code(&o), exit_code::USAGE, "{args:?}: {}", stderr(&o));
        assert!(o.stdout.is_empty(), "{args:?}: stdout {:?}", stdout(&o));
        assert!(!stderr(&o).is_empty(), "{args:?}: no message");
    }
    // stdin twice is a usage error too (found before any weights are needed).
    let o = classify_mb(home.path(), &["-", "a.png", "-"]);
    assert_eq!(code(&o), exit_code::USAGE, "{}", stderr(&o));
    assert!(o.stdout.is_empty());
    assert!(stderr(&o).contains("stdin"), "{}", stderr(&o));
}

#[test]
fn unreadable_files_exit_3() {
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir(home.path().join("a_directory.jpg")).unwrap();
    for name in ["does-not-exist.jpg", "a_directory.jpg"] {
        let o = classify_mb(home.path(), &[name]);
        assert_eq!(code(&o), exit_code::UNREADABLE, "{name}: {}", stderr(&o));
        let lines = json_lines(&o);
        assert_eq!(lines.len(), 1);
        assert_error_line(&lines[0], name, "unreadable_file");
    }
    // An endless input is not read into memory for ever: it stops past the largest image the
    // pixel limit allows (64 MiB decode budget + 16 MiB here) and is refused as unreadable.
    let o = classify_mb(home.path(), &["--max-pixels", "1", "/dev/zero", "-"]);
    assert_eq!(code(&o), exit_code::UNREADABLE, "{}", stderr(&o));
    let lines = json_lines(&o);
    assert_eq!(lines.len(), 2);
    assert_error_line(&lines[0], "/dev/zero", "unreadable_file");
    assert!(
        lines[0]["error"].as_str().unwrap().contains("more than"),
        "{}",
        lines[0]
    );
    // (stdin is /dev/null here: empty, a bad image, not a read error)
    assert_error_line(&lines[1], "-", "empty_input");
}

#[test]
fn bad_images_exit_4_with_their_error_type() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    std::fs::write(h.join("notes.jpg"), b"this is a text file, saved as .jpg\n").unwrap();
    std::fs::write(h.join("empty.png"), b"").unwrap();
    let png = encode(&test_image(200, 200, 4), image::ImageFormat::Png);
    std::fs::write(h.join("truncated.png"), &png[..png.len() / 2]).unwrap();
    write_png(&h.join("small.png"), 20, 20, 1);
    let cases = [
        ("notes.jpg", "not_an_image", vec![]),
        ("empty.png", "empty_input", vec![]),
        ("truncated.png", "corrupt_image", vec![]),
        ("small.png", "image_too_large", vec!["--max-pixels", "100"]),
    ];
    for (name, error_type, extra) in cases {
        let mut args = extra.clone();
        args.push(name);
        let o = classify_mb(h, &args);
        assert_eq!(code(&o), exit_code::BAD_IMAGE, "{name}: {}", stderr(&o));
        let lines = json_lines(&o);
        assert_eq!(lines.len(), 1, "{name}");
        assert_error_line(&lines[0], name, error_type);
    }
}

#[test]
fn one_bad_input_in_the_middle_does_not_stop_the_others() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    for i in 0..6 {
        write_png(&h.join(format!("img{i}.png")), 240 + i * 10, 260, i);
    }
    std::fs::write(h.join("bad.jpg"), b"not an image").unwrap();
    // Crosses the internal batch size, with the bad input in the middle of a batch.
    let args = [
        "img0.png",
        "img1.png",
        "bad.jpg",
        "img2.png",
        "img3.png",
        "missing.png",
        "img4.png",
        "img5.png",
    ];
    let o = classify_mb(h, &args);
    // The first failure (in input order) decides the exit code: bad.jpg → 4.
    assert_eq!(code(&o), exit_code::BAD_IMAGE, "{}", stderr(&o));
    let lines = json_lines(&o);
    assert_eq!(lines.len(), args.len());
    for (line, name) in lines.iter().zip(args) {
        match name {
            "bad.jpg" => assert_error_line(line, name, "not_an_image"),
            "missing.png" => assert_error_line(line, name, "unreadable_file"),
            _ => {
                assert_prediction_line(line, name, "mobilenet_v3_large", 5);
            }
        }
    }
    // Each good input got the same answer as when it is classified alone (batching changes nothing).
    for (i, name) in args.iter().enumerate() {
        if name.starts_with("img") && i % 3 == 0 {
            let alone = json_lines(&classify_mb(h, &[name]));
            let (alone, batched) = (
                index_and_probability(&alone[0]),
                index_and_probability(&lines[i]),
            );
            let indices = |v: &[(u64, f64)]| v.iter().map(|p| p.0).collect::<Vec<_>>();
            assert_eq!(indices(&alone), indices(&batched), "{name}");
            for ((_, a), (_, b)) in alone.iter().zip(&batched) {
                assert!((a - b).abs() < 1e-4, "{name}: {a} vs {b}");
            }
        }
    }
    // Unreadable first → 3.
    let o = classify_mb(h, &["missing.png", "bad.jpg", "img0.png"]);
    assert_eq!(code(&o), exit_code::UNREADABLE);
    assert_eq!(json_lines(&o).len(), 3);
}

#[test]
fn stdin_is_read_for_dash_and_matches_the_file() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let bytes = encode(&test_image(300, 200, 9), image::ImageFormat::Png);
    std::fs::write(h.join("same.png"), &bytes).unwrap();
    let o = run_with_stdin(classify_mb_cmd(h, &["same.png", "-"]), &bytes);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let lines = json_lines(&o);
    assert_eq!(lines.len(), 2);
    let from_file = assert_prediction_line(&lines[0], "same.png", "mobilenet_v3_large", 5);
    let from_stdin = assert_prediction_line(&lines[1], "-", "mobilenet_v3_large", 5);
    assert_eq!(from_file, from_stdin);

    // Empty stdin is an empty input, not a crash.
    let o = run_with_stdin(classify_mb_cmd(h, &["-"]), b"");
    assert_eq!(code(&o), exit_code::BAD_IMAGE);
    assert_error_line(&json_lines(&o)[0], "-", "empty_input");
}

#[test]
fn save_input_writes_the_exact_224_crop_the_model_saw() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let bytes = encode(&test_image(400, 300, 5), image::ImageFormat::Png);
    std::fs::write(h.join("wide.photo.png"), &bytes).unwrap();
    let cmd = classify_mb_cmd(h, &["--save-input", "seen/by/model", "wide.photo.png", "-"]);
    let o = run_with_stdin(cmd, &bytes);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let expected = imgclass::preprocess::preprocess(
        &bytes,
        &Default::default(),
        &imgclass::preprocess::Transform::IMAGENET,
    )
    .unwrap()
    .crop;
    for name in ["wide.photo.png", "stdin.png"] {
        let saved = image::open(h.join("seen/by/model").join(name)).unwrap();
        assert_eq!((saved.width(), saved.height()), (224, 224), "{name}");
        let saved = saved.to_rgb8();
        assert!(saved == expected, "{name}: not the preprocessing crop");
    }
    assert_eq!(
        list_dir(&h.join("seen/by/model")),
        ["stdin.png", "wide.photo.png"]
    );
}

#[test]
fn offline_with_missing_weights_says_what_where_and_how() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    write_png(&h.join("a.png"), 64, 64, 1);
    let empty = h.join("empty-weights");
    let o = mb(
        h,
        &[
            "--weights-dir",
            empty.to_str().unwrap(),
            "--offline",
            "a.png",
        ],
    );
    assert_eq!(code(&o), exit_code::WEIGHTS, "{}", stderr(&o));
    assert!(o.stdout.is_empty());
    let err = stderr(&o);
    assert!(err.contains("mobilenet_v3_large.safetensors"), "{err}");
    assert!(err.contains(empty.to_str().unwrap()), "{err}");
    let cmd = format!(
        "imgclass weights fetch --model mobilenet_v3_large --weights-dir {}",
        empty.display()
    );
    assert!(err.contains(&cmd), "{err}");
    assert!(!empty.exists(), "--offline must not create anything");

    // Without a flag: looks in ./weights and then the user cache (XDG_CACHE_HOME), and says so.
    let o = mb(h, &["--offline", "a.png"]);
    assert_eq!(code(&o), exit_code::WEIGHTS);
    let err = stderr(&o);
    let cache = h.join(".cache").join("imgclass");
    assert!(err.contains("looked in: ./weights, "), "{err}");
    assert!(err.contains(&cache.display().to_string()), "{err}");
    assert!(
        err.contains(&format!("--weights-dir {}", cache.display())),
        "{err}"
    );
}

#[test]
fn failed_download_of_missing_weights_says_what_where_and_how() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    write_png(&h.join("a.png"), 64, 64, 1);
    let empty = h.join("w");
    // The hermetic manifest points at a closed loopback port: the fetch fails fast.
    let o = mb(h, &["--weights-dir", empty.to_str().unwrap(), "a.png"]);
    assert_eq!(code(&o), exit_code::WEIGHTS, "{}", stderr(&o));
    assert!(o.stdout.is_empty());
    let err = stderr(&o);
    assert!(err.contains("weights_missing"), "{err}");
    assert!(err.contains("mobilenet_v3_large.safetensors"), "{err}");
    assert!(err.contains("fetching them failed"), "{err}");
    assert!(err.contains("127.0.0.1:9"), "{err}");
    assert!(
        err.contains(&format!(
            "imgclass weights fetch --model mobilenet_v3_large --weights-dir {}",
            empty.display()
        )),
        "{err}"
    );
    // A failed fetch leaves nothing.
    assert_dir_empty(&empty);
}

#[test]
fn weights_file_flag_loads_exactly_that_file() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    write_png(&h.join("a.png"), 128, 96, 2);
    let file = synthetic_weights_file(MB);
    let copy = h.join("my-mobilenet.safetensors");
    std::fs::copy(&file, &copy).unwrap();
    let nowhere = h.join("nowhere");
    let o = mb(
        h,
        &[
            "--weights",
            "my-mobilenet.safetensors",
            "--weights-dir",
            nowhere.to_str().unwrap(),
            "--offline",
            "a.png",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_prediction_line(&json_lines(&o)[0], "a.png", "mobilenet_v3_large", 5);

    // A missing file: weights error, naming it.
    let o = mb(h, &["--weights", "nope.safetensors", "a.png"]);
    assert_eq!(code(&o), exit_code::WEIGHTS);
    assert!(stderr(&o).contains("nope.safetensors"), "{}", stderr(&o));

    // MobileNet's weights given to Wide ResNet: strict loading refuses them.
    let o = classify_cmd(
        h,
        "wide_resnet50_2",
        &["--weights", "my-mobilenet.safetensors", "a.png"],
    )
    .output()
    .unwrap();
    assert_eq!(code(&o), exit_code::WEIGHTS, "{}", stderr(&o));
    assert!(stderr(&o).contains("weights_invalid"), "{}", stderr(&o));
    assert!(o.stdout.is_empty());

    // Garbage in the weights directory: invalid, not a crash.
    let junk = h.join("junk");
    std::fs::create_dir(&junk).unwrap();
    std::fs::write(
        junk.join("mobilenet_v3_large.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00{}",
    )
    .unwrap();
    let o = mb(h, &["--weights-dir", "junk", "--offline", "a.png"]);
    assert_eq!(code(&o), exit_code::WEIGHTS, "{}", stderr(&o));
    assert!(stderr(&o).contains("weights_invalid"), "{}", stderr(&o));
}

#[test]
fn weights_directory_from_environment_and_from_dot_weights() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    write_png(&h.join("a.png"), 100, 100, 7);
    let o = classify_cmd(h, "mobilenet_v3_large", &["--offline", "a.png"])
        .env("IMGCLASS_WEIGHTS_DIR", mb_dir())
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let via_env = json_lines(&o);

    // ./weights holding the file is used (the working directory is `h`).
    std::fs::create_dir(h.join("weights")).unwrap();
    std::os::unix::fs::symlink(
        synthetic_weights_file(MB),
        h.join("weights/mobilenet_v3_large.safetensors"),
    )
    .unwrap();
    let o = mb(h, &["--offline", "a.png"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(json_lines(&o), via_env);

    // ...but only when it holds the file of the model asked for: Wide ResNet's is not there.
    let o = run(h, &["classify", "--offline", "a.png"]);
    assert_eq!(code(&o), exit_code::WEIGHTS);
    assert!(
        stderr(&o).contains("wide_resnet50_2.safetensors"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains(".cache/imgclass"), "{}", stderr(&o));
}

#[test]
fn stdout_is_only_json_lines_even_with_debug_logs() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    write_png(&h.join("a.png"), 100, 120, 1);
    std::fs::write(h.join("b.jpg"), b"nope").unwrap();
    let o = classify_mb_cmd(h, &["a.png", "b.jpg"])
        .env("IMGCLASS_LOG", "debug")
        .output()
        .unwrap();
    assert_eq!(code(&o), exit_code::BAD_IMAGE);
    let out = stdout(&o);
    assert!(out.ends_with('\n'));
    assert_eq!(out.lines().count(), 2);
    assert_eq!(json_lines(&o).len(), 2);
    assert!(!stderr(&o).is_empty(), "debug logs go to stderr");
    assert!(!stderr(&o).contains("\"predictions\""));
}

#[test]
fn help_documents_exit_codes_and_environment() {
    let home = tempfile::tempdir().unwrap();
    for args in [&["--help"][..], &["classify", "--help"][..]] {
        let o = run(home.path(), args);
        assert_eq!(code(&o), 0);
        let help = stdout(&o);
        assert!(help.contains("Exit codes"), "{help}");
        for c in ["0", "1", "2", "3", "4", "5"] {
            assert!(
                help.contains(&format!(" {c} ")),
                "{args:?} lacks exit code {c}"
            );
        }
    }
    let help = stdout(&run(home.path(), &["classify", "--help"]));
    for env in [
        "IMGCLASS_MODEL",
        "IMGCLASS_WEIGHTS_DIR",
        "IMGCLASS_WEIGHTS",
        "IMGCLASS_TOP_K",
        "IMGCLASS_OFFLINE",
        "IMGCLASS_SAVE_INPUT",
    ] {
        assert!(help.contains(env), "classify --help lacks {env}");
    }
}

#[test]
fn wide_resnet_is_the_default_model() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    write_png(&h.join("a.png"), 232, 232, 11);
    write_png(&h.join("b.png"), 300, 232, 12);
    let dir = synthetic_weights_dir(WRN).display().to_string();
    let o = run(
        h,
        &[
            "classify",
            "--weights-dir",
            &dir,
            "--offline",
            "a.png",
            "b.png",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let lines = json_lines(&o);
    assert_eq!(lines.len(), 2);
    assert_prediction_line(&lines[0], "a.png", "wide_resnet50_2", 5);
    assert_prediction_line(&lines[1], "b.png", "wide_resnet50_2", 5);
}

#[test]
fn committed_sample_photos_are_classified() {
    let home = tempfile::tempdir().unwrap();
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples");
    let mut photos: Vec<String> = std::fs::read_dir(&samples)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .map(|p| p.display().to_string())
        .collect();
    photos.sort();
    assert!(photos.len() >= 3, "samples/ holds the photos: {photos:?}");
    let args: Vec<&str> = photos.iter().map(String::as_str).collect();
    let o = classify_mb(home.path(), &args);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let lines = json_lines(&o);
    assert_eq!(lines.len(), photos.len());
    for (line, p) in lines.iter().zip(&photos) {
        assert_prediction_line(line, p, "mobilenet_v3_large", 5);
    }
}

#[test]
fn weights_flag_accepts_a_torchvision_pth_with_the_same_answers() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    write_png(&h.join("a.png"), 280, 250, 21);
    std::fs::write(h.join("mb.pth"), synthetic_pth_bytes(MB)).unwrap();
    let file = synthetic_weights_file(MB).display().to_string();
    let with = |w: &str| {
        let o = mb(h, &["--weights", w, "--top-k", "10", "a.png"]);
        assert_eq!(code(&o), 0, "{w}: {}", stderr(&o));
        json_lines(&o)
    };
    assert_eq!(with("mb.pth"), with(&file));
}
