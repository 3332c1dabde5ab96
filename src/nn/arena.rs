//! The parameter arena: every trainable tensor of a model in one buffer at aligned offsets, with
//! gradients and optimiser moments in buffers of the same layout. The optimiser is one dispatch
//! over the arena and a checkpoint is one copy of it.

use std::sync::Arc;

use crate::gpu::{Gpu, Result, Tensor};
use crate::rng::Rng;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// U(-bound, bound).
    Uniform(f64),
    Zeros,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ParamId(pub usize);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    Param,
    Grad,
    Moment1,
    Moment2,
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
    /// Offset in f32 elements.
    pub offset: usize,
}

impl Entry {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Collects (name, shape, init) before the buffers exist.
#[derive(Default)]
pub struct ArenaBuilder {
    entries: Vec<Entry>,
}

impl ArenaBuilder {
    pub fn param(&mut self, name: &str, shape: &[usize], init: Init) -> ParamId {
        assert!(
            self.entries.iter().all(|e| e.name != name),
            "duplicate parameter {name}"
        );
        self.entries.push(Entry {
            name: name.to_string(),
            shape: shape.to_vec(),
            init,
            offset: 0,
        });
        ParamId(self.entries.len() - 1)
    }

    /// Lays the tensors out at offsets aligned to `align_bytes`.
    pub fn layout(mut self, align_bytes: u64) -> Layout {
        let align = (align_bytes.max(4) / 4) as usize;
        let mut at = 0;
        for e in &mut self.entries {
            e.offset = at;
            at = (at + e.len()).div_ceil(align) * align;
        }
        Layout {
            entries: self.entries,
            total: at.max(1),
        }
    }
}

/// Names, shapes and offsets of the arena (no buffers).
#[derive(Clone, Debug)]
pub struct Layout {
    pub entries: Vec<Entry>,
    /// Arena length in f32 elements, padding included.
    pub total: usize,
}

impl Layout {
    /// Initial values drawn from `seed` in declaration order (PyTorch's default distributions).
    pub fn init(&self, seed: u64) -> Vec<f32> {
        let mut rng = Rng::derive(seed, "init");
        let mut data = vec![0.0f32; self.total];
        for e in &self.entries {
            if let Init::Uniform(bound) = e.init {
                for v in &mut data[e.offset..e.offset + e.len()] {
                    *v = rng.range(-bound, bound) as f32;
                }
            }
        }
        data
    }

    pub fn find(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name == name)
    }
}

/// The four arena buffers on the GPU.
pub struct Arena {
    pub layout: Layout,
    pub params: Tensor,
    pub grads: Tensor,
    pub moment1: Tensor,
    pub moment2: Tensor,
}

impl Arena {
    /// Allocates the arenas; params hold `initial`, everything else zero.
    pub fn new(gpu: &Gpu, layout: Layout, initial: &[f32], adam: bool) -> Result<Arena> {
        assert_eq!(initial.len(), layout.total);
        let n = layout.total;
        Ok(Arena {
            params: Tensor::from_slice(gpu, "arena.params", &[n], initial)?,
            grads: Tensor::zeros(gpu, "arena.grads", &[n])?,
            moment1: Tensor::zeros(gpu, "arena.moment1", &[n])?,
            moment2: Tensor::zeros(gpu, "arena.moment2", &[if adam { n } else { 1 }])?,
            layout,
        })
    }

    fn buffer(&self, which: Which) -> &Tensor {
        match which {
            Which::Param => &self.params,
            Which::Grad => &self.grads,
            Which::Moment1 => &self.moment1,
            Which::Moment2 => &self.moment2,
        }
    }

    /// A view of one tensor of one arena, with its declared shape.
    pub fn view(&self, which: Which, id: ParamId) -> Tensor {
        let e = &self.layout.entries[id.0];
        let base = self.buffer(which);
        Tensor {
            buffer: Arc::clone(&base.buffer),
            offset: base.offset + 4 * e.offset as u64,
            shape: e.shape.clone(),
            label: format!("{:?}.{}", which, e.name).to_lowercase(),
        }
    }

    pub fn param(&self, id: ParamId) -> Tensor {
        self.view(Which::Param, id)
    }

    pub fn grad(&self, id: ParamId) -> Tensor {
        self.view(Which::Grad, id)
    }
}
