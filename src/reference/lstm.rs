//! Twin of shaders/lstm.wgsl and of the whole masked LSTM layer (`nn::lstm`) in f64: forward over
//! a sequence from zero states, backpropagation through time, and the masked closed form of
//! METHOD.md section 1 for each of the eight gate matrices (masks and resets decided in f32 as
//! `reference::masked` does). Gate order i, f, g (candidate), o; every sequence array is
//! time-major: row (t, b) = t * batch + b.

use super::masked;

#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub batch: usize,
    pub steps: usize,
    pub input: usize,
    pub hidden: usize,
}

/// Twin of `swap01`: `(d0, d1, d2)` -> `(d1, d0, d2)`.
pub fn swap01(src: &[f64], d0: usize, d1: usize, d2: usize) -> Vec<f64> {
    let mut out = vec![0.0; d0 * d1 * d2];
    for a0 in 0..d0 {
        for a1 in 0..d1 {
            for c in 0..d2 {
                out[(a1 * d0 + a0) * d2 + c] = src[(a0 * d1 + a1) * d2 + c];
            }
        }
    }
    out
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// The forward's states: `h`, `c` (T, B, H) and the gate activations `gates` (T, B, 4H).
pub struct Forward {
    pub h: Vec<f64>,
    pub c: Vec<f64>,
    pub gates: Vec<f64>,
}

/// The plain LSTM with weights `p_ih` (4H, I), `p_hh` (4H, H), `bias` (4H) on `x` (T, B, I).
pub fn forward(x: &[f64], p_ih: &[f64], p_hh: &[f64], bias: &[f64], d: Dims) -> Forward {
    let (bn, tn, inp, hn) = (d.batch, d.steps, d.input, d.hidden);
    let g4 = 4 * hn;
    let mut h = vec![0.0; tn * bn * hn];
    let mut c = vec![0.0; tn * bn * hn];
    let mut gates = vec![0.0; tn * bn * g4];
    for t in 0..tn {
        for b in 0..bn {
            let row = t * bn + b;
            let mut z = bias.to_vec();
            for (k, zk) in z.iter_mut().enumerate() {
                for i in 0..inp {
                    *zk += x[row * inp + i] * p_ih[k * inp + i];
                }
                if t > 0 {
                    for j in 0..hn {
                        *zk += h[(row - bn) * hn + j] * p_hh[k * hn + j];
                    }
                }
            }
            for j in 0..hn {
                let (ig, fg) = (sigmoid(z[j]), sigmoid(z[hn + j]));
                let (gg, og) = (z[2 * hn + j].tanh(), sigmoid(z[3 * hn + j]));
                let c_prev = if t > 0 { c[(row - bn) * hn + j] } else { 0.0 };
                let ct = fg * c_prev + ig * gg;
                c[row * hn + j] = ct;
                h[row * hn + j] = og * ct.tanh();
                for (g, v) in [ig, fg, gg, og].into_iter().enumerate() {
                    gates[row * g4 + g * hn + j] = v;
                }
            }
        }
    }
    Forward { h, c, gates }
}

/// Gradients of the plain LSTM given `dh` = dL/dh_t for every step (T, B, H): dx (T, B, I),
/// dbias (4H), dP_ih (4H, I), dP_hh (4H, H), and the pre-activation gate gradients (T, B, 4H).
pub struct Backward {
    pub dx: Vec<f64>,
    pub d_bias: Vec<f64>,
    pub d_p_ih: Vec<f64>,
    pub d_p_hh: Vec<f64>,
    pub dgates: Vec<f64>,
}

pub fn backward(
    x: &[f64],
    p_ih: &[f64],
    p_hh: &[f64],
    f: &Forward,
    dh_out: &[f64],
    d: Dims,
) -> Backward {
    let (bn, tn, inp, hn) = (d.batch, d.steps, d.input, d.hidden);
    let g4 = 4 * hn;
    let mut dgates = vec![0.0; tn * bn * g4];
    let mut dc_next = vec![0.0; bn * hn]; // dL/dc_{t+1} * f_{t+1}
    for t in (0..tn).rev() {
        let mut carry = vec![0.0; bn * hn];
        for b in 0..bn {
            let row = t * bn + b;
            for j in 0..hn {
                let mut dh = dh_out[row * hn + j];
                if t + 1 < tn {
                    for k in 0..g4 {
                        dh += dgates[(row + bn) * g4 + k] * p_hh[k * hn + j];
                    }
                }
                let gt = &f.gates[row * g4..(row + 1) * g4];
                let (ig, fg, gg, og) = (gt[j], gt[hn + j], gt[2 * hn + j], gt[3 * hn + j]);
                let tc = f.c[row * hn + j].tanh();
                let c_prev = if t > 0 { f.c[(row - bn) * hn + j] } else { 0.0 };
                let dc = dh * og * (1.0 - tc * tc) + dc_next[b * hn + j];
                let dg = &mut dgates[row * g4..(row + 1) * g4];
                dg[j] = dc * gg * ig * (1.0 - ig);
                dg[hn + j] = dc * c_prev * fg * (1.0 - fg);
                dg[2 * hn + j] = dc * ig * (1.0 - gg * gg);
                dg[3 * hn + j] = dh * tc * og * (1.0 - og);
                carry[b * hn + j] = dc * fg;
            }
        }
        dc_next = carry;
    }
    let rows = tn * bn;
    let mut dx = vec![0.0; rows * inp];
    let mut d_bias = vec![0.0; g4];
    let mut d_p_ih = vec![0.0; g4 * inp];
    let mut d_p_hh = vec![0.0; g4 * hn];
    for r in 0..rows {
        for k in 0..g4 {
            let g = dgates[r * g4 + k];
            d_bias[k] += g;
            for i in 0..inp {
                dx[r * inp + i] += g * p_ih[k * inp + i];
                d_p_ih[k * inp + i] += g * x[r * inp + i];
            }
            if r >= bn {
                for j in 0..hn {
                    d_p_hh[k * hn + j] += g * f.h[(r - bn) * hn + j];
                }
            }
        }
    }
    Backward {
        dx,
        d_bias,
        d_p_ih,
        d_p_hh,
        dgates,
    }
}

/// One layer's parameters; thresholds `None` for the dense variant.
pub struct Params {
    pub w_ih: Vec<f64>,
    pub w_hh: Vec<f64>,
    pub bias: Vec<f64>,
    pub t_ih: Option<Vec<f64>>,
    pub t_hh: Option<Vec<f64>>,
}

/// The effective weight of one stacked (4H, cols) weight: (P, thresholds after any reset,
/// [before, after] counts per gate matrix, reset per gate matrix).
#[allow(clippy::type_complexity)]
pub fn effective(
    w: &[f64],
    t: Option<&Vec<f64>>,
    hidden: usize,
    cols: usize,
) -> (Vec<f64>, Option<Vec<f64>>, Vec<[u32; 2]>, Vec<bool>) {
    match t {
        Some(t) => {
            let (p, tu, counts, resets) = masked::mask_reset_groups(w, t, 4 * hidden, cols, 4);
            (p, Some(tu), counts, resets)
        }
        None => (w.to_vec(), None, vec![], vec![]),
    }
}

/// Everything the layer computes on `x` (T, B, I) with upstream gradient `dh` (T, B, H) of its
/// hidden sequence (for a last-h output: zero except at the last step).
pub struct Layer {
    pub fwd: Forward,
    pub p_ih: Vec<f64>,
    pub p_hh: Vec<f64>,
    /// Thresholds after the reset decisions (what the layer's threshold parameters hold after the
    /// forward).
    pub t_ih: Option<Vec<f64>>,
    pub t_hh: Option<Vec<f64>>,
    pub resets_ih: Vec<bool>,
    pub resets_hh: Vec<bool>,
    pub counts_ih: Vec<[u32; 2]>,
    pub counts_hh: Vec<[u32; 2]>,
    pub bwd: Backward,
    /// dL/dW and dL/dt through `mask_backward` (penalty included); for the dense variant the
    /// weight gradients are dL/dP and the threshold gradients are empty.
    pub d_w_ih: Vec<f64>,
    pub d_w_hh: Vec<f64>,
    pub d_t_ih: Vec<f64>,
    pub d_t_hh: Vec<f64>,
    /// alpha * sum exp(-t) over both threshold vectors (after resets).
    pub penalty: f64,
}

pub fn layer(x: &[f64], p: &Params, dh: &[f64], d: Dims, alpha: f64) -> Layer {
    let (hn, inp) = (d.hidden, d.input);
    let (p_ih, t_ih, counts_ih, resets_ih) = effective(&p.w_ih, p.t_ih.as_ref(), hn, inp);
    let (p_hh, t_hh, counts_hh, resets_hh) = effective(&p.w_hh, p.t_hh.as_ref(), hn, hn);
    let fwd = forward(x, &p_ih, &p_hh, &p.bias, d);
    let bwd = backward(x, &p_ih, &p_hh, &fwd, dh, d);
    let through = |w: &[f64], t: &Option<Vec<f64>>, g: &[f64], cols: usize| match t {
        Some(t) => masked::mask_backward(w, t, g, 4 * hn, cols, alpha),
        None => (g.to_vec(), vec![]),
    };
    let (d_w_ih, d_t_ih) = through(&p.w_ih, &t_ih, &bwd.d_p_ih, inp);
    let (d_w_hh, d_t_hh) = through(&p.w_hh, &t_hh, &bwd.d_p_hh, hn);
    let penalty = [&t_ih, &t_hh]
        .iter()
        .filter_map(|t| t.as_ref())
        .map(|t| masked::penalty(t, alpha))
        .sum();
    Layer {
        fwd,
        p_ih,
        p_hh,
        t_ih,
        t_hh,
        resets_ih,
        resets_hh,
        counts_ih,
        counts_hh,
        bwd,
        d_w_ih,
        d_w_hh,
        d_t_ih,
        d_t_hh,
        penalty,
    }
}
