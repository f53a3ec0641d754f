//! Strict loading of torchvision state_dicts: formats, dtypes, and errors that name the key.

mod common;

use common::values;

use candle_core::{DType, Device, Tensor};
use imgclass::models::{Classifier, ModelKind};
use imgclass::weights::load::{expected_shapes, read_tensors, write_safetensors};
use imgclass::weights::synthetic;
use imgclass::Error;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const MBN: ModelKind = ModelKind::MobilenetV3Large;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity")
}

/// The reason of a WeightsInvalid error (panics on anything else).
fn invalid_reason(r: Result<Classifier, Error>) -> (String, String) {
    match r {
        Err(Error::WeightsInvalid { path, reason }) => (path, reason),
        Err(e) => panic!("expected WeightsInvalid, got {e:?}"),
        Ok(_) => panic!("expected WeightsInvalid, the weights loaded"),
    }
}

fn logits(c: &Classifier) -> Vec<f32> {
    let x = synthetic::parity_input(1);
    c.forward(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn generated_weights_load_strictly_for_both_models() {
    for kind in ModelKind::ALL {
        let w = synthetic::generate(kind);
        assert_eq!(w.len(), expected_shapes(kind).len());
        assert!(w.values().all(|t| t.dtype() == DType::F32), "{kind}");
        let c = Classifier::from_tensors(kind, w, "generated").unwrap();
        assert_eq!(c.kind(), kind);
    }
}

#[test]
fn missing_key_is_an_error_naming_it() {
    let mut w = synthetic::generate(MBN);
    w.remove("features.3.block.1.0.weight").unwrap();
    let (path, reason) = invalid_reason(Classifier::from_tensors(MBN, w, "test.safetensors"));
    assert_eq!(path, "test.safetensors");
    assert!(
        reason.contains("missing key `features.3.block.1.0.weight`"),
        "{reason}"
    );

    // through a file too: the error names the file and the key
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.safetensors");
    let mut w = synthetic::generate(MBN);
    w.remove("classifier.3.bias").unwrap();
    write_safetensors(&w, &file).unwrap();
    let (path, reason) = invalid_reason(Classifier::load(MBN, &file));
    assert_eq!(Path::new(&path), file);
    assert!(reason.contains("`classifier.3.bias`"), "{reason}");
    let e = Classifier::load(MBN, &file).err().unwrap();
    assert_eq!(e.error_type(), "weights_invalid");
    assert_eq!(e.exit_code(), imgclass::error::exit_code::WEIGHTS);
}

#[test]
fn unexpected_key_is_an_error_naming_it() {
    let mut w = synthetic::generate(MBN);
    w.insert(
        "features.17.0.weight".into(),
        Tensor::zeros((4, 4), DType::F32, &Device::Cpu).unwrap(),
    );
    let (_, reason) = invalid_reason(Classifier::from_tensors(MBN, w, "x"));
    assert!(
        reason.contains("unexpected key `features.17.0.weight`"),
        "{reason}"
    );
}

#[test]
fn mis_shaped_key_is_an_error_naming_it_and_both_shapes() {
    let mut w = synthetic::generate(MBN);
    w.insert(
        "features.0.1.running_var".into(),
        Tensor::ones(17, DType::F32, &Device::Cpu).unwrap(),
    );
    let (_, reason) = invalid_reason(Classifier::from_tensors(MBN, w, "x"));
    assert!(reason.contains("`features.0.1.running_var`"), "{reason}");
    assert!(
        reason.contains("[17]") && reason.contains("[16]"),
        "{reason}"
    );
}

#[test]
fn weights_of_the_other_model_are_refused() {
    let w = synthetic::generate(MBN);
    let (_, reason) = invalid_reason(Classifier::from_tensors(ModelKind::WideResnet50_2, w, "x"));
    assert!(reason.contains("missing keys `conv1.weight`"), "{reason}");
    assert!(
        reason.contains("unexpected keys `classifier.0.bias`"),
        "{reason}"
    );
}

#[test]
fn integer_weight_is_refused_naming_the_key() {
    let mut w = synthetic::generate(MBN);
    let t = w["classifier.3.bias"].to_dtype(DType::I64).unwrap();
    w.insert("classifier.3.bias".into(), t);
    let (_, reason) = invalid_reason(Classifier::from_tensors(MBN, w, "x"));
    assert!(reason.contains("`classifier.3.bias`"), "{reason}");
}

#[test]
fn num_batches_tracked_is_ignored_and_half_precision_is_converted() {
    let reference = Classifier::from_tensors(MBN, synthetic::generate(MBN), "f32").unwrap();
    let mut w = synthetic::generate(MBN);
    let bn_keys: Vec<String> = w
        .keys()
        .filter(|k| k.ends_with(".running_mean"))
        .map(|k| k.replace(".running_mean", ".num_batches_tracked"))
        .collect();
    for k in bn_keys {
        w.insert(k, Tensor::new(7i64, &Device::Cpu).unwrap());
    }
    let c = Classifier::from_tensors(MBN, w.clone(), "with counters").unwrap();
    assert_eq!(logits(&c), logits(&reference));

    // f64 weights (exact round trip), and f16 weights written to a file read back as f32
    let w64: HashMap<String, Tensor> = w
        .iter()
        .map(|(k, t)| {
            let t = if t.dtype() == DType::F32 {
                t.to_dtype(DType::F64).unwrap()
            } else {
                t.clone()
            };
            (k.clone(), t)
        })
        .collect();
    let c = Classifier::from_tensors(MBN, w64, "f64").unwrap();
    assert_eq!(logits(&c), logits(&reference));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("half.safetensors");
    let w16: HashMap<String, Tensor> = w
        .iter()
        .filter(|(_, t)| t.dtype() == DType::F32)
        .map(|(k, t)| (k.clone(), t.to_dtype(DType::F16).unwrap()))
        .collect();
    write_safetensors(&w16, &file).unwrap();
    let read = read_tensors(&file).unwrap();
    assert!(read.values().all(|t| t.dtype() == DType::F32));
    let c = Classifier::load(MBN, &file).unwrap();
    let (a, b) = (logits(&c), logits(&reference));
    assert!(a.iter().all(|v| v.is_finite()));
    assert_ne!(
        a, b,
        "f16 weights are rounded: the logits must differ slightly"
    );
}

#[test]
fn torch_zip_pth_reads_like_safetensors() {
    // written by torch.save (zip format) in scripts/make_parity_fixtures.py: a real Module.state_dict()
    // (OrderedDict with `_metadata`) plus f16, bf16, f64, a transposed (Fortran-order) view, a view with
    // a storage offset, an int64 counter
    let pth = read_tensors(&fixtures().join("small_state_dict.pth")).unwrap();
    let st = read_tensors(&fixtures().join("small_state_dict.safetensors")).unwrap();
    let mut keys: Vec<&String> = pth.keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "a.bias",
            "a.weight",
            "bf16",
            "bn.bias",
            "bn.num_batches_tracked",
            "bn.running_mean",
            "bn.running_var",
            "bn.weight",
            "double",
            "half",
            "offset_view",
            "transposed"
        ]
    );
    assert_eq!(
        pth["bn.num_batches_tracked"]
            .to_dtype(DType::I64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<i64>()
            .unwrap(),
        [7]
    );
    for (k, want) in &st {
        let got = &pth[k];
        assert_eq!(got.dtype(), DType::F32, "{k}");
        assert_eq!(got.dims(), want.dims(), "{k}");
        let g = values(got);
        let w = values(want);
        assert_eq!(g, w, "{k}");
    }
    // the generator made the values: a.weight is generated("small.a", [3,2,3,3], scale 1)
    let a = synthetic::tensor("small.a", &[3, 2, 3, 3], 1.0, 0.0);
    assert_eq!(values(&pth["a.weight"]), values(&a));
}

#[test]
fn a_pth_with_a_negative_storage_offset_is_invalid_not_a_crash() {
    let tensors = vec![("a.weight".to_string(), vec![4, 4], vec![0.5f32; 16])];
    let pickle = common::torch_pickle(&tensors);
    // The storage offset follows the storage tuple (`tQ`) as a BININT (`J`, i32 little endian).
    let at = pickle
        .windows(7)
        .position(|w| w == b"tQJ\0\0\0\0")
        .expect("offset 0 in the pickle");
    let mut bad = pickle.clone();
    bad[at + 3..at + 7].copy_from_slice(&(-0x1000_0000i32).to_le_bytes());
    let dir = tempfile::tempdir().unwrap();
    let pth = dir.path().join("bad.pth");
    std::fs::write(&pth, common::torch_zip(&bad, &tensors)).unwrap();
    match read_tensors(&pth) {
        Err(e @ Error::WeightsInvalid { .. }) => assert!(e.to_string().contains("bad.pth"), "{e}"),
        Err(e) => panic!("expected WeightsInvalid, got {e:?}"),
        Ok(_) => panic!("a negative storage offset was accepted"),
    }
    // The unpatched pickle reads (the test changes only the offset).
    std::fs::write(&pth, common::torch_zip(&pickle, &tensors)).unwrap();
    assert_eq!(
        values(&read_tensors(&pth).unwrap()["a.weight"]),
        vec![0.5; 16]
    );
}

#[test]
fn full_model_loads_from_a_torch_zip_pth_like_from_safetensors() {
    let w = synthetic::generate(MBN);
    let tensors = common::pth_tensors(&w);
    let dir = tempfile::tempdir().unwrap();
    // the name does not matter: the format is recognised by content
    let pth = dir.path().join("mobilenet_v3_large-5c1a4163.pth");
    std::fs::write(&pth, common::torch_pth_bytes(&tensors)).unwrap();
    let st = dir.path().join("m.safetensors");
    write_safetensors(&w, &st).unwrap();
    let a = Classifier::load(MBN, &pth).unwrap();
    let b = Classifier::load(MBN, &st).unwrap();
    assert_eq!(logits(&a), logits(&b));

    // a .pth with a key missing names it too
    let short: Vec<_> = tensors
        .iter()
        .filter(|(n, _, _)| n != "features.16.1.weight")
        .cloned()
        .collect();
    std::fs::write(&pth, common::torch_pth_bytes(&short)).unwrap();
    let (_, reason) = invalid_reason(Classifier::load(MBN, &pth));
    assert!(
        reason.contains("missing key `features.16.1.weight`"),
        "{reason}"
    );
}

#[test]
fn missing_file_is_weights_missing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nope.safetensors");
    match Classifier::load(MBN, &file) {
        Err(e @ Error::WeightsMissing(_)) => {
            assert!(e.to_string().contains("nope.safetensors"), "{e}");
            assert_eq!(e.error_type(), "weights_missing");
        }
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("loaded a missing file"),
    }
}

