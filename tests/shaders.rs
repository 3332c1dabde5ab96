//! Every WGSL module, exactly as the program assembles it (`common.wgsl` prelude + family), through
//! naga's WGSL front end, its validator (every validation flag, the capabilities wgpu grants a
//! device that enables no shader feature) and its SPIR-V, MSL and HLSL back ends, one entry point
//! at a time with options built the way wgpu-hal 30 builds them for Vulkan, Metal and DX12
//! (`fake_missing_bindings: false`, explicit binding maps, bounds checks on, loop bounding as the
//! program compiles them: `dst::kernels::shader_checks`).
//! A shader that Vulkan, Metal or DX12 would refuse at the naga stage fails here, on Linux,
//! without any of those GPUs. (The driver's own compiler, which runs after naga, is not run.)

use std::collections::{BTreeMap, BTreeSet};

use dst::kernels::{
    module_source, shader_checks, subgroup_section, COMMON_WGSL, FAMILIES, SUBGROUP_SECTION,
};
use naga::back::{hlsl, msl, spv};
use naga::valid::{Capabilities, ModuleInfo, ValidationFlags, Validator};
use naga::{AddressSpace, ResourceBinding, ShaderStage, StorageAccess};

// ---------------------------------------------------------------- targets

/// The bind group the program binds the `StepInfo` ring to, with a dynamic offset
/// (`Dispatch::record` in src/kernels/mod.rs). Every other uniform is a plain one.
const STEP_GROUP: u32 = 1;

/// SPIR-V versions wgpu-hal picks for Vulkan 1.0, 1.1 and 1.3 devices, each with the workgroup
/// zero-initialisation wgpu uses there (polyfill unless the device has the 1.3 feature).
const SPV_TARGETS: &[((u8, u8), spv::ZeroInitializeWorkgroupMemoryMode)] = &[
    ((1, 0), spv::ZeroInitializeWorkgroupMemoryMode::Polyfill),
    ((1, 3), spv::ZeroInitializeWorkgroupMemoryMode::Polyfill),
    ((1, 6), spv::ZeroInitializeWorkgroupMemoryMode::Native),
];

/// Metal Shading Language versions: the oldest wgpu-hal uses on a Metal 2 device (macOS 10.13)
/// up to the one of macOS 13.
const MSL_VERSIONS: &[(u8, u8)] = &[(2, 0), (2, 1), (3, 0)];

/// Shader models wgpu-hal's DX12 back end uses: 5.1 with FXC, 6.0 the floor with DXC.
const HLSL_MODELS: &[hlsl::ShaderModel] = &[hlsl::ShaderModel::V5_1, hlsl::ShaderModel::V6_0];

/// What the validator may assume. The program enables no shader feature (only
/// `TIMESTAMP_QUERY`, which maps to no capability), so this is what
/// `wgpu_naga_bridge::features_to_naga_capabilities` gives every adapter that has the
/// `MULTISAMPLED_SHADING` and `CUBE_ARRAY_TEXTURES` downlevel flags, i.e. naga's default.
/// Nothing is added: no f16, no f64, no subgroups, no 64-bit integers, no immediates.
fn capabilities() -> Capabilities {
    Capabilities::default()
}

/// A validator for the program's modules: `capabilities()`, and with `subgroups` what wgpu-hal
/// grants a Vulkan device with the `SUBGROUP` feature (compute stage, every operation): the
/// capabilities of the modules that hold their family's subgroup section (`Gpu::subgroups8`).
fn validator(subgroups: bool) -> Validator {
    if !subgroups {
        return Validator::new(ValidationFlags::all(), capabilities());
    }
    let mut v = Validator::new(
        ValidationFlags::all(),
        capabilities() | Capabilities::SUBGROUP,
    );
    v.subgroup_stages(naga::valid::ShaderStages::COMPUTE)
        .subgroup_operations(naga::valid::SubgroupOperationSet::all());
    v
}

/// SPIR-V 1.3 (Vulkan 1.1) is the first with subgroup operations: the subgroup sections are
/// written for the targets from there on (the Vulkan devices that can have `SUBGROUP`).
const SUBGROUP_SPV: (u8, u8) = (1, 3);

// ---------------------------------------------------------------- the helper

/// A module that went through every stage.
#[derive(Debug)]
struct Checked {
    module: naga::Module,
    info: ModuleInfo,
    /// Names of the entry points, in module order.
    entry_points: Vec<String>,
    /// Back-end outputs written (entry points x targets).
    outputs: usize,
}

