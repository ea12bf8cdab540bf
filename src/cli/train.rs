//! `wgpose train`: the options and the loop live in [`wgpose::trainer::session`].

pub use wgpose::trainer::TrainArgs;
use wgpose::Result;

pub fn run(a: TrainArgs) -> Result<()> {
    let s = wgpose::trainer::run(&a)?;
    println!(
        "{}: {} epochs, {} steps, last epoch loss {:.6}, val {} {}, {:.1} images/s, {:.0} s",
        s.final_weights.display(),
        s.epochs_done,
        s.steps,
        s.last_loss,
        s.val_metric,
        s.val_pck.map_or("-".to_string(), |p| format!("{:.2}%", 100.0 * p)),
        s.images_per_s,
        s.wall_time_s
    );
    Ok(())
}
