// data.wgsl: batch assembly from a dataset resident on the GPU.
//
// Images are stored as bytes packed four to a u32 (little-endian), labels likewise. For batch row
// r < valid the sample index is perm[batch_start + r]; its pixels become f32 through a 256-entry
// table (lut[b] = b / 255 rounded as the host does it, so the inputs are bit-exact). Rows
// r >= valid (the padding of a short last batch) are zero with label 0.

// Keep in sync with `GatherParams` in src/kernels/data.rs.
struct GatherParams {
    rows: u32,     // batch capacity
    pixels: u32,   // values per sample
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> dp: GatherParams;
@group(0) @binding(1) var<storage, read> images: array<u32>;
@group(0) @binding(2) var<storage, read> labels: array<u32>;
@group(0) @binding(3) var<storage, read> perm: array<u32>;
@group(0) @binding(4) var<storage, read> lut: array<f32>;
@group(0) @binding(5) var<storage, read_write> x: array<f32>;
@group(0) @binding(6) var<storage, read_write> y: array<u32>;
@group(1) @binding(0) var<uniform> si: StepInfo;

fn byte_at(i: u32) -> u32 {
    return (images[i / 4u] >> ((i % 4u) * 8u)) & 0xffu;
}

fn label_at(i: u32) -> u32 {
    return (labels[i / 4u] >> ((i % 4u) * 8u)) & 0xffu;
}

// Reads images, labels, perm, lut; writes x (rows x pixels) and y (rows).
// Workgroups (ceil(pixels / 64), rows): x = pixel block, y = batch row.
@compute @workgroup_size(64, 1, 1)
fn gather(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.y;
    let p = gid.x;
    if (r >= dp.rows || p >= dp.pixels) {
        return;
    }
    let out = r * dp.pixels + p;
    if (r >= si.valid) {
        x[out] = 0.0;
        if (p == 0u) {
            y[r] = 0u;
        }
        return;
    }
    let sample = perm[si.batch_start + r];
    x[out] = lut[byte_at(sample * dp.pixels + p)];
    if (p == 0u) {
        y[r] = label_at(sample);
    }
}
