//! Every WGSL entry point against its f64 twin in `dst::reference`, on the adapter the environment
//! selects (lavapipe in CI). One test binary, one shared device, GPU tests serialised.
//! Outputs are poisoned with NaN before each run so an unwritten element fails.

mod act;
mod batchnorm;
mod common;
mod conv;
mod data;
mod gemm;
mod loss;
mod lstm;
mod masked;
mod optim;
mod pool;
mod residual;
mod runtime;
mod sparse;
