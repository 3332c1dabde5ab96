//! The parameter arena: every trainable tensor of a model in one buffer at aligned offsets, with
//! gradients and optimiser moments in buffers of the same layout. The optimiser is one dispatch
//! over the arena and a checkpoint is one copy of it.
//!
//! Next to it, the state arena holds a model's non-trainable tensors (batch norm's running
//! statistics): layers update them in their forward, checkpoints save and restore them under their
//! own names, and the optimiser never sees them (it runs over the parameter arena only).

use std::sync::Arc;

use crate::checkpoint::{Checkpoint, NamedTensor};
use crate::gpu::{Gpu, Result, Tensor};
use crate::rng::Rng;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// U(-bound, bound).
    Uniform(f64),
    Zeros,
    /// Every element the same value (batch norm's scale 1 or 0.5, running variance 1); draws no
    /// random numbers.
    Const(f64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ParamId(pub usize);

/// A tensor of the state arena (non-trainable, checkpointed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StateId(pub usize);

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
    states: Vec<Entry>,
}

impl ArenaBuilder {
    fn check_new(&self, name: &str) {
        assert!(
            self.entries
                .iter()
                .chain(&self.states)
                .all(|e| e.name != name),
            "duplicate parameter or state {name}"
        );
    }

    /// A trainable tensor: optimised, with gradient and moments, checkpointed under `name`.
    pub fn param(&mut self, name: &str, shape: &[usize], init: Init) -> ParamId {
        self.check_new(name);
        self.entries.push(Entry {
            name: name.to_string(),
            shape: shape.to_vec(),
            init,
            offset: 0,
        });
        ParamId(self.entries.len() - 1)
    }

    /// A non-trainable state tensor (e.g. `bn1.running_mean`): no gradient, never optimised,
    /// checkpointed under `name`. Its `init` is `Zeros` or `Const` (states draw no random numbers,
    /// so declaring one leaves the parameters' initial values unchanged).
    pub fn state(&mut self, name: &str, shape: &[usize], init: Init) -> StateId {
        self.check_new(name);
        assert!(
            !matches!(init, Init::Uniform(_)),
            "state {name}: random initialisation is for parameters"
        );
        self.states.push(Entry {
            name: name.to_string(),
            shape: shape.to_vec(),
            init,
            offset: 0,
        });
        StateId(self.states.len() - 1)
    }

    /// Lays the tensors out at offsets aligned to `align_bytes` (parameters and states each in
    /// their own arena).
    pub fn layout(mut self, align_bytes: u64) -> Layout {
        let align = (align_bytes.max(4) / 4) as usize;
        let place = |entries: &mut [Entry]| {
            let mut at = 0;
            for e in entries {
                e.offset = at;
                at = (at + e.len()).div_ceil(align) * align;
            }
            at.max(1)
        };
        let total = place(&mut self.entries);
        let state_total = place(&mut self.states);
        Layout {
            entries: self.entries,
            total,
            states: self.states,
            state_total,
        }
    }
}

/// Names, shapes and offsets of the arena (no buffers).
#[derive(Clone, Debug)]
pub struct Layout {
    /// The parameters.
    pub entries: Vec<Entry>,
    /// Parameter arena length in f32 elements, padding included.
    pub total: usize,
    /// The state tensors (offsets into the state arena).
    pub states: Vec<Entry>,
    /// State arena length in f32 elements, padding included (at least 1).
    pub state_total: usize,
}

/// Fills `data` with the constant initial values of `entries` (Zeros, Const).
fn fill_const(entries: &[Entry], data: &mut [f32]) {
    for e in entries {
        if let Init::Const(v) = e.init {
            data[e.offset..e.offset + e.len()].fill(v as f32);
        }
    }
}

impl Layout {
    /// Initial values drawn from `seed` in declaration order (PyTorch's default distributions);
    /// constant inits draw nothing.
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
        fill_const(&self.entries, &mut data);
        data
    }

    /// Initial values of the state arena (its inits are constants).
    pub fn state_init(&self) -> Vec<f32> {
        let mut data = vec![0.0f32; self.state_total];
        fill_const(&self.states, &mut data);
        data
    }

    pub fn find(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name == name)
    }

    pub fn find_state(&self, name: &str) -> Option<&Entry> {
        self.states.iter().find(|e| e.name == name)
    }
}

/// The arena buffers on the GPU: the four of the parameters and the state arena.
pub struct Arena {
    pub layout: Layout,
    pub params: Tensor,
    pub grads: Tensor,
    pub moment1: Tensor,
    pub moment2: Tensor,
    /// The state tensors (`layout.state_total` elements).
    pub state: Tensor,
}

/// Checkpoint tensor names of a parameter's optimiser moments.
fn momentum_name(param: &str) -> String {
    format!("optim.momentum.{param}")
}

fn second_moment_name(param: &str) -> String {
    format!("optim.second_moment.{param}")
}

