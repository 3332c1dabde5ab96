//! Plain f64 twins of every WGSL entry point (no wgpu): the ground truth of the kernel tests.
//! Entry point `mask_backward` in shaders/masked.wgsl has a function `masked::mask_backward` here.
//! Mask bits and the derivative's bands are decided in f32 exactly as the shaders decide them.

pub mod act;
pub mod batchnorm;
pub mod conv;
pub mod data;
pub mod gemm;
pub mod loss;
pub mod lstm;
pub mod masked;
pub mod optim;
pub mod pool;
pub mod sparse;
