//! `wgpose train`: the options are [`wgpose::training::TrainConfig`] (parsed by clap), the loop
//! is [`wgpose::training::run`]; this command owns the printing: messages and epoch lines on
//! stderr, and the step progress as one refreshed line (`--quiet`: without it).

use std::io::Write;

use wgpose::training::{TrainConfig, TrainEvent};
use wgpose::Result;

pub fn run(a: TrainConfig) -> Result<()> {
    let quiet = a.quiet;
    // Whether the progress line is open (a message must start on a fresh line).
    let mut open_line = false;
    let mut print = |e: &TrainEvent| {
        let close = |open: &mut bool| {
            if std::mem::take(open) {
                eprintln!();
            }
        };
        match e {
            TrainEvent::Message(m) => {
                close(&mut open_line);
                eprintln!("{m}");
            }
            TrainEvent::Step { epoch, epochs, batch, batches, step, loss, lr, images_per_s } => {
                if !quiet {
                    eprint!(
                        "\repoch {epoch}/{epochs} [{batch}/{batches}] step {step} loss {loss:.6} lr {lr:.2e} {images_per_s:.1} img/s   "
                    );
                    let _ = std::io::stderr().flush();
                    open_line = true;
                }
            }
            TrainEvent::Epoch { epoch, loss, val } => {
                close(&mut open_line);
                match val {
                    Some(v) => eprintln!(
                        "epoch {epoch}: mean loss {loss:.6}, val {} {:.2}% ({} {}, {:.1} s)",
                        v.metric,
                        100.0 * v.value,
                        v.count,
                        v.unit,
                        v.seconds
                    ),
                    None => eprintln!("epoch {epoch}: mean loss {loss:.6}"),
                }
            }
        }
    };
    let s = wgpose::training::run(&a, &mut print)?;
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
