//! The kernel registry: every WGSL entry point compiled once per device into a pipeline with an
//! explicit bind group layout, and a small typed wrapper per entry point that turns buffers into a
//! recorded [`Dispatch`]. Kernels own pipelines and layouts; they allocate no model buffers and
//! never submit.

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

use std::sync::Arc;

use crate::gpu::{AdapterClass, Gpu, Result, Tensor};

/// The prelude prepended to every family: `StepInfo`, the step function, the long-tailed estimator.
pub const COMMON_WGSL: &str = include_str!("../../shaders/common.wgsl");

/// Every kernel family: (name, WGSL source without the prelude).
pub const FAMILIES: &[(&str, &str)] = &[
    ("act", act::SOURCE),
    ("batchnorm", batchnorm::SOURCE),
    ("conv", conv::SOURCE),
    ("data", data::SOURCE),
    ("gemm", gemm::SOURCE),
    ("loss", loss::SOURCE),
    ("lstm", lstm::SOURCE),
    ("masked", masked::SOURCE),
    ("optim", optim::SOURCE),
    ("pool", pool::SOURCE),
    ("sparse", sparse::SOURCE),
];

/// How the line that opens a family file's closing section of subgroup forms begins: entry
/// points that use `subgroupBroadcast` and assume 8-lane subgroups along the workgroup's x axis
/// (`Gpu::subgroups8`).
pub const SUBGROUP_SECTION: &str = "// ==== Subgroup forms";

/// Where a family file's subgroup section starts: the first line that begins with
/// `SUBGROUP_SECTION` (None: the file has none).
pub fn subgroup_section(family_source: &str) -> Option<usize> {
    if family_source.starts_with(SUBGROUP_SECTION) {
        return Some(0);
    }
    family_source
        .find(&format!("\n{SUBGROUP_SECTION}"))
        .map(|at| at + 1)
}

/// A family's module exactly as the program compiles it: prelude + family file, without the
/// file's subgroup section (`subgroup_section` to the end) unless `subgroups8`.
pub fn module_source(family_source: &str, subgroups8: bool) -> String {
    let body = match subgroup_section(family_source) {
        Some(at) if !subgroups8 => &family_source[..at],
        _ => family_source,
    };
    format!("{COMMON_WGSL}\n{body}")
}

/// Per-step values, one slot per step of a submission, read through a dynamic uniform offset.
/// Keep in sync with `StepInfo` in shaders/common.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct StepInfo {
    pub batch_start: u32,
    pub valid: u32,
    pub step: u32,
    pub _pad0: u32,
    pub lr: f32,
    pub adam_step_size: f32,
    pub adam_bc2_sqrt: f32,
    pub _pad1: f32,
}

/// A ring of `StepInfo` slots in one uniform buffer and the bind group (group 1) that reads one
/// slot at a dynamic offset.
pub struct StepRing {
    pub buffer: wgpu::Buffer,
    pub bind_group: wgpu::BindGroup,
    pub slots: u32,
    pub stride: u32,
}

impl StepRing {
    pub fn new(gpu: &Gpu, kernels: &Kernels, slots: u32) -> StepRing {
        let stride = (gpu.limits.min_uniform_buffer_offset_alignment)
            .max(std::mem::size_of::<StepInfo>() as u32);
        let buffer = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("step_ring"),
            size: (stride * slots) as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let bind_group = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("step_ring"),
            layout: &kernels.step_layout,
            entries: &[wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &buffer,
                    offset: 0,
                    size: std::num::NonZeroU64::new(std::mem::size_of::<StepInfo>() as u64),
                }),
            }],
        });
        StepRing {
            buffer,
            bind_group,
            slots,
            stride,
        }
    }

    /// Writes the slots for the next submission (queued before it, after earlier ones).
    pub fn write(&self, gpu: &Gpu, infos: &[StepInfo]) {
        assert!(infos.len() <= self.slots as usize, "step ring overflow");
        let mut bytes = vec![0u8; self.stride as usize * infos.len()];
        for (i, s) in infos.iter().enumerate() {
            let at = i * self.stride as usize;
            bytes[at..at + std::mem::size_of::<StepInfo>()].copy_from_slice(bytemuck::bytes_of(s));
        }
        gpu.queue.write_buffer(&self.buffer, 0, &bytes);
    }
}

/// How an entry point reads a binding of group 0 (binding 0 is always the `Params` uniform).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    ReadWrite,
}

