//! Twin of shaders/conv.wgsl: NCHW convolution and its gradients as plain f64 loops.

use crate::kernels::conv::ConvShape;

/// X(n, ci, iy, ix): zero outside the image.
fn x_at(s: &ConvShape, x: &[f64], n: usize, ci: usize, iy: isize, ix: isize) -> f64 {
    if iy < 0 || ix < 0 || iy >= s.h as isize || ix >= s.w as isize {
        return 0.0;
    }
    x[((n * s.c_in + ci) * s.h + iy as usize) * s.w + ix as usize]
}

/// Input coordinate of output coordinate `o` and tap `k` (may fall in the padding).
fn tap(s: &ConvShape, o: usize, k: usize) -> isize {
    (o * s.stride + k) as isize - s.pad as isize
}

/// `y (batch, c_out, oh, ow) = conv(x, weight) + bias`.
pub fn forward(s: &ConvShape, x: &[f64], weight: &[f64], bias: Option<&[f64]>) -> Vec<f64> {
    let (oh, ow) = (s.out_h(), s.out_w());
    let mut y = vec![0.0; s.batch * s.c_out * oh * ow];
    for n in 0..s.batch {
        for co in 0..s.c_out {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = 0.0;
                    for ci in 0..s.c_in {
                        for ky in 0..s.kh {
                            for kx in 0..s.kw {
                                let wv = weight[((co * s.c_in + ci) * s.kh + ky) * s.kw + kx];
                                acc += wv * x_at(s, x, n, ci, tap(s, oy, ky), tap(s, ox, kx));
                            }
                        }
                    }
                    y[((n * s.c_out + co) * oh + oy) * ow + ox] = acc + bias.map_or(0.0, |b| b[co]);
                }
            }
        }
    }
    y
}

/// `dx (batch, c_in, h, w)` given `dy (batch, c_out, oh, ow)` (scatter form: each output position
/// adds its dy times the filter into the input patch it read).
pub fn backward_input(s: &ConvShape, dy: &[f64], weight: &[f64]) -> Vec<f64> {
    let (oh, ow) = (s.out_h(), s.out_w());
    let mut dx = vec![0.0; s.batch * s.c_in * s.h * s.w];
    for n in 0..s.batch {
        for co in 0..s.c_out {
            for oy in 0..oh {
                for ox in 0..ow {
                    let g = dy[((n * s.c_out + co) * oh + oy) * ow + ox];
                    for ci in 0..s.c_in {
                        for ky in 0..s.kh {
                            for kx in 0..s.kw {
                                let (iy, ix) = (tap(s, oy, ky), tap(s, ox, kx));
                                if iy < 0 || ix < 0 || iy >= s.h as isize || ix >= s.w as isize {
                                    continue;
                                }
                                let wv = weight[((co * s.c_in + ci) * s.kh + ky) * s.kw + kx];
                                dx[((n * s.c_in + ci) * s.h + iy as usize) * s.w + ix as usize] +=
                                    g * wv;
                            }
                        }
                    }
                }
            }
        }
    }
    dx
}

/// `d_weight (c_out, c_in, kh, kw)` = sum over batch and output positions of dy * x-patch.
pub fn backward_weight(s: &ConvShape, dy: &[f64], x: &[f64]) -> Vec<f64> {
    let (oh, ow) = (s.out_h(), s.out_w());
    let mut dw = vec![0.0; s.c_out * s.cols()];
    for co in 0..s.c_out {
        for ci in 0..s.c_in {
            for ky in 0..s.kh {
                for kx in 0..s.kw {
                    let mut acc = 0.0;
                    for n in 0..s.batch {
                        for oy in 0..oh {
                            for ox in 0..ow {
                                let g = dy[((n * s.c_out + co) * oh + oy) * ow + ox];
                                acc += g * x_at(s, x, n, ci, tap(s, oy, ky), tap(s, ox, kx));
                            }
                        }
                    }
                    dw[((co * s.c_in + ci) * s.kh + ky) * s.kw + kx] = acc;
                }
            }
        }
    }
    dw
}

/// `d_bias[co]` = sum over batch and positions of dy.
pub fn bias_backward(s: &ConvShape, dy: &[f64]) -> Vec<f64> {
    let ohw = s.out_h() * s.out_w();
    (0..s.c_out)
        .map(|co| {
            (0..s.batch)
                .map(|n| dy[(n * s.c_out + co) * ohw..][..ohw].iter().sum::<f64>())
                .sum()
        })
        .collect()
}
