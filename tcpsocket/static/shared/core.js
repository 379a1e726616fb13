/*
 * tcpsocket client library -- wire codec (lib_session.core).
 *
 * Implements part A of the session protocol: varints, strings, binaries,
 * BaseMessage framing and the core service (service 0) messages.
 *
 * One source, two forms: loaded with <script src=".../shared/core.js"> this
 * file adds `core` to the global `lib_session` (creating it if needed) and
 * defines no other global. The daemon also serves it as an ES module at
 * `.../shared/core.mjs` (the same text wrapped by tcpsocket/web.py), which
 * exports `lib_session`. The top-level `this` is the global object in a
 * classic script and the wrapper's private scope object in the module.
 */
(function (root) {
  "use strict";

  const lib_session =
    root.lib_session !== null && typeof root.lib_session === "object" ? root.lib_session : {};

  const MAX_U16 = 0xffff;
  const MAX_U32 = 0xffffffff;
  const TWO_32 = 4294967296;
  const MAX_U64 = 0xffffffffffffffffn;
  const MIN_I64 = -0x8000000000000000n;
  const MAX_I64 = 0x7fffffffffffffffn;

  /** Raised by decoders on malformed or truncated input. */
  class DecodeError extends Error {
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
  function toUint8Array(data) {
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
  class Fields {
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
  class Reader {
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
  /* Session messages                                                    */
  /* ------------------------------------------------------------------ */

  const KIND_REQUEST = 0;
  const KIND_RESPONSE = 1;
  const KIND_EVENT = 2;
  const KIND_PERMISSION_ERROR = 3;

  /** SessionHandshake { token }. */
  function encodeHandshake(token) {
    return new Fields().str(token).encode();
  }

  /** SessionAck { success } -> boolean (trailing bytes ignored). */
  function decodeHandshakeAck(bytes) {
    return new Reader(toUint8Array(bytes)).bool();
  }

  /** BaseMessage Request frame, built in one allocation. `content` is Fields. */
  function encodeRequest(service, object, requestId, content) {
    return new Fields().u32(service).u32(object).u(KIND_REQUEST).u(requestId).nested(content).encode();
  }

  /** BaseMessage Response frame (used by tests and mock daemons). */
  function encodeResponse(service, object, requestId, content) {
    return new Fields().u32(service).u32(object).u(KIND_RESPONSE).u(requestId).nested(content).encode();
  }

  /** BaseMessage Event frame (used by tests and mock daemons). */
  function encodeEvent(service, object, content) {
    return new Fields().u32(service).u32(object).u(KIND_EVENT).nested(content).encode();
  }

  /**
   * Decode a BaseMessage. Returns {service, object, kind, requestId,
   * permission, message, content}; `content` is a view into `bytes`.
   * Trailing bytes after the content are ignored (protocol C.1).
   */
  function decodeBaseMessage(bytes) {
    const r = new Reader(toUint8Array(bytes));
    const msg = {
      service: r.u32(),
      object: r.u32(),
      kind: r.u32(),
      requestId: null,
      permission: null,
      message: null,
      content: null,
    };
    switch (msg.kind) {
      case KIND_REQUEST:
      case KIND_RESPONSE:
        msg.requestId = r.u64();
        break;
      case KIND_EVENT:
        break;
      case KIND_PERMISSION_ERROR:
        msg.requestId = r.u64();
        msg.permission = r.str();
        msg.message = r.str();
        break;
      default:
        throw new DecodeError(`unknown message kind ${msg.kind}`);
    }
    msg.content = r.bytesView();
    return msg;
  }

  /* Core service (service 0, object 0). */
  const CORE_GET_SERVICE = 0;
  const CORE_HAS_SERVICE = 1;
  const CORE_RELEASE_OBJECT = 2;
  const CORE_ENABLE_EVENT = 3;
  const CORE_DISABLE_EVENT = 4;

  const CoreRequest = {
    getService(name, fingerprint) {
      return new Fields().u(CORE_GET_SERVICE).str(name).str(fingerprint);
    },
    hasService(name) {
      return new Fields().u(CORE_HAS_SERVICE).str(name);
    },
    releaseObject(service, object) {
      return new Fields().u(CORE_RELEASE_OBJECT).u32(service).u32(object);
    },
    enableEvent(service, object, event) {
      return new Fields().u(CORE_ENABLE_EVENT).u32(service).u32(object).u32(event);
    },
    disableEvent(service, object, event) {
      return new Fields().u(CORE_DISABLE_EVENT).u32(service).u32(object).u32(event);
    },
  };

  const GET_SERVICE_RESULTS = [
    "Success",
    "UnknownService",
    "FingerprintMismatch",
    "MissingPermission",
    "InternalError",
  ];

  /**
   * Decode a CoreResponse. GetService (tag 0) gives {tag, result, serviceId,
   * message}; tags 1-4 give {tag, success}. Trailing bytes are ignored.
   */
  function decodeCoreResponse(content) {
    const r = new Reader(toUint8Array(content));
    const tag = r.u32();
    if (tag === CORE_GET_SERVICE) {
      const variant = r.u32();
      if (variant >= GET_SERVICE_RESULTS.length) throw new DecodeError(`unknown GetService result ${variant}`);
      const out = { tag, result: GET_SERVICE_RESULTS[variant], serviceId: null, message: null };
      if (variant === 0) out.serviceId = r.u32();
      else if (variant === 4) out.message = r.str();
      return out;
    }
    if (tag >= CORE_HAS_SERVICE && tag <= CORE_DISABLE_EVENT) return { tag, success: r.bool() };
    throw new DecodeError(`unknown core response tag ${tag}`);
  }

  lib_session.core = Object.freeze({
    DecodeError,
    Fields,
    Reader,
    toUint8Array,
    KIND_REQUEST,
    KIND_RESPONSE,
    KIND_EVENT,
    KIND_PERMISSION_ERROR,
    CORE_GET_SERVICE,
    CORE_HAS_SERVICE,
    CORE_RELEASE_OBJECT,
    CORE_ENABLE_EVENT,
    CORE_DISABLE_EVENT,
    CoreRequest,
    encodeHandshake,
    decodeHandshakeAck,
    encodeRequest,
    encodeResponse,
    encodeEvent,
    decodeBaseMessage,
    decodeCoreResponse,
  });
  root.lib_session = lib_session;
})(this);