/// Parses, validates and translates `source` (a complete module) for every back end and every
/// entry point. `name` names the module in every message. Front-end and validator errors stop at
/// once; back-end errors are collected for every entry point and target. With `subgroups` (a
/// module with its family's subgroup section) the validator has subgroups (`validator`) and the
/// targets are the Vulkan ones from SPIR-V 1.3 on: only a Vulkan CPU adapter with 8-lane
/// subgroups compiles that section (`Gpu::subgroups8`).
fn check_module(name: &str, source: &str, subgroups: bool) -> Result<Checked, Vec<String>> {
    // Line numbers in messages count the module as assembled: the prelude's lines come first.
    let path = format!(
        "{name} module (common.wgsl, {} lines, + {name}.wgsl)",
        COMMON_WGSL.lines().count()
    );
    let module = naga::front::wgsl::parse_str(source).map_err(|e| {
        vec![format!(
            "{name}: WGSL front end rejected the module:\n{}",
            e.emit_to_string_with_path(source, &path)
        )]
    })?;
    let info = validator(subgroups).validate(&module).map_err(|e| {
        vec![format!(
            "{name}: naga validator rejected the module:\n{}",
            e.emit_to_string_with_path(source, &path)
        )]
    })?;

    let mut errors = Vec::new();
    let mut outputs = 0;
    let mut entry_points = Vec::new();
    for (index, ep) in module.entry_points.iter().enumerate() {
        let tag = format!("{name}: entry point `{}` ({:?})", ep.name, ep.stage);
        entry_points.push(ep.name.clone());
        let layout = match entry_layout(&module, &info, index) {
            Ok(layout) => layout,
            Err(e) => {
                errors.push(format!("{tag}: {e}"));
                continue;
            }
        };
        // What every wgpu-hal back end does first: one entry point, overrides resolved, module
        // compacted and revalidated.
        let (ep_module, ep_info) = match naga::back::pipeline_constants::process_overrides(
            &module,
            &info,
            Some((ep.stage, ep.name.as_str())),
            &naga::back::PipelineConstants::default(),
        ) {
            Ok(pair) => pair,
            Err(e) => {
                errors.push(format!("{tag}: pipeline-constant processing failed: {e}"));
                continue;
            }
        };
        for &(version, zero_init) in SPV_TARGETS {
            if subgroups && version < SUBGROUP_SPV {
                continue;
            }
            match write_spv(
                &ep_module,
                &ep_info,
                ep.stage,
                &ep.name,
                (version, zero_init),
                &layout,
                subgroups,
            ) {
                Ok(()) => outputs += 1,
                Err(e) => errors.push(format!(
                    "{tag}: SPIR-V {}.{} back end (Vulkan): {e}",
                    version.0, version.1
                )),
            }
        }
        if subgroups {
            continue; // Vulkan only (above)
        }
        for &version in MSL_VERSIONS {
            match write_msl(&ep_module, &ep_info, ep.stage, &ep.name, version, &layout) {
                Ok(()) => outputs += 1,
                Err(e) => errors.push(format!(
                    "{tag}: MSL {}.{} back end (Metal): {e}",
                    version.0, version.1
                )),
            }
        }
        for &model in HLSL_MODELS {
            match write_hlsl(&ep_module, &ep_info, ep.stage, &ep.name, model, &layout) {
                Ok(()) => outputs += 1,
                Err(e) => errors.push(format!(
                    "{tag}: HLSL {} back end (DX12): {e}",
                    model.to_str()
                )),
            }
        }
    }
    if errors.is_empty() {
        Ok(Checked {
            module,
            info,
            entry_points,
            outputs,
        })
    } else {
        Err(errors)
    }
}

/// A binding of the pipeline layout the program builds for an entry point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resource {
    Uniform { dynamic: bool },
    Storage { read_only: bool },
}

/// The bindings one entry point uses, as the program's explicit bind group layouts declare them:
/// uniform buffers (group 1's with a dynamic offset) and storage buffers, read-only exactly when
/// the WGSL declares them `read`. Anything else has no place in the program's layouts.
fn entry_layout(
    module: &naga::Module,
    info: &ModuleInfo,
    index: usize,
) -> Result<BTreeMap<ResourceBinding, Resource>, String> {
    let uses = info.get_entry_point(index);
    let mut layout = BTreeMap::new();
    for (handle, var) in module.global_variables.iter() {
        if uses[handle].is_empty() {
            continue;
        }
        let Some(binding) = var.binding else {
            continue;
        };
        let var_name = var.name.as_deref().unwrap_or("?");
        let resource = match var.space {
            AddressSpace::Uniform => Resource::Uniform {
                dynamic: binding.group == STEP_GROUP,
            },
            AddressSpace::Storage { access } => Resource::Storage {
                read_only: !access.contains(StorageAccess::STORE),
            },
            other => {
                return Err(format!(
                    "global `{var_name}` at @group({}) @binding({}) is in {other:?}; the \
                     program's bind group layouts hold only uniform and storage buffers",
                    binding.group, binding.binding
                ))
            }
        };
        if layout.insert(binding, resource).is_some() {
            return Err(format!(
                "two globals at @group({}) @binding({})",
                binding.group, binding.binding
            ));
        }
    }
    Ok(layout)
}

fn write_spv(
    module: &naga::Module,
    info: &ModuleInfo,
    stage: ShaderStage,
    entry: &str,
    (lang_version, zero_init): ((u8, u8), spv::ZeroInitializeWorkgroupMemoryMode),
    layout: &BTreeMap<ResourceBinding, Resource>,
    subgroups: bool,
) -> Result<(), String> {
    // The capabilities wgpu-hal declares on every Vulkan device (plus the two that come with
    // the downlevel flags assumed in `capabilities()`): a shader that needs more fails.
    let capabilities = [
        spv::Capability::Shader,
        spv::Capability::Matrix,
        spv::Capability::Sampled1D,
        spv::Capability::Image1D,
        spv::Capability::ImageQuery,
        spv::Capability::DerivativeControl,
        spv::Capability::StorageImageExtendedFormats,
        spv::Capability::SampledCubeArray,
        spv::Capability::SampleRateShading,
    ];
    // And with the `SUBGROUP` feature, the group operations wgpu-hal declares with it.
    let group_ops = [
        spv::Capability::GroupNonUniform,
        spv::Capability::GroupNonUniformVote,
        spv::Capability::GroupNonUniformArithmetic,
        spv::Capability::GroupNonUniformBallot,
        spv::Capability::GroupNonUniformShuffle,
        spv::Capability::GroupNonUniformShuffleRelative,
    ];
    let capabilities = capabilities
        .into_iter()
        .chain(group_ops.into_iter().filter(|_| subgroups));
    // As wgpu-hal's Vulkan bind group layouts: descriptor set = group, and each group's
    // entries renumbered 0, 1, 2, ... in binding order.
    let mut binding_map = spv::BindingMap::default();
    let mut next_binding: BTreeMap<u32, u32> = BTreeMap::new();
    for binding in layout.keys() {
        let next = next_binding.entry(binding.group).or_insert(0);
        binding_map.insert(
            *binding,
            spv::BindingInfo {
                descriptor_set: binding.group,
                binding: *next,
                binding_array_size: None,
            },
        );
        *next += 1;
    }
    let options = spv::Options {
        lang_version,
        flags: spv::WriterFlags::LABEL_VARYINGS | spv::WriterFlags::FORCE_POINT_SIZE,
        fake_missing_bindings: false,
        binding_map,
        capabilities: Some(capabilities.collect()),
        bounds_check_policies: restrict_everything(),
        zero_initialize_workgroup_memory: zero_init,
        force_loop_bounding: shader_checks().force_loop_bounding,
        debug_info: None,
        ..spv::Options::default()
    };
    let pipeline = spv::PipelineOptions {
        shader_stage: stage,
        entry_point: entry.to_string(),
    };
    let words =
        spv::write_vec(module, info, &options, Some(&pipeline)).map_err(|e| e.to_string())?;
    // SPIR-V magic number first, then version 0x00MMmm00.
    let want_version = (u32::from(lang_version.0) << 16) | (u32::from(lang_version.1) << 8);
    if words.len() < 5 || words[0] != 0x0723_0203 || words[1] != want_version {
        return Err(format!(
            "malformed SPIR-V header: {:08x?}",
            &words[..words.len().min(5)]
        ));
    }
    Ok(())
}

