//! Whole random graphs: the optimised graph (batch norm folded, activations and adds fused,
//! concat in place, buffers reused) on the GPU equals the unoptimised graph on the CPU reference.
//! Also bad input to the GPU executor: errors, never panics.

mod common;

use common::{assert_close, gpu, random_graph, random_inputs};
use wgpose::gpu::GpuModel;
use wgpose::graph::passes::optimize_for_inference;
use wgpose::Error;

/// Same tolerance as the per-kernel tests; fusion reorders a few f32 operations per element.
const TOL: f32 = 2e-4;

#[test]
fn random_graphs_gpu_optimised_equals_cpu_reference() {
    let Some(ctx) = gpu() else { return };
    for seed in 0..40 {
        let g = random_graph(seed);
        let batch = 1 + (seed as usize % 2);
        let inputs = random_inputs(&g, batch, seed + 1000);
        let want = wgpose::cpu::reference::run(&g, &inputs).unwrap();
        let mut m = GpuModel::compile(&ctx, &g, batch).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let got = m.run(&inputs).unwrap();
        for (k, (a, b)) in got.iter().zip(&want).enumerate() {
            assert_close(&format!("seed {seed} output {k}"), a, b, TOL);
        }
    }
}

#[test]
fn passes_shrink_the_graph() {
    // Across the random graphs, folding and fusion remove nodes and never add any.
    let (mut before, mut after) = (0, 0);
    for seed in 0..40 {
        let g = random_graph(seed);
        let o = optimize_for_inference(&g);
        assert!(o.nodes.len() <= g.nodes.len());
        before += g.nodes.len();
        after += o.nodes.len();
    }
    assert!(after < before * 3 / 4, "passes removed too little: {before} -> {after} nodes");
}

#[test]
fn run_async_matches_run() {
    let Some(ctx) = gpu() else { return };
    let g = random_graph(7);
    let inputs = random_inputs(&g, 1, 1);
    let mut m = GpuModel::compile(&ctx, &g, 1).unwrap();
    let a = m.run(&inputs).unwrap();
    let b = pollster::block_on(m.run_async(&inputs)).unwrap();
    assert_eq!(a, b);
}

#[test]
fn models_on_one_device_share_compiled_pipelines() {
    // The random graphs use several kernel families; compiling them all on one fresh context
    // compiles each family once, and a model compiled after its kernels are cached (on a clone
    // of the context) runs the same as on a context of its own.
    let Some(ctx) = gpu() else { return };
    let fresh =
        || wgpose::gpu::GpuContext::from_device(ctx.device.clone(), ctx.queue.clone(), ctx.adapter_info.clone(), false);
    let shared = fresh();
    assert_eq!(shared.compiled_pipelines(), 0);
    let mut counts = Vec::new();
    for seed in 0..12 {
        GpuModel::compile(&shared, &random_graph(seed), 1).unwrap();
        counts.push(shared.compiled_pipelines());
    }
    assert!(counts[0] > 0, "{counts:?}");
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
    // At most one pipeline per kernel family (9 families), however many models.
    assert!(counts[11] <= 9, "{counts:?}");
    let g = random_graph(3);
    let inputs = random_inputs(&g, 1, 5);
    let before = shared.compiled_pipelines();
    let a = GpuModel::compile(&shared.clone(), &g, 1).unwrap().run(&inputs).unwrap();
    assert_eq!(shared.compiled_pipelines(), before, "a graph whose kernels are cached compiled new ones");
    let b = GpuModel::compile(&fresh(), &g, 1).unwrap().run(&inputs).unwrap();
    assert_eq!(a, b);
}

#[test]
fn precompile_compiles_what_compile_needs() {
    // After `precompile` of a graph on a fresh context, compiling that graph adds no pipeline
    // (the kernel choice ahead of the weights agrees with lowering), for every random graph.
    let Some(ctx) = gpu() else { return };
    for seed in 0..20 {
        let fresh = wgpose::gpu::GpuContext::from_device(
            ctx.device.clone(),
            ctx.queue.clone(),
            ctx.adapter_info.clone(),
            false,
        );
        let g = random_graph(seed);
        let n = GpuModel::precompile(&fresh, &g).unwrap();
        assert!(n > 0 && n == fresh.compiled_pipelines(), "seed {seed}: {n}");
        GpuModel::compile(&fresh, &g, 1 + seed as usize % 2).unwrap();
        assert_eq!(fresh.compiled_pipelines(), n, "seed {seed}: compile needed a kernel precompile missed");
    }
}

