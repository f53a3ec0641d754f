//! Reference tests: every fast kernel against the plain candle op (`ops::reference`).

use super::*;
use candle_core::{Device, Tensor};

/// Deterministic pseudo-random values in [-1, 1) (xorshift), so failures reproduce.
fn rand_tensor(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 23) as f32) - 1.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

#[derive(Clone, Copy, Debug)]
struct Case {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    k: usize,
    stride: usize,
    pad: usize,
    groups: usize,
}

/// Tolerance of a kernel relative to the output's scale (max |y|, at least 1).
///
/// Direct kernels and im2col + GEMM sum the same products in another order: 2e-5. Winograd also
/// rounds the transformed input, weight and output (coefficients up to 5 in `B^T`, 8 in `A^T`,
/// 1/6 and 1/24 in `G`), more so with F(4,3)'s larger ones: measured max 1.0e-6 (F(2,3)) and
/// 1.2e-5 (F(4,3)) over `winograd_matches_reference` (C up to 512); tolerances 2e-5 and 1e-4
/// (8x margin). The WRN parity test against torchvision checks the whole network at 1e-3.
fn tolerance(kernel: Kernel) -> f32 {
    match kernel {
        Kernel::Winograd(winograd::Tile::F4) => 1e-4,
        _ => 2e-5,
    }
}

fn check(case: &Case, expect: Kernel) {
    let k = case.k;
    let (x, wt, p) = operands(case);
    let auto = select_kernel(&x, &wt, p);
    // Dense 3x3 stride-1 convolutions may go to Winograd where it is faster: both must be right.
    let winograd_ok = expect == Kernel::Dense && k == 3 && case.stride == 1;
    assert!(
        auto == expect || (winograd_ok && matches!(auto, Kernel::Winograd(_))),
        "kernel choice {auto:?} for {case:?}"
    );
    compare(case, None);
    if auto != expect {
        compare(case, Some(expect));
    }
}

fn operands(case: &Case) -> (Tensor, Tensor, ConvParams) {
    let Case {
        n,
        c,
        h,
        w: _,
        o,
        k,
        stride,
        pad,
        groups,
    } = *case;
    let p = ConvParams {
        stride,
        padding: pad,
        groups,
    };
    let x = rand_tensor(&[n, c, h, case.w], 1 + (n * c * h) as u64);
    let wt = rand_tensor(&[o, c / groups, k, k], 2 + (o * k) as u64);
    (x, wt, p)
}

/// Every epilogue variant of `case` through `kernel` (the automatic choice if `None`) against the
/// reference; returns the largest error relative to the output scale.
fn compare(case: &Case, kernel: Option<Kernel>) -> f32 {
    let Case {
        n,
        c,
        h,
        w,
        o,
        k,
        stride,
        pad,
        groups,
    } = *case;
    let (x, wt, p) = operands(case);
    let b = rand_tensor(&[o], 3);
    let kernel = kernel.unwrap_or_else(|| select_kernel(&x, &wt, p));
    let prepared = PreparedWeight::new(wt.clone());
    let mut worst = 0f32;
    let y0 = reference::conv2d(&x, &wt, None, p, Activation::None, None).unwrap();
    let r = rand_tensor(y0.dims(), 4);
    let variants: [(bool, Activation, bool); 5] = [
        (false, Activation::None, false),
        (true, Activation::None, false),
        (true, Activation::Relu, false),
        (true, Activation::Hardswish, false),
        (true, Activation::Relu, true),
    ];
    for (with_b, act, with_r) in variants {
        let bb = with_b.then_some(&b);
        let rr = with_r.then_some(&r);
        let want = reference::conv2d(&x, &wt, bb, p, act, rr).unwrap();
        let got = conv2d_with_kernel(kernel, &x, &prepared, bb, p, act, rr).unwrap();
        assert_eq!(got.dims(), want.dims());
        let scale = max_abs(&want).max(1.0);
        let diff = (got - &want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            diff <= tolerance(kernel) * scale,
            "{kernel:?}: max abs diff {diff} (scale {scale}) for {n}x{c}x{h}x{w} -> {o} k{k} s{stride} p{pad} g{groups}, bias {with_b}, {act:?}, residual {with_r}"
        );
        worst = worst.max(diff / scale);
    }
    worst
}

const fn dw(n: usize, c: usize, h: usize, w: usize, k: usize, stride: usize, pad: usize) -> Case {
    Case {
        n,
        c,
        h,
        w,
        o: c,
        k,
        stride,
        pad,
        groups: c,
    }
}

#[allow(clippy::too_many_arguments)]
fn dense(
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    k: usize,
    stride: usize,
    pad: usize,
) -> Case {
    Case {
        n,
        c,
        h,
        w,
        o,
        k,
        stride,
        pad,
        groups: 1,
    }
}

/// MobileNetV3-Large's depthwise layers (some at batch 2-3).
const MOBILENET_DW: [Case; 9] = [
    dw(1, 16, 112, 112, 3, 1, 1),
    dw(1, 64, 112, 112, 3, 2, 1),
    dw(2, 72, 56, 56, 5, 2, 2),
    dw(1, 120, 28, 28, 5, 1, 2),
    dw(2, 240, 28, 28, 3, 2, 1),
    dw(3, 200, 14, 14, 3, 1, 1),
    dw(1, 184, 14, 14, 3, 1, 1),
    dw(2, 672, 14, 14, 5, 2, 2),
    dw(2, 960, 7, 7, 5, 1, 2),
];

/// Odd depthwise shapes: non-square planes, k 1/3/5/7, stride 1/2/3, padding 0..3, channel counts
/// that are not a multiple of 16, a 1x1 plane.
const ODD_DW: [Case; 12] = [
    dw(2, 3, 9, 13, 3, 1, 1),
    dw(3, 5, 17, 10, 3, 2, 1),
    dw(1, 21, 11, 11, 5, 2, 2),
    dw(2, 6, 8, 8, 3, 1, 0),
    dw(2, 6, 9, 7, 3, 2, 0),
    dw(1, 2, 5, 5, 5, 1, 0),
    dw(1, 33, 5, 5, 5, 1, 0),
    dw(1, 3, 33, 35, 3, 3, 1),
    dw(1, 17, 23, 25, 3, 3, 1),
    dw(4, 7, 1, 1, 1, 1, 0),
    dw(2, 8, 20, 19, 7, 2, 3),
    dw(1, 4, 11, 11, 5, 2, 2),
];

#[test]
fn depthwise_matches_reference_mobilenet_shapes() {
    for case in &MOBILENET_DW {
        check(case, Kernel::Depthwise);
    }
}

#[test]
fn depthwise_matches_reference_odd_shapes() {
    for case in &ODD_DW {
        check(case, Kernel::Depthwise);
    }
}

