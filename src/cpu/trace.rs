//! TEMPORARY tracing (not committed).
use std::sync::{Mutex, OnceLock};
use std::time::Instant;
static T0: OnceLock<Instant> = OnceLock::new();
static LOG: Mutex<Vec<(usize, u64, u64, &'static str, usize)>> = Mutex::new(Vec::new());
fn now() -> u64 { T0.get_or_init(Instant::now).elapsed().as_nanos() as u64 }
pub struct Span(&'static str, usize, u64);
pub fn span(tag: &'static str, arg: usize) -> Span { Span(tag, arg, now()) }
impl Drop for Span {
    fn drop(&mut self) {
        let e = now();
        LOG.lock().unwrap().push((rayon::current_thread_index().unwrap_or(99), self.2, e, self.0, self.1));
    }
}
pub fn dump(path: &str) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    for (t, s, e, tag, a) in LOG.lock().unwrap().iter() { writeln!(f, "{t},{s},{e},{tag},{a}").unwrap(); }
}
pub fn clear() { LOG.lock().unwrap().clear(); }
