#!/usr/bin/env python3
"""Make the parity fixtures that prove imgclass's models are torchvision's models.

How to run (CI does not run this; its outputs are committed under tests/fixtures/parity/):

    pip install torch torchvision pillow numpy safetensors scikit-image
    python scripts/make_parity_fixtures.py            # from the repository root
    # or: PYTHON=/path/to/python; $PYTHON scripts/make_parity_fixtures.py

What it does, per model (wide_resnet50_2, mobilenet_v3_large):

1. Builds torchvision's model and fills every weight from the deterministic generator below, which the
   Rust side (src/weights/synthetic.rs) reproduces bit-exactly without torch.
2. Calibrates it, so that its output depends on its input: every BatchNorm gets momentum=None and reset
   running statistics, one forward pass in train mode over a calibration batch of natural images
   (scikit-image's bundled public-domain images, several crops each) sets running mean/var = batch
   statistics; then eval mode. The last classifier layer (`fc` / `classifier.3`) is then centred and
   scaled: its weight is regenerated with a factor c chosen so the logits' deviation from their batch mean
   has a standard deviation of LOGIT_STD, and its bias is set to -W·mean(features), so the logits are
   c·W·(f - mean f): all of their variance comes from the input, and the top-5 is well separated.
3. Writes (never a full weights file):
   - bn_stats.safetensors: only the BatchNorm running_mean/running_var tensors of both models (f32), plus
     per model `<model>.classifier_scale` (c, one f32) and `<model>.classifier_bias` (1000 f32). ~400 KB.
   - expected_logits.safetensors: torchvision's logits, computed in float64 (the exact answer for these
     f32 weights; key `<model>.<input>`) and in float32 (what torchvision users run; key
     `<model>.<input>.torch_f32`), on the fixed input tensor `parity.input` ([2,3,224,224], from the
     generator) and on each image below (through torchvision's eval transform).
   - images/<name>.png: lossless 232x232 RGB crops of natural images (where resize-to-232 is the identity,
     so only the models are compared by the pipeline test).
   - expected.json: top-5 per model and input, the smallest gap among the top-6 logits, torchvision's own
     f32-vs-f64 error, torchvision's state_dict keys/shapes and parameter counts, and generator samples
     (bit patterns) that the Rust tests check to pin the generator.
   - small_state_dict.pth / small_state_dict.safetensors: a tiny state_dict (mixed dtypes, a transposed and
     an offset view, num_batches_tracked) saved with torch.save (zip format) and as safetensors, to test the
     .pth reader.

The script is deterministic: running it again rewrites the same fixtures.

The generator (value of element i of tensor `name`, both sides in the same IEEE float ops):
    seed  = FNV-1a-64(utf8(name))
    z     = splitmix64(seed XOR (i * 0x9E3779B97F4A7C15 mod 2^64))
    u     = f32(z >> 40) * 2^-23 - 1                          (exact; u in [-1, 1))
    value = f32(u * scale) + offset                            (f32 multiply, f32 add)
with per-tensor (scale, offset), scale rounded from f64 to f32:
    conv weight [O, I/g, k, k]       scale = sqrt(6 / (I/g*k*k))       offset 0  (Kaiming std sqrt(2/fan_in))
    linear weight [O, I]             scale = sqrt(6 / I) * c           offset 0  (c = classifier_scale for the
                                                                                  last layer, else 1)
    conv/linear bias [O]             scale = sqrt(1 / fan_in) * c      offset 0
    BatchNorm weight                 scale = 0.25                      offset 1
    BatchNorm bias                   scale = 0.25                      offset 0
    BatchNorm running_mean / var     from bn_stats.safetensors (uncalibrated: 0 / 1)
    parity.input [2,3,224,224]       scale = 0.5                       offset 0
    (with calibration, the last layer's bias is the committed classifier_bias)
"""

import copy
import json
import math
import os
import sys

