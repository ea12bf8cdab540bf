//! `wgpose bench train`: one tiny training-step measurement.

use wgpose::bench::bench_train;

#[test]
fn bench_train_sghg_tiny() {
    let rows = bench_train(Some("sghg-1x64-lsp"), Some([64, 64]), 2, 1, |_| {}).unwrap();
    assert_eq!(rows.len(), 1, "exactly the one config the filter names");
    let r = &rows[0];
    assert_eq!(r.model, "sghg-1x64-lsp");
    assert_eq!(r.batch, 2);
    assert_eq!(r.input, [3, 64, 64]);
    assert_eq!(r.loss, "mse");
    assert!(r.params > 0);
    assert!(r.fwd_gflops_per_image > 0.0 && r.fwd_gflops_per_image.is_finite());
    assert_eq!(r.train_gflops_per_image, 3.0 * r.fwd_gflops_per_image);
    assert!(r.images_per_s > 0.0 && r.images_per_s.is_finite(), "images/s {}", r.images_per_s);
    assert!(r.ms_per_step > 0.0 && r.ms_per_step.is_finite());
    assert!(r.gflop_s.is_finite() && r.gflop_s > 0.0, "GFLOP/s {}", r.gflop_s);
    assert!(r.threads >= 1);
}
