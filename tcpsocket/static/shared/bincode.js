/*
 * tcpsocket client library -- bincode (big-endian varint) codec.
 *
 * An ES module (see doc/javascript.md, "Two generations from one URL"): the
 * daemon serves it as is to `import`, and bundles it into the classic
 * scripts. Exports the codec of api-daemon's runtime (Encoder, Decoder,
 * ObjectDecoder, wrapBlob) and our allocation-free one (Fields, Reader)
 * that the library itself uses on the data path.
 */

const MAX_U16 = 0xffff;
const MAX_U32 = 0xffffffff;
const TWO_32 = 4294967296;
const MAX_U64 = 0xffffffffffffffffn;
const MIN_I64 = -0x8000000000000000n;
const MAX_I64 = 0x7fffffffffffffffn;

/** Raised by decoders on malformed or truncated input. */
export class DecodeError extends Error {
  constructor(message) {
    super(message);
    this.name = "DecodeError";
  }
}

const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder("utf-8", { fatal: true });

function isArrayBuffer(value) {
  const tag = Object.prototype.toString.call(value);
  return tag === "[object ArrayBuffer]" || tag === "[object SharedArrayBuffer]";
}

/**
 * Bytes of `data` as a Uint8Array without copying when possible:
 * ArrayBuffer, any ArrayBufferView (its viewed range only), or a string
 * (UTF-8). Throws TypeError for anything else.
 */
export function toUint8Array(data) {
  if (typeof data === "string") return utf8Encoder.encode(data);
  if (ArrayBuffer.isView(data)) {
    return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  }
  if (isArrayBuffer(data)) return new Uint8Array(data);
  throw new TypeError("expected an ArrayBuffer, an ArrayBufferView or a string");
}

/* ------------------------------------------------------------------ */
/* Encoding                                                            */
/* ------------------------------------------------------------------ */

// Field kinds of an encoding plan (see Fields).
const F_UINT = 0;
const F_BYTES = 1; // varint length + bytes
const F_NESTED = 2; // varint length + nested Fields
const F_RAW = 3; // bytes, no length prefix

/** Normalise an unsigned integer: number when exact, else BigInt. */
function checkUnsigned(value, max, what) {
  if (typeof value === "bigint") {
    if (value < 0n || value > BigInt(max)) throw new RangeError(`${what} out of range: ${value}`);
    return value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value;
  }
  if (typeof value !== "number" || !Number.isInteger(value) || value < 0) {
    throw new RangeError(`${what} must be a non-negative integer, got ${String(value)}`);
  }
  if (!Number.isSafeInteger(value)) {
    // Above 2^53 a number is no longer exact: insist on BigInt.
    throw new RangeError(`${what} too large for a number; pass a BigInt`);
  }
  if (typeof max === "number" && value > max) throw new RangeError(`${what} out of range: ${value}`);
  return value;
}

function unsignedSize(n) {
  if (typeof n === "bigint") return 9;
  if (n <= 250) return 1;
  if (n <= MAX_U16) return 3;
  if (n <= MAX_U32) return 5;
  return 9;
}

function writeUnsigned(buf, view, off, n) {
  if (typeof n === "bigint") {
    buf[off] = 0xfd;
    view.setBigUint64(off + 1, n);
    return off + 9;
  }
  if (n <= 250) {
    buf[off] = n;
    return off + 1;
  }
  if (n <= MAX_U16) {
    buf[off] = 0xfb;
    view.setUint16(off + 1, n);
    return off + 3;
  }
  if (n <= MAX_U32) {
    buf[off] = 0xfc;
    view.setUint32(off + 1, n);
    return off + 5;
  }
  buf[off] = 0xfd;
  view.setUint32(off + 1, Math.floor(n / TWO_32));
  view.setUint32(off + 5, n >>> 0);
  return off + 9;
}

/**
 * An encoding plan: a flat list of fields, measured and then written into
 * one exactly sized Uint8Array by encode(). Large binaries are referenced,
 * not copied, until that single write.
 */