/// One compiled entry point.
pub struct Kernel {
    pub name: String,
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
    /// (binding index, access) of the storage bindings, in wrapper argument order.
    storage: Vec<(u32, Access)>,
    uses_step: bool,
}

/// A recorded dispatch: pipeline, bind groups, workgroup counts. A plan is a list of these.
#[derive(Clone)]
pub struct Dispatch {
    pub label: String,
    pipeline: wgpu::ComputePipeline,
    group0: wgpu::BindGroup,
    step: Option<wgpu::BindGroup>,
    pub workgroups: [u32; 3],
    /// When set, the workgroup counts are read on the GPU from this buffer at this byte offset
    /// (three u32s; a layer's switch between dense and sparse products writes them).
    pub indirect: Option<(Arc<wgpu::Buffer>, u64)>,
}

impl Dispatch {
    /// Records this dispatch into a compute pass; `step_offset` selects the StepInfo slot.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>, step_offset: u32) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.group0, &[]);
        if let Some(step) = &self.step {
            pass.set_bind_group(1, step, &[step_offset]);
        }
        match &self.indirect {
            Some((buffer, offset)) => pass.dispatch_workgroups_indirect(buffer, *offset),
            None => {
                let [x, y, z] = self.workgroups;
                pass.dispatch_workgroups(x, y, z);
            }
        }
    }

    /// This dispatch with its workgroup counts read from `args` at byte offset `offset` when it
    /// runs (`workgroups` stays the count it was built for).
    pub fn indirect_from(mut self, args: &Tensor, offset: u64) -> Dispatch {
        assert!(offset.is_multiple_of(4), "indirect offset");
        self.indirect = Some((args.buffer.clone(), args.offset + offset));
        self
    }
}

/// Workgroup counts for `n` workgroups along one axis, folded into y past the per-axis limit.
/// Kernels index such grids as `gid.x + gid.y * num_workgroups.x * WG`.
pub fn grid_1d(n_groups: u32) -> [u32; 3] {
    const MAX: u32 = 65535;
    if n_groups <= MAX {
        [n_groups.max(1), 1, 1]
    } else {
        [MAX, n_groups.div_ceil(MAX), 1]
    }
}

impl Kernel {
    fn new(
        gpu: &Gpu,
        module: &wgpu::ShaderModule,
        family: &str,
        entry: &str,
        storage: &[(u32, Access)],
        uses_step: bool,
        step_layout: &wgpu::BindGroupLayout,
    ) -> Result<Kernel> {
        let name = format!("{family}.{entry}");
        gpu.scoped(&format!("creating pipeline {name}"), || {
            let mut entries = vec![wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            }];
            for &(binding, access) in storage {
                entries.push(wgpu::BindGroupLayoutEntry {
                    binding,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage {
                            read_only: access == Access::Read,
                        },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                });
            }
            let layout = gpu
                .device
                .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                    label: Some(&name),
                    entries: &entries,
                });
            let groups: Vec<Option<&wgpu::BindGroupLayout>> = if uses_step {
                vec![Some(&layout), Some(step_layout)]
            } else {
                vec![Some(&layout)]
            };
            let pl = gpu
                .device
                .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                    label: Some(&name),
                    bind_group_layouts: &groups,
                    immediate_size: 0,
                });
            let pipeline = gpu
                .device
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(&name),
                    layout: Some(&pl),
                    module,
                    entry_point: Some(entry),
                    compilation_options: Default::default(),
                    cache: None,
                });
            Kernel {
                name: name.clone(),
                pipeline,
                layout,
                storage: storage.to_vec(),
                uses_step,
            }
        })
    }

    /// Binds `params` (the entry point's uniform) and `buffers` (in the order of the entry's
    /// storage bindings) into a dispatch of `workgroups`.
    pub fn bind<P: bytemuck::Pod>(
        &self,
        gpu: &Gpu,
        params: &P,
        buffers: &[&Tensor],
        step: Option<&StepRing>,
        workgroups: [u32; 3],
    ) -> Result<Dispatch> {
        assert_eq!(
            buffers.len(),
            self.storage.len(),
            "{}: {} buffers for {} bindings",
            self.name,
            buffers.len(),
            self.storage.len()
        );
        assert_eq!(
            step.is_some(),
            self.uses_step,
            "{}: step ring mismatch",
            self.name
        );
        let uniform = gpu.uniform(&self.name, params);
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: uniform.as_entire_binding(),
        }];
        for (t, (binding, _)) in buffers.iter().zip(&self.storage) {
            entries.push(wgpu::BindGroupEntry {
                binding: *binding,
                resource: t.binding(),
            });
        }
        let group0 = gpu.scoped(&format!("binding {}", self.name), || {
            gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(&self.name),
                layout: &self.layout,
                entries: &entries,
            })
        })?;
        Ok(Dispatch {
            label: self.name.clone(),
            pipeline: self.pipeline.clone(),
            group0,
            step: step.map(|s| s.bind_group.clone()),
            workgroups,
            indirect: None,
        })
    }
}