/// Both depthwise kernels run directly (not through the automatic choice, which sends small planes
/// without a residual to the channel-vector kernel), every epilogue, against the reference: the
/// per-plane kernel must stay right on small planes, and the channel-vector kernel on MobileNetV3's
/// small maps and the odd shapes.
#[test]
fn depthwise_kernels_each_match_reference() {
    let small = MOBILENET_DW
        .iter()
        .filter(|c| c.h * c.w <= depthwise::CV_MAX_PIXELS);
    for &case in small.chain(&ODD_DW) {
        let (x, wt, p) = operands(&case);
        let (n, c, h, w, k) = (case.n, case.c, case.h, case.w, case.k);
        let oh = (h + 2 * case.pad - k) / case.stride + 1;
        let ow = (w + 2 * case.pad - k) / case.stride + 1;
        let g = Geometry {
            n,
            c,
            h,
            w,
            o: c,
            k,
            stride: case.stride,
            pad: case.pad,
            oh,
            ow,
        };
        let b = rand_tensor(&[c], 3);
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (xs, ws, bs) = (flat(&x), flat(&wt), flat(&b));
        for (with_b, act) in [
            (false, Activation::None),
            (true, Activation::Relu),
            (true, Activation::Hardswish),
        ] {
            let bb = with_b.then_some(&b);
            let want = reference::conv2d(&x, &wt, bb, p, act, None).unwrap();
            let scale = max_abs(&want);
            let want = flat(&want);
            let bias = with_b.then_some(bs.as_slice());
            let mut got = vec![("plane", depthwise::depthwise(&xs, &ws, bias, None, act, &g))];
            if depthwise::cv_applies(&g, false) {
                got.push(("cv", depthwise::depthwise_cv(&xs, &ws, bias, act, &g)));
            } else {
                // Only planes above CV_MAX_PIXELS or CPUs without AVX2 skip it (16 channels per
                // vector on AVX-512, 8 on AVX2: the `IMGCLASS_SIMD=avx2` run takes the latter).
                assert!(
                    h * w > depthwise::CV_MAX_PIXELS || cpu::level() == cpu::Level::Scalar,
                    "channel-vector kernel refused {case:?}"
                );
            }
            for (name, y) in got {
                assert_eq!(y.len(), want.len(), "{name} {case:?}");
                let diff = y
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(
                    diff <= 2e-5 * scale.max(1.0),
                    "{name}: max abs diff {diff} for {case:?}, bias {with_b}, {act:?}"
                );
            }
        }
    }
    // A residual or a large plane keeps the per-plane kernel.
    let big = Geometry {
        n: 1,
        c: 16,
        h: 56,
        w: 56,
        o: 16,
        k: 3,
        stride: 1,
        pad: 1,
        oh: 56,
        ow: 56,
    };
    assert!(!depthwise::cv_applies(&big, false));
    let small = Geometry {
        h: 14,
        w: 14,
        oh: 14,
        ow: 14,
        ..big
    };
    assert!(!depthwise::cv_applies(&small, true));
}

/// `dense::matmul` on narrow right-hand sides (one single-threaded GEMM per band of output rows)
/// and wide ones (one GEMM parallelised inside `gemm`), on a 2- and a 3-thread pool, against a
/// plain triple loop; band sizes that do not divide `m`.
#[test]
fn matmul_bands_match_naive() {
    for threads in [2, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        for (m, n, k) in [
            (128, 49, 300),
            (200, 1, 17),
            (1000, 130, 64),
            (130, 4100, 5),
            (40, 49, 9),
        ] {
            let flat = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let a = flat(rand_tensor(&[m, k], 60 + m as u64));
            let b = flat(rand_tensor(&[k, n], 61 + n as u64));
            let mut got = vec![f32::NAN; m * n];
            pool.install(|| dense::matmul(m, n, k, &a, &b, &mut got));
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|t| a[i * k + t] as f64 * b[t * n + j] as f64)
                        .sum();
                    let d = (got[i * n + j] as f64 - want).abs();
                    assert!(
                        d <= 1e-4 * (k as f64).sqrt(),
                        "{m}x{n}x{k} at ({i}, {j}): {d}"
                    );
                }
            }
        }
    }
}

#[test]
fn pointwise_matches_reference() {
    for case in [
        dense(1, 64, 56, 56, 256, 1, 1, 0),
        dense(2, 256, 28, 28, 64, 1, 1, 0),
        dense(3, 48, 14, 14, 40, 1, 1, 0),
        dense(8, 96, 7, 7, 160, 1, 1, 0),
        dense(2, 64, 56, 56, 128, 1, 2, 0),
        dense(3, 16, 15, 13, 24, 1, 2, 0),
        dense(4, 72, 1, 1, 24, 1, 1, 0),
        dense(1, 5, 9, 9, 7, 1, 1, 1),
    ] {
        check(&case, Kernel::Dense);
    }
}

#[test]
fn dense_kxk_matches_reference() {
    for case in [
        dense(1, 3, 224, 224, 64, 7, 2, 3),
        dense(2, 3, 64, 64, 16, 3, 2, 1),
        dense(1, 128, 56, 56, 128, 3, 1, 1),
        dense(2, 32, 28, 28, 48, 3, 2, 1),
        dense(3, 64, 7, 7, 64, 3, 1, 1),
        dense(2, 4, 9, 11, 6, 5, 1, 2),
        dense(2, 5, 10, 10, 3, 3, 1, 0),
        dense(3, 6, 13, 12, 5, 3, 3, 2),
        dense(1, 2, 4, 4, 3, 3, 2, 2),
        // im2col's stride-2 gather on odd and even widths, padding 0-2, the last column of a row
        // read alone (Wide ResNet's 14x14 -> 7x7 shape too)
        dense(2, 8, 13, 11, 16, 3, 2, 0),
        dense(1, 8, 15, 9, 8, 5, 2, 2),
        dense(2, 16, 14, 14, 24, 3, 2, 1),
        dense(1, 40, 7, 10, 8, 1, 2, 0),
        dense(1, 8, 3, 2, 8, 3, 2, 1),
    ] {
        check(&case, Kernel::Dense);
    }
}

#[test]
fn other_grouped_convs_fall_back_to_reference() {
    let x = rand_tensor(&[2, 8, 10, 10], 7);
    let w = rand_tensor(&[12, 4, 3, 3], 8);
    let p = ConvParams {
        stride: 1,
        padding: 1,
        groups: 2,
    };
    assert_eq!(select_kernel(&x, &w, p), Kernel::Reference);
    let got = conv2d(&x, &w, None, p, Activation::Relu, None).unwrap();
    assert_eq!(got.dims(), &[2, 12, 10, 10]);
}

#[test]
fn non_contiguous_input_is_handled() {
    // A transposed view: the fast path must copy it, not read it as if it were contiguous.
    let x = rand_tensor(&[1, 8, 12, 10], 9).transpose(2, 3).unwrap();
    assert!(!x.is_contiguous());
    for (w, groups) in [
        (rand_tensor(&[8, 1, 3, 3], 10), 8),
        (rand_tensor(&[6, 8, 3, 3], 11), 1),
    ] {
        let p = ConvParams {
            stride: 1,
            padding: 1,
            groups,
        };
        let want = reference::conv2d(&x, &w, None, p, Activation::None, None).unwrap();
        let got = conv2d(&x, &w, None, p, Activation::None, None).unwrap();
        let diff = (got - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-4, "diff {diff}");
    }
}

#[test]
fn mismatched_residual_is_an_error_not_a_panic() {
    let x = rand_tensor(&[1, 4, 8, 8], 12);
    let w = rand_tensor(&[4, 1, 3, 3], 13);
    let r = rand_tensor(&[1, 4, 7, 7], 14);
    let p = ConvParams {
        stride: 1,
        padding: 1,
        groups: 4,
    };
    assert!(conv2d(&x, &w, None, p, Activation::None, Some(&r)).is_err());
}

/// Largest |value| of `t`.
fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Largest |a - b| (same shapes).
pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn global_avg_pool_matches_reference() {
    for shape in [[1, 2048, 7, 7], [3, 40, 28, 28], [2, 5, 1, 1], [2, 3, 5, 9]] {
        let x = rand_tensor(&shape, 20);
        let got = pool::global_avg_pool(&x).unwrap();
        let want = pool::reference::global_avg_pool(&x).unwrap();
        assert_eq!(got.dims(), &[shape[0], shape[1]]);
        assert!(max_diff(&got, &want) < 1e-5, "{shape:?}");
    }
}