#[test]
fn files_that_are_not_weights_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.safetensors", vec![], "empty"),
        (
            "text.pth",
            b"hello, I am not a tensor file\n".to_vec(),
            "not a safetensors",
        ),
        // torch.save(_use_new_zipfile_serialization=False): a bare pickle
        (
            "legacy.pth",
            vec![0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20],
            "legacy",
        ),
        // a safetensors header announcing more bytes than the file has
        (
            "short.safetensors",
            [&1000u64.to_le_bytes()[..], b"{\"a\":1}"].concat(),
            "truncated",
        ),
        // a zip that is not a torch file
        ("broken.pth", b"PK\x03\x04 garbage".to_vec(), "PyTorch"),
    ];
    for (name, bytes, needle) in cases {
        let file = dir.path().join(name);
        std::fs::write(&file, &bytes).unwrap();
        let (path, reason) = invalid_reason(Classifier::load(MBN, &file));
        assert_eq!(Path::new(&path), file);
        assert!(reason.contains(needle), "{name}: {reason}");
    }
    // a valid safetensors file cut short
    let full = dir.path().join("full.safetensors");
    write_safetensors(&synthetic::generate(MBN), &full).unwrap();
    let bytes = std::fs::read(&full).unwrap();
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let (_, reason) = invalid_reason(Classifier::load(MBN, &cut));
    assert!(!reason.is_empty());
    // a directory
    let (_, reason) = invalid_reason(Classifier::load(MBN, dir.path()));
    assert!(reason.contains("directory"), "{reason}");
}

