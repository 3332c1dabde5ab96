//! Models as compositions of layers: the layer list, the arena they share, and metadata.

use crate::gpu::Gpu;
use crate::nn::linear::Linear;
use crate::nn::relu::Relu;
use crate::nn::{Arena, ArenaBuilder, Layer, MaskView};

/// Models this build can train.
pub const MODELS: &[&str] = &["lenet300"];

pub struct Model {
    pub name: String,
    pub masked: bool,
    /// Per-sample input shape.
    pub input: Vec<usize>,
    pub classes: usize,
    pub layers: Vec<Box<dyn Layer>>,
    pub arena: Arena,
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("unknown model {name:?}; available: {available}")]
    Unknown { name: String, available: String },
    #[error(transparent)]
    Gpu(#[from] crate::gpu::GpuError),
}

/// Checks a model name before any GPU work.
pub fn check_name(name: &str) -> std::result::Result<(), ModelError> {
    if MODELS.contains(&name) {
        Ok(())
    } else {
        Err(ModelError::Unknown {
            name: name.to_string(),
            available: MODELS.join(", "),
        })
    }
}

impl Model {
    /// Builds `name` (dense or masked) with parameters initialised from `seed`; `adam` allocates the
    /// second-moment arena.
    pub fn build(
        gpu: &Gpu,
        name: &str,
        masked: bool,
        seed: u64,
        adam: bool,
    ) -> std::result::Result<Model, ModelError> {
        check_name(name)?;
        let mut ab = ArenaBuilder::default();
        // LeNet-300-100: FC 784-300-100-10 with ReLU (METHOD.md section 5).
        let dims = [(784, 300), (300, 100), (100, 10)];
        let ids: Vec<_> = dims
            .iter()
            .enumerate()
            .map(|(i, &(fi, fo))| Linear::declare(&mut ab, &format!("fc{}", i + 1), fi, fo, masked))
            .collect();
        let layout = ab.layout(gpu.limits.min_storage_buffer_offset_alignment as u64);
        let initial = layout.init(seed);
        let arena = Arena::new(gpu, layout, &initial, adam)?;
        let mut layers: Vec<Box<dyn Layer>> = Vec::new();
        for (i, (&(fi, fo), id)) in dims.iter().zip(ids).enumerate() {
            let n = i + 1;
            layers.push(Box::new(Linear::new(gpu, &format!("fc{n}"), fi, fo, id)?));
            if n < dims.len() {
                layers.push(Box::new(Relu::new(&format!("relu{n}"))));
            }
        }
        Ok(Model {
            name: name.to_string(),
            masked,
            input: vec![784],
            classes: 10,
            layers,
            arena,
        })
    }

    pub fn mask_views(&self) -> Vec<MaskView> {
        self.layers.iter().flat_map(|l| l.mask_views()).collect()
    }

    /// Names and shapes of every parameter, in arena order.
    pub fn param_shapes(&self) -> Vec<(String, Vec<usize>)> {
        self.arena
            .layout
            .entries
            .iter()
            .map(|e| (e.name.clone(), e.shape.clone()))
            .collect()
    }
}