export class Fields {
  constructor() {
    this._kinds = [];
    this._values = [];
    this._size = -1;
  }

  _push(kind, value) {
    this._kinds.push(kind);
    this._values.push(value);
    this._size = -1;
    return this;
  }

  /** Unsigned varint; `max` defaults to u64. */
  u(value, max) {
    return this._push(F_UINT, checkUnsigned(value, max === undefined ? MAX_U64 : max, "unsigned integer"));
  }

  u32(value) {
    return this._push(F_UINT, checkUnsigned(value, MAX_U32, "u32"));
  }

  /** Signed i64: zigzag, then unsigned varint. */
  i(value) {
    if (typeof value === "number") {
      if (!Number.isSafeInteger(value)) throw new RangeError(`int must be a safe integer or a BigInt, got ${value}`);
      if (Math.abs(value) < 2 ** 52) return this._push(F_UINT, value >= 0 ? 2 * value : -2 * value - 1);
      value = BigInt(value);
    }
    if (typeof value !== "bigint") throw new RangeError(`int must be an integer, got ${String(value)}`);
    if (value < MIN_I64 || value > MAX_I64) throw new RangeError(`int out of i64 range: ${value}`);
    const z = value >= 0n ? value << 1n : ((-value) << 1n) - 1n;
    return this._push(F_UINT, checkUnsigned(z, MAX_U64, "int"));
  }

  bool(value) {
    return this._push(F_RAW, value ? ONE : ZERO);
  }

  /** String: varint byte length + UTF-8. */
  str(value) {
    if (typeof value !== "string") throw new TypeError(`expected a string, got ${typeof value}`);
    return this._push(F_BYTES, utf8Encoder.encode(value));
  }

  /** Binary: varint length + the bytes (referenced until encode()). */
  bytes(value) {
    return this._push(F_BYTES, toUint8Array(value));
  }

  /** Binary whose content is itself a Fields plan (e.g. BaseMessage content). */
  nested(fields) {
    return this._push(F_NESTED, fields);
  }

  /** Encoded size in bytes. */
  size() {
    if (this._size >= 0) return this._size;
    let total = 0;
    const kinds = this._kinds;
    const values = this._values;
    for (let k = 0; k < kinds.length; k++) {
      const v = values[k];
      switch (kinds[k]) {
        case F_UINT:
          total += unsignedSize(v);
          break;
        case F_BYTES:
          total += unsignedSize(v.length) + v.length;
          break;
        case F_NESTED: {
          const n = v.size();
          total += unsignedSize(n) + n;
          break;
        }
        default:
          total += v.length;
      }
    }
    this._size = total;
    return total;
  }

  _writeInto(buf, view, off) {
    const kinds = this._kinds;
    const values = this._values;
    for (let k = 0; k < kinds.length; k++) {
      const v = values[k];
      switch (kinds[k]) {
        case F_UINT:
          off = writeUnsigned(buf, view, off, v);
          break;
        case F_BYTES:
          off = writeUnsigned(buf, view, off, v.length);
          buf.set(v, off);
          off += v.length;
          break;
        case F_NESTED:
          off = writeUnsigned(buf, view, off, v.size());
          off = v._writeInto(buf, view, off);
          break;
        default:
          buf.set(v, off);
          off += v.length;
      }
    }
    return off;
  }

  /** The encoded bytes, in one allocation. */
  encode() {
    const buf = new Uint8Array(this.size());
    this._writeInto(buf, new DataView(buf.buffer), 0);
    return buf;
  }
}

const ZERO = new Uint8Array([0]);
const ONE = new Uint8Array([1]);

/* ------------------------------------------------------------------ */
/* Decoding                                                            */
/* ------------------------------------------------------------------ */

/**
 * Sequential decoder over a Uint8Array. Accepts every varint form (also
 * non-minimal ones such as FD + 8 bytes) and rejects values that overflow
 * the requested width. Throws DecodeError.
 */
