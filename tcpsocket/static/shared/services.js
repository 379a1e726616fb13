/*
 * tcpsocket client library -- the core service's GetService and HasService.
 *
 * ES module; default export `Services` = {get, has, create_core_message}, as in
 * api-daemon's runtime.
 */
import { core } from "./core.js";

const Services = {
  /**
   * GetService(name, fingerprint) on `session` -> Promise of the new service id.
   * Rejects with a bare string: "UnknownService", "FingerprintMismatch",
   * "MissingPermission" or "Internal:<message>"; with a {reason, value} object when
   * the session is not connected or the daemon answers with a permission error.
   */
  get(name, fingerprint, session) {
    const content = Services.create_core_message(core.CoreRequest.GET_SERVICE, { name, fingerprint });
    return session.send_request(new core.BaseMessage(0, 0, content), core.CoreResponse).then((answer) => {
      const msg = answer.msg;
      if (msg === null || msg.variant !== core.CoreRequest.GET_SERVICE) {
        throw new TypeError(`unexpected answer to GetService(${name})`);
      }
      if (msg.response.error !== undefined) throw msg.response.error;
      if (!msg.response.service) throw undefined;
      return msg.response.service;
    });
  },

  /** HasService(name) -> Promise<boolean>; a malformed answer rejects with a string. */
  has(name, session) {
    const content = Services.create_core_message(core.CoreRequest.HAS_SERVICE, { name });
    return session.send_request(new core.BaseMessage(0, 0, content), core.CoreResponse).then((answer) => {
      const msg = answer.msg;
      if (msg === null || typeof msg.success !== "boolean") throw `hasService failed for: ${name}`;
      return msg.success;
    });
  },

  /** The content of a core request: sets `init.variant` and encodes it. */
  create_core_message(variant, init) {
    init.variant = variant;
    return core.CoreRequest.encode(init);
  },
};

export default Services;