/// Which GEMM variant the registry hands out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmVariant {
    /// Register blocking, no workgroup memory: CPU adapters (lavapipe).
    RegBlock,
    /// Workgroup-memory tiles: GPUs.
    Tiled,
}

impl GemmVariant {
    pub fn for_class(class: AdapterClass) -> GemmVariant {
        match class {
            AdapterClass::Cpu => GemmVariant::RegBlock,
            AdapterClass::Gpu => GemmVariant::Tiled,
        }
    }
}

/// All pipelines of one device.
pub struct Kernels {
    pub step_layout: wgpu::BindGroupLayout,
    pub gemm: gemm::Gemm,
    pub masked: masked::Masked,
    pub act: act::Act,
    pub batchnorm: batchnorm::BatchNorm,
    pub loss: loss::Loss,
    pub lstm: lstm::Lstm,
    pub data: data::Data,
    pub optim: optim::Optim,
    pub conv: conv::Conv,
    pub pool: pool::Pool,
    pub sparse: sparse::Sparse,
    /// A 16-byte buffer (one vec4) bound where an entry point's optional input is absent.
    pub dummy: Tensor,
}

/// The runtime checks wgpu compiles into our shaders: all of them (bounds, integer division)
/// except the loop bound. By default naga gives every loop a hidden iteration counter that breaks
/// out after 2^64 iterations, so that a driver may not treat an endless loop as unreachable; that
/// counter also hides every loop's trip count from the driver's compiler. On lavapipe it kept LLVM
/// from unrolling the fixed-count inner loops of the register-blocked kernels (their accumulator
/// arrays then live in memory): the dense LeNet-300-100 step took 9.6 ms with the counter and
/// 6.5 ms without it (fc1's forward product 5.0 -> 2.5 ms; BENCHMARKS.md). wgpu's contract for
/// leaving it out: no shader may loop forever. Ours cannot: every loop is a `for` whose counter
/// moves monotonically towards its bound (sizes and counts far below 2^32, so a positive step
/// cannot wrap past it), a counter halving to zero, or the one binary search (optim.wgsl, whose
/// interval shrinks every iteration); tests/shaders.rs checks that shape in every file.
pub fn shader_checks() -> wgpu::ShaderRuntimeChecks {
    let mut checks = wgpu::ShaderRuntimeChecks::checked();
    checks.force_loop_bounding = false;
    checks
}

/// Compiles one family's module under a validation scope: a WGSL error names the family. With
/// `subgroups`, the family's subgroup section too (`module_source`). Compiled with
/// `shader_checks`.
pub(crate) fn compile(
    gpu: &Gpu,
    family: &str,
    source: &str,
    subgroups: bool,
) -> Result<wgpu::ShaderModule> {
    let src = module_source(source, subgroups);
    gpu.scoped(&format!("compiling shaders/{family}.wgsl"), || {
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(family),
            source: wgpu::ShaderSource::Wgsl(src.into()),
        };
        // SAFETY: `shader_checks` keeps wgpu's bounds and division checks; the one check it
        // drops, the loop bound, needs every loop to terminate, which tests/shaders.rs
        // (`every_loop_terminates_by_construction`) checks for every shader file.
        unsafe {
            gpu.device
                .create_shader_module_trusted(desc, shader_checks())
        }
    })
}

impl Kernels {
    /// Creates every pipeline once; `gemm` picks the GEMM variant (None: by adapter class). The
    /// subgroup forms where the device has them (`Gpu::subgroups8`).
    pub fn new(gpu: &Gpu, gemm: Option<GemmVariant>) -> Result<Arc<Kernels>> {
        Self::with_subgroups(gpu, gemm, gpu.subgroups8)
    }

