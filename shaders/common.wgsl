// common.wgsl: the prelude prepended (by plain string concatenation) to every kernel family.
// It holds the per-step values shared by all plans and the DST step function and its
// long-tailed derivative estimator (METHOD.md section 1).

// Per-step values, one 256-byte slot per step of a submission, bound with a dynamic offset.
// Keep in sync with `StepInfo` in src/kernels/mod.rs.
struct StepInfo {
    batch_start: u32,     // first index into the permutation for this step
    valid: u32,           // rows of the batch that hold real samples (the last batch may be short)
    step: u32,            // 1-based optimiser step
    _pad0: u32,
    lr: f32,              // learning rate of this step
    adam_step_size: f32,  // lr / (1 - beta1^step), computed on the host in f64
    adam_bc2_sqrt: f32,   // sqrt(1 - beta2^step), computed on the host in f64
    _pad1: f32,
}

// Strict step function: S(x) = 1 if x > 0 else 0 (S(0) = 0).
fn dst_step(x: f32) -> f32 {
    return select(0.0, 1.0, x > 0.0);
}

// Long-tailed estimator H(x) of the step's derivative:
// 2 - 4|x| for |x| <= 0.4, 0.4 for 0.4 < |x| <= 1, 0 for |x| > 1.
fn long_tail(x: f32) -> f32 {
    let a = abs(x);
    if (a <= 0.4) {
        return 2.0 - 4.0 * a;
    }
    if (a <= 1.0) {
        return 0.4;
    }
    return 0.0;
}

// One weight's gradients from G = dL/dP (METHOD.md section 2), with Q = |W| - t:
// x = dL/dW = G*S(Q) + G*|W|*H(Q), y = G*W*H(Q) (the weight's term of its row's -dL/dt).
fn mask_grads(g: f32, w: f32, t: f32) -> vec2<f32> {
    let q = abs(w) - t;
    let h = long_tail(q);
    return vec2<f32>(g * dst_step(q) + g * abs(w) * h, g * w * h);
}

// An optimiser state value below the smallest normal f32 (1.17549435e-38) as 0. A weight whose
// gradient is exactly 0 step after step (a pruned neuron's row, an always-blank input pixel) has
// a velocity that decays geometrically through the subnormal range, and CPUs compute with
// subnormals through slow microcode (lavapipe does not flush them): a LeNet-300-100 DST step
// from a trained checkpoint, a third of whose velocities were subnormal, spent about a sixth of
// its time there. Flushed, such a state reaches 0 and stays there. The parameters do not change: a
// velocity that small moves no weight larger than about 1e-30 (METHOD.md section 9, item 9).
fn flush_subnormal(x: f32) -> f32 {
    return select(x, 0.0, abs(x) < 1.17549435e-38);
}

// SGD with momentum (dampening 0, no Nesterov), one element: the new velocity
// momentum * v + (g + weight_decay * p), flushed (`flush_subnormal`); the parameter then moves
// by -lr times it.
fn sgd_velocity(g: f32, p: f32, v: f32, momentum: f32, weight_decay: f32) -> f32 {
    var gg = g;
    if (weight_decay != 0.0) {
        gg = gg + weight_decay * p;
    }
    return flush_subnormal(momentum * v + gg);
}