impl Arena {
    /// Allocates the arenas; params hold `initial`, states their declared constants, everything
    /// else zero.
    pub fn new(gpu: &Gpu, layout: Layout, initial: &[f32], adam: bool) -> Result<Arena> {
        assert_eq!(initial.len(), layout.total);
        let n = layout.total;
        Ok(Arena {
            params: Tensor::from_slice(gpu, "arena.params", &[n], initial)?,
            grads: Tensor::zeros(gpu, "arena.grads", &[n])?,
            moment1: Tensor::zeros(gpu, "arena.moment1", &[n])?,
            moment2: Tensor::zeros(gpu, "arena.moment2", &[if adam { n } else { 1 }])?,
            state: Tensor::from_slice(
                gpu,
                "arena.state",
                &[layout.state_total],
                &layout.state_init(),
            )?,
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

    /// A view of one state tensor, with its declared shape.
    pub fn state(&self, id: StateId) -> Tensor {
        let e = &self.layout.states[id.0];
        Tensor {
            buffer: Arc::clone(&self.state.buffer),
            offset: self.state.offset + 4 * e.offset as u64,
            shape: e.shape.clone(),
            label: format!("state.{}", e.name),
        }
    }

    /// Whether the second-moment arena is allocated (Adam).
    pub fn has_moment2(&self) -> bool {
        self.moment2.len() == self.layout.total
    }

    /// Every parameter (`<name>`), its optimiser state (`optim.momentum.<name>`, and with Adam
    /// `optim.second_moment.<name>`) and every state tensor (`<name>`, e.g. `bn1.running_var`), as
    /// checkpoint tensors (name, shape, values), read back in one pass per arena.
    pub fn snapshot(&self, gpu: &Gpu) -> Result<Vec<NamedTensor>> {
        let params = gpu.read::<f32>(&self.params)?;
        let m1 = gpu.read::<f32>(&self.moment1)?;
        let m2 = gpu.read::<f32>(&self.moment2)?;
        let adam = self.has_moment2();
        let mut out = Vec::new();
        for e in &self.layout.entries {
            let r = e.offset..e.offset + e.len();
            let mut push =
                |name: String, v: &[f32]| out.push((name, e.shape.clone(), v[r.clone()].to_vec()));
            push(e.name.clone(), &params);
            push(momentum_name(&e.name), &m1);
            if adam {
                push(second_moment_name(&e.name), &m2);
            }
        }
        if !self.layout.states.is_empty() {
            let state = gpu.read::<f32>(&self.state)?;
            for e in &self.layout.states {
                out.push((
                    e.name.clone(),
                    e.shape.clone(),
                    state[e.offset..e.offset + e.len()].to_vec(),
                ));
            }
        }
        Ok(out)
    }

    /// Writes parameters, state tensors and (when `with_optim`) optimiser state from `ck`, all
    /// required with this layout's shapes; on a missing or misshapen tensor returns the reason and
    /// writes nothing. A checkpoint of a model without state tensors holds none and needs none.
    pub fn restore(
        &self,
        gpu: &Gpu,
        ck: &Checkpoint,
        with_optim: bool,
    ) -> std::result::Result<(), String> {
        let fill = |dst: &mut [f32], e: &Entry, name: &str| -> std::result::Result<(), String> {
            match ck.get(name) {
                Some((_, shape, v)) if *shape == e.shape => {
                    dst[e.offset..e.offset + e.len()].copy_from_slice(v);
                    Ok(())
                }
                Some((_, shape, _)) => Err(format!(
                    "tensor {name} has shape {shape:?}, the model expects {:?}",
                    e.shape
                )),
                None => Err(format!("tensor {name} is missing")),
            }
        };
        // A tensor the model has no place for (a threshold in a dense model's checkpoint, a
        // layer of another model) would be silently ignored: the file is not this model's.
        let known = |name: &str| {
            self.layout.states.iter().any(|e| e.name == name)
                || self.layout.entries.iter().any(|e| {
                    e.name == name
                        || momentum_name(&e.name) == name
                        || second_moment_name(&e.name) == name
                })
        };
        if let Some((name, _, _)) = ck.tensors.iter().find(|t| !known(&t.0)) {
            return Err(format!(
                "tensor {name} has no place in the model (its metadata says model {}, masked {}): \
                 the file is damaged or was edited",
                ck.meta("model").unwrap_or("?"),
                ck.meta("masked").unwrap_or("?")
            ));
        }
        let n = self.layout.total;
        let adam = self.has_moment2();
        let mut params = vec![0.0f32; n];
        let mut m1 = vec![0.0f32; n];
        let mut m2 = vec![0.0f32; if adam { n } else { 1 }];
        let mut state = vec![0.0f32; self.layout.state_total];
        for e in &self.layout.entries {
            fill(&mut params, e, &e.name)?;
            if with_optim {
                fill(&mut m1, e, &momentum_name(&e.name))?;
                if adam {
                    fill(&mut m2, e, &second_moment_name(&e.name))?;
                }
            }
        }
        for e in &self.layout.states {
            fill(&mut state, e, &e.name)?;
        }
        gpu.write(&self.params, &params);
        gpu.write(&self.moment1, &m1);
        gpu.write(&self.moment2, &m2);
        gpu.write(&self.state, &state);
        Ok(())
    }
}
