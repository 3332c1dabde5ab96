//! Dynamic Sparse Training (Liu et al., ICLR 2020) on any GPU through wgpu and hand-written WGSL.
//!
//! Layers: `gpu` (device, tensors) -> `kernels` (pipelines, typed wrappers) -> `nn` (layers that
//! record their forward and backward) -> `models` -> `train` (the loop). `reference` is an f64 twin
//! of every kernel for tests; it never touches wgpu. `report` reads run directories and
//! checkpoints (charts, mask pictures, tables; no GPU); `study` runs many trainings (sweeps, the
//! reproduction of the paper's table) and reports them.

pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod export;
pub mod gpu;
pub mod kernels;
pub mod models;
pub mod nn;
pub mod plan;
pub mod reference;
pub mod report;
pub mod rng;
pub mod study;
pub mod train;