import numpy as np
import torch
import torchvision
from PIL import Image
from safetensors.numpy import save_file

OUT = os.path.join("tests", "fixtures", "parity")
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
LOGIT_STD = 4.0
INPUT_SCALE = 0.5
MODELS = ["wide_resnet50_2", "mobilenet_v3_large"]
FINAL_LAYER = {"wide_resnet50_2": "fc", "mobilenet_v3_large": "classifier.3"}
# (name, skimage.data function): natural images for the pipeline test (public domain / CC0).
IMAGES = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry"]
CALIBRATION_IMAGES = IMAGES + ["hubble_deep_field", "retina", "camera", "coins", "brick", "grass", "clock"]


def fnv1a64(name: str) -> np.uint64:
    h = 0xCBF29CE484222325
    for b in name.encode("utf-8"):
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return np.uint64(h)


def uniform(name: str, n: int) -> np.ndarray:
    """u in [-1, 1), float32, exactly as src/weights/synthetic.rs."""
    with np.errstate(over="ignore"):
        i = np.arange(n, dtype=np.uint64)
        z = fnv1a64(name) ^ (i * GOLDEN)
        z = z + GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    top = (z >> np.uint64(40)).astype(np.float32)
    return top * np.float32(2.0**-23) - np.float32(1.0)


def generated(name: str, shape, scale: float, offset: float) -> np.ndarray:
    n = int(np.prod(shape)) if len(shape) else 1
    u = uniform(name, n)
    v = u * np.float32(scale)
    if offset != 0.0:
        v = v + np.float32(offset)
    assert v.dtype == np.float32
    return v.reshape(shape)


def param_rule(keys_shapes: dict, name: str, final_layer: str, c: float):
    """(scale, offset) of a generated tensor, or None for BN running stats."""
    shape = keys_shapes[name]
    prefix, leaf = name.rsplit(".", 1)
    is_bn = (prefix + ".running_mean") in keys_shapes
    cls = c if prefix == final_layer else 1.0
    if leaf in ("running_mean", "running_var", "num_batches_tracked"):
        return None
    if is_bn:
        return (0.25, 1.0) if leaf == "weight" else (0.25, 0.0)
    if leaf == "weight":
        fan_in = int(np.prod(shape[1:]))
        return (math.sqrt(6.0 / fan_in) * cls, 0.0)
    if leaf == "bias":
        wshape = keys_shapes[prefix + ".weight"]
        fan_in = int(np.prod(wshape[1:]))
        return (math.sqrt(1.0 / fan_in) * cls, 0.0)
    raise ValueError(name)


def build(model_name: str):
    return getattr(torchvision.models, model_name)(weights=None).eval()


def fill(model, model_name: str, c: float, only=None):
    sd = model.state_dict()
    keys_shapes = {k: tuple(v.shape) for k, v in sd.items()}
    new = {}
    for k in sd:
        if only is not None and not k.startswith(only + "."):
            continue
        rule = param_rule(keys_shapes, k, FINAL_LAYER[model_name], c)
        if rule is None:
            continue
        scale, offset = rule
        s32 = float(np.float32(scale))
        new[k] = torch.from_numpy(generated(k, keys_shapes[k], s32, offset))
    model.load_state_dict(new, strict=False)