#[test]
fn write_safetensors_is_atomic_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.safetensors");
    let mut w = HashMap::new();
    w.insert("a".to_string(), synthetic::tensor("a", &[2, 3], 1.0, 0.0));
    // a non-contiguous tensor is written in logical order
    w.insert(
        "t".to_string(),
        synthetic::tensor("t", &[3, 2], 1.0, 0.0).t().unwrap(),
    );
    write_safetensors(&w, &file).unwrap();
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["w.safetensors"], "no temp file is left behind");
    let back = read_tensors(&file).unwrap();
    for (k, t) in &w {
        assert_eq!(values(&back[k]), values(t));
    }
    // overwriting replaces the file whole
    w.remove("t");
    write_safetensors(&w, &file).unwrap();
    assert_eq!(read_tensors(&file).unwrap().len(), 1);
    // into a directory that does not exist: an error, nothing created
    let e = write_safetensors(&w, &dir.path().join("no/such/dir/w.safetensors")).unwrap_err();
    assert!(e.to_string().contains("w.safetensors"), "{e}");
    assert!(!dir.path().join("no").exists());
}

#[test]
fn write_synthetic_weights_makes_a_loadable_file() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("weights");
    let path = synthetic::write_synthetic_weights(&sub, MBN).unwrap();
    assert_eq!(path, sub.join("mobilenet_v3_large.safetensors"));
    let c = Classifier::load(MBN, &path).unwrap();
    let preds = c.classify(&[&vec![0.1f32; 3 * 224 * 224]], 5).unwrap();
    assert_eq!(preds.len(), 1);
    assert_eq!(preds[0].len(), 5);
    assert!(preds[0]
        .windows(2)
        .all(|p| p[0].probability >= p[1].probability));
    // bad input length is an error, not a panic
    assert!(c.classify(&[&[0.0f32; 10]], 5).is_err());
    assert!(c.classify(&[], 5).unwrap().is_empty());
}