#[test]
fn se_scale_matches_reference() {
    for (shape, four_d) in [
        ([1, 72, 28, 28], true),
        ([3, 960, 7, 7], false),
        ([2, 4, 5, 3], true),
    ] {
        let x = rand_tensor(&shape, 21);
        // Scales spread over the whole hardsigmoid range, saturated parts included.
        let s = (rand_tensor(&[shape[0], shape[1]], 22) * 5.0).unwrap();
        let s = if four_d {
            s.reshape((shape[0], shape[1], 1, 1)).unwrap()
        } else {
            s
        };
        let got = pool::se_scale(&x, &s).unwrap();
        let want = pool::reference::se_scale(&x, &s).unwrap();
        assert!(max_diff(&got, &want) < 1e-6, "{shape:?}");
    }
    let x = rand_tensor(&[1, 4, 3, 3], 23);
    assert!(pool::se_scale(&x, &rand_tensor(&[1, 3], 24)).is_err());
}

#[test]
fn conv2d_se_scaled_matches_reference() {
    // (n, c, hw, o, k, residual): MobileNetV3's SE-then-project shapes (scale folded into the 1x1
    // kernel: 28x28 and 14x14 maps, and batches of 7x7 ones), and ones that fall back to
    // se_scale + conv2d (one image at 7x7, a 1x1 map, a 3x3 kernel).
    for (n, c, hw, o, k, with_r) in [
        (1, 72, 28, 40, 1, false),
        (1, 120, 28, 40, 1, true),
        (2, 480, 14, 112, 1, false),
        (1, 672, 14, 112, 1, true),
        (8, 960, 7, 160, 1, true),
        (3, 672, 7, 160, 1, false),
        (1, 960, 7, 160, 1, true),
        (2, 40, 1, 16, 1, false),
        (2, 8, 9, 16, 3, true),
        (1, 33, 5, 24, 1, false),
    ] {
        let x = rand_tensor(&[n, c, hw, hw], 40 + c as u64);
        let w = rand_tensor(&[o, c, k, k], 41);
        let b = rand_tensor(&[o], 42);
        // Scales over the whole hardsigmoid range, saturated parts included.
        let s = (rand_tensor(&[n, c, 1, 1], 43) * 5.0).unwrap();
        let p = ConvParams {
            stride: 1,
            padding: k / 2,
            groups: 1,
        };
        let r = rand_tensor(&[n, o, hw, hw], 44);
        let rr = with_r.then_some(&r);
        for act in [Activation::None, Activation::Hardswish] {
            let xs = pool::reference::se_scale(&x, &s).unwrap();
            let want = reference::conv2d(&xs, &w, Some(&b), p, act, rr).unwrap();
            let got = conv2d_se_scaled(&x, &s, &w, Some(&b), p, act, rr).unwrap();
            let s2 = s.reshape((n, c)).unwrap();
            let got2 = conv2d_se_scaled(&x, &s2, &w, Some(&b), p, act, rr).unwrap();
            let scale = (c as f32).sqrt();
            assert!(
                max_diff(&got, &want) < 2e-5 * scale,
                "{n}x{c}x{hw} -> {o} k{k}"
            );
            assert!(
                max_diff(&got2, &want) < 2e-5 * scale,
                "{n}x{c}x{hw} -> {o} k{k}"
            );
        }
    }
    let x = rand_tensor(&[1, 4, 3, 3], 45);
    let w = rand_tensor(&[8, 4, 1, 1], 46);
    let p = ConvParams {
        stride: 1,
        padding: 0,
        groups: 1,
    };
    let bad = rand_tensor(&[1, 3], 47);
    assert!(conv2d_se_scaled(&x, &bad, &w, None, p, Activation::None, None).is_err());
}

#[test]
fn max_pool2d_matches_reference() {
    // The ResNet stem (3, 2, 1) on negative-heavy inputs: padding must never win.
    for (shape, k, s, p) in [
        ([1, 64, 112, 112], 3, 2, 1),
        ([2, 3, 9, 8], 3, 2, 1),
        ([2, 3, 10, 10], 2, 2, 0),
        ([1, 2, 7, 7], 3, 1, 1),
        // Other windows, strides and paddings (phases of unequal length, windows running past
        // both ends of a row, the last window shorter than the kernel).
        ([1, 2, 11, 13], 5, 2, 2),
        ([1, 3, 12, 17], 4, 3, 2),
        ([2, 2, 5, 6], 1, 1, 0),
        ([1, 2, 6, 9], 2, 1, 1),
        ([1, 1, 3, 3], 3, 3, 0),
        ([1, 1, 8, 31], 7, 4, 3),
    ] {
        let x = (rand_tensor(&shape, 25) - 0.9).unwrap();
        let got = pool::max_pool2d(&x, k, s, p).unwrap();
        let want = pool::reference::max_pool2d(&x, k, s, p).unwrap();
        assert_eq!(max_diff(&got, &want), 0.0, "{shape:?} k{k} s{s} p{p}");
    }
}

#[test]
fn winograd_matches_reference() {
    use winograd::Tile;
    let cases = [
        // WRN shapes (56^2 spans several batch chunks at n = 3)
        dense(1, 128, 56, 56, 128, 3, 1, 1),
        dense(3, 16, 56, 56, 8, 3, 1, 1),
        dense(2, 256, 28, 28, 64, 3, 1, 1),
        dense(2, 512, 14, 14, 32, 3, 1, 1),
        dense(4, 256, 7, 7, 48, 3, 1, 1),
        // the packed GEMM with a reduction (136) that is not a multiple of 16
        dense(2, 136, 12, 12, 128, 3, 1, 1),
        // odd sizes, not multiples of the tile, more tiles per row than SIMD lanes, padding 0 and 2
        dense(3, 6, 13, 12, 5, 3, 1, 1),
        dense(2, 4, 70, 67, 5, 3, 1, 1),
        dense(2, 5, 10, 10, 3, 3, 1, 0),
        dense(2, 7, 9, 11, 6, 3, 1, 2),
        dense(5, 3, 1, 1, 4, 3, 1, 1),
        dense(1, 1, 3, 3, 1, 3, 1, 0),
    ];
    for tile in [Tile::F2, Tile::F4] {
        let mut worst = 0f32;
        for case in &cases {
            worst = worst.max(compare(case, Some(Kernel::Winograd(tile))));
        }
        eprintln!("winograd {tile:?}: max |error| / max |y| = {worst:e}");
    }
}

#[test]
fn winograd_prepared_weight_is_reused_and_matches() {
    let case = dense(2, 32, 14, 14, 16, 3, 1, 1);
    let (x, wt, p) = operands(&case);
    let prepared = PreparedWeight::new(wt.clone());
    let kernel = Kernel::Winograd(winograd::Tile::F2);
    let first = conv2d_with_kernel(kernel, &x, &prepared, None, p, Activation::Relu, None).unwrap();
    let clone = prepared.clone();
    let again = conv2d_with_kernel(kernel, &x, &clone, None, p, Activation::Relu, None).unwrap();
    assert_eq!(max_diff(&first, &again), 0.0);
    assert!(format!("{prepared:?}").contains("f2: true"));
    let plain = conv2d(&x, &wt, None, p, Activation::Relu, None).unwrap();
    let want = reference::conv2d(&x, &wt, None, p, Activation::Relu, None).unwrap();
    assert!(max_diff(&plain, &want) < 1e-3);
}

