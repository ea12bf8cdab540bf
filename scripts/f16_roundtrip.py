"""Round every F32 tensor of the safetensors files in SRC through IEEE half precision and write
them (still F32, same header metadata) to DST: measures what f16 storage would lose."""
import json, struct, sys, os, array
src, dst = sys.argv[1], sys.argv[2]
for name in sorted(os.listdir(src)):
    if not name.endswith(".safetensors"):
        continue
    b = open(os.path.join(src, name), "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    header = json.loads(b[8:8 + n])
    body = bytearray(b[8 + n:])
    worst = 0.0
    for k, v in header.items():
        if k == "__metadata__":
            continue
        assert v["dtype"] == "F32", (k, v["dtype"])
        s, e = v["data_offsets"]
        a = array.array("f"); a.frombytes(bytes(body[s:e]))
        try:
            h = struct.unpack("<%de" % len(a), struct.pack("<%de" % len(a), *a))
        except OverflowError:
            print("  kept f32 (outside the f16 range):", k, max(abs(x) for x in a))
            continue
        for x, y in zip(a, h):
            if x != 0.0:
                worst = max(worst, abs(x - y) / abs(x))
        body[s:e] = array.array("f", h).tobytes()
    open(os.path.join(dst, name), "wb").write(b[:8 + n] + bytes(body))
    print(name, "max relative rounding error", worst)
