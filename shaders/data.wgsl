// data.wgsl: batch assembly from a dataset resident on the GPU.
//
// Images are stored as bytes packed four to a u32 (little-endian), labels likewise; an image is
// `pixels` bytes, channel-major (`channels` planes of `plane = height * width` bytes, row-major).
// A dataset too large for one storage binding is split in two: samples [0, split) are in
// images_lo, the rest in images_hi (each packed from its own first byte). For batch row r < valid
// the sample index is perm[batch_start + r]; its bytes become f32 through a table of 256 entries
// per channel (lut[c * 256 + b]: b / 255, normalised per channel where the dataset is, rounded as
// the host does it, so the inputs are bit-exact). Rows r >= valid (the padding of a short last
// batch) are zero with label 0.
//
// gather_crop_flip is the training augmentation (src/data/augment.rs): the image padded with zero
// bytes by `pad` on every side, cropped back to height x width at (dx, dy) and flipped left-right,
// the draws for batch row r in crops[batch_start + r] (dx | dy << 8 | flip << 16).

// Keep in sync with `GatherParams` in src/kernels/data.rs.
struct GatherParams {
    rows: u32,     // batch capacity
    pixels: u32,   // values per sample (channels * plane)
    plane: u32,    // values per channel (height * width; pixels for one channel)
    width: u32,    // image width (gather_crop_flip)
    height: u32,   // image height (gather_crop_flip)
    pad: u32,      // zero padding before the crop (gather_crop_flip)
    split: u32,    // samples [0, split) are in images_lo, the others in images_hi
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> dp: GatherParams;
@group(0) @binding(1) var<storage, read> images_lo: array<u32>;
@group(0) @binding(2) var<storage, read> images_hi: array<u32>;
@group(0) @binding(3) var<storage, read> labels: array<u32>;
@group(0) @binding(4) var<storage, read> perm: array<u32>;
@group(0) @binding(5) var<storage, read> lut: array<f32>;
@group(0) @binding(6) var<storage, read> crops: array<u32>;
@group(0) @binding(7) var<storage, read_write> x: array<f32>;
@group(0) @binding(8) var<storage, read_write> y: array<u32>;
@group(0) @binding(9) var<storage, read_write> x4: array<vec4<f32>>; // x as vec4s (gather4)
@group(1) @binding(0) var<uniform> si: StepInfo;

// Byte i of sample `sample`'s image.
fn image_byte(sample: u32, i: u32) -> u32 {
    if (sample < dp.split) {
        let b = sample * dp.pixels + i;
        return (images_lo[b / 4u] >> ((b % 4u) * 8u)) & 0xffu;
    }
    let b = (sample - dp.split) * dp.pixels + i;
    return (images_hi[b / 4u] >> ((b % 4u) * 8u)) & 0xffu;
}

fn label_at(i: u32) -> u32 {
    return (labels[i / 4u] >> ((i % 4u) * 8u)) & 0xffu;
}

// Rows past the batch's real ones (a short last batch) are zeros with label 0: writes x[out]
// (and y[r] from the row's first invocation) and returns true for such a row.
fn clear_padding_row(r: u32, p: u32, out: u32) -> bool {
    if (r < si.valid) {
        return false;
    }
    x[out] = 0.0;
    if (p == 0u) {
        y[r] = 0u;
    }
    return true;
}

// Reads images_lo/hi, labels, perm, lut; writes x (rows x pixels) and y (rows).
// Workgroups (ceil(pixels / 64), rows): x = pixel block, y = batch row.
@compute @workgroup_size(64, 1, 1)
fn gather(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.y;
    let p = gid.x;
    if (r >= dp.rows || p >= dp.pixels) {
        return;
    }
    let out = r * dp.pixels + p;
    if (clear_padding_row(r, p, out)) {
        return;
    }
    let sample = perm[si.batch_start + r];
    x[out] = lut[(p / dp.plane) * 256u + image_byte(sample, p)];
    if (p == 0u) {
        y[r] = label_at(sample);
    }
}

// `gather`, four values per invocation (pixels % 4 == 0, plane % 4 == 0, x 16-byte aligned):
// one packed u32 of the image, one vec4 store, a quarter of the memory instructions (lavapipe
// issues each per lane). One workgroup per batch row, lane l the quads l, l + 64, ... (a
// workgroup per 64 quads took 0.24-0.26 ms against 0.21-0.22 for MNIST's batch of 64 on
// lavapipe, `dst bench --profile`: its 196 quads left a fourth workgroup per row with 4 of 64
// lanes busy). Workgroups (1, rows).
@compute @workgroup_size(64, 1, 1)
fn gather4(@builtin(local_invocation_id) lid: vec3<u32>,
           @builtin(workgroup_id) wid: vec3<u32>) {
    let r = wid.y;
    if (r >= dp.rows) {
        return;
    }
    let quads = dp.pixels / 4u;
    let row = r * quads;
    if (r >= si.valid) {
        for (var q = lid.x; q < quads; q += 64u) {
            x4[row + q] = vec4<f32>(0.0);
        }
        if (lid.x == 0u) {
            y[r] = 0u;
        }
        return;
    }
    let sample = perm[si.batch_start + r];
    var src = sample * quads;
    if (sample >= dp.split) {
        src = (sample - dp.split) * quads;
    }
    for (var q = lid.x; q < quads; q += 64u) {
        var word = 0u;
        if (sample < dp.split) {
            word = images_lo[src + q];
        } else {
            word = images_hi[src + q];
        }
        let base = ((4u * q) / dp.plane) * 256u;
        x4[row + q] = vec4<f32>(
            lut[base + (word & 0xffu)],
            lut[base + ((word >> 8u) & 0xffu)],
            lut[base + ((word >> 16u) & 0xffu)],
            lut[base + (word >> 24u)]
        );
    }
    if (lid.x == 0u) {
        y[r] = label_at(sample);
    }
}

// gather with the crop and flip of crops[batch_start + r]: output pixel (c, oy, ox) reads the
// padded image at row oy + dy and column (flip ? width - 1 - ox : ox) + dx; outside the image
// that is a zero byte (whose value is lut[c * 256]).
// Reads images_lo/hi, labels, perm, lut, crops; writes x (rows x pixels) and y (rows).
// Workgroups (ceil(pixels / 64), rows): x = pixel block, y = batch row.
@compute @workgroup_size(64, 1, 1)
fn gather_crop_flip(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.y;
    let p = gid.x;
    if (r >= dp.rows || p >= dp.pixels) {
        return;
    }
    let out = r * dp.pixels + p;
    if (clear_padding_row(r, p, out)) {
        return;
    }
    let sample = perm[si.batch_start + r];
    let draw = crops[si.batch_start + r];
    let dx = draw & 0xffu;
    let dy = (draw >> 8u) & 0xffu;
    let flip = ((draw >> 16u) & 1u) == 1u;
    let c = p / dp.plane;
    let q = p % dp.plane;
    let oy = q / dp.width;
    let ox = q % dp.width;
    // Position in the padded image.
    let py = oy + dy;
    let px = select(ox, dp.width - 1u - ox, flip) + dx;
    var b = 0u;
    if (py >= dp.pad && py < dp.pad + dp.height && px >= dp.pad && px < dp.pad + dp.width) {
        b = image_byte(sample, c * dp.plane + (py - dp.pad) * dp.width + (px - dp.pad));
    }
    x[out] = lut[c * 256u + b];
    if (p == 0u) {
        y[r] = label_at(sample);
    }
}