#[test]
fn a_model_owns_its_device_handles() {
    // The model keeps a clone of the context: it runs after every other handle is gone, and a
    // model compiled from a clone agrees with one compiled from the original.
    let Some(ctx) = gpu() else { return };
    let g = random_graph(11);
    let inputs = random_inputs(&g, 1, 3);
    let mut a = GpuModel::compile(&ctx, &g, 1).unwrap();
    let mut b = GpuModel::compile(&ctx.clone(), &g, 1).unwrap();
    drop(ctx);
    let want = wgpose::cpu::reference::run(&g, &inputs).unwrap();
    let (ra, rb) = (a.run(&inputs).unwrap(), b.run(&inputs).unwrap());
    assert_eq!(ra, rb);
    for (k, (x, y)) in ra.iter().zip(&want).enumerate() {
        assert_close(&format!("output {k}"), x, y, TOL);
    }
}

#[test]
#[allow(clippy::single_range_in_vec_init)] // slices of one range (the readback takes several)
fn readback_reads_ranges_blocking_and_async() {
    use wgpose::gpu::readback::{read_buffer, read_buffer_async};
    use wgpu::util::DeviceExt;
    let Some(ctx) = gpu() else { return };
    let values: Vec<u32> = (0..1000).map(|i| i * 7 + 1).collect();
    let src = ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: None,
        contents: bytemuck::cast_slice(&values),
        usage: wgpu::BufferUsages::COPY_SRC,
    });
    let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 4000,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let copy = || {
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(&src, 0, &staging, 0, 4000);
        ctx.queue.submit([enc.finish()]);
    };
    copy();
    let got = read_buffer::<u32>(&ctx.device, &staging, &[0..4000, 40..48]).unwrap();
    assert_eq!(got[0], values);
    assert_eq!(got[1], &values[10..12]);
    copy();
    let got = pollster::block_on(read_buffer_async::<u32>(&ctx.device, &staging, &[396..400])).unwrap();
    assert_eq!(got, vec![vec![values[99]]]);
    // Ranges past the end or not a whole number of values are errors, and leave the buffer usable.
    assert!(read_buffer::<u32>(&ctx.device, &staging, &[0..4004]).is_err());
    assert!(read_buffer::<u32>(&ctx.device, &staging, &[0..6]).is_err());
    assert_eq!(read_buffer::<u32>(&ctx.device, &staging, &[0..4]).unwrap(), vec![vec![values[0]]]);
}

#[test]
fn bad_inputs_are_errors() {
    let Some(ctx) = gpu() else { return };
    let g = random_graph(3);
    let mut m = GpuModel::compile(&ctx, &g, 2).unwrap();
    // Wrong batch.
    let wrong = random_inputs(&g, 1, 1);
    assert!(matches!(m.run(&wrong), Err(Error::Input(_))));
    // Wrong count.
    assert!(matches!(m.run(&[]), Err(Error::Input(_))));
    // NaN.
    let mut nan = random_inputs(&g, 2, 1);
    nan[0].data[5] = f32::NAN;
    let e = m.run(&nan).unwrap_err();
    assert!(e.to_string().contains("non-finite"), "{e}");
    // The model still works after the errors.
    assert!(m.run(&random_inputs(&g, 2, 1)).is_ok());
    // Zero batch and absurd sizes are refused at compile time.
    assert!(GpuModel::compile(&ctx, &g, 0).is_err());
    let mut b = wgpose::graph::GraphBuilder::new(0);
    let x = b.input("input", [3, 8, 8]).unwrap();
    let y = b.upsample_nearest("up", x, 1 << 14).unwrap();
    b.graph.outputs = vec![y];
    assert!(matches!(GpuModel::compile(&ctx, &b.graph, 1), Err(Error::TooLarge(_))));
}
