// The Web Worker side of `createEstimator({ worker: true })` (wgpose.js): the estimator lives
// here, off the page's main thread, and answers the page's messages one at a time, in the order
// they arrive (so a resetTrack() sent between two track() calls lands between them).
//
// Message in:  { id, op: "create" | "estimatePoses" | "track" | "resetTrack" | "profile" | "dispose", args }
// Message out: { id, ok: result } or { id, error: { code, message } }

import { createEstimator, WgposeError } from "./wgpose.js";

let est = null;
let queue = Promise.resolve();

async function handle(op, args) {
  if (op === "create") {
    if (est) throw new WgposeError("internal", "this worker already holds an estimator");
    est = await createEstimator({ ...args, worker: false });
    const { backend, adapter, fallbackReason, model, weightsFromCache, detector, detectorNote, wasm, creation, subgroups } = est;
    return { backend, adapter, fallbackReason, model, weightsFromCache, detector, detectorNote, wasm, creation, subgroups };
  }
  if (!est) throw new WgposeError("disposed", "this estimator was disposed");
  switch (op) {
    case "estimatePoses":
    case "track": {
      // The page transferred this frame to us: close it whatever happens.
      const [bitmap, opts] = args;
      try {
        return await est[op](bitmap, opts);
      } finally {
        bitmap.close();
      }
    }
    case "resetTrack":
      return est.resetTrack();
    case "profile":
      return await est.profile();
    case "dispose":
      est.dispose();
      est = null;
      return null;
    default:
      throw new WgposeError("internal", `unknown worker operation ${op}`);
  }
}

self.onmessage = (event) => {
  const { id, op, args } = event.data;
  queue = queue.then(async () => {
    try {
      self.postMessage({ id, ok: await handle(op, args) });
    } catch (e) {
      const code = e instanceof WgposeError ? e.code : "internal";
      self.postMessage({ id, error: { code, message: e && e.message ? e.message : String(e) } });
    }
  });
};