export class Reader {
  constructor(bytes) {
    this.bytes = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.pos = 0;
  }

  remaining() {
    return this.bytes.length - this.pos;
  }

  _need(n, what) {
    if (this.bytes.length - this.pos < n) throw new DecodeError(`truncated ${what}`);
  }

  /** Unsigned varint up to 2^64-1: number when exact, else BigInt. */
  u64() {
    this._need(1, "varint");
    const first = this.bytes[this.pos];
    if (first <= 250) {
      this.pos += 1;
      return first;
    }
    if (first === 0xfb) {
      this._need(3, "varint");
      const v = this.view.getUint16(this.pos + 1);
      this.pos += 3;
      return v;
    }
    if (first === 0xfc) {
      this._need(5, "varint");
      const v = this.view.getUint32(this.pos + 1);
      this.pos += 5;
      return v;
    }
    if (first === 0xfd) {
      this._need(9, "varint");
      const hi = this.view.getUint32(this.pos + 1);
      const lo = this.view.getUint32(this.pos + 5);
      this.pos += 9;
      if (hi <= 0x1fffff) return hi * TWO_32 + lo;
      return (BigInt(hi) << 32n) | BigInt(lo);
    }
    throw new DecodeError(`invalid varint marker 0x${first.toString(16)}`);
  }

  _bounded(max, what) {
    const start = this.pos;
    const v = this.u64();
    if (typeof v === "bigint" || v > max) {
      this.pos = start;
      throw new DecodeError(`${what} overflow: ${v}`);
    }
    return v;
  }

  u16() {
    return this._bounded(MAX_U16, "u16");
  }

  u32() {
    return this._bounded(MAX_U32, "u32");
  }

  /** Signed i64 (zigzag): number when exact, else BigInt. */
  i64() {
    const z = this.u64();
    if (typeof z === "number") return z % 2 === 0 ? z / 2 : -(z + 1) / 2;
    const v = (z >> 1n) ^ -(z & 1n);
    return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
  }

  bool() {
    this._need(1, "bool");
    const b = this.bytes[this.pos];
    if (b > 1) throw new DecodeError(`invalid bool byte 0x${b.toString(16)}`);
    this.pos += 1;
    return b === 1;
  }

  _length(what) {
    const start = this.pos;
    const n = this.u64();
    if (typeof n === "bigint" || n > this.remaining()) {
      this.pos = start;
      throw new DecodeError(`truncated ${what}`);
    }
    return n;
  }

