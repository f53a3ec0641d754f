//! torchvision's 1000 ImageNet category names (`weights.meta["categories"]`), and top-k.
//!
//! The names live in one file, `src/data/imagenet_categories.txt`, one per line, in class-index order.

use std::sync::OnceLock;

const CATEGORIES_TXT: &str = include_str!("data/imagenet_categories.txt");

/// Number of ImageNet classes.
pub const NUM_CLASSES: usize = 1000;

/// All category names in class-index order.
pub fn categories() -> &'static [&'static str] {
    static CATS: OnceLock<Vec<&'static str>> = OnceLock::new();
    CATS.get_or_init(|| CATEGORIES_TXT.lines().collect())
}

/// One prediction: the category, its index and its softmax probability.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Prediction {
    pub label: String,
    pub index: usize,
    pub probability: f32,
}

/// Softmax over `logits` (numerically stable), then the `k` most probable classes,
/// sorted by probability descending (ties: lower index first).
pub fn top_k(logits: &[f32], k: usize) -> Vec<Prediction> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f64> = logits.iter().map(|&l| f64::from(l - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    // a total order (NaN last, ties by index), so selecting then sorting the k first gives
    // exactly the first k of a full sort, without sorting all 1000 classes per image
    let key = |i: usize| {
        let l = logits[i];
        if l.is_nan() {
            f32::NEG_INFINITY
        } else {
            l
        }
    };
    let cmp = |a: &usize, b: &usize| key(*b).total_cmp(&key(*a)).then(a.cmp(b));
    let k = k.min(order.len());
    if k == 0 {
        return Vec::new();
    }
    if k < order.len() {
        order.select_nth_unstable_by(k - 1, cmp);
        order.truncate(k);
    }
    order.sort_unstable_by(cmp);
    let cats = categories();
    order
        .into_iter()
        .map(|i| Prediction {
            label: cats.get(i).copied().unwrap_or("unknown").to_string(),
            index: i,
            probability: (exps[i] / sum) as f32,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn there_are_1000_torchvision_categories() {
        let c = categories();
        assert_eq!(c.len(), NUM_CLASSES);
        assert_eq!(c[0], "tench");
        assert_eq!(c[281], "tabby");
        assert_eq!(c[999], "toilet tissue");
    }

    #[test]
    fn top_k_is_sorted_softmax() {
        let mut logits = vec![0.0f32; NUM_CLASSES];
        logits[5] = 3.0;
        logits[7] = 2.0;
        logits[1] = 1.0;
        let p = top_k(&logits, 3);
        assert_eq!(p.iter().map(|p| p.index).collect::<Vec<_>>(), vec![5, 7, 1]);
        assert!(p[0].probability > p[1].probability && p[1].probability > p[2].probability);
        let total: f32 = top_k(&logits, NUM_CLASSES)
            .iter()
            .map(|p| p.probability)
            .sum();
        assert!((total - 1.0).abs() < 1e-4, "{total}");
    }

    #[test]
    fn top_k_is_the_head_of_a_full_stable_sort() {
        // many ties (values on a coarse grid), a NaN, every k
        let mut state = 0x9e37_79b9_u32;
        let logits: Vec<f32> = (0..NUM_CLASSES)
            .map(|i| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                if i == 17 {
                    f32::NAN
                } else {
                    ((state >> 24) % 40) as f32 * 0.25 - 5.0
                }
            })
            .collect();
        let mut full: Vec<usize> = (0..NUM_CLASSES).filter(|&i| i != 17).collect();
        full.sort_by(|&a, &b| logits[b].total_cmp(&logits[a])); // stable: ties by index
        full.push(17);
        for k in [1, 2, 5, 10, 999, 1000, 1001] {
            let got: Vec<usize> = top_k(&logits, k).iter().map(|p| p.index).collect();
            assert_eq!(got, full[..k.min(NUM_CLASSES)], "k = {k}");
        }
        assert!(top_k(&logits, 0).is_empty());
    }
}