fn write_msl(
    module: &naga::Module,
    info: &ModuleInfo,
    stage: ShaderStage,
    entry: &str,
    lang_version: (u8, u8),
    layout: &BTreeMap<ResourceBinding, Resource>,
) -> Result<(), String> {
    // As wgpu-hal's Metal `create_pipeline_layout`: buffers take consecutive `[[buffer(n)]]`
    // slots in (group, binding) order, writable storage buffers are `mutable`, and a sizes
    // buffer (for runtime-sized arrays) follows when any storage buffer is bound.
    let mut resources = msl::EntryPointResources::default();
    let mut slot: msl::Slot = 0;
    let mut any_storage = false;
    for (binding, resource) in layout {
        let mut target = msl::BindTarget {
            buffer: Some(slot),
            ..msl::BindTarget::default()
        };
        slot += 1;
        if let Resource::Storage { read_only } = *resource {
            target.mutable = !read_only;
            any_storage = true;
        }
        resources.resources.insert(*binding, target);
    }
    if any_storage {
        resources.sizes_buffer = Some(slot);
    }
    let options = msl::Options {
        lang_version,
        per_entry_point_map: msl::EntryPointResourceMap::from([(entry.to_string(), resources)]),
        inline_samplers: Vec::new(),
        spirv_cross_compatibility: false,
        fake_missing_bindings: false,
        bounds_check_policies: restrict_everything(),
        zero_initialize_workgroup_memory: true,
        force_loop_bounding: shader_checks().force_loop_bounding,
        ..msl::Options::default()
    };
    let pipeline = msl::PipelineOptions {
        entry_point: Some((stage, entry.to_string())),
        allow_and_force_point_size: false,
        vertex_pulling_transform: true,
        ..msl::PipelineOptions::default()
    };
    let (source, translation) =
        msl::write_string(module, info, &options, &pipeline).map_err(|e| e.to_string())?;
    check_entry_names(&translation.entry_point_names, &source)
}

fn write_hlsl(
    module: &naga::Module,
    info: &ModuleInfo,
    stage: ShaderStage,
    entry: &str,
    shader_model: hlsl::ShaderModel,
    layout: &BTreeMap<ResourceBinding, Resource>,
) -> Result<(), String> {
    // As wgpu-hal's DX12 `create_pipeline_layout`: space 0 throughout; per bind group, first the
    // descriptor table (uniform -> CBV b#, read-only storage -> SRV t#, read-write storage ->
    // UAV u#, registers counted across groups), then one root CBV per dynamic uniform; last the
    // special constants (num_workgroups) CBV that wgpu-core always asks for.
    let target = |register: u32, restrict_indexing: bool| hlsl::BindTarget {
        space: 0,
        register,
        binding_array_size: None,
        dynamic_storage_buffer_offsets_index: None,
        restrict_indexing,
    };
    let (mut cbv, mut srv, mut uav) = (0u32, 0u32, 0u32);
    let mut binding_map = hlsl::BindingMap::default();
    let groups: BTreeSet<u32> = layout.keys().map(|b| b.group).collect();
    for group in groups {
        let in_group: Vec<(ResourceBinding, Resource)> = layout
            .iter()
            .filter(|(b, _)| b.group == group)
            .map(|(b, r)| (*b, *r))
            .collect();
        for &(binding, resource) in &in_group {
            let counter = match resource {
                Resource::Uniform { dynamic: true } => continue,
                Resource::Uniform { dynamic: false } => &mut cbv,
                Resource::Storage { read_only: true } => &mut srv,
                Resource::Storage { read_only: false } => &mut uav,
            };
            binding_map.insert(binding, target(*counter, false));
            *counter += 1;
        }
        for &(binding, resource) in &in_group {
            if resource == (Resource::Uniform { dynamic: true }) {
                binding_map.insert(binding, target(cbv, true));
                cbv += 1;
            }
        }
    }
    let options = hlsl::Options {
        shader_model,
        binding_map,
        fake_missing_bindings: false,
        special_constants_binding: Some(target(cbv, false)),
        immediates_target: None,
        zero_initialize_workgroup_memory: true,
        restrict_indexing: true,
        force_loop_bounding: shader_checks().force_loop_bounding,
        ..hlsl::Options::default()
    };
    let pipeline = hlsl::PipelineOptions {
        entry_point: Some((stage, entry.to_string())),
    };
    let mut source = String::new();
    let reflection = hlsl::Writer::new(&mut source, &options, &pipeline)
        .write(module, info, None)
        .map_err(|e| e.to_string())?;
    check_entry_names(&reflection.entry_point_names, &source)
}

