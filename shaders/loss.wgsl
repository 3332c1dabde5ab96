// loss.wgsl: softmax cross-entropy over a batch of logits (rows x classes), numerically stable.
//
// Per row r < valid: loss_r = logsumexp(z_r) - z_r[label_r], computed as
//   m = max_j z_rj;  lse = m + log(sum_j exp(z_rj - m)).
// The batch loss is the mean over the valid rows; its gradient d_logits = (softmax - onehot) / valid
// (zero on rows >= valid, the padding of a short last batch). A prediction is correct when the
// first maximal logit is the label (torch.argmax). Results accumulate into the stats buffer:
//   stats[0] += mean loss (f32)   stats[2] += correct count (u32 bits)   stats[3] += valid (u32 bits)
//   stats[4] = 1 (u32 bits, sticky) when the batch loss is not finite.
// One workgroup of 256 invocations; rows summed in a fixed tree order (deterministic).

// Keep in sync with `LossParams` in src/kernels/loss.rs.
struct LossParams {
    rows: u32,
    classes: u32,
    write_grad: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> lp: LossParams;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<u32>;
@group(0) @binding(3) var<storage, read_write> d_logits: array<f32>;
@group(0) @binding(4) var<storage, read_write> stats: array<u32>;
@group(1) @binding(0) var<uniform> si: StepInfo;

const LWG: u32 = 256u;
var<workgroup> loss_part: array<f32, 256>;
var<workgroup> correct_part: array<u32, 256>;

// Reads logits, labels (rows x classes, rows); writes d_logits (if write_grad) and stats.
@compute @workgroup_size(256, 1, 1)
fn softmax_xent(@builtin(local_invocation_id) lid: vec3<u32>) {
    let valid = min(si.valid, lp.rows);
    let inv = 1.0 / f32(max(valid, 1u));
    var lsum = 0.0;
    var csum = 0u;
    for (var r = lid.x; r < lp.rows; r += LWG) {
        let base = r * lp.classes;
        if (r >= valid) {
            if (lp.write_grad != 0u) {
                for (var j = 0u; j < lp.classes; j++) {
                    d_logits[base + j] = 0.0;
                }
            }
            continue;
        }
        var m = logits[base];
        var arg = 0u;
        for (var j = 1u; j < lp.classes; j++) {
            let z = logits[base + j];
            if (z > m) {
                m = z;
                arg = j;
            }
        }
        var s = 0.0;
        for (var j = 0u; j < lp.classes; j++) {
            s += exp(logits[base + j] - m);
        }
        let label = labels[r];
        let lse = m + log(s);
        lsum += lse - logits[base + label];
        csum += select(0u, 1u, arg == label);
        if (lp.write_grad != 0u) {
            for (var j = 0u; j < lp.classes; j++) {
                let p = exp(logits[base + j] - m) / s;
                d_logits[base + j] = (p - select(0.0, 1.0, j == label)) * inv;
            }
        }
    }
    loss_part[lid.x] = lsum;
    correct_part[lid.x] = csum;
    workgroupBarrier();
    for (var st = LWG / 2u; st > 0u; st = st / 2u) {
        if (lid.x < st) {
            loss_part[lid.x] += loss_part[lid.x + st];
            correct_part[lid.x] += correct_part[lid.x + st];
        }
        workgroupBarrier();
    }
    if (lid.x == 0u) {
        let mean = loss_part[0] * inv;
        stats[0] = bitcast<u32>(bitcast<f32>(stats[0]) + mean);
        stats[2] += correct_part[0];
        stats[3] += valid;
        // All exponent bits set: NaN or +-inf (a bit test, immune to fast-math folding).
        if ((bitcast<u32>(mean) & 0x7f800000u) == 0x7f800000u) {
            stats[4] = 1u;
        }
    }
}
