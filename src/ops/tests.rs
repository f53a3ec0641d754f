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

fn check(case: &Case, expect: Kernel) {
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
    let p = ConvParams {
        stride,
        padding: pad,
        groups,
    };
    let x = rand_tensor(&[n, c, h, w], 1 + (n * c * h) as u64);
    let wt = rand_tensor(&[o, c / groups, k, k], 2 + (o * k) as u64);
    let b = rand_tensor(&[o], 3);
    assert_eq!(
        select_kernel(&x, &wt, p),
        expect,
        "kernel choice for {n}x{c}x{h}x{w} k{k} s{stride} p{pad} g{groups}"
    );
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
        let got = conv2d(&x, &wt, bb, p, act, rr).unwrap();
        assert_eq!(got.dims(), want.dims());
        let scale = want
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .max(1.0);
        let diff = (got - &want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            diff <= 2e-5 * scale,
            "max abs diff {diff} (scale {scale}) for {n}x{c}x{h}x{w} -> {o} k{k} s{stride} p{pad} g{groups}, bias {with_b}, {act:?}, residual {with_r}"
        );
    }
}

fn dw(n: usize, c: usize, h: usize, w: usize, k: usize, stride: usize, pad: usize) -> Case {
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

#[test]
fn depthwise_matches_reference_mobilenet_shapes() {
    for case in [
        dw(1, 16, 112, 112, 3, 1, 1),
        dw(1, 64, 112, 112, 3, 2, 1),
        dw(2, 72, 56, 56, 5, 2, 2),
        dw(1, 120, 28, 28, 5, 1, 2),
        dw(2, 240, 28, 28, 3, 2, 1),
        dw(3, 200, 14, 14, 3, 1, 1),
        dw(2, 672, 14, 14, 5, 2, 2),
        dw(1, 960, 7, 7, 5, 1, 2),
    ] {
        check(&case, Kernel::Depthwise);
    }
}

#[test]
fn depthwise_matches_reference_odd_shapes() {
    for case in [
        dw(2, 3, 9, 13, 3, 1, 1),
        dw(3, 5, 17, 10, 3, 2, 1),
        dw(1, 4, 11, 11, 5, 2, 2),
        dw(2, 6, 8, 8, 3, 1, 0),
        dw(2, 6, 9, 7, 3, 2, 0),
        dw(1, 2, 5, 5, 5, 1, 0),
        dw(1, 3, 33, 35, 3, 3, 1),
        dw(4, 7, 1, 1, 1, 1, 0),
        dw(2, 8, 20, 19, 7, 2, 3),
    ] {
        check(&case, Kernel::Depthwise);
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

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
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
fn max_pool2d_matches_reference() {
    // The ResNet stem (3, 2, 1) on negative-heavy inputs: padding must never win.
    for (shape, k, s, p) in [
        ([1, 64, 112, 112], 3, 2, 1),
        ([2, 3, 9, 8], 3, 2, 1),
        ([2, 3, 10, 10], 2, 2, 0),
        ([1, 2, 7, 7], 3, 1, 1),
    ] {
        let x = (rand_tensor(&shape, 25) - 0.9).unwrap();
        let got = pool::max_pool2d(&x, k, s, p).unwrap();
        let want = pool::reference::max_pool2d(&x, k, s, p).unwrap();
        assert_eq!(max_diff(&got, &want), 0.0, "{shape:?} k{k} s{s} p{p}");
    }
}

#[test]
fn pointwise_matches_reference_mobilenet_shapes() {
    // The 1x1 convolutions of MobileNetV3-Large (register-blocked kernel on AVX-512 CPUs): every
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
        // RGB stems (im2col over phase planes + the same kernel)
        dense(1, 3, 224, 224, 16, 3, 2, 1),
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
