//! Kernels that cinder compiles to SPIR-V itself, for one reason: WGSL
//! zero-initialises `var<private>` memory, and Mesa's llvmpipe takes
//! seconds to compile the zeroing of a large private array (16.8 s for a
//! kernel that only loads, sums and stores 1024 floats of one; 481 s for
//! 4096). Its instruction scheduler is quadratic in the stores of one
//! block. A kernel that writes its private arrays whole before reading them
//! says so ([`crate::CustomKernel::writes_private_arrays_first`]). On a
//! Vulkan CPU adapter such a kernel is translated here by naga, as wgpu
//! would translate it, the private initialisers are dropped, and the
//! SPIR-V goes to the driver as it is. Everywhere else it takes the normal
//! path.

use crate::{Error, Result};

/// A kernel ready for `create_shader_module_passthrough` and an explicit
/// pipeline layout.
pub(crate) struct Spirv {
    pub words: Vec<u32>,
    pub entry_point: String,
    pub workgroup_size: [u32; 3],
    /// Group 0's bindings, as wgpu would derive them from the shader.
    pub bindings: Vec<wgpu::BindGroupLayoutEntry>,
}

const OP_VARIABLE: u32 = 59;
const STORAGE_CLASS_PRIVATE: u32 = 6;

/// `wgsl` (one compute entry point, resources in group 0, no override
/// constants) as SPIR-V without initialisers on its private variables.
pub(crate) fn without_private_zeroing(label: &str, wgsl: &str) -> Result<Spirv> {
    let fail = |what: String| Error::Gpu(format!("compiling kernel {label} to SPIR-V: {what}"));
    let module = naga::front::wgsl::parse_str(wgsl).map_err(|e| fail(e.emit_to_string(wgsl)))?;
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
    .subgroup_operations(naga::valid::SubgroupOperationSet::all())
    .validate(&module)
    .map_err(|e| fail(e.emit_to_string(wgsl)))?;
    let [entry] = &module.entry_points[..] else {
        return Err(fail(format!(
            "{} entry points, where one is expected",
            module.entry_points.len()
        )));
    };
    let bindings = bindings(&module).map_err(fail)?;
    let policy = naga::proc::BoundsCheckPolicy::Restrict;
    let options = naga::back::spv::Options {
        // Vulkan 1.1's SPIR-V, the first with subgroup operations.
        lang_version: (1, 3),
        bounds_check_policies: naga::proc::BoundsCheckPolicies {
            index: policy,
            buffer: policy,
            image_load: policy,
            binding_array: naga::proc::BoundsCheckPolicy::Unchecked,
        },
        // As the normal path: cinder's kernels initialise what they share.
        zero_initialize_workgroup_memory: naga::back::spv::ZeroInitializeWorkgroupMemoryMode::None,
        ..Default::default()
    };
    let pipeline = naga::back::spv::PipelineOptions {
        shader_stage: naga::ShaderStage::Compute,
        entry_point: entry.name.clone(),
    };
    let words = naga::back::spv::write_vec(&module, &info, &options, Some(&pipeline))
        .map_err(|e| fail(e.to_string()))?;
    Ok(Spirv {
        words: drop_private_initializers(&words).map_err(fail)?,
        entry_point: entry.name.clone(),
        workgroup_size: entry.workgroup_size,
        bindings,
    })
}

/// The module's group-0 buffers as layout entries: storage buffers read-only
/// unless the shader may store to them, uniform buffers as such.
fn bindings(module: &naga::Module) -> std::result::Result<Vec<wgpu::BindGroupLayoutEntry>, String> {
    let mut entries = Vec::new();
    for (_, var) in module.global_variables.iter() {
        let Some(binding) = &var.binding else {
            continue;
        };
        if binding.group != 0 {
            return Err(format!("binding in group {}", binding.group));
        }
        let ty = match var.space {
            naga::AddressSpace::Storage { access } => wgpu::BufferBindingType::Storage {
                read_only: !access.contains(naga::StorageAccess::STORE),
            },
            naga::AddressSpace::Uniform => wgpu::BufferBindingType::Uniform,
            other => return Err(format!("binding {} in {other:?}", binding.binding)),
        };
        entries.push(wgpu::BindGroupLayoutEntry {
            binding: binding.binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        });
    }
    entries.sort_by_key(|e| e.binding);
    Ok(entries)
}

/// `words` with every `OpVariable` of the Private storage class stripped of
/// its initialiser operand (the module's other instructions unchanged).
fn drop_private_initializers(words: &[u32]) -> std::result::Result<Vec<u32>, String> {
    const HEADER: usize = 5;
    if words.len() < HEADER {
        return Err("a module shorter than its header".into());
    }
    let mut out = words[..HEADER].to_vec();
    let mut at = HEADER;
    while at < words.len() {
        let count = (words[at] >> 16) as usize;
        let opcode = words[at] & 0xffff;
        let Some(instruction) = words.get(at..at + count).filter(|_| count > 0) else {
            return Err(format!("a malformed instruction at word {at}"));
        };
        // OpVariable: result type, result id, storage class, initialiser.
        if opcode == OP_VARIABLE && count == 5 && instruction[3] == STORAGE_CLASS_PRIVATE {
            out.push((4 << 16) | OP_VARIABLE);
            out.extend_from_slice(&instruction[1..4]);
        } else {
            out.extend_from_slice(instruction);
        }
        at += count;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_arrays_lose_their_initialisers_and_nothing_else_changes() -> Result<()> {
        let wgsl = "
            @group(0) @binding(0) var<storage, read> src: array<f32>;
            @group(0) @binding(1) var<storage, read_write> dst: array<f32>;
            var<private> w: array<f32, 64>;
            @compute @workgroup_size(32)
            fn main(@builtin(local_invocation_index) lid: u32) {
                var acc = 0.0;
                for (var m = 0u; m < 64u; m++) { w[m] = src[m]; }
                for (var m = 0u; m < 64u; m++) { acc += w[(m * 7u) % 64u]; }
                dst[lid] = acc;
            }";
        let spirv = without_private_zeroing("test", wgsl)?;
        assert_eq!(spirv.entry_point, "main");
        assert_eq!(spirv.workgroup_size, [32, 1, 1]);
        let read_only: Vec<_> = spirv
            .bindings
            .iter()
            .map(|e| match e.ty {
                wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage { read_only },
                    ..
                } => read_only,
                _ => panic!("{e:?}"),
            })
            .collect();
        assert_eq!(read_only, [true, false]);
        // Walk the result: no Private variable keeps an initialiser, while
        // function variables (`acc`, the loop counters) keep theirs.
        let (mut private, mut initialised_locals) = (0, 0);
        let mut at = 5;
        while at < spirv.words.len() {
            let count = (spirv.words[at] >> 16) as usize;
            if spirv.words[at] & 0xffff == OP_VARIABLE {
                match spirv.words[at + 3] {
                    STORAGE_CLASS_PRIVATE => {
                        private += 1;
                        assert_eq!(count, 4, "a private variable kept its initialiser");
                    }
                    7 if count == 5 => initialised_locals += 1,
                    _ => {}
                }
            }
            at += count;
        }
        assert_eq!(private, 1);
        assert!(initialised_locals >= 2, "{initialised_locals}");
        Ok(())
    }

    #[test]
    fn malformed_modules_are_errors() {
        assert!(drop_private_initializers(&[0; 3]).is_err());
        assert!(drop_private_initializers(&[0x0723_0203, 0, 0, 0, 0, 0]).is_err());
        assert!(drop_private_initializers(&[0x0723_0203, 0, 0, 0, 0, 9 << 16]).is_err());
    }
}