#[test]
fn winograd_only_weight_matches_reference_and_checks_shapes() {
    // the form Wide ResNet keeps for the layers that always run as Winograd (original dropped)
    for case in [
        dense(2, 32, 14, 14, 16, 3, 1, 1),
        dense(1, 5, 9, 11, 4, 3, 1, 1),
        dense(3, 4, 2, 2, 3, 3, 1, 1),
        dense(2, 6, 8, 7, 5, 3, 1, 0),
    ] {
        let (x, wt, p) = operands(&case);
        let ww = WinogradWeight::new(&wt).unwrap();
        let b = rand_tensor(&[case.o], 7);
        let y0 = reference::conv2d(&x, &wt, None, p, Activation::None, None).unwrap();
        let r = rand_tensor(y0.dims(), 8);
        for (act, res) in [(Activation::None, None), (Activation::Relu, Some(&r))] {
            let want = reference::conv2d(&x, &wt, Some(&b), p, act, res).unwrap();
            let got = conv2d_winograd(&x, &ww, Some(&b), p.padding, act, res).unwrap();
            let scale = max_abs(&want);
            assert!(
                max_diff(&got, &want) <= 2e-5 * scale.max(1.0),
                "{case:?} {act:?}"
            );
        }
    }
    // wrong input channels, a non-3x3 weight, a residual of the wrong shape: errors, not panics
    let (x, wt, _) = operands(&dense(1, 4, 8, 8, 2, 3, 1, 1));
    let other = WinogradWeight::new(&rand_tensor(&[2, 5, 3, 3], 9)).unwrap();
    assert!(conv2d_winograd(&x, &other, None, 1, Activation::None, None).is_err());
    assert!(WinogradWeight::new(&rand_tensor(&[2, 4, 1, 1], 9)).is_err());
    let ww = WinogradWeight::new(&wt).unwrap();
    let bad = rand_tensor(&[1, 2, 7, 7], 9);
    assert!(conv2d_winograd(&x, &ww, None, 1, Activation::None, Some(&bad)).is_err());
}

#[test]
fn winograd_refuses_shapes_it_cannot_run() {
    let kernel = Kernel::Winograd(winograd::Tile::F4);
    for case in [
        dense(1, 4, 9, 9, 4, 3, 2, 1),
        dense(1, 4, 9, 9, 4, 5, 1, 2),
        dw(1, 4, 9, 9, 3, 1, 1),
    ] {
        let (x, wt, p) = operands(&case);
        let prepared = PreparedWeight::new(wt);
        assert!(
            conv2d_with_kernel(kernel, &x, &prepared, None, p, Activation::None, None).is_err(),
            "{case:?}"
        );
    }
}

#[test]
fn pointwise_matches_reference_mobilenet_shapes() {
    // The 1x1 convolutions of MobileNetV3-Large (register-blocked kernel on AVX-512 / AVX2): every
    // pixel-tile tail (12544, 3136, 784, 196, 49 pixels) and the SqueezeExcitation 1x1 maps.
    for case in [
        dense(1, 16, 112, 112, 64, 1, 1, 0),
        dense(2, 64, 56, 56, 24, 1, 1, 0),
        dense(1, 40, 28, 28, 240, 1, 1, 0),
        dense(3, 112, 14, 14, 672, 1, 1, 0),
        dense(1, 960, 7, 7, 160, 1, 1, 0),
        dense(8, 160, 7, 7, 960, 1, 1, 0),
        dense(2, 8, 3, 5, 16, 1, 1, 0),
        dense(1, 960, 1, 1, 240, 1, 1, 0),
        dense(8, 240, 1, 1, 960, 1, 1, 0),
        dense(5, 33, 1, 1, 8, 1, 1, 0),
        dense(2, 960, 7, 7, 160, 1, 1, 0),
        // RGB stems and other tiny reductions (C*K*K <= 32, or C <= 4 and C*K*K <= 160:
        // stem::conv's direct kernel), Wide ResNet's 7x7 stem among them
        dense(1, 3, 224, 224, 16, 3, 2, 1),
        dense(1, 3, 224, 224, 64, 7, 2, 3),
        dense(2, 3, 30, 27, 16, 7, 2, 3),
        dense(1, 4, 19, 17, 8, 5, 1, 2),
        dense(2, 3, 17, 13, 8, 3, 2, 1),
        dense(1, 2, 10, 11, 16, 3, 3, 2),
        dense(1, 3, 9, 9, 8, 3, 1, 0),
        dense(2, 1, 8, 7, 8, 5, 2, 2),
    ] {
        check(&case, Kernel::Dense);
    }
}

#[test]
fn linear_matches_reference() {
    for (n, k, o) in [
        (1, 960, 1280),
        (8, 1280, 1000),
        (3, 17, 5),
        (5, 40, 7),
        (2, 16, 4),
        // one image: one row at a time; two (AVX-512): blocks of 8 rows, a last one of 5 / 4
        (1, 40, 13),
        (2, 33, 21),
        (1, 100, 1003),
        (2, 64, 12),
        (1, 240, 960),
    ] {
        let x = rand_tensor(&[n, k], 30 + n as u64);
        let w = rand_tensor(&[o, k], 31);
        let b = rand_tensor(&[o], 32);
        for (bias, act) in [
            (false, Activation::None),
            (true, Activation::None),
            (true, Activation::Hardswish),
            (true, Activation::Relu),
        ] {
            let bb = bias.then_some(&b);
            let got = linear(&x, &w, bb, act).unwrap();
            let want = reference::linear(&x, &w, bb, act).unwrap();
            assert_eq!(got.dims(), &[n, o]);
            let scale = (k as f32).sqrt();
            assert!(
                max_diff(&got, &want) < 2e-5 * scale,
                "{n}x{k} -> {o}, bias {bias}, {act:?}"
            );
        }
    }
    let x = rand_tensor(&[2, 8], 33);
    assert!(linear(&x, &rand_tensor(&[3, 9], 34), None, Activation::None).is_err());
    assert!(linear(
        &x,
        &rand_tensor(&[3, 8], 34),
        Some(&rand_tensor(&[4], 35)),
        Activation::None
    )
    .is_err());
}

#[test]
fn linear_gives_an_image_the_same_floats_alone_or_in_a_batch() {
    // The server batches requests as they come: a request's answer must not depend on the batch
    // it ran in, so each image of a batch must get exactly the floats it gets alone. That holds
    // for the SIMD GEMV (AVX-512 and AVX2; every CI host has one); the scalar fallback (candle's
    // matmul, on CPUs without AVX2) makes no such promise.
    if cpu::level() == cpu::Level::Scalar {
        return;
    }
    let (k, o) = (960, 1280);
    let w = rand_tensor(&[o, k], 41);
    let b = rand_tensor(&[o], 42);
    for n in [2, 3, 5] {
        let x = rand_tensor(&[n, k], 40 + n as u64);
        let all = linear(&x, &w, Some(&b), Activation::Hardswish).unwrap();
        for j in 0..n {
            let xj = x.narrow(0, j, 1).unwrap();
            let alone = linear(&xj, &w, Some(&b), Activation::Hardswish).unwrap();
            let inb = all.narrow(0, j, 1).unwrap();
            assert_eq!(max_diff(&alone, &inb), 0.0, "image {j} of {n}");
        }
    }
}

/// A forward-pass-like body: many small parallel kernels in a row, and a result to check.
fn many_kernels(seed: usize) -> usize {
    use rayon::prelude::*;
    (0..200)
        .map(|i| {
            (0..64usize)
                .into_par_iter()
                .map(|j| j * (i + seed))
                .sum::<usize>()
        })
        .sum()
}

fn many_kernels_serial(seed: usize) -> usize {
    (0..200)
        .map(|i| (0..64usize).map(|j| j * (i + seed)).sum::<usize>())
        .sum()
}