    /// `new`, with the kernels' subgroup forms (`subgroups`: only where `Gpu::subgroups8`) or
    /// without them (the plain forms everywhere: what every other adapter runs; for tests that
    /// compare the two).
    pub fn with_subgroups(
        gpu: &Gpu,
        gemm: Option<GemmVariant>,
        subgroups: bool,
    ) -> Result<Arc<Kernels>> {
        assert!(
            !subgroups || gpu.subgroups8,
            "subgroup forms need a CPU adapter with 8-lane subgroups"
        );
        let step_layout = gpu
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some("step"),
                entries: &[wgpu::BindGroupLayoutEntry {
                    binding: 0,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: true,
                        min_binding_size: std::num::NonZeroU64::new(
                            std::mem::size_of::<StepInfo>() as u64,
                        ),
                    },
                    count: None,
                }],
            });
        let mk = |family: &str, source: &str| -> Result<KernelFactory<'_>> {
            Ok(KernelFactory {
                gpu,
                family: family.to_string(),
                module: compile(gpu, family, source, subgroups)?,
                step_layout: &step_layout,
                subgroups,
            })
        };
        let variant = gemm.unwrap_or(GemmVariant::for_class(gpu.class));
        let kernels = Kernels {
            gemm: gemm::Gemm::new(&mk("gemm", gemm::SOURCE)?, variant)?,
            masked: masked::Masked::new(
                &mk("masked", masked::SOURCE)?,
                gpu.class == AdapterClass::Cpu,
                Tensor::from_slice(gpu, "one", &[1], &[1.0f32])?,
                Tensor::zeros(gpu, "no_switch", &[4])?,
                Tensor::zeros(gpu, "no_stats", &[4])?,
            )?,
            act: act::Act::new(&mk("act", act::SOURCE)?)?,
            batchnorm: batchnorm::BatchNorm::new(&mk("batchnorm", batchnorm::SOURCE)?)?,
            loss: loss::Loss::new(&mk("loss", loss::SOURCE)?)?,
            lstm: lstm::Lstm::new(
                &mk(
                    "lstm",
                    &lstm::source(gpu.limits.max_compute_invocations_per_workgroup),
                )?,
                gpu.class,
            )?,
            data: data::Data::new(&mk("data", data::SOURCE)?)?,
            optim: optim::Optim::new(&mk("optim", optim::SOURCE)?)?,
            conv: conv::Conv::new(&mk("conv", conv::SOURCE)?, gpu.class)?,
            pool: pool::Pool::new(&mk("pool", pool::SOURCE)?)?,
            sparse: sparse::Sparse::new(&mk("sparse", sparse::SOURCE)?)?,
            dummy: Tensor::zeros(gpu, "dummy", &[4])?,
            step_layout,
        };
        Ok(Arc::new(kernels))
    }
}

/// Builds the kernels of one family module.
pub struct KernelFactory<'a> {
    gpu: &'a Gpu,
    family: String,
    module: wgpu::ShaderModule,
    step_layout: &'a wgpu::BindGroupLayout,
    /// Whether the module holds its family's subgroup section.
    subgroups: bool,
}

impl KernelFactory<'_> {
    pub fn kernel(
        &self,
        entry: &str,
        storage: &[(u32, Access)],
        uses_step: bool,
    ) -> Result<Kernel> {
        Kernel::new(
            self.gpu,
            &self.module,
            &self.family,
            entry,
            storage,
            uses_step,
            self.step_layout,
        )
    }

    /// A kernel of the family's subgroup section: None where the module was compiled without it.
    pub fn subgroup_kernel(
        &self,
        entry: &str,
        storage: &[(u32, Access)],
        uses_step: bool,
    ) -> Result<Option<Kernel>> {
        if !self.subgroups {
            return Ok(None);
        }
        self.kernel(entry, storage, uses_step).map(Some)
    }
}

/// Records `dispatches` in one compute pass, submits, and waits: for tests and one-off work.
pub fn run_once(gpu: &Gpu, dispatches: &[Dispatch], step_offset: u32) -> Result<()> {
    gpu.scoped("run_once", || {
        let mut enc = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("run_once"),
            });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("run_once"),
                timestamp_writes: None,
            });
            for d in dispatches {
                d.record(&mut pass, step_offset);
            }
        }
        gpu.queue.submit([enc.finish()]);
    })?;
    gpu.wait()
}