  /** Binary as a view into the input (no copy). */
  bytesView() {
    const n = this._length("binary");
    const out = this.bytes.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  /** Binary as a new Uint8Array owning exactly its bytes. */
  bytesCopy() {
    const n = this._length("binary");
    const out = this.bytes.slice(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  str() {
    const n = this._length("string");
    const raw = this.bytes.subarray(this.pos, this.pos + n);
    let s;
    try {
      s = utf8Decoder.decode(raw);
    } catch (e) {
      throw new DecodeError("invalid UTF-8 in string");
    }
    this.pos += n;
    return s;
  }

  /** Throw unless the input is fully consumed (client->daemon strictness). */
  end() {
    if (this.pos !== this.bytes.length) throw new DecodeError(`${this.remaining()} trailing bytes`);
  }
}

/* ------------------------------------------------------------------ */
/* api-daemon's codec API: Encoder, Decoder, ObjectDecoder, wrapBlob    */
/* ------------------------------------------------------------------ */

function expected(type, value) {
  return new Error(`Expected ${type}, but got ${typeof value}`);
}

/** A signed integer as api-daemon's runtime coerces it: NaN and non-numbers are 0, fractions truncate. */
function coerceInt(value) {
  if (typeof value === "bigint") return value;
  const n = Math.trunc(Number(value));
  return Number.isFinite(n) ? n : 0;
}

/** An unsigned integer (varint) coerced the same way; negative values are refused. */
function coerceUnsigned(value, what) {
  if (typeof value === "bigint") return value;
  if (typeof value !== "number") throw expected("number", value);
  const n = Math.trunc(value);
  if (!Number.isFinite(n)) return 0;
  if (n < 0) throw new RangeError(`${what} must not be negative: ${value}`);
  return n;
}

function zigzag(value) {
  if (typeof value === "bigint") {
    if (value < MIN_I64 || value > MAX_I64) throw new RangeError(`int out of i64 range: ${value}`);
    const z = value >= 0n ? value << 1n : ((-value) << 1n) - 1n;
    return z <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(z) : z;
  }
  if (Math.abs(value) < 2 ** 52) return value >= 0 ? 2 * value : -2 * value - 1;
  return zigzag(BigInt(value));
}

/** Bytes of a typed array, a DataView or an ArrayBuffer, else throws like api-daemon's runtime. */
function byteView(value) {
  if (ArrayBuffer.isView(value)) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  if (isArrayBuffer(value)) return new Uint8Array(value);
  throw expected("uintarray", value);
}

/**
 * Growable encoder; every write method returns the encoder, so calls chain.
 * Integers use the shortest varint form (decoders accept every form).
 */
export class Encoder {
  constructor(capacity = 64) {
    this.buffer = new Uint8Array(Math.max(16, capacity));
    this.view = new DataView(this.buffer.buffer);
    this.pos = 0;
  }

  reset() {
    this.pos = 0;
    return this;
  }

  extend_if_needed(n) {
    if (this.pos + n <= this.buffer.length) return this;
    let size = this.buffer.length * 2;
    while (size < this.pos + n) size *= 2;
    const bigger = new Uint8Array(size);
    bigger.set(this.buffer.subarray(0, this.pos));
    this.buffer = bigger;
    this.view = new DataView(bigger.buffer);
    return this;
  }

  /** A new Uint8Array holding exactly what was written. */
  value() {
    return this.buffer.slice(0, this.pos);
  }

  _raw(bytes) {
    this.extend_if_needed(bytes.length);
    this.buffer.set(bytes, this.pos);
    this.pos += bytes.length;
    return this;
  }

  varint(value) {
    const n = coerceUnsigned(value, "varint");
    if (typeof n === "bigint" && (n < 0n || n > MAX_U64)) throw new RangeError(`varint out of range: ${n}`);
    this.extend_if_needed(9);
    this.pos = writeUnsigned(this.buffer, this.view, this.pos, typeof n === "bigint" && n <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(n) : n);
    return this;
  }

  enum_tag(value) {
    return this.varint(value);
  }

  u32(value) {
    const n = coerceUnsigned(value, "u32");
    if (n > MAX_U32) throw new RangeError(`u32 out of range: ${value}`);
    return this.varint(n);
  }

  u64(value) {
    return this.varint(value);
  }

  i64(value) {
    return this.varint(zigzag(coerceInt(value)));
  }

  bool(value) {
    if (typeof value !== "boolean") throw expected("boolean", value);
    this.extend_if_needed(1);
    this.buffer[this.pos++] = value ? 1 : 0;
    return this;
  }

  string(value) {
    if (typeof value !== "string") throw expected("string", value);
    const bytes = utf8Encoder.encode(value);
    return this.varint(bytes.length)._raw(bytes);
  }

  json(value) {
    return this.string(JSON.stringify(value));
  }

  u8_array(value) {
    const bytes = byteView(value);
    return this.varint(bytes.length)._raw(bytes);
  }

  date(value) {
    if (!(value instanceof Date)) throw expected("date", value);
    return this.i64(value.getTime());
  }

  /** A blob prepared by wrapBlob(): its type, then its bytes. */
  blob(value) {
    if (value === null || typeof value !== "object" || !value.__isblob__) throw expected("blob", value);
    return this.string(value.type || "").u8_array(value.data);
  }

  url(value) {
    if (typeof value === "string") return this.string(value);
    if (value !== null && typeof value === "object" && typeof value.href === "string") return this.string(value.href);
    throw expected("url", value);
  }

  void() {
    return this;
  }

  full_u16(value) {
    this.extend_if_needed(2);
    this.view.setUint16(this.pos, value);
    this.pos += 2;
    return this;
  }

  full_u32(value) {
    this.extend_if_needed(4);
    this.view.setUint32(this.pos, value);
    this.pos += 4;
    return this;
  }

  full_u64(value) {
    this.extend_if_needed(8);
    this.view.setBigUint64(this.pos, BigInt(value));
    this.pos += 8;
    return this;
  }
}

/** Sequential decoder of api-daemon's runtime: reading past the end throws Error("eof"). */
export class Decoder {
  constructor(buffer) {
    this.reader = new Reader(toUint8Array(buffer));
  }

  _read(fn) {
    try {
      return fn(this.reader);
    } catch (e) {
      if (e instanceof DecodeError && e.message.startsWith("truncated")) throw new Error("eof");
      throw e;
    }
  }

  reset() {
    this.reader.pos = 0;
    return this;
  }

  varint() {
    return this._read((r) => r.u64());
  }

  enum_tag() {
    return this.varint();
  }

  u32() {
    return this._read((r) => r.u32());
  }

  u64() {
    return this.varint();
  }

  i64() {
    return this._read((r) => r.i64());
  }

  bool() {
    return this._read((r) => {
      r._need(1, "bool");
      return r.bytes[r.pos++] === 1;
    });
  }

  string() {
    return this._read((r) => r.str());
  }

  json() {
    return JSON.parse(this.string());
  }

  /** A view into the decoded buffer (no copy). */
  u8_array() {
    return this._read((r) => r.bytesView());
  }

  date() {
    return new Date(Number(this.i64()));
  }

  blob() {
    const type = this.string();
    const data = this.u8_array();
    return typeof Blob === "function" ? new Blob([data], { type }) : { __isblob__: true, data, type };
  }

  url() {
    return new URL(this.string());
  }

  void() {
    return {};
  }

  full_u16() {
    return this._read((r) => {
      r._need(2, "u16");
      const v = r.view.getUint16(r.pos);
      r.pos += 2;
      return v;
    });
  }

  full_u32() {
    return this._read((r) => {
      r._need(4, "u32");
      const v = r.view.getUint32(r.pos);
      r.pos += 4;
      return v;
    });
  }

  full_u64() {
    return this._read((r) => {
      r._need(8, "u64");
      const v = r.view.getBigUint64(r.pos);
      r.pos += 8;
      return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
    });
  }
}

const DECODER_METHODS = [
  "varint",
  "enum_tag",
  "u32",
  "u64",
  "i64",
  "bool",
  "string",
  "json",
  "u8_array",
  "date",
  "blob",
  "url",
  "void",
  "full_u16",
  "full_u32",
  "full_u64",
];

/**
 * A chainable builder: `new ObjectDecoder(bytes).string("host").i64("port").finalize()`
 * gives `{host, port}`.
 */
export function ObjectDecoder(buffer) {
  if (!(this instanceof ObjectDecoder)) return new ObjectDecoder(buffer);
  this.decoder = buffer instanceof Decoder ? buffer : new Decoder(buffer);
  this.result = {};
}
for (const name of DECODER_METHODS) {
  ObjectDecoder.prototype[name] = function (field) {
    this.result[field] = this.decoder[name]();
    return this;
  };
}
ObjectDecoder.prototype.finalize = function () {
  return this.result;
};

/** A Blob as the encoder wants it: Promise of {__isblob__: true, data: Uint8Array, type}. */
export function wrapBlob(blob) {
  return Promise.resolve(blob.arrayBuffer()).then((buffer) => ({
    __isblob__: true,
    data: new Uint8Array(buffer),
    type: blob.type,
  }));
}
