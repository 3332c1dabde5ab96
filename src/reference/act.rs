//! Twin of shaders/act.wgsl.

pub fn relu_forward(x: &[f64]) -> Vec<f64> {
    x.iter().map(|&v| v.max(0.0)).collect()
}

/// `dx = dy` where the forward output `y > 0`, else 0.
pub fn relu_backward(dy: &[f64], y: &[f64]) -> Vec<f64> {
    dy.iter()
        .zip(y)
        .map(|(&g, &v)| if v > 0.0 { g } else { 0.0 })
        .collect()
}
