//! Library errors as JavaScript `Error`s whose `name` says the kind (`www/wgpose.js` turns them
//! into `WgposeError` with a `code`).

use wasm_bindgen::JsValue;
use wgpose::Error;

/// A JS `Error` with `name` set to `kind`.
pub fn typed(kind: &str, message: &str) -> JsValue {
    let e = js_sys::Error::new(message);
    e.set_name(kind);
    e.into()
}

/// The JS error for a library error; the name follows the variant.
pub fn js_error(e: Error) -> JsValue {
    let kind = match &e {
        Error::Format { .. } | Error::Io { .. } => "WeightsError",
        Error::Input(_) => "InputError",
        Error::TooLarge(_) => "TooLargeError",
        Error::NoAdapter(_) => "NoAdapterError",
        Error::Gpu(_) => "GpuError",
        Error::DeviceLost(_) => "DeviceLostError",
        Error::Shape { .. } | Error::Graph(_) => "GraphError",
    };
    typed(kind, &e.to_string())
}

/// The message of a JS error value (or its string form).
pub fn message(v: &JsValue) -> String {
    js_sys::Reflect::get(v, &JsValue::from_str("message"))
        .ok()
        .and_then(|m| m.as_string())
        .or_else(|| v.as_string())
        .unwrap_or_else(|| format!("{v:?}"))
}

/// The `name` of a JS error value ("" when it has none).
pub fn name(v: &JsValue) -> String {
    js_sys::Reflect::get(v, &JsValue::from_str("name")).ok().and_then(|m| m.as_string()).unwrap_or_default()
}