/// Back ends report per-entry-point failures (a binding missing from the map, ...) here rather
/// than as an error: exactly one entry point must have been written, successfully.
fn check_entry_names<E: std::fmt::Display>(
    names: &[Result<String, E>],
    source: &str,
) -> Result<(), String> {
    match names {
        [Ok(_)] if !source.trim().is_empty() => Ok(()),
        [Ok(_)] => Err("empty output".to_string()),
        [Err(e)] => Err(e.to_string()),
        other => Err(format!(
            "expected one translated entry point, got {}",
            other.len()
        )),
    }
}

fn restrict_everything() -> naga::proc::BoundsCheckPolicies {
    naga::proc::BoundsCheckPolicies {
        index: naga::proc::BoundsCheckPolicy::Restrict,
        buffer: naga::proc::BoundsCheckPolicy::Restrict,
        image_load: naga::proc::BoundsCheckPolicy::Restrict,
        // wgpu-hal leaves binding arrays unchecked on every back end (and the program has none).
        binding_array: naga::proc::BoundsCheckPolicy::Unchecked,
    }
}

/// Runs `check_module` on every family, panicking with every failure of every family.
fn check_all_families() -> Vec<(&'static str, Checked)> {
    let mut checked = Vec::new();
    let mut failures = Vec::new();
    for &(family, source) in FAMILIES {
        match check_module(family, &module_source(source, false), false) {
            Ok(c) => checked.push((family, c)),
            Err(errors) => failures.extend(errors),
        }
    }
    assert!(
        failures.is_empty(),
        "{} shader failure(s):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    checked
}

// ---------------------------------------------------------------- tests

#[test]
fn every_family_validates_and_translates_for_vulkan_metal_dx12() {
    let checked = check_all_families();
    assert_eq!(checked.len(), FAMILIES.len());
    for (family, c) in &checked {
        let per_ep = SPV_TARGETS.len() + MSL_VERSIONS.len() + HLSL_MODELS.len();
        assert_eq!(
            c.outputs,
            c.entry_points.len() * per_ep,
            "{family}: not every entry point was written for every target"
        );
        println!(
            "{family}: {} entry point(s) [{}] -> SPIR-V, MSL, HLSL ({} outputs)",
            c.entry_points.len(),
            c.entry_points.join(", "),
            c.outputs
        );
    }
}

/// The families' subgroup sections (from the line that begins with `SUBGROUP_SECTION` to the
/// end of conv.wgsl, gemm.wgsl and sparse.wgsl): one such line per file; the modules that hold them validate
/// with subgroups and translate for Vulkan, every entry point; the section holds exactly the
/// entry points named `*_sg`, and the plain module every other one; without subgroups the
/// validator refuses the section (it is what needs the feature).
#[test]
fn subgroup_sections_validate_and_translate_for_vulkan() {
    let mut with_section = Vec::new();
    for &(family, source) in FAMILIES {
        let markers = source
            .lines()
            .filter(|l| l.starts_with(SUBGROUP_SECTION))
            .count();
        assert_eq!(
            markers,
            subgroup_section(source).is_some() as usize,
            "{family}: section lines"
        );
        if subgroup_section(source).is_none() {
            continue;
        }
        with_section.push(family);
        let c = check_module(family, &module_source(source, true), true)
            .unwrap_or_else(|e| panic!("{}", e.join("\n\n")));
        let spv = SPV_TARGETS
            .iter()
            .filter(|(v, _)| *v >= SUBGROUP_SPV)
            .count();
        assert_eq!(c.outputs, c.entry_points.len() * spv, "{family}: outputs");
        let plain = check_all_families()
            .into_iter()
            .find(|(f, _)| *f == family)
            .unwrap()
            .1;
        let (sg, other): (Vec<&String>, Vec<&String>) =
            c.entry_points.iter().partition(|e| e.ends_with("_sg"));
        assert!(!sg.is_empty(), "{family}: the section adds no entry point");
        assert_eq!(
            other,
            plain.entry_points.iter().collect::<Vec<_>>(),
            "{family}: the plain module's entry points"
        );
        let errors = check_module(family, &module_source(source, true), false)
            .expect_err("a subgroup section passed without subgroups");
        assert!(
            errors.join("\n").contains("naga validator"),
            "{family}: {errors:?}"
        );
    }
    assert_eq!(with_section, ["conv", "gemm", "sparse"]);
}

#[test]
fn families_are_exactly_the_shader_files() {
    // The registry holds every .wgsl file of shaders/ (the prelude apart), byte for byte, so no
    // shader escapes this test and the test reads what the binary embeds.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter_map(|f| f.strip_suffix(".wgsl").map(str::to_string))
        .filter(|f| f != "common")
        .collect();
    on_disk.sort();
    let mut registered: Vec<String> = FAMILIES.iter().map(|(f, _)| f.to_string()).collect();
    registered.sort();
    assert_eq!(
        on_disk, registered,
        "shaders/*.wgsl and dst::kernels::FAMILIES differ"
    );
    let common = std::fs::read_to_string(dir.join("common.wgsl")).unwrap();
    assert_eq!(
        common, COMMON_WGSL,
        "prelude differs from shaders/common.wgsl"
    );
    for &(family, source) in FAMILIES {
        let file = std::fs::read_to_string(dir.join(format!("{family}.wgsl"))).unwrap();
        assert_eq!(
            file, source,
            "{family}: source differs from shaders/{family}.wgsl"
        );
        let module = module_source(source, true);
        assert!(
            module.starts_with(COMMON_WGSL) && module.ends_with(source),
            "{family}: module_source is not prelude + family"
        );
        // Without subgroups: the same, up to the subgroup section's first line.
        let plain = module_source(source, false);
        let kept = subgroup_section(source).map_or(source, |at| &source[..at]);
        assert!(
            plain.starts_with(COMMON_WGSL) && plain.ends_with(kept),
            "{family}: module_source without subgroups is not prelude + family up to its section"
        );
        let code = |l: &&str| !l.trim_start().starts_with("//");
        assert!(
            !plain.lines().filter(code).any(|l| l.contains("subgroup")),
            "{family}: a subgroup builtin outside the subgroup section"
        );
    }
}

#[test]
fn every_entry_point_is_compute_and_documented() {
    let mut failures = Vec::new();
    // The prelude must hold no entry point: it is pasted into every module.
    let prelude = compute_attributes("common.wgsl", COMMON_WGSL);
    if !prelude.is_empty() {
        failures.push(format!(
            "common.wgsl: the prelude declares entry point(s) {:?}",
            prelude.iter().map(|e| &e.name).collect::<Vec<_>>()
        ));
    }
    for &(family, source) in FAMILIES {
        let file = format!("shaders/{family}.wgsl");
        let found = compute_attributes(&file, source);
        if found.is_empty() {
            failures.push(format!("{family}: no @compute entry point in {file}"));
        }
        for ep in &found {
            if !ep.documented {
                failures.push(format!(
                    "{family}: entry point `{}` ({file}:{}) has no `//` comment line above its \
                     attributes saying what it reads and writes",
                    ep.name, ep.line
                ));
            }
        }
        // The text scan and naga agree on the entry points, and all of them are compute.
        match naga::front::wgsl::parse_str(&module_source(source, true)) {
            Ok(module) => {
                let mut naga_names: Vec<&str> = Vec::new();
                for ep in &module.entry_points {
                    if ep.stage != ShaderStage::Compute {
                        failures.push(format!(
                            "{family}: entry point `{}` is {:?}; the program builds compute \
                             pipelines only",
                            ep.name, ep.stage
                        ));
                    }
                    naga_names.push(&ep.name);
                }
                naga_names.sort_unstable();
                let mut text_names: Vec<&str> = found.iter().map(|e| e.name.as_str()).collect();
                text_names.sort_unstable();
                if naga_names != text_names {
                    failures.push(format!(
                        "{family}: naga sees entry points {naga_names:?}, the text scan sees \
                         @compute on {text_names:?}"
                    ));
                }
            }
            Err(e) => failures.push(format!("{family}: does not parse: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Bytes of workgroup memory entry point `index` of a checked module uses.
fn workgroup_bytes(c: &Checked, index: usize) -> u32 {
    let m = &c.module;
    let uses = c.info.get_entry_point(index);
    m.global_variables
        .iter()
        .filter(|(h, v)| v.space == AddressSpace::WorkGroup && !uses[*h].is_empty())
        .map(|(_, v)| m.types[v.ty].inner.size(m.to_ctx()))
        .sum()
}

#[test]
fn workgroups_fit_webgpu_default_limits() {
    // The program opens the device with the adapter's own limits, but "any GPU" means the
    // WebGPU defaults every Vulkan, Metal and DX12 adapter wgpu exposes meets.
    let limits = wgpu::Limits::default();
    let mut failures = Vec::new();
    for (family, c) in check_all_families() {
        let m = &c.module;
        for (index, ep) in m.entry_points.iter().enumerate() {
            let [x, y, z] = ep.workgroup_size;
            let tag = format!("{family}: entry point `{}`", ep.name);
            if ep.workgroup_size_overrides.is_some() {
                failures.push(format!("{tag}: workgroup size set by an override"));
            }
            if x > limits.max_compute_workgroup_size_x
                || y > limits.max_compute_workgroup_size_y
                || z > limits.max_compute_workgroup_size_z
            {
                failures.push(format!("{tag}: workgroup size {x}x{y}x{z} over the limits"));
            }
            if x * y * z > limits.max_compute_invocations_per_workgroup {
                failures.push(format!(
                    "{tag}: {} invocations per workgroup > {}",
                    x * y * z,
                    limits.max_compute_invocations_per_workgroup
                ));
            }
            let shared = workgroup_bytes(&c, index);
            if shared > limits.max_compute_workgroup_storage_size {
                failures.push(format!(
                    "{tag}: {shared} bytes of workgroup memory > {}",
                    limits.max_compute_workgroup_storage_size
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Grids the host sizes by a constant of its own cover what the shader's workgroups do: the
/// entry point's workgroup size is that constant (a smaller one would leave rows unvisited).
#[test]
fn host_grid_constants_match_the_workgroup_sizes() {
    let checked = check_all_families();
    let size = |family: &str, entry: &str| {
        let (_, c) = checked.iter().find(|(f, _)| *f == family).unwrap();
        let ep = c.module.entry_points.iter().find(|e| e.name == entry);
        ep.unwrap_or_else(|| panic!("{family}: no entry point {entry}"))
            .workgroup_size
    };
    assert_eq!(
        size("masked", "mask_count_rowwise4"),
        [dst::kernels::masked::COUNT_WG, 1, 1]
    );
    assert_eq!(
        size("masked", "threshold_grad"),
        [dst::kernels::masked::THRESHOLD_WG, 1, 1]
    );
}

/// The LSTM family as adapters with other workgroup limits compile it (`kernels::lstm::source`
/// rewrites how many ways the GPU steps split their sums): every form validates and translates,
/// and its split steps use 64 x `split_ways` invocations (forward, backward), within the limit it
/// was made for, and fit the default workgroup memory.
#[test]
fn lstm_split_forms_validate_and_fit_their_limits() {
    use dst::kernels::lstm::{source, split_ways};
    let limits = wgpu::Limits::default();
    assert_eq!(
        source(limits.max_compute_invocations_per_workgroup),
        dst::kernels::lstm::SOURCE
    );
    for (max, ways) in [
        (64, (1, 1)),
        (128, (2, 2)),
        (256, (4, 4)),
        (511, (4, 4)),
        (512, (8, 8)),
        (1023, (8, 8)),
        (1024, (8, 16)),
        (4096, (8, 16)),
    ] {
        assert_eq!(split_ways(max), ways, "{max} invocations");
        let c = check_module(
            &format!("lstm for {max}"),
            &module_source(&source(max), false),
            false,
        )
        .unwrap_or_else(|e| panic!("{}", e.join("\n")));
        let m = &c.module;
        let mut split = Vec::new();
        for (index, ep) in m.entry_points.iter().enumerate() {
            let want = match ep.name.as_str() {
                "lstm_step_split" => ways.0,
                "lstm_step_backward_split" => ways.1,
                _ => continue,
            };
            split.push(ep.name.clone());
            assert_eq!(ep.workgroup_size, [64, want, 1], "{max}: {}", ep.name);
            let shared = workgroup_bytes(&c, index);
            assert!(
                shared <= limits.max_compute_workgroup_storage_size,
                "{max}: {} uses {shared} bytes of workgroup memory",
                ep.name
            );
        }
        assert_eq!(split.len(), 2, "{max}: the split steps {split:?}");
    }
}

/// A deliberate type error: the helper must fail, in the front end, naming the module.
#[test]
fn broken_shader_fails_front_end() {
    let broken = r#"
@group(0) @binding(0) var<storage, read_write> out: array<u32>;

// Writes out[i] = a float (a type error).
@compute @workgroup_size(64, 1, 1)
fn bad(@builtin(global_invocation_id) gid: vec3<u32>) {
    let v: u32 = 1.5;
    out[gid.x] = v;
}
"#;
    let errors = check_module("broken_type", &module_source(broken, false), false)
        .expect_err("a type error passed the shader check");
    let all = errors.join("\n");
    println!("{all}");
    assert!(
        all.contains("broken_type") && all.contains("WGSL front end"),
        "unexpected error: {all}"
    );
}

/// Well-typed WGSL that only the validator refuses: a uniform buffer holding an `array<f32, 4>`
/// (stride 4, where the uniform address space needs 16; a Params struct mistake the front end
/// lets through). Proves the validator runs, with layout checks on.
#[test]
fn broken_shader_fails_validator() {
    let broken = r#"
@group(0) @binding(0) var<uniform> coeffs: array<f32, 4>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;

// Reads coeffs; writes out[i] = coeffs[i % 4].
@compute @workgroup_size(64, 1, 1)
fn bad(@builtin(global_invocation_id) gid: vec3<u32>) {
    out[gid.x] = coeffs[gid.x & 3u];
}
"#;
    let errors = check_module("broken_layout", &module_source(broken, false), false)
        .expect_err("a uniform array with stride 4 passed the shader check");
    let all = errors.join("\n");
    println!("{all}");
    assert!(
        all.contains("broken_layout") && all.contains("naga validator"),
        "unexpected error: {all}"
    );
}

/// A capability the program never enables (f16) must be refused: the validator is not given
/// more than the program can count on. (No prelude: `enable` must open the module.)
#[test]
fn shader_needing_a_feature_fails_validator() {
    let needs_f16 = r#"
enable f16;
@group(0) @binding(0) var<storage, read_write> out: array<f32>;

// Writes out[i] through an f16 (needs the SHADER_F16 feature the program does not request).
@compute @workgroup_size(64, 1, 1)
fn half(@builtin(global_invocation_id) gid: vec3<u32>) {
    let h: f16 = f16(out[gid.x]);
    out[gid.x] = f32(h);
}
"#;
    let errors =
        check_module("needs_f16", needs_f16, false).expect_err("f16 passed the shader check");
    let all = errors.join("\n");
    println!("{all}");
    assert!(
        all.contains("needs_f16") && all.contains("naga validator"),
        "unexpected error: {all}"
    );
}

/// The back ends really check the binding maps built above (`fake_missing_bindings: false`):
/// with an empty layout every one of them refuses an entry point that uses bindings.
#[test]
fn back_ends_refuse_missing_bindings() {
    let (family, source) = FAMILIES[0];
    let module = naga::front::wgsl::parse_str(&module_source(source, false)).unwrap();
    let info = Validator::new(ValidationFlags::all(), capabilities())
        .validate(&module)
        .unwrap();
    let ep = &module.entry_points[0];
    assert!(
        !entry_layout(&module, &info, 0).unwrap().is_empty(),
        "{family}: `{}` uses no binding",
        ep.name
    );
    let (m, i) = naga::back::pipeline_constants::process_overrides(
        &module,
        &info,
        Some((ep.stage, ep.name.as_str())),
        &naga::back::PipelineConstants::default(),
    )
    .unwrap();
    let empty = BTreeMap::new();
    let results = [
        (
            "SPIR-V",
            write_spv(&m, &i, ep.stage, &ep.name, SPV_TARGETS[0], &empty, false),
        ),
        (
            "MSL",
            write_msl(&m, &i, ep.stage, &ep.name, MSL_VERSIONS[0], &empty),
        ),
        (
            "HLSL",
            write_hlsl(&m, &i, ep.stage, &ep.name, HLSL_MODELS[0], &empty),
        ),
    ];
    for (back_end, result) in results {
        match result {
            Ok(()) => panic!("{family}.{}: {back_end} accepted missing bindings", ep.name),
            Err(e) => println!("{family}.{}: {back_end}: {e}", ep.name),
        }
    }
}

/// The same helper passes a small correct module, so the failures above come from the faults
/// planted in them, not from the harness.
#[test]
fn correct_snippet_passes_every_back_end() {
    let good = r#"
@group(0) @binding(0) var<uniform> n: vec4<u32>;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@group(1) @binding(0) var<uniform> si: StepInfo;

// Reads src; writes dst = S(src) * lr.
@compute @workgroup_size(64, 1, 1)
fn good(@builtin(global_invocation_id) gid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i < n.x) {
        dst[i] = dst_step(src[i]) * si.lr;
    }
}
"#;
    let c = check_module("good", &module_source(good, false), false)
        .unwrap_or_else(|e| panic!("{}", e.join("\n")));
    assert_eq!(c.entry_points, ["good"]);
}

// ---------------------------------------------------------------- text scan

struct TextEntry {
    name: String,
    /// 1-based line of the `@compute` attribute.
    line: usize,
    /// The nearest line above the attributes (blank lines and `@...` lines skipped) is a comment.
    documented: bool,
}

/// Every `@compute` attribute outside comments, with the function it starts and whether a `//`
/// line precedes its attribute lines.
fn compute_attributes(file: &str, source: &str) -> Vec<TextEntry> {
    let lines: Vec<&str> = source.lines().collect();
    let code = |l: &str| l.split("//").next().unwrap_or("").to_string();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if !code(line).contains("@compute") {
            continue;
        }
        let mut j = i;
        let documented = loop {
            if j == 0 {
                break false;
            }
            j -= 1;
            let t = lines[j].trim();
            if t.is_empty() || t.starts_with('@') {
                continue;
            }
            break t.starts_with("//");
        };
        let name = lines[i..]
            .iter()
            .map(|l| code(l))
            .find_map(|l| {
                let rest = l.split_once("fn ")?.1;
                let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_'))?;
                Some(rest[..end].to_string())
            })
            .unwrap_or_else(|| panic!("{file}:{}: @compute without a following fn", i + 1));
        found.push(TextEntry {
            name,
            line: i + 1,
            documented,
        });
    }
    found
}

// ---------------------------------------------------------------- loops

/// `source` without its comments (each `//` to the end of its line), lines kept.
fn strip_comments(source: &str) -> String {
    source
        .lines()
        .map(|l| l.find("//").map_or(l, |at| &l[..at]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether `word` occurs in `code` as a whole identifier.
fn has_word(code: &str, word: &str) -> bool {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    code.match_indices(word)
        .any(|(at, _)| !code[..at].ends_with(ident) && !code[at + word.len()..].starts_with(ident))
}

/// The index of the `close` that matches the `open` delimiter at or after `from` in `code`.
fn matching(code: &str, from: usize, open: char, close: char) -> usize {
    let start = from + code[from..].find(open).expect("no opening delimiter");
    let mut depth = 0;
    for (i, c) in code[start..].char_indices() {
        if c == open {
            depth += 1;
        } else if c == close {
            depth -= 1;
            if depth == 0 {
                return start + i;
            }
        }
    }
    panic!(
        "unbalanced {open}{close} after {}",
        &code[start..start + 40]
    );
}

/// The index of the parenthesis that closes the one opening at `open`.
fn closing_paren(code: &str, open: usize) -> usize {
    matching(code, open, '(', ')')
}

/// The arguments of a call or parameter list (the inside of its parentheses), split at its
/// top-level commas and trimmed.
fn top_level_args(inside: &str) -> Vec<&str> {
    let (mut depth, mut start, mut args) = (0, 0, Vec::new());
    for (i, c) in inside.char_indices() {
        match c {
            '(' | '[' | '<' => depth += 1,
            ')' | ']' | '>' => depth -= 1,
            ',' if depth == 0 => {
                args.push(inside[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    args.push(inside[start..].trim());
    args.retain(|a| !a.is_empty());
    args
}

/// When `step` is a parameter of the function around `at` in `code`: each call of that function
/// (where it is) and the argument it passes for `step` (None if `step` is no parameter or there
/// is no call).
fn parameter_arguments<'a>(code: &'a str, at: usize, step: &str) -> Option<Vec<(usize, &'a str)>> {
    let def = code[..at].rfind("fn ")?;
    let name_end = def + code[def..].find('(')?;
    let name = code[def + 3..name_end].trim();
    let params = &code[name_end + 1..closing_paren(code, name_end)];
    let index = top_level_args(params)
        .iter()
        .position(|p| p.split(':').next().map(str::trim) == Some(step))?;
    let calls: Vec<(usize, &str)> = code
        .match_indices(&format!("{name}("))
        .filter(|&(i, _)| {
            let before = &code[..i];
            !before.ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                && !before.ends_with("fn ")
        })
        .map(|(i, m)| {
            let open = i + m.len() - 1;
            let args = top_level_args(&code[open + 1..closing_paren(code, open)]);
            (i, args.get(index).copied().unwrap_or(""))
        })
        .collect();
    (!calls.is_empty()).then_some(calls)
}

/// The text between the brace that opens at or after `from` and its matching close.
fn braced_body(code: &str, from: usize) -> &str {
    let close = matching(code, from, '{', '}');
    let open = from + code[from..].find('{').expect("a loop without a body");
    &code[open + 1..close]
}

/// Whether the loop body assigns to `var` (=, op=, ++, --), a nested loop's header included.
fn assigns(body: &str, var: &str) -> bool {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.';
    body.match_indices(var).any(|(at, _)| {
        if body[..at].ends_with(ident) {
            return false;
        }
        let rest = body[at + var.len()..].trim_start();
        if rest.starts_with(ident) {
            return false;
        }
        rest.starts_with("++")
            || rest.starts_with("--")
            || (rest.starts_with('=') && !rest.starts_with("=="))
            || ["+=", "-=", "*=", "/=", "%=", "|=", "&=", "^=", "<<=", ">>="]
                .iter()
                .any(|op| rest.starts_with(op))
    })
}

/// Whether `step`, an expression at `at` in `code`, is positive: a literal, a module constant
/// (`consts`), `nwg.x *` one, or a parameter of the enclosing function for which every call
/// passes a positive step (up to a few calls deep).
fn positive_step(
    code: &str,
    at: usize,
    step: &str,
    consts: &BTreeMap<String, u64>,
    depth: u32,
) -> bool {
    let constant = |name: &str| consts.get(name).is_some_and(|&v| v > 0);
    let literal = step
        .strip_suffix('u')
        .and_then(|d| d.parse::<u64>().ok())
        .is_some_and(|v| v > 0);
    literal
        || constant(step)
        || step
            .strip_prefix("nwg.x * ")
            .is_some_and(|name| constant(name.trim()))
        || (depth < 4
            && parameter_arguments(code, at, step).is_some_and(|calls| {
                calls
                    .iter()
                    .all(|&(call_at, arg)| positive_step(code, call_at, arg, consts, depth + 1))
            }))
}

/// Why the loop whose header (`for (` .. `)`'s inside) starts at `at` in `code` may not
/// terminate, or None. A terminating loop here: `var i = ..; i < bound (or i + 1u < bound); i++
/// (or i += a positive step)`, or `var h = ..; h > 0u; h = h / 2u`, with `i` (`h`) never
/// assigned in the body. A positive step: a literal, a module constant (`consts`: the
/// `const NAME: u32 = Nu` values), `nwg.x *` one, or a parameter of the enclosing function
/// that every call passes one of those for.
fn loop_header_problem(
    code: &str,
    at: usize,
    header: &str,
    body: &str,
    consts: &BTreeMap<String, u64>,
) -> Option<String> {
    let parts: Vec<&str> = header.split(';').map(str::trim).collect();
    let [init, cond, update] = parts[..] else {
        return Some("not `init; condition; update`".into());
    };
    let Some(var) = init
        .strip_prefix("var ")
        .and_then(|r| r.split('=').next())
        .map(str::trim)
    else {
        return Some("the counter is not declared by `var` in the header".into());
    };
    let positive = |step: &str| positive_step(code, at, step, consts, 0);
    let counts_up = (cond.starts_with(&format!("{var} < "))
        || cond.starts_with(&format!("{var} + 1u < ")))
        && (update == format!("{var}++")
            || update
                .strip_prefix(&format!("{var} += "))
                .is_some_and(|s| positive(s.trim())));
    let halves = cond == format!("{var} > 0u") && update == format!("{var} = {var} / 2u");
    if !counts_up && !halves {
        return Some(format!(
            "`{cond}; {update}` neither counts up to a bound nor halves to zero"
        ));
    }
    if assigns(body, var) {
        return Some(format!("the body assigns the counter `{var}`"));
    }
    None
}

/// The program compiles its shaders without wgpu's loop bound (`dst::kernels::shader_checks`:
/// the driver may then treat an endless loop as unreachable), so every loop of every shader file
/// must end by construction. Apart from `for` loops of the shapes `loop_header_problem`
/// accepts, the files may hold only the one binary search of optim.wgsl, and no `loop` statement.
#[test]
fn every_loop_terminates_by_construction() {
    assert!(
        !shader_checks().force_loop_bounding && shader_checks().bounds_checks,
        "the program's shader checks changed: revisit this test"
    );
    let binary_search = "while (hi - lo > 1u) {\n        let mid = (lo + hi) / 2u;\n        \
                         if (ranges[1u + 2u * mid] <= i) {\n            lo = mid;\n        } \
                         else {\n            hi = mid;\n        }\n    }";
    let mut problems = Vec::new();
    let mut loops = 0;
    let files = std::iter::once(("common", COMMON_WGSL)).chain(FAMILIES.iter().copied());
    for (family, source) in files {
        let code = strip_comments(&module_source(source, true));
        let consts: BTreeMap<String, u64> = code
            .lines()
            .filter_map(|l| l.trim().strip_prefix("const "))
            .filter_map(|l| {
                let (name, rest) = l.split_once(": u32 = ")?;
                let value = rest.trim().strip_suffix("u;")?.parse().ok()?;
                Some((name.trim().to_string(), value))
            })
            .collect();
        if has_word(&code, "loop") {
            problems.push(format!("{family}: a `loop` statement"));
        }
        let whiles = code.matches("while").count();
        let searches = code.matches(binary_search).count();
        if whiles != searches || (searches > 0 && family != "optim") {
            problems.push(format!(
                "{family}: {whiles} `while` loop(s), {searches} of them the known binary search"
            ));
        }
        for (at, _) in code.match_indices("for (") {
            loops += 1;
            let close = closing_paren(&code, at + "for ".len());
            let header = &code[at + "for (".len()..close];
            let body = braced_body(&code, close);
            if let Some(p) = loop_header_problem(&code, at, header, body, &consts) {
                problems.push(format!("{family}: `for ({header})`: {p}"));
            }
        }
    }
    assert!(
        loops > 200,
        "found only {loops} for loops: the scan is broken"
    );
    assert!(
        problems.is_empty(),
        "loops that may not terminate:\n{}",
        problems.join("\n")
    );
}
