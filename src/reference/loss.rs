//! Twin of shaders/loss.wgsl.

/// Mean cross-entropy over the first `valid` rows, its gradient (zero rows past `valid`) and the
/// number of correct predictions (first maximal logit).
pub fn softmax_xent(
    logits: &[f64],
    labels: &[u32],
    rows: usize,
    classes: usize,
    valid: usize,
) -> (f64, Vec<f64>, u32) {
    let mut grad = vec![0.0; rows * classes];
    let (mut loss, mut correct) = (0.0, 0);
    for r in 0..valid {
        let z = &logits[r * classes..(r + 1) * classes];
        let mut arg = 0;
        for j in 1..classes {
            if z[j] > z[arg] {
                arg = j;
            }
        }
        let m = z[arg];
        let s: f64 = z.iter().map(|v| (v - m).exp()).sum();
        let label = labels[r] as usize;
        loss += m + s.ln() - z[label];
        correct += (arg == label) as u32;
        for j in 0..classes {
            let p = (z[j] - m).exp() / s;
            grad[r * classes + j] = (p - (j == label) as u32 as f64) / valid as f64;
        }
    }
    (loss / valid as f64, grad, correct)
}
