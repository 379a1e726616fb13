/*
 * tcpsocket client library -- session messages and the core service (service 0).
 *
 * ES module; the classic script at the same URL defines the global
 * `ExternalAPI` = {core} (doc/javascript.md). `core` has api-daemon's
 * SessionHandshake, SessionAck, BaseMessage, CoreRequest and CoreResponse,
 * plus (not enumerable) the one-allocation frame helpers the library uses.
 */
import { Encoder, ObjectDecoder, Decoder, DecodeError, Fields, Reader, toUint8Array } from "./bincode.js";

const KIND_REQUEST = 0;
const KIND_RESPONSE = 1;
const KIND_EVENT = 2;
const KIND_PERMISSION_ERROR = 3;

const GET_SERVICE = 0;
const HAS_SERVICE = 1;
const RELEASE_OBJECT = 2;
const ENABLE_EVENT = 3;
const DISABLE_EVENT = 4;

const GET_SERVICE_ERRORS = ["", "UnknownService", "FingerprintMismatch", "MissingPermission"];

/* SessionHandshake, SessionAck and BaseMessage work with or without `new`. */

/** SessionHandshake { token }: the first message of a session. */
function SessionHandshake(token) {
  if (!(this instanceof SessionHandshake)) return new SessionHandshake(token);
  this.token = token;
}
SessionHandshake.prototype.encode = function () {
  return new Encoder().string(this.token).value();
};

/** SessionAck { success }: the daemon's answer to the handshake (first byte 1). */
function SessionAck() {
  if (!(this instanceof SessionAck)) return new SessionAck();
}
SessionAck.prototype.decode = function (bytes) {
  const data = toUint8Array(bytes);
  return { success: data.length > 0 && data[0] === 1 };
};

/** BaseMessage { service, object, kind, content }. */
function BaseMessage(service, object, content) {
  if (!(this instanceof BaseMessage)) return new BaseMessage(service, object, content);
  this.service = service;
  this.object = object;
  this.content = content;
  this.kind = KIND_REQUEST;
  this.id = 0;
}

BaseMessage.prototype.set_request = function (id) {
  this.kind = KIND_REQUEST;
  this.id = id;
  return this;
};

BaseMessage.prototype.set_response = function (id) {
  this.kind = KIND_RESPONSE;
  this.id = id;
  return this;
};

/** What a "zombie session" rejection shows of the message. */
BaseMessage.prototype.toJSON = function () {
  const content = this.content instanceof Fields ? this.content.encode() : this.content;
  return { service: this.service, object: this.object, content };
};

BaseMessage.prototype.encode = function () {
  const fields = new Fields().u32(this.service).u32(this.object).u(this.kind);
  if (this.kind === KIND_REQUEST || this.kind === KIND_RESPONSE) fields.u(this.id);
  const content = this.content || new Uint8Array(0);
  return (content instanceof Fields ? fields.nested(content) : fields.bytes(content)).encode();
};

/**
 * {service, object, kind, request | response | is_event | permissionError, content};
 * `content` is a view into `bytes`, trailing bytes are ignored.
 */
BaseMessage.decode = function (bytes) {
  const m = decodeBaseMessage(bytes);
  const out = { service: m.service, object: m.object, kind: m.kind };
  if (m.kind === KIND_REQUEST) out.request = m.requestId;
  else if (m.kind === KIND_RESPONSE) out.response = m.requestId;
  else if (m.kind === KIND_EVENT) out.is_event = true;
  else out.permissionError = { request: m.requestId, permission: m.permission, message: m.message };
  out.content = m.content;
  return out;
};

/** Core requests: encode({variant, name, fingerprint | service, object[, event]}). */
const CoreRequest = {
  GET_SERVICE,
  HAS_SERVICE,
  RELEASE_OBJECT,
  ENABLE_EVENT,
  DISABLE_EVENT,
  encode(params) {
    const e = new Encoder().enum_tag(params.variant);
    switch (params.variant) {
      case GET_SERVICE:
        return e.string(params.name).string(params.fingerprint).value();
      case HAS_SERVICE:
        return e.string(params.name).value();
      case RELEASE_OBJECT:
        return e.u32(params.service).u32(params.object).value();
      case ENABLE_EVENT:
      case DISABLE_EVENT:
        return e.u32(params.service).u32(params.object).u32(params.event).value();
      default:
        throw new Error(`unknown core request ${params.variant}`);
    }
  },
};

/**
 * Core responses: {variant, response: {service} | {error}} for GetService (error is
 * "UnknownService", "FingerprintMismatch", "MissingPermission" or "Internal:<message>"),
 * {variant, success} for the others; null for an unknown variant.
 */
const CoreResponse = {
  decode(bytes) {
    const d = new Decoder(bytes);
    const variant = d.enum_tag();
    if (variant === GET_SERVICE) {
      const result = d.enum_tag();
      if (result === 0) return { variant, response: { service: d.u32() } };
      if (result === 4) return { variant, response: { error: `Internal:${d.string()}` } };
      if (result < GET_SERVICE_ERRORS.length) return { variant, response: { error: GET_SERVICE_ERRORS[result] } };
      return null;
    }
    if (variant >= HAS_SERVICE && variant <= DISABLE_EVENT) return { variant, success: d.bool() };
    return null;
  },
};

/* The library's own frame helpers (one allocation per frame). */

/** BaseMessage Request frame; `content` is a Fields plan or bytes. */
function encodeRequest(service, object, requestId, content) {
  const fields = new Fields().u32(service).u32(object).u(KIND_REQUEST).u(requestId);
  return (content instanceof Fields ? fields.nested(content) : fields.bytes(content)).encode();
}

/** BaseMessage Response frame (tests and mock daemons). */
function encodeResponse(service, object, requestId, content) {
  const fields = new Fields().u32(service).u32(object).u(KIND_RESPONSE).u(requestId);
  return (content instanceof Fields ? fields.nested(content) : fields.bytes(content)).encode();
}

/** BaseMessage Event frame (tests and mock daemons). */
function encodeEvent(service, object, content) {
  const fields = new Fields().u32(service).u32(object).u(KIND_EVENT);
  return (content instanceof Fields ? fields.nested(content) : fields.bytes(content)).encode();
}

/**
 * Decode a BaseMessage: {service, object, kind, requestId, permission, message,
 * content}; `content` is a view into `bytes`. Throws DecodeError.
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

const hidden = (value) => ({ value, enumerable: false });

export const core = Object.defineProperties(
  { SessionAck, SessionHandshake, BaseMessage, CoreRequest, CoreResponse },
  {
    DecodeError: hidden(DecodeError),
    Fields: hidden(Fields),
    Reader: hidden(Reader),
    ObjectDecoder: hidden(ObjectDecoder),
    Encoder: hidden(Encoder),
    Decoder: hidden(Decoder),
    toUint8Array: hidden(toUint8Array),
    KIND_REQUEST: hidden(KIND_REQUEST),
    KIND_RESPONSE: hidden(KIND_RESPONSE),
    KIND_EVENT: hidden(KIND_EVENT),
    KIND_PERMISSION_ERROR: hidden(KIND_PERMISSION_ERROR),
    encodeRequest: hidden(encodeRequest),
    encodeResponse: hidden(encodeResponse),
    encodeEvent: hidden(encodeEvent),
    decodeBaseMessage: hidden(decodeBaseMessage),
  }
);
