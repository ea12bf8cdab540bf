//! A minimal protocol-buffers writer: just enough wire format to serialise the ONNX messages the
//! exporter emits (varints, 32-bit floats, length-delimited bytes and nested messages).
//!
//! Repeated scalar fields are written unpacked (one key per element), which is the proto2
//! encoding `onnx.proto` declares; every conforming parser accepts it.

/// Wire types used here.
const VARINT: u32 = 0;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

/// An encoded message under construction. Nested messages are built as their own `Msg` and
/// appended with [`Msg::message`].
#[derive(Clone, Debug, Default)]
pub struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    pub fn new() -> Self {
        Msg::default()
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    fn raw_varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    fn key(&mut self, field: u32, wire: u32) {
        self.raw_varint(u64::from((field << 3) | wire));
    }

    /// An `int32` / `int64` / enum field (negative values take ten bytes, as protobuf requires).
    pub fn int(&mut self, field: u32, v: i64) -> &mut Self {
        self.key(field, VARINT);
        self.raw_varint(v as u64);
        self
    }

    /// A `float` field.
    pub fn float(&mut self, field: u32, v: f32) -> &mut Self {
        self.key(field, FIXED32);
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A `bytes` field.
    pub fn bytes(&mut self, field: u32, v: &[u8]) -> &mut Self {
        self.key(field, LEN);
        self.raw_varint(v.len() as u64);
        self.buf.extend_from_slice(v);
        self
    }

    /// A `string` field.
    pub fn string(&mut self, field: u32, v: &str) -> &mut Self {
        self.bytes(field, v.as_bytes())
    }

    /// An embedded message field.
    pub fn message(&mut self, field: u32, m: &Msg) -> &mut Self {
        self.bytes(field, &m.buf)
    }

    /// A `bytes` field holding f32 values little-endian (ONNX `raw_data`), written without an
    /// intermediate copy.
    pub fn f32_bytes(&mut self, field: u32, v: &[f32]) -> &mut Self {
        self.key(field, LEN);
        self.raw_varint((v.len() * 4) as u64);
        self.buf.reserve(v.len() * 4);
        for x in v {
            self.buf.extend_from_slice(&x.to_le_bytes());
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::Msg;

    #[test]
    fn varints_and_fields() {
        let mut m = Msg::new();
        m.int(1, 150);
        assert_eq!(m.clone().into_bytes(), [0x08, 0x96, 0x01]);
        let mut m = Msg::new();
        m.string(2, "testing");
        assert_eq!(m.into_bytes(), [0x12, 0x07, b't', b'e', b's', b't', b'i', b'n', b'g']);
        let mut m = Msg::new();
        m.int(1, -1);
        assert_eq!(m.len(), 11);
        let mut m = Msg::new();
        m.float(2, 1.0);
        assert_eq!(m.into_bytes(), [0x15, 0x00, 0x00, 0x80, 0x3f]);
        let mut m = Msg::new();
        m.f32_bytes(9, &[1.0]);
        assert_eq!(m.into_bytes(), [0x4a, 0x04, 0x00, 0x00, 0x80, 0x3f]);
    }
}