def eval_transform():
    from torchvision import transforms as T

    return T.Compose(
        [
            T.Resize(232, interpolation=T.InterpolationMode.BILINEAR, antialias=True),
            T.CenterCrop(224),
            T.ToTensor(),
            T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )


def load_rgb(name: str) -> Image.Image:
    import skimage.data

    a = getattr(skimage.data, name)()
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    return Image.fromarray(a[..., :3].astype(np.uint8), "RGB")


def square_232(img: Image.Image) -> Image.Image:
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return img.crop((left, top, left + s, top + s)).resize((232, 232), Image.LANCZOS)


def calibration_batch() -> torch.Tensor:
    t = eval_transform()
    xs = []
    for name in CALIBRATION_IMAGES:
        img = load_rgb(name)
        w, h = img.size
        s = min(w, h)
        # the eval view, plus four corner crops of 70% and a mirrored view
        views = [img, img.transpose(Image.FLIP_LEFT_RIGHT)]
        cs = int(s * 0.7)
        for (x, y) in [(0, 0), (w - cs, 0), (0, h - cs), (w - cs, h - cs)]:
            views.append(img.crop((x, y, x + cs, y + cs)))
        xs += [t(v) for v in views]
    return torch.stack(xs)


def calibrate(model, model_name: str, batch: torch.Tensor) -> float:
    fill(model, model_name, 1.0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
            m.reset_running_stats()
    model.train()
    with torch.no_grad():
        model(batch)
    model.eval()
    final = model.get_submodule(FINAL_LAYER[model_name])
    seen = []
    hook = final.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    with torch.no_grad():
        logits = model(batch)
    hook.remove()
    # centre: logits = c * W (f - mean_f), so all of their variance comes from the input
    c = float(np.float32(LOGIT_STD / float((logits - logits.mean(dim=0)).std())))
    fill(model, model_name, c, only=FINAL_LAYER[model_name])
    with torch.no_grad():
        bias = -(seen[0].mean(dim=0) @ final.weight.t())
        bias = bias.numpy().astype(np.float32)
        final.bias.copy_(torch.from_numpy(bias))
    return c, bias


def top5_gaps(logits: np.ndarray):
    order = np.argsort(-logits, kind="stable")
    top = logits[order[:6]]
    return [int(i) for i in order[:5]], float(np.min(top[:-1] - top[1:]))


def main():
    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    os.makedirs(os.path.join(OUT, "images"), exist_ok=True)

    # The pipeline images: lossless 232x232 PNGs.
    for name in IMAGES:
        square_232(load_rgb(name)).save(os.path.join(OUT, "images", name + ".png"), optimize=True)

    batch = calibration_batch()
    t = eval_transform()
    x_in = torch.from_numpy(generated("parity.input", (2, 3, 224, 224), INPUT_SCALE, 0.0))

    bn_stats = {}
    logits_out = {}
    expected = {"logit_std_target": LOGIT_STD, "models": {}, "generator_samples": {}}
    for model_name in MODELS:
        model = build(model_name)
        c, bias = calibrate(model, model_name, batch)
        bn_stats[model_name + ".classifier_scale"] = np.array([c], dtype=np.float32)
        bn_stats[model_name + ".classifier_bias"] = bias
        for k, v in model.state_dict().items():
            if k.endswith(".running_mean") or k.endswith(".running_var"):
                bn_stats[model_name + "." + k] = v.numpy().astype(np.float32)

        info = {
            "classifier_scale": c,
            "inputs": {},
            "parameter_count": sum(p.numel() for p in model.parameters()),
            # torchvision's state_dict layout, which src/weights/load.rs::expected_shapes must match
            "state_dict_shapes": [
                [k, list(v.shape)] for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")
            ],
        }
        model64 = copy.deepcopy(model).double()
        with torch.no_grad():
            y = model64(x_in.double()).numpy()
            y32 = model(x_in).numpy()
        logits_out[model_name + ".input"] = y
        logits_out[model_name + ".input.torch_f32"] = y32
        info["torch_f32_vs_f64_max_abs_diff"] = {"input": float(np.abs(y32 - y).max())}
        for r in range(y.shape[0]):
            top, gap = top5_gaps(y[r])
            info["inputs"]["input.%d" % r] = {"top5": top, "min_top6_gap": gap}
        for name in IMAGES:
            img = Image.open(os.path.join(OUT, "images", name + ".png")).convert("RGB")
            xi = t(img).unsqueeze(0)
            # the 232x232 input is not resized: PIL and tensor paths agree exactly
            with torch.no_grad():
                yi = model64(xi.double()).numpy()[0]
                yi32 = model(xi).numpy()[0]
            logits_out[model_name + ".image." + name] = yi
            logits_out[model_name + ".image." + name + ".torch_f32"] = yi32
            info["torch_f32_vs_f64_max_abs_diff"]["image." + name] = float(np.abs(yi32 - yi).max())
            top, gap = top5_gaps(yi)
            info["inputs"]["image." + name] = {"top5": top, "min_top6_gap": gap}
        expected["models"][model_name] = info
        print(model_name, c, json.dumps(info["inputs"]), json.dumps(info["torch_f32_vs_f64_max_abs_diff"]), file=sys.stderr)

        # generator samples: bit patterns of a few elements, to pin the Rust generator
        sd = model.state_dict()
        keys_shapes = {k: tuple(v.shape) for k, v in sd.items()}
        for k in list(sd)[:3] + [FINAL_LAYER[model_name] + ".weight"]:
            flat = sd[k].numpy().reshape(-1)
            idx = sorted({0, 1, 2, flat.size // 2, flat.size - 1})
            expected["generator_samples"][model_name + "." + k] = {
                str(i): "%08x" % int(flat[i : i + 1].view(np.uint32)[0]) for i in idx
            }

    flat = x_in.numpy().reshape(-1)
    expected["generator_samples"]["parity.input"] = {
        str(i): "%08x" % int(flat[i : i + 1].view(np.uint32)[0]) for i in [0, 1, 12345, flat.size - 1]
    }

    save_file(bn_stats, os.path.join(OUT, "bn_stats.safetensors"))
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in logits_out.items()},
              os.path.join(OUT, "expected_logits.safetensors"))
    expected["images"] = IMAGES
    expected["torch"] = torch.__version__
    expected["torchvision"] = torchvision.__version__
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
        f.write("\n")

    make_small_state_dict()


def make_small_state_dict():
    """A tiny state_dict in torch's zip format and as safetensors (same values), for the .pth reader test.

    It is a real `Module.state_dict()` (an OrderedDict carrying `_metadata`, as torchvision's files), with
    extra entries in other dtypes and layouts."""
    from collections import OrderedDict

    m = torch.nn.Sequential(OrderedDict(a=torch.nn.Conv2d(2, 3, 3), bn=torch.nn.BatchNorm2d(3)))
    with torch.no_grad():
        m.a.weight.copy_(torch.from_numpy(generated("small.a", (3, 2, 3, 3), 1.0, 0.0)))
        m.a.bias.copy_(torch.from_numpy(generated("small.b", (3,), 1.0, 0.0)))
        m.bn.weight.copy_(torch.from_numpy(generated("small.g", (3,), 0.25, 1.0)))
        m.bn.running_var.copy_(torch.from_numpy(generated("small.v", (3,), 0.25, 1.0)))
        m.bn.num_batches_tracked.fill_(7)
    sd = m.state_dict()
    assert hasattr(sd, "_metadata")
    base = torch.from_numpy(generated("small.base", (4, 6), 1.0, 0.0))
    sd["half"] = torch.from_numpy(generated("small.h", (5,), 1.0, 0.0)).to(torch.float16)
    sd["bf16"] = torch.from_numpy(generated("small.bf", (2, 3), 1.0, 0.0)).to(torch.bfloat16)
    sd["double"] = torch.from_numpy(generated("small.d", (4,), 1.0, 0.0)).to(torch.float64)
    sd["transposed"] = base.t()  # stride (1, 6): Fortran-contiguous view
    sd["offset_view"] = base[2:]  # shares storage with `base`, storage offset 12
    torch.save(sd, os.path.join(OUT, "small_state_dict.pth"))
    save_file(
        {k: v.contiguous().to(torch.float32).numpy() for k, v in sd.items() if not k.endswith("num_batches_tracked")},
        os.path.join(OUT, "small_state_dict.safetensors"),
    )


if __name__ == "__main__":
    main()
