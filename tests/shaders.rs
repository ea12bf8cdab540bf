//! Every WGSL file parses and validates with naga, and stays inside WebGPU's default limits.

use wgpose::gpu::kernels::SHADERS;

#[test]
fn every_shader_validates_with_naga() {
    for (file, src, entries) in SHADERS {
        let module = naga::front::wgsl::parse_str(src).unwrap_or_else(|e| panic!("{file}: {}", e.emit_to_string(src)));
        // The subgroup module is compiled only on devices with the `subgroups` feature.
        let caps = if *file == "conv2d_subgroup.wgsl" {
            naga::valid::Capabilities::SUBGROUP
        } else {
            naga::valid::Capabilities::empty()
        };
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
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

// ---------------------------------------------------------------------------------------------
// Rust and WGSL agree on uniform layouts, codes and workgroup sizes
// ---------------------------------------------------------------------------------------------

use wgpose::gpu::kernels::{
    CONV2D_WGSL, CONV_DIRECT_WG, CONV_TD, CONV_TILED_WG, CONV_TM, CONV_TN, ELEMENTWISE_WGSL, FLAT_WG, POOL_WGSL,
    RESAMPLE_WGSL,
};
use wgpose::gpu::uniforms::{
    conv_mode, ew_flags, res_mode, ConvParams, EwParams, PoolParams, PreprocessParams, ResampleParams, UniformBlock,
};
use wgpose::graph::Act;
use wgpose::pipeline::preprocess_gpu::PREPROCESS_WGSL;

fn parse(src: &str) -> naga::Module {
    naga::front::wgsl::parse_str(src).unwrap_or_else(|e| panic!("{}", e.emit_to_string(src)))
}

/// `(name, offset, size)` of every member of the WGSL struct `name`, and its size.
fn wgsl_struct(module: &naga::Module, name: &str) -> (Vec<(String, usize, usize)>, usize) {
    let ty = module
        .types
        .iter()
        .find(|(_, t)| t.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no WGSL struct {name}"))
        .1;
    let naga::TypeInner::Struct { members, span } = &ty.inner else { panic!("{name} is not a struct") };
    let fields = members
        .iter()
        .map(|m| {
            let size = module.types[m.ty].inner.size(module.to_ctx()) as usize;
            (m.name.clone().unwrap(), m.offset as usize, size)
        })
        .collect();
    (fields, *span as usize)
}

fn check_block<T: UniformBlock>(src: &str) {
    let (wgsl, span) = wgsl_struct(&parse(src), T::WGSL_NAME);
    let rust: Vec<(String, usize, usize)> = T::FIELDS.iter().map(|f| (f.name.to_string(), f.offset, f.size)).collect();
    assert_eq!(rust, wgsl, "{}: Rust fields (name, offset, size) vs WGSL members", T::WGSL_NAME);
    assert_eq!(std::mem::size_of::<T>(), span, "{}: Rust size vs WGSL struct size", T::WGSL_NAME);
}

#[test]
fn uniform_structs_have_the_layout_of_their_wgsl_twins() {
    check_block::<ConvParams>(CONV2D_WGSL);
    check_block::<EwParams>(ELEMENTWISE_WGSL);
    check_block::<PoolParams>(POOL_WGSL);
    check_block::<ResampleParams>(RESAMPLE_WGSL);
    check_block::<PreprocessParams>(PREPROCESS_WGSL);
}

#[test]
fn the_layout_check_catches_a_swapped_member() {
    // The same check on a WGSL struct whose first two members are swapped must fail.
    let swapped = CONV2D_WGSL.replacen("n: u32, cin: u32,", "cin: u32, n: u32,", 1);
    assert_ne!(swapped, CONV2D_WGSL);
    assert!(std::panic::catch_unwind(|| check_block::<ConvParams>(&swapped)).is_err());
}

/// The value of the WGSL `const name: u32`.
fn wgsl_const(module: &naga::Module, name: &str) -> u32 {
    let c = module
        .constants
        .iter()
        .find(|(_, c)| c.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no WGSL const {name}"))
        .1;
    match module.global_expressions[c.init] {
        naga::Expression::Literal(naga::Literal::U32(v)) => v,
        ref e => panic!("const {name} is {e:?}, not a u32 literal"),
    }
}

#[test]
fn codes_and_sizes_agree_between_rust_and_wgsl() {
    let conv = parse(CONV2D_WGSL);
    for (name, v) in [
        ("TM", CONV_TM),
        ("TN", CONV_TN),
        ("TD", CONV_TD),
        ("CONV_TILED_WG", CONV_TILED_WG),
        ("CONV_DIRECT_WG", CONV_DIRECT_WG),
    ] {
        assert_eq!(wgsl_const(&conv, name) as usize, v, "conv2d.wgsl {name}");
    }
    for (name, v) in [
        ("RES_NONE", res_mode::RES_NONE),
        ("RES_ADD", res_mode::RES_ADD),
        ("RES_GATE_RESIDUAL", res_mode::RES_GATE_RESIDUAL),
        ("RES_GATE_CONV", res_mode::RES_GATE_CONV),
        ("CONV_ACCUMULATE", conv_mode::CONV_ACCUMULATE),
        ("CONV_EPILOGUE", conv_mode::CONV_EPILOGUE),
        ("ACT_NONE", Act::None.code()),
        ("ACT_RELU", Act::Relu.code()),
        ("ACT_SIGMOID", Act::Sigmoid.code()),
    ] {
        assert_eq!(wgsl_const(&conv, name), v, "conv2d.wgsl {name}");
    }
    let ew = parse(ELEMENTWISE_WGSL);
    for (name, v) in [
        ("EW_HAS_S", ew_flags::EW_HAS_S),
        ("EW_HAS_T", ew_flags::EW_HAS_T),
        ("EW_HAS_X1", ew_flags::EW_HAS_X1),
        ("EW_HAS_SB", ew_flags::EW_HAS_SB),
    ] {
        assert_eq!(wgsl_const(&ew, name), v, "elementwise.wgsl {name}");
    }
    // Workgroup sizes the dispatch arithmetic in kernels.rs assumes.
    let wg = |m: &naga::Module, entry: &str| m.entry_points.iter().find(|e| e.name == entry).unwrap().workgroup_size;
    for entry in ["conv2d_tiled", "conv2d_3x3", "conv2d_1x1"] {
        assert_eq!(wg(&conv, entry), [CONV_TILED_WG as u32, 1, 1], "{entry}");
    }
    assert_eq!(wg(&conv, "conv2d_direct"), [CONV_DIRECT_WG as u32, 1, 1]);
    assert_eq!(wg(&ew, "elementwise"), [FLAT_WG as u32, 1, 1]);
    assert_eq!(wg(&parse(POOL_WGSL), "max_pool"), [FLAT_WG as u32, 1, 1]);
    let resample = parse(RESAMPLE_WGSL);
    for entry in ["upsample_nearest", "upsample_bilinear", "pixel_shuffle"] {
        assert_eq!(wg(&resample, entry), [FLAT_WG as u32, 1, 1], "{entry}");
    }
}

#[test]
fn shared_helpers_live_in_common_wgsl_only() {
    // Each graph shader file on disk relies on common.wgsl instead of defining its own copy.
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/shaders");
    for file in ["conv2d.wgsl", "elementwise.wgsl", "pool.wgsl", "resample.wgsl"] {
        let text = std::fs::read_to_string(format!("{dir}/{file}")).unwrap();
        for def in ["fn param(", "fn activate(", "var<storage, read_write> arena", "var<storage, read> params"] {
            assert!(!text.contains(def), "{file} defines `{def}`; it belongs in common.wgsl");
        }
    }
}
