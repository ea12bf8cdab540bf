//! Reading GPU buffers back to the CPU: the one place that maps buffers. [`read_buffer`] blocks
//! (native code); [`read_buffer_async`] returns a future that never blocks the thread, so the
//! browser build can await it while the event loop delivers the mapping.

use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use crate::error::{Error, Result};

type MapResult = std::result::Result<(), wgpu::BufferAsyncError>;

enum MapState {
    /// `map_async` was called; its callback has not run yet.
    Waiting,
    Done(MapResult),
    /// The future has taken the result.
    Taken,
    /// wgpu dropped the callback without calling it (the device went away).
    Abandoned,
}

struct Shared {
    state: MapState,
    waker: Option<Waker>,
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // The lock only guards plain assignments, so a panic elsewhere cannot leave it inconsistent.
    shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Owned by the `map_async` callback: records the result and wakes the waiting future, also when
/// wgpu drops the callback without calling it.
struct Notifier(Arc<Mutex<Shared>>);

impl Notifier {
    fn finish(&self, state: MapState) {
        let waker = {
            let mut s = lock(&self.0);
            if !matches!(s.state, MapState::Waiting) {
                return;
            }
            s.state = state;
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        self.finish(MapState::Abandoned);
    }
}

/// A pending read mapping of a whole buffer, from [`map_read`]. Await it (never blocks), or call
/// [`MapRead::wait`] to block until the GPU is done (native only).
#[must_use = "the buffer is only readable once the mapping has completed"]
pub(crate) struct MapRead {
    device: wgpu::Device,
    shared: Arc<Mutex<Shared>>,
}

/// Starts mapping all of `buffer` (created with `MAP_READ`) for reading, after the work already
/// submitted to the queue.
pub(crate) fn map_read(device: &wgpu::Device, buffer: &wgpu::Buffer) -> MapRead {
    let shared = Arc::new(Mutex::new(Shared { state: MapState::Waiting, waker: None }));
    let notifier = Notifier(shared.clone());
    buffer.map_async(wgpu::MapMode::Read, .., move |r| notifier.finish(MapState::Done(r)));
    MapRead { device: device.clone(), shared }
}

impl MapRead {
    fn take(&self) -> Option<Result<()>> {
        let mut s = lock(&self.shared);
        match std::mem::replace(&mut s.state, MapState::Taken) {
            MapState::Waiting => {
                s.state = MapState::Waiting;
                None
            }
            MapState::Done(Ok(())) => Some(Ok(())),
            MapState::Done(Err(e)) => Some(Err(Error::Gpu(format!("mapping a buffer for reading: {e}")))),
            MapState::Taken | MapState::Abandoned => {
                Some(Err(Error::DeviceLost("the readback never completed".into())))
            }
        }
    }

    /// Blocks until the mapping has completed (waits for the device to finish its work).
    /// Natively only: in a browser the mapping completes on the event loop, so await instead.
    pub(crate) fn wait(self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))?;
        self.take().unwrap_or_else(|| Err(Error::DeviceLost("the readback never completed".into())))
    }
}

impl Future for MapRead {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        // Natively the callback only runs inside `Device::poll`; in a browser the event loop runs
        // it and this call does nothing. Either way it does not block.
        let _ = self.device.poll(wgpu::PollType::Poll);
        if let Some(r) = self.take() {
            return Poll::Ready(r);
        }
        lock(&self.shared).waker = Some(cx.waker().clone());
        // Natively nothing but polling the device completes the mapping, and nothing would wake
        // this task to poll again: ask to be polled again right away (executors such as pollster
        // then spin on the device; blocking callers should prefer `read_buffer`).
        #[cfg(not(target_arch = "wasm32"))]
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

fn check_ranges(buffer: &wgpu::Buffer, ranges: &[Range<u64>], elem: usize) -> Result<()> {
    for r in ranges {
        if r.start > r.end || r.end > buffer.size() || (r.end - r.start) % elem as u64 != 0 {
            return Err(Error::Gpu(format!(
                "cannot read bytes {r:?} of a {}-byte buffer as {elem}-byte values",
                buffer.size()
            )));
        }
    }
    Ok(())
}

/// Copies `ranges` (byte ranges) of a mapped buffer out as `T`s and unmaps it.
fn copy_out<T: bytemuck::Pod>(buffer: &wgpu::Buffer, ranges: &[Range<u64>]) -> Result<Vec<Vec<T>>> {
    let view = buffer.slice(..).get_mapped_range().map_err(|e| Error::Gpu(format!("reading a mapped buffer: {e}")))?;
    let out = ranges.iter().map(|r| bytemuck::pod_collect_to_vec(&view[r.start as usize..r.end as usize])).collect();
    drop(view);
    buffer.unmap();
    Ok(out)
}

/// Reads byte `ranges` of `buffer` (created with `MAP_READ`) once the work already submitted has
/// finished, one `Vec<T>` per range. Blocks the thread; native code only.
pub fn read_buffer<T: bytemuck::Pod>(
    device: &wgpu::Device,
    buffer: &wgpu::Buffer,
    ranges: &[Range<u64>],
) -> Result<Vec<Vec<T>>> {
    check_ranges(buffer, ranges, std::mem::size_of::<T>())?;
    map_read(device, buffer).wait()?;
    copy_out(buffer, ranges)
}

/// [`read_buffer`] without blocking: resolves when the mapping has completed. In a browser the
/// event loop drives it; natively each poll of the future polls the device once (so a blocking
/// executor spins: native callers should prefer [`read_buffer`]).
pub async fn read_buffer_async<T: bytemuck::Pod>(
    device: &wgpu::Device,
    buffer: &wgpu::Buffer,
    ranges: &[Range<u64>],
) -> Result<Vec<Vec<T>>> {
    check_ranges(buffer, ranges, std::mem::size_of::<T>())?;
    map_read(device, buffer).await?;
    copy_out(buffer, ranges)
}
