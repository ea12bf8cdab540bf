//! Every WGSL file parses and validates with naga, and stays inside WebGPU's default limits.

use wgpose::gpu::kernels::SHADERS;

#[test]
fn every_shader_validates_with_naga() {
    for (file, src, entries) in SHADERS {
        let module = naga::front::wgsl::parse_str(src).unwrap_or_else(|e| panic!("{file}: {}", e.emit_to_string(src)));
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::empty())
            .validate(&module)
            .unwrap_or_else(|e| panic!("{file}: {e:?}"));
        for entry in *entries {
            let ep = module
                .entry_points
                .iter()
                .find(|ep| ep.name == *entry)
                .unwrap_or_else(|| panic!("{file}: no entry point {entry}"));
            let [x, y, z] = ep.workgroup_size;
            assert!(x * y * z <= 256, "{file}:{entry}: {} invocations exceed WebGPU's 256", x * y * z);
        }
        // One storage binding for activations, one for parameters: far under the limit of 8.
        let storage = module
            .global_variables
            .iter()
            .filter(|(_, v)| matches!(v.space, naga::AddressSpace::Storage { .. }))
            .count();
        assert!(storage <= 8, "{file}: {storage} storage buffers");
    }
}

#[test]
fn every_shader_file_is_listed() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/shaders");
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".wgsl") {
            assert!(SHADERS.iter().any(|(f, _, _)| *f == name), "{name} is not in SHADERS");
        }
    }
}