#[test]
fn in_pool_nested_calls_run_the_body_once_and_return_its_value() {
    let v = in_pool(|| in_pool(|| many_kernels(3)) + in_pool(|| 1));
    assert_eq!(v, many_kernels_serial(3) + 1);
}

#[test]
fn in_pool_concurrent_forward_passes_all_finish_with_their_own_results() {
    // Several threads run "forward passes" at once, each one also nesting a second `in_pool`:
    // the pool-warming spinner must neither deadlock nor mix up results.
    let handles: Vec<_> = (0..6)
        .map(|t| {
            std::thread::spawn(move || {
                (0..20)
                    .map(|r| in_pool(|| many_kernels(t * 100 + r) + in_pool(|| many_kernels(r))))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for (t, h) in handles.into_iter().enumerate() {
        let got = h.join().expect("worker thread panicked");
        let want: Vec<_> = (0..20)
            .map(|r| many_kernels_serial(t * 100 + r) + many_kernels_serial(r))
            .collect();
        assert_eq!(got, want, "thread {t}");
    }
}

#[test]
fn packed_pointwise_matches_reference() {
    // Both packed layouts (8-channel panels, 48-channel vectors) of Wide ResNet's 1x1 convolutions,
    // on WRN shapes (channels reduced where that keeps the test quick) and on remainders: pixels
    // not a multiple of 16 or 8 (49, 196, 17, 1), K not a multiple of the 128-channel reduction
    // block (1, 130, 200, 300, 1100), 16/32-channel last panels (O = 16, 32, 80, 112), batches
    // 1-3, a weight split into output-channel groups of unequal size (1100 x 136: 9 + 8 panels).
    use packed1x1::Layout;
    let cases = [
        (1, 64, 56, 56, 128),
        (2, 256, 28, 28, 128),
        (1, 512, 14, 14, 256),
        (2, 1100, 14, 14, 136),
        (3, 1024, 7, 7, 64),
        (1, 300, 7, 7, 80),
        (2, 130, 5, 9, 112),
        (1, 200, 4, 4, 32),
        (2, 1, 3, 3, 16),
        (1, 17, 1, 17, 48),
        (3, 40, 1, 1, 16),
    ];
    let mut checked = 0;
    for (n, c, h, w, o) in cases {
        let case = dense(n, c, h, w, o, 1, 1, 0);
        let (x, wt, p) = operands(&case);
        let b = rand_tensor(&[o], 3);
        let r = rand_tensor(&[n, o, h, w], 4);
        for layout in [Layout::Panels8, Layout::ChannelVectors] {
            if !PointwiseWeight::supported(o, layout) {
                // not an AVX-512 CPU (or O not a multiple of the panel): refused, not a panic
                assert!(PointwiseWeight::new(&wt, layout).is_err());
                continue;
            }
            let pw = PointwiseWeight::new(&wt, layout).unwrap();
            assert_eq!(pw.layout(), layout);
            for (bb, act, rr) in [
                (None, Activation::None, None),
                (Some(&b), Activation::Relu, None),
                (Some(&b), Activation::Hardswish, None),
                (Some(&b), Activation::Relu, Some(&r)),
                (None, Activation::None, Some(&r)),
            ] {
                let want = reference::conv2d(&x, &wt, bb, p, act, rr).unwrap();
                let got = conv2d_pointwise(&x, &pw, bb, act, rr).unwrap();
                assert_eq!(got.dims(), want.dims());
                let scale = max_abs(&want).max(1.0);
                let diff = max_diff(&got, &want);
                assert!(
                    diff <= 2e-5 * scale,
                    "{layout:?} {case:?} bias {} {act:?} res {}: diff {diff} scale {scale}",
                    bb.is_some(),
                    rr.is_some()
                );
                checked += 1;
            }
        }
    }
    if cpu::level() == cpu::Level::Avx512 {
        assert!(checked >= 90, "{checked}");
    }
}

#[test]
fn kxk_channel_vectors_match_reference() {
    // The k x k convolutions on im2col + the reduction-blocked channel-vector kernel
    // (`conv2d_kxk_cv`): Wide ResNet's 7x7-output layers (channels reduced where that keeps the
    // test quick; 1152 x 9 = 10368 rows is several reduction blocks at batch 1 and 2, the last
    // one shorter) and remainders: 16/32-channel last panels (O = 16, 32, 80, 112), pixels not a
    // multiple of the 7-pixel tiles (5x9, 3x3, 1x1), stride 2 from odd and even sizes, padding
    // 0 and 1, 1x1 and 5x5 kernels, batches 1-9 (9: two im2col matrices of 8 and 1 images), with and
    // without bias.
    let cases = [
        (1, 1152, 7, 7, 64, 3, 1, 1),
        (2, 1152, 14, 14, 48, 3, 2, 1),
        (9, 64, 7, 7, 80, 3, 1, 1),
        (3, 200, 5, 9, 112, 3, 1, 1),
        (4, 40, 15, 15, 32, 3, 2, 1),
        (2, 24, 3, 3, 16, 3, 1, 0),
        (1, 33, 1, 1, 16, 3, 1, 1),
        (2, 30, 7, 7, 96, 5, 1, 2),
        (1, 300, 7, 7, 48, 1, 1, 0),
    ];
    let mut checked = 0;
    for (n, c, h, w, o, k, s, pad) in cases {
        let case = dense(n, c, h, w, o, k, s, pad);
        let (x, wt, p) = operands(&case);
        let b = rand_tensor(&[o], 3);
        if !packed1x1::cv_available(o) {
            // not an AVX-512 CPU: refused, not a panic
            assert!(KxkCvWeight::new(&wt).is_err());
            continue;
        }
        let kw = KxkCvWeight::new(&wt).unwrap();
        assert_eq!(
            (kw.out_channels(), kw.in_channels(), kw.kernel()),
            (o, c, k)
        );
        for (bb, act) in [
            (None, Activation::None),
            (Some(&b), Activation::Relu),
            (Some(&b), Activation::Hardswish),
        ] {
            let want = reference::conv2d(&x, &wt, bb, p, act, None).unwrap();
            let got = conv2d_kxk_cv(&x, &kw, bb, p, act).unwrap();
            assert_eq!(got.dims(), want.dims());
            let scale = max_abs(&want).max(1.0);
            let diff = max_diff(&got, &want);
            assert!(
                diff <= 2e-5 * scale,
                "{case:?} bias {} {act:?}: diff {diff} scale {scale}",
                bb.is_some()
            );
            checked += 1;
        }
    }
    if cpu::level() == cpu::Level::Avx512 {
        assert_eq!(checked, 27);
    }
}

#[test]
fn kxk_channel_vectors_check_shapes() {
    // a non-square kernel, O not a multiple of 16, wrong input channels, a wrong bias: errors
    assert!(KxkCvWeight::new(&rand_tensor(&[16, 8, 3, 1], 9)).is_err());
    assert!(KxkCvWeight::new(&rand_tensor(&[24, 8, 3, 3], 9)).is_err());
    if !packed1x1::cv_available(16) {
        return; // not an AVX-512 CPU
    }
    let kw = KxkCvWeight::new(&rand_tensor(&[16, 8, 3, 3], 9)).unwrap();
    let p = ConvParams {
        stride: 1,
        padding: 1,
        groups: 1,
    };
    let other = rand_tensor(&[1, 9, 5, 5], 9);
    assert!(conv2d_kxk_cv(&other, &kw, None, p, Activation::None).is_err());
    let x = rand_tensor(&[1, 8, 5, 5], 9);
    let bias = rand_tensor(&[15], 9);
    assert!(conv2d_kxk_cv(&x, &kw, Some(&bias), p, Activation::None).is_err());
    // too small for the kernel without padding
    let tiny = rand_tensor(&[1, 8, 2, 2], 9);
    let p0 = ConvParams { padding: 0, ..p };
    assert!(conv2d_kxk_cv(&tiny, &kw, None, p0, Activation::None).is_err());
    // an empty batch is an empty output
    let empty = Tensor::zeros((0, 8, 5, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
    let y = conv2d_kxk_cv(&empty, &kw, None, p, Activation::None).unwrap();
    assert_eq!(y.dims(), [0, 16, 5, 5]);
}

#[test]
fn packed_pointwise_checks_shapes() {
    let (x, wt, _) = operands(&dense(1, 8, 5, 5, 16, 1, 1, 0));
    // a 3x3 weight, wrong input channels, a residual of the wrong shape: errors, not panics
    assert!(
        PointwiseWeight::new(&rand_tensor(&[16, 8, 3, 3], 9), packed1x1::Layout::Panels8).is_err()
    );
    let Some(layout) = PointwiseWeight::layout_for(16, 25) else {
        return; // not an AVX-512 CPU
    };
    let pw = PointwiseWeight::new(&wt, layout).unwrap();
    let other = rand_tensor(&[1, 9, 5, 5], 9);
    assert!(conv2d_pointwise(&other, &pw, None, Activation::None, None).is_err());
    let bad = rand_tensor(&[1, 16, 4, 5], 9);
    assert!(conv2d_pointwise(&x, &pw, None, Activation::None, Some(&bad)).is_err());
    // an empty batch is an empty output
    let empty = Tensor::zeros((0, 8, 5, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
    let y = conv2d_pointwise(&empty, &pw, None, Activation::None, None).unwrap();
    assert_eq!(y.dims(), [0, 16, 5, 5]);
    assert_eq!(
        PointwiseWeight::layout_for(16, 49),
        Some(packed1x1::Layout::ChannelVectors)
    );
    assert_eq!(
        PointwiseWeight::layout_for(16, 3136),
        Some(packed1x1::Layout::Panels8)
    );
    assert_eq!(
        PointwiseWeight::layout_for(8, 49),
        Some(packed1x1::Layout::Panels8)
    );
}

/// One inverted residual for the fused-block tests: weights, biases, activations.
struct Block {
    expand: Option<(Tensor, Tensor)>,
    dw: (Tensor, Tensor),
    project: Option<(Tensor, Tensor)>,
    k: usize,
    stride: usize,
    act: Activation,
}

impl Block {
    #[allow(clippy::too_many_arguments)]
    fn new(
        c: usize,
        e: usize,
        o: Option<usize>,
        k: usize,
        stride: usize,
        expand: bool,
        act: Activation,
        seed: u64,
    ) -> Self {
        let e = if expand { e } else { c };
        let scaled = |shape: &[usize], seed: u64, fan_in: usize| {
            (rand_tensor(shape, seed) * (1.0 / (fan_in as f64).sqrt())).unwrap()
        };
        Block {
            expand: expand.then(|| (scaled(&[e, c, 1, 1], seed, c), rand_tensor(&[e], seed + 1))),
            dw: (
                scaled(&[e, 1, k, k], seed + 2, k * k),
                rand_tensor(&[e], seed + 3),
            ),
            project: o.map(|o| {
                (
                    scaled(&[o, e, 1, 1], seed + 4, e),
                    rand_tensor(&[o], seed + 5),
                )
            }),
            k,
            stride,
            act,
        }
    }

    fn convs(&self) -> (Option<BlockConv<'_>>, BlockConv<'_>, Option<BlockConv<'_>>) {
        fn conv(t: &(Tensor, Tensor), act: Activation) -> BlockConv<'_> {
            BlockConv {
                weight: &t.0,
                bias: Some(&t.1),
                act,
            }
        }
        (
            self.expand.as_ref().map(|t| conv(t, self.act)),
            conv(&self.dw, self.act),
            self.project.as_ref().map(|t| conv(t, Activation::None)),
        )
    }

    /// The layers one by one through `conv`.
    fn layers(
        &self,
        x: &Tensor,
        res: Option<&Tensor>,
        conv: impl Fn(
            &Tensor,
            &Tensor,
            &Tensor,
            ConvParams,
            Activation,
            Option<&Tensor>,
        ) -> Result<Tensor>,
    ) -> Tensor {
        let pw = ConvParams {
            stride: 1,
            padding: 0,
            groups: 1,
        };
        let mut y = x.clone();
        if let Some((w, b)) = &self.expand {
            y = conv(&y, w, b, pw, self.act, None).unwrap();
        }
        let e = y.dims()[1];
        let p = ConvParams {
            stride: self.stride,
            padding: self.k / 2,
            groups: e,
        };
        y = conv(&y, &self.dw.0, &self.dw.1, p, self.act, None).unwrap();
        if let Some((w, b)) = &self.project {
            y = conv(&y, w, b, pw, Activation::None, res).unwrap();
        }
        y
    }

    /// The fused kernel called directly (any map size), on the current rayon pool.
    fn fused_direct(&self, x: &Tensor, res: Option<&Tensor>) -> Tensor {
        let (n, c, h, w) = x.dims4().unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (xv, rv) = (flat(x), res.map(flat));
        let ex = self.expand.as_ref().map(|(w, b)| (flat(w), flat(b)));
        let pr = self.project.as_ref().map(|(w, b)| (flat(w), flat(b)));
        let (dw_w, dw_b) = (flat(&self.dw.0), flat(&self.dw.1));
        let e = ex.as_ref().map_or(c, |(_, b)| b.len());
        fn pw(t: &Option<(Vec<f32>, Vec<f32>)>, act: Activation) -> Option<fused::Pointwise<'_>> {
            t.as_ref().map(|(w, b)| fused::Pointwise {
                w,
                b: Some(b),
                act,
                o: b.len(),
            })
        }
        let (k, s) = (self.k, self.stride);
        let (oh, ow) = ((h + 2 * (k / 2) - k) / s + 1, (w + 2 * (k / 2) - k) / s + 1);
        let o = pr.as_ref().map_or(e, |(_, b)| b.len());
        let out = fused::inverted_residual(
            &xv,
            n,
            c,
            h,
            w,
            pw(&ex, self.act),
            fused::Depthwise {
                w: &dw_w,
                b: Some(&dw_b),
                act: self.act,
                k,
                stride: s,
            },
            pw(&pr, Activation::None),
            rv.as_deref(),
        );
        Tensor::from_vec(out, (n, o, oh, ow), &Device::Cpu).unwrap()
    }
}

#[test]
fn fused_inverted_residual_matches_layers_on_mobilenet_blocks() {
    // MobileNetV3-Large's blocks on maps of at least FUSE_MIN_PIXELS: (c, e, o, k, stride, expand,
    // act, input side, residual, squeeze-excitation (no project fused))
    let blocks = [
        (16, 16, 16, 3, 1, false, Activation::Relu, 112, true, false),
        (16, 64, 24, 3, 2, true, Activation::Relu, 112, false, false),
        (24, 72, 24, 3, 1, true, Activation::Relu, 56, true, false),
        (24, 72, 40, 5, 2, true, Activation::Relu, 56, false, true),
    ];
    let mut fused_runs = 0;
    for (i, &(c, e, o, k, s, expand, act, side, residual, se)) in blocks.iter().enumerate() {
        for n in [1, 2] {
            let b = Block::new(c, e, (!se).then_some(o), k, s, expand, act, 10 * i as u64);
            let x = rand_tensor(&[n, c, side, side], i as u64 + 100);
            let res = residual.then_some(&x);
            let want = b.layers(&x, res, |x, w, b, p, a, r| {
                reference::conv2d(x, w, Some(b), p, a, r)
            });
            let unfused = b.layers(&x, res, |x, w, b, p, a, r| conv2d(x, w, Some(b), p, a, r));
            let (ex, dw, pr) = b.convs();
            let Some(got) = inverted_residual(&x, ex, dw, s, pr, res).unwrap() else {
                // neither an AVX-512 nor an AVX2 CPU, or IMGCLASS_FUSE=0
                assert!(cpu::level() == cpu::Level::Scalar || !fuse_enabled());
                continue;
            };
            fused_runs += 1;
            let d = max_diff(&got, &want);
            assert!(
                d <= 2e-5 * max_abs(&want).max(1.0),
                "block {i} batch {n}: {d}"
            );
            // the same register blocks as the unfused kernels: the same floats
            assert_eq!(max_diff(&got, &unfused), 0.0, "block {i} batch {n}");
        }
    }
    if cpu::level() != cpu::Level::Scalar && fuse_enabled() {
        assert_eq!(fused_runs, 8);
    }
}

#[test]
fn fused_inverted_residual_matches_reference_on_odd_shapes() {
    if !fused::available(8, 16, Some(8), 16) {
        return; // neither an AVX-512 nor an AVX2 CPU
    }
    // (n, c, e, project outputs, k, stride, h, w, expand, residual): many bands per image (the rows
    // two bands share carried over), runs of bands split over 1 and 3 threads, heights and widths
    // not a multiple of the band or the register block, stride 2 on odd sizes, no expand, no
    // project, channel counts just above a multiple of 8
    let cases = [
        (1, 8, 16, Some(8), 3, 1, 70, 20, true, true),
        (2, 8, 16, Some(8), 3, 1, 70, 20, true, false),
        (1, 5, 24, Some(16), 5, 2, 61, 33, true, false),
        (3, 16, 16, Some(16), 3, 1, 45, 17, false, true),
        (1, 16, 40, None, 5, 1, 50, 23, true, false),
        (2, 24, 24, None, 3, 2, 39, 40, false, false),
        (1, 3, 72, Some(24), 3, 2, 90, 90, true, false),
        (1, 24, 72, Some(24), 3, 1, 9, 12, true, true),
        (1, 12, 64, Some(8), 7, 1, 30, 30, true, false),
    ];
    for threads in [1, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        for (i, &(n, c, e, o, k, s, h, w, expand, residual)) in cases.iter().enumerate() {
            let project = o.is_some();
            let b = Block::new(c, e, o, k, s, expand, Activation::Hardswish, 7 * i as u64);
            let x = rand_tensor(&[n, c, h, w], 50 + i as u64);
            let res = residual.then(|| {
                let ch = o.unwrap_or(if expand { e } else { c });
                let (oh, ow) = ((h + 2 * (k / 2) - k) / s + 1, (w + 2 * (k / 2) - k) / s + 1);
                rand_tensor(&[n, ch, oh, ow], 90 + i as u64)
            });
            let res = res.filter(|_| project);
            let want = b.layers(&x, res.as_ref(), |x, w, b, p, a, r| {
                reference::conv2d(x, w, Some(b), p, a, r)
            });
            let got = pool.install(|| b.fused_direct(&x, res.as_ref()));
            let d = max_diff(&got, &want);
            assert!(
                d <= 2e-5 * max_abs(&want).max(1.0),
                "case {i}, {threads} threads: {d}"
            );
        }
    }
}

#[test]
fn fused_inverted_residual_checks_shapes() {
    let b = Block::new(16, 64, Some(24), 3, 2, true, Activation::Relu, 1);
    let x = rand_tensor(&[1, 16, 56, 56], 2);
    let (ex, dw, pr) = b.convs();
    // wrong input channels, a residual of the wrong shape, a residual without a project conv,
    // a mis-shaped bias: errors, not panics
    let other = rand_tensor(&[1, 8, 56, 56], 3);
    assert!(inverted_residual(&other, ex, dw, 2, pr, None).is_err());
    let bad = rand_tensor(&[1, 24, 56, 56], 4);
    assert!(inverted_residual(&x, ex, dw, 2, pr, Some(&bad)).is_err());
    let dw_out = rand_tensor(&[1, 64, 28, 28], 5);
    assert!(inverted_residual(&x, ex, dw, 2, None, Some(&dw_out)).is_err());
    let short = rand_tensor(&[10], 6);
    let bad_bias = BlockConv {
        bias: Some(&short),
        ..dw
    };
    assert!(inverted_residual(&x, ex, bad_bias, 2, pr, None).is_err());
    // a map below FUSE_MIN_PIXELS and an empty batch are left to the layers
    let small = rand_tensor(&[1, 16, 14, 14], 7);
    assert!(inverted_residual(&small, ex, dw, 2, pr, None)
        .unwrap()
        .is_none());
    let empty = Tensor::zeros((0, 16, 56, 56), candle_core::DType::F32, &Device::Cpu).unwrap();
    let y = inverted_residual(&empty, ex, dw, 2, pr, None).unwrap();
    assert!(y.is_none_or(|y| y.dims() == [0, 24, 28, 28]));
}

#[test]
fn scratch_pool_gives_nested_calls_their_own_buffer() {
    // A call made while another holds a scratch buffer (a forward pass stolen by a waiting rayon
    // thread, or the fallback model's pass beside the primary's) must get a different buffer of the
    // length it asked for, and leave the outer buffer's contents alone.
    winograd::with_scratch(1000, |outer| {
        assert_eq!(outer.len(), 1000);
        outer.fill(1.5);
        let outer_ptr = outer.as_ptr();
        winograd::with_scratch(3000, |inner| {
            assert_eq!(inner.len(), 3000);
            assert_ne!(inner.as_ptr(), outer_ptr);
            inner.fill(-2.0);
        });
        assert!(outer.iter().all(|&v| v == 1.5));
    });
    // A buffer returned to the pool is handed out again (contents unspecified, length as asked).
    let sum: f32 = winograd::with_scratch(2000, |s| {
        s.fill(0.25);
        s.iter().sum()
    });
    assert_eq!(sum, 500.0);
}

#[test]
fn resize_horizontal_pass_matches_the_tap_sums() {
    // Pillow's fixed-point horizontal pass: every kernel size the AVX-512 pass takes (1-10 taps),
    // windows spread over the row as a downscale spreads them, the last ones running into the end
    // of the row (read from the zero-padded copy), several rows. Ground truth: the plain sum over
    // each pixel's unexpanded taps; the scalar reference and (on AVX-512 CPUs) the kernel must
    // give exactly those bytes.
    let mut seed = 7u32;
    let mut next = move || {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
        seed >> 8
    };
    let (bits, half) = (22u32, 1i32 << 21);
    let mut simd_checked = 0;
    let mut pairs_checked = 0;
    let mut blocks_checked = Vec::new();
    for ksize in 1..=resize::MAX_TAPS {
        for (in_px, n, rows) in [
            (40usize, 17usize, 3usize),
            (640, 224, 2),
            (640, 309, 2),
            (12, 5, 1),
        ] {
            let line_len = in_px * 3;
            let src: Vec<u8> = (0..rows * line_len).map(|_| next() as u8).collect();
            // Window starts from 0 to the last pixel whose taps fit in the row.
            let last = in_px.saturating_sub(ksize);
            let starts: Vec<usize> = (0..n).map(|x| x * last / (n - 1).max(1) * 3).collect();
            // Non-negative weights summing to about 2^22; taps past a random count are zero.
            let mut k = vec![0i32; n * ksize];
            for row in k.chunks_exact_mut(ksize) {
                let len = 1 + next() as usize % ksize;
                for v in &mut row[..len] {
                    *v = (next() % (1 << 22) as u32) as i32 / len as i32;
                }
            }
            let mut want = vec![0u8; rows * n * 3];
            for r in 0..rows {
                let line = &src[r * line_len..][..line_len];
                for (x, &s) in starts.iter().enumerate() {
                    for ch in 0..3 {
                        let mut sum = half;
                        for t in 0..ksize {
                            let kv = k[x * ksize + t];
                            if kv != 0 {
                                sum += kv * i32::from(line[s + 3 * t + ch]);
                            }
                        }
                        want[(r * n + x) * 3 + ch] = (sum >> bits).clamp(0, 255) as u8;
                    }
                }
            }
            let e = resize::expand(&k, ksize);
            let pass = resize::Pass {
                starts: &starts,
                e: &e,
                half,
                bits,
            };
            let mut got = vec![0u8; rows * n * 3];
            resize::horizontal_rows_scalar(&src, line_len, rows, &pass, &mut got);
            assert_eq!(got, want, "scalar, {ksize} taps, {in_px} -> {n}");
            if resize::available(ksize) {
                let mut got = vec![0u8; rows * n * 3];
                resize::horizontal_rows(&src, line_len, rows, &pass, &mut got);
                assert_eq!(got, want, "avx512, {ksize} taps, {in_px} -> {n}");
                simd_checked += 1;
            }
            if let Some(pairs) = resize::Pairs::new(&starts, &k, ksize, half, bits) {
                let mut got = vec![0u8; rows * n * 3];
                pairs.rows(&src, line_len, rows, &mut got);
                assert_eq!(got, want, "avx2 pairs, {ksize} taps, {in_px} -> {n}");
                pairs_checked += 1;
            }
            if let Some(blocks) = resize::Blocks::new(&starts, &k, ksize, half, bits) {
                let mut got = vec![0u8; rows * n * 3];
                blocks.rows(&src, line_len, rows, &mut got);
                assert_eq!(got, want, "vbmi blocks, {ksize} taps, {in_px} -> {n}");
                blocks_checked.push((ksize, in_px, if in_px == 640 { n } else { 0 }));
            }
        }
    }
    if cpu::level() == cpu::Level::Avx512 {
        assert_eq!(simd_checked, 4 * resize::MAX_TAPS);
    }
    if cpu::level() != cpu::Level::Scalar {
        assert_eq!(pairs_checked, 4 * resize::MAX_TAPS);
    }
    assert!(!resize::available(resize::MAX_TAPS + 1) && !resize::available(0));
    // The VBMI blocks take the downscales whose 16-pixel blocks read at most 128 bytes: 640 ->
    // 309 (2.07x, the server's 640x480 photo) and the small rows at every tap count; 640 -> 224
    // (2.9x: 15 * 2.9 * 3 = 128 bytes before the taps) never.
    if resize::vbmi_available() {
        for ksize in 1..=resize::MAX_TAPS {
            for in_px in [40, 12] {
                assert!(
                    blocks_checked.contains(&(ksize, in_px, 0)),
                    "{ksize} {in_px}"
                );
            }
            assert!(blocks_checked.contains(&(ksize, 640, 309)), "{ksize}");
            assert!(!blocks_checked.contains(&(ksize, 640, 224)), "{ksize}");
        }
    }
}

#[test]
fn resize_vertical_row_matches_the_tap_sums() {
    // Pillow's fixed-point vertical pass (`resize::vertical_row`, compiled for the CPU's SIMD
    // level): row widths around the 64-byte block (whole blocks, a tail, a tail alone), 1 to 12
    // taps, rows a stride apart with bytes between them the pass must not read into the sums.
    let mut seed = 11u32;
    let mut next = move || {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
        seed >> 8
    };
    let (bits, half) = (22u32, 1i32 << 21);
    for taps in 1..=12usize {
        for width in [1usize, 5, 63, 64, 65, 128, 200, 672] {
            let stride = width + 7;
            let first = 3;
            let src: Vec<u8> = (0..first + taps * stride).map(|_| next() as u8).collect();
            let k: Vec<i32> = (0..taps)
                .map(|_| (next() % (1 << 22) as u32) as i32 / taps as i32)
                .collect();
            let want: Vec<u8> = (0..width)
                .map(|j| {
                    let sum = k.iter().enumerate().fold(half, |acc, (t, &kv)| {
                        acc + kv * i32::from(src[first + t * stride + j])
                    });
                    (sum >> bits).clamp(0, 255) as u8
                })
                .collect();
            let mut got = vec![0u8; width];
            resize::vertical_row(&src, first, stride, &k, half, bits, &mut got);
            assert_eq!(got, want, "{taps} taps, width {width}");
        }
    }
    // saturation at both ends: weights summing past 1.0 and rounding below 0 clip to 255 and 0
    let src = [255u8; 8];
    let mut got = [0u8; 4];
    resize::vertical_row(&src, 0, 4, &[1 << 22, 1 << 22], half, bits, &mut got);
    assert_eq!(got, [255; 4]);
    resize::vertical_row(&src, 0, 4, &[-(1 << 22), 0], half, bits, &mut got);
    assert_eq!(got, [0; 4]);
}

#[test]
fn packed_gemm_matches_a_plain_triple_loop() {
    // The Winograd GEMMs on a packed weight (`packed1x1::gemm_serial`): input rows and output rows
    // with strides longer than the row, both loop orders (pixel tiles outermost for weights up to
    // 512 KiB, weight panels outermost above), K not a multiple of the 128-channel reduction block
    // (1, 5, 200, 300), pixels not a multiple of 16 (1, 17, 49), and the floats past each row,
    // which must stay untouched.
    let cases = [
        (8, 1, 1),
        (16, 5, 17),
        (128, 128, 784),
        (64, 200, 49),
        (256, 256, 100),
        (512, 300, 49),
        (512, 512, 33),
    ];
    if cpu::level() != cpu::Level::Avx512 {
        assert!(!packed1x1::available(8));
        return;
    }
    for (o, k, t) in cases {
        let (xs, ds) = (t + 19, t + 7);
        let x: Vec<f32> = (0..k * xs)
            .map(|i| ((i * 7919 % 1013) as f32 - 506.0) / 512.0)
            .collect();
        let w: Vec<f32> = (0..o * k)
            .map(|i| ((i * 104729 % 997) as f32 - 498.0) / 997.0)
            .collect();
        let wp = packed1x1::pack(&w, o, k);
        let mut dst = vec![f32::NAN; o * ds];
        packed1x1::gemm_serial(&wp, &x, xs, &mut dst, ds, o, k, t);
        let mut worst = 0f64;
        for oi in 0..o {
            for j in 0..ds {
                let got = dst[oi * ds + j];
                if j >= t {
                    assert!(
                        got.is_nan(),
                        "o {o} k {k} t {t}: wrote past the row at ({oi}, {j})"
                    );
                    continue;
                }
                let want: f64 = (0..k)
                    .map(|kk| f64::from(w[oi * k + kk]) * f64::from(x[kk * xs + j]))
                    .sum();
                let scale = (k as f64).sqrt().max(1.0);
                worst = worst.max((f64::from(got) - want).abs() / scale);
            }
        }
        assert!(worst <= 1e-5, "o {o} k {k} t {t}: error {worst}");
    }
}
