/*
 * scoreboard.js: the browser client for the scoreboard server (PROTOCOL v1). No dependencies, no build.
 * Load it with <script src="static/scoreboard.js"></script>; it defines the global `Scoreboard`:
 *
 *   const client = new Scoreboard.Client(baseUrl);          // e.g. location.origin
 *   await client.login("alice", "correct horse battery");  // stores tokens, sessionKey, user
 *   const result = await client.submit(300, { durationMs: 41250, extra: { level: 3 } });
 *
 *   const live = client.live({ onEvent(channel, type, data) {}, onState(state, info) {} });
 *   live.connect();
 *   await live.subscribe("leaderboard:global");
 *
 * Signing: the body is serialised ONCE (JSON.stringify), encoded ONCE (TextEncoder), and that same
 * Uint8Array is both signed (HMAC-SHA256 via crypto.subtle, key = base64url-decoded session key, message =
 * "v1\nPOST\n/scores/update\n" + body bytes) and sent. Where crypto.subtle is missing (a page served over
 * plain http from a host other than localhost is not a secure context) a small built-in SHA-256 is used.
 *
 * Reconnection: exponential backoff with equal jitter, like the Python client: attempt n waits
 * b/2 + random(0, b/2) seconds with b = min(30, 0.5 * 2^n), reset once a new connection gets its first frame.
 * Every channel is resubscribed with the last epoch/offset seen. Browsers cannot set headers on a
 * WebSocket, so a token is sent as the first message {"op": "auth", "token"}.
 */
(function (global) {
  "use strict";

  var encoder = new TextEncoder();
  var SIGNED_PATH = "/scores/update";
  var PREFIX = encoder.encode("v1\nPOST\n" + SIGNED_PATH + "\n");
  var STATUS_OF_CODE = {
    invalid_request: 400, unauthorized: 401, bad_signature: 401, stale_timestamp: 401, forbidden: 403,
    suspended: 403, not_found: 404, replay: 409, action_conflict: 409, out_of_sequence: 409,
    payload_too_large: 413, score_rejected: 422, rate_limited: 429, unavailable: 503
  };

  // ---- errors -----------------------------------------------------------------------------------

  class ScoreboardError extends Error {
    constructor(status, code, message, reason, extra) {
      super(status + " " + code + ": " + (message || "") + (reason ? " (" + reason + ")" : ""));
      this.name = "ScoreboardError";
      this.status = status;
      this.code = code;
      this.reason = reason || null;
      this.detail = message || "";
      Object.assign(this, extra || {});
    }
  }

  // ---- bytes ------------------------------------------------------------------------------------

  function base64urlDecode(text) {
    var b64 = text.replace(/-/g, "+").replace(/_/g, "/");
    while (b64.length % 4) b64 += "=";
    var bin = atob(b64);
    var out = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  function base64urlEncode(bytes) {
    var bin = "";
    for (var i = 0; i < bytes.length; i++) bin += String.fromCharCode(bytes[i]);
    return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function toHex(bytes) {
    var out = "";
    for (var i = 0; i < bytes.length; i++) out += (bytes[i] < 16 ? "0" : "") + bytes[i].toString(16);
    return out;
  }

  function concat(a, b) {
    var out = new Uint8Array(a.length + b.length);
    out.set(a, 0);
    out.set(b, a.length);
    return out;
  }

  function randomBytes(n) {
    var out = new Uint8Array(n);
    global.crypto.getRandomValues(out);
    return out;
  }

  function newNonce() { return base64urlEncode(randomBytes(18)); }  // 24 chars, inside 16-64

  function newActionId() { return toHex(randomBytes(16)); }

  // ---- SHA-256 / HMAC fallback (FIPS 180-4), used only without crypto.subtle ---------------------

  var K = new Uint32Array([
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2
  ]);

  function rotr(x, n) { return (x >>> n) | (x << (32 - n)); }

  function sha256(bytes) {
    var length = bytes.length;
    var padded = new Uint8Array(((length + 9 + 63) >> 6) << 6);
    padded.set(bytes);
    padded[length] = 0x80;
    var view = new DataView(padded.buffer);
    view.setUint32(padded.length - 8, Math.floor(length / 0x20000000));
    view.setUint32(padded.length - 4, (length << 3) >>> 0);
    var H = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
    var W = new Uint32Array(64);
    for (var off = 0; off < padded.length; off += 64) {
      var i;
      for (i = 0; i < 16; i++) W[i] = view.getUint32(off + i * 4);
      for (i = 16; i < 64; i++) {
        var s0 = rotr(W[i - 15], 7) ^ rotr(W[i - 15], 18) ^ (W[i - 15] >>> 3);
        var s1 = rotr(W[i - 2], 17) ^ rotr(W[i - 2], 19) ^ (W[i - 2] >>> 10);
        W[i] = (W[i - 16] + s0 + W[i - 7] + s1) | 0;
      }
      var a = H[0], b = H[1], c = H[2], d = H[3], e = H[4], f = H[5], g = H[6], h = H[7];
      for (i = 0; i < 64; i++) {
        var t1 = (h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + W[i]) | 0;
        var t2 = ((rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))) | 0;
        h = g; g = f; f = e; e = (d + t1) | 0; d = c; c = b; b = a; a = (t1 + t2) | 0;
      }
      H[0] = (H[0] + a) | 0; H[1] = (H[1] + b) | 0; H[2] = (H[2] + c) | 0; H[3] = (H[3] + d) | 0;
      H[4] = (H[4] + e) | 0; H[5] = (H[5] + f) | 0; H[6] = (H[6] + g) | 0; H[7] = (H[7] + h) | 0;
    }
    var out = new Uint8Array(32);
    var outView = new DataView(out.buffer);
    for (var j = 0; j < 8; j++) outView.setUint32(j * 4, H[j] >>> 0);
    return out;
  }

  function hmacSha256Fallback(key, message) {
    if (key.length > 64) key = sha256(key);
    var inner = new Uint8Array(64), outer = new Uint8Array(64);
    for (var i = 0; i < 64; i++) {
      var k = i < key.length ? key[i] : 0;
      inner[i] = k ^ 0x36;
      outer[i] = k ^ 0x5c;
    }
    return sha256(concat(outer, sha256(concat(inner, message))));
  }

  var keyCache = new Map();  // session key text -> CryptoKey

  async function hmacSha256(sessionKey, message, options) {
    var subtle = global.crypto && global.crypto.subtle;
    if (!subtle || (options && options.fallback)) {
      return hmacSha256Fallback(base64urlDecode(sessionKey), message);
    }
    var key = keyCache.get(sessionKey);
    if (!key) {
      key = await subtle.importKey("raw", base64urlDecode(sessionKey), { name: "HMAC", hash: "SHA-256" },
                                   false, ["sign"]);
      keyCache.clear();
      keyCache.set(sessionKey, key);
    }
    return new Uint8Array(await subtle.sign("HMAC", key, message));
  }

  /** The X-Signature value ("v1=" + lowercase hex) for the exact body bytes (Uint8Array or string). */
  async function signBody(sessionKey, body, options) {
    var bytes = typeof body === "string" ? encoder.encode(body) : body;
    return "v1=" + toHex(await hmacSha256(sessionKey, concat(PREFIX, bytes), options));
  }

  /** Seconds before reconnect attempt `attempt` (0-based): equal jitter by default (see the header). */
  function backoffDelay(attempt, options) {
    var o = Object.assign({ start: 0.5, factor: 2, cap: 30, jitter: "equal", random: Math.random }, options || {});
    var step = Math.min(o.cap, o.start * Math.pow(o.factor, Math.min(attempt, 64)));
    if (o.jitter === "full") return o.random() * step;
    if (o.jitter === "none") return step;
    return step / 2 + o.random() * step / 2;
  }

  function sleep(ms) { return new Promise(function (resolve) { setTimeout(resolve, ms); }); }

  // ---- HTTP -------------------------------------------------------------------------------------

  class Client {
    constructor(baseUrl, options) {
      var base = baseUrl || (global.location ? global.location.origin : "");
      this.baseUrl = String(base).replace(/\/+$/, "");
      this.options = Object.assign({ now: function () { return Date.now(); } }, options || {});
      this.accessToken = null;
      this.refreshToken = null;
      this.sessionId = null;
      this.sessionKey = null;
      this.user = null;
      this.expiresAt = 0;
      this.seq = 0;
      this._queue = Promise.resolve();  // submissions go one at a time: seq must arrive in order
      this._refreshing = null;
    }

    get loggedIn() { return this.accessToken !== null; }

    async request(method, path, options) {
      var o = options || {};
      var headers = Object.assign({}, o.headers || {});
      if (o.auth) headers.Authorization = "Bearer " + (await this.freshToken());
      var body = o.raw;
      if (body === undefined && o.body !== undefined) body = JSON.stringify(o.body);
      if (body !== undefined) headers["Content-Type"] = "application/json";
      var response;
      try {
        response = await fetch(this.baseUrl + path, { method: method, headers: headers, body: body,
                                                     cache: "no-store", credentials: "omit" });
      } catch (err) {
        throw new ScoreboardError(0, "network", method + " " + path + ": " + err.message);
      }
      var text = await response.text();
      var data = null;
      if (text) { try { data = JSON.parse(text); } catch (err) { data = null; } }
      if (response.ok) return data;
      var error = data && data.error ? data.error : {};
      var retry = response.headers.get("Retry-After");
      throw new ScoreboardError(response.status, error.code || "http_error", error.message || response.statusText,
                                error.reason, { retryAfter: retry ? Number(retry) : null,
                                                requestId: error.request_id || response.headers.get("X-Request-Id"),
                                                body: data });
    }

    register(username, password) {
      return this.request("POST", "/auth/register", { body: { username: username, password: password } });
    }

    async login(username, password) {
      var answer = await this.request("POST", "/auth/login", { body: { username: username, password: password } });
      this._store(answer);
      this.seq = 0;
      return answer;
    }

    /** Rotate the tokens (same session and key). Concurrent callers share one refresh: a spent refresh
     * token must never be sent twice (the server would revoke the session). */
    refresh() {
      var self = this;
      if (!this.refreshToken) return Promise.reject(new ScoreboardError(401, "unauthorized", "not logged in"));
      if (!this._refreshing) {
        this._refreshing = this.request("POST", "/auth/refresh", { body: { refresh_token: this.refreshToken } })
          .then(function (answer) { self._store(answer); return answer; })
          .finally(function () { self._refreshing = null; });
      }
      return this._refreshing;
    }

    /** The access token, refreshed first when it expires within 30 s. */
    async freshToken() {
      if (!this.accessToken) throw new ScoreboardError(401, "unauthorized", "not logged in");
      if (this.refreshToken && Date.now() > this.expiresAt - 30000) await this.refresh();
      return this.accessToken;
    }

    async logout() {
      if (!this.accessToken) return;
      try { await this.request("POST", "/auth/logout", { auth: true }); } finally { this._forget(); }
    }

    me() { return this.request("GET", "/users/me", { auth: true }); }

    _store(answer) {
      this.accessToken = answer.access_token;
      this.refreshToken = answer.refresh_token || null;
      this.sessionId = answer.session_id || null;
      this.sessionKey = answer.session_key;
      this.user = answer.user || null;
      this.expiresAt = Date.now() + 1000 * (answer.expires_in || 0);
    }

    _forget() {
      this.accessToken = this.refreshToken = this.sessionId = this.sessionKey = this.user = null;
      this.expiresAt = 0;
      this.seq = 0;
    }

    /** The next submission's exact bytes and signature: {bytes, text, signature, body}. Takes the next seq. */
    async buildSubmission(points, options) {
      var o = Object.assign({ type: "level_complete", durationMs: 30000 }, options || {});
      if (!this.sessionKey) throw new ScoreboardError(401, "unauthorized", "not logged in");
      this.seq += 1;
      var scoreData = { type: o.type, points: points };
      if (o.durationMs !== null && o.durationMs !== undefined) scoreData.duration_ms = o.durationMs;
      Object.assign(scoreData, o.extra || {});
      var body = { action_id: o.actionId || newActionId() };
      if (o.board) body.board = o.board;
      body.seq = this.seq;
      body.ts = this.options.now();
      body.nonce = newNonce();
      body.score_data = scoreData;
      var text = JSON.stringify(body);   // serialised once
      var bytes = encoder.encode(text);  // encoded once: these bytes are signed and sent
      return { body: body, text: text, bytes: bytes, signature: await signBody(this.sessionKey, bytes) };
    }

    /** Submit one signed action. options: {type, board, durationMs, actionId, extra, retries}. */
    submit(points, options) {
      var self = this;
      var run = async function () {
        await self.freshToken();
        var built = await self.buildSubmission(points, options);
        return self.sendSigned(built.bytes, built.signature, (options && options.retries) || 2);
      };
      var result = this._queue.then(run, run);
      this._queue = result.catch(function () {});
      return result;
    }

    /** POST prepared bytes; 503 and network failures are retried with the very same bytes. */
    async sendSigned(bytes, signature, retries) {
      for (var attempt = 0; ; attempt++) {
        try {
          return await this.request("POST", SIGNED_PATH, { raw: bytes, headers: { "X-Signature": signature },
                                                            auth: true });
        } catch (err) {
          if (attempt >= (retries || 0) || (err.status !== 0 && err.status !== 503)) throw err;
          await sleep(1000 * backoffDelay(attempt, { start: 0.2, cap: 2 }));
        }
      }
    }

    leaderboards() { return this.request("GET", "/leaderboards", { auth: this.loggedIn }); }

    leaderboard(board, options) {
      var o = Object.assign({ offset: 0, limit: 10 }, options || {});
      return this.request("GET", "/leaderboards/" + encodeURIComponent(board || "global") + query(o),
                          { auth: this.loggedIn });
    }

    around(board, userId, options) {
      return this.request("GET", "/leaderboards/" + encodeURIComponent(board) + "/around/" + Number(userId) +
                          query(Object.assign({ radius: 5 }, options || {})), { auth: this.loggedIn });
    }

    standing(board, userId, options) {
      return this.request("GET", "/leaderboards/" + encodeURIComponent(board) + "/users/" + Number(userId) +
                          query(options || {}), { auth: this.loggedIn });
    }

    /** A Live connection authenticated as this client (anonymous while logged out). */
    live(options) {
      var self = this;
      return new Live(Object.assign({
        url: this.baseUrl,
        tokenProvider: function () { return self.loggedIn ? self.freshToken() : null; }
      }, options || {}));
    }
  }

  function query(values) {
    var parts = [];
    Object.keys(values).forEach(function (key) {
      if (values[key] !== undefined && values[key] !== null && values[key] !== "") {
        parts.push(encodeURIComponent(key) + "=" + encodeURIComponent(values[key]));
      }
    });
    return parts.length ? "?" + parts.join("&") : "";
  }

  function wsUrl(base) {
    var url = new URL(base || global.location.href, global.location ? global.location.href : undefined);
    if (url.protocol === "ws:" || url.protocol === "wss:") return url.href;
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.pathname = url.pathname.replace(/\/+$/, "") + "/ws";
    url.search = "";
    url.hash = "";
    return url.href;
  }

  // ---- WebSocket --------------------------------------------------------------------------------

  /**
   * new Live({url, token, tokenProvider, onEvent(channel, type, data), onSnapshot(channel, snapshot),
   *           onState(state, info), onError(err), backoff: {start, factor, cap, jitter, random}})
   * States: "idle", "connecting", "live", "reconnecting" (info.delay seconds, info.at = when, ms),
   * "closed" (info.error). on(channel, type, cb) registers cb(channel, type, data); "*" matches any,
   * type "snapshot" receives snapshots.
   */
  class Live {
    constructor(options) {
      var o = options || {};
      this.url = wsUrl(o.url);
      this.token = o.token || null;
      this.tokenProvider = o.tokenProvider || null;
      this.callbacks = { event: o.onEvent, snapshot: o.onSnapshot, state: o.onState, error: o.onError };
      this.backoff = Object.assign({ start: 0.5, factor: 2, cap: 30, jitter: "equal" }, o.backoff || {});
      this.state = "idle";
      this.error = null;
      this.identity = null;
      this.channels = new Map();   // wanted channel -> true (insertion order = resubscribe order)
      this.positions = new Map();  // channel -> {epoch, offset} last seen
      this.connections = 0;
      this._handlers = [];
      this._pending = new Map();   // channel -> [{resolve, reject}]
      this._confirmed = new Map(); // channel -> subscribed frame on this connection
      this._inFlight = [];
      this._pings = [];
      this._ws = null;
      this._attempt = 0;
      this._timer = null;
      this._closing = false;
      this._unauthorized = 0;
      this._gotFrame = false;
      this._ready = false;
      this._generation = 0;  // bumped by reconnect()/close(): a stale _open() gives up
    }

    on(channel, type, callback) {
      var entry = [channel, type, callback], list = this._handlers;
      list.push(entry);
      return function () { var i = list.indexOf(entry); if (i >= 0) list.splice(i, 1); };
    }

    connect() {
      this._closing = false;
      this.error = null;
      if (!this._ws && !this._timer) this._open();
      return this;
    }

    subscribe(channel) {
      var self = this;
      if (this._ready && this._confirmed.has(channel)) return Promise.resolve(this._confirmed.get(channel));
      return new Promise(function (resolve, reject) {
        if (!self._pending.has(channel)) self._pending.set(channel, []);
        self._pending.get(channel).push({ resolve: resolve, reject: reject });
        var inFlight = self._inFlight.indexOf(channel) >= 0;
        self.channels.set(channel, true);
        if (self._ready && !inFlight) self._sendSubscribe(channel);
      });
    }

    unsubscribe(channel) {
      this.channels.delete(channel);
      this.positions.delete(channel);
      this._confirmed.delete(channel);
      if (this._ready) this._send({ op: "unsubscribe", channel: channel });
    }

    ping() {
      var self = this, sent = performance.now();
      return new Promise(function (resolve, reject) {
        if (!self._ready) { reject(new ScoreboardError(0, "closed", "not connected")); return; }
        self._pings.push({ resolve: function () { resolve((performance.now() - sent) / 1000); }, reject: reject });
        self._send({ op: "ping" });
      });
    }

    /** Connect again now (e.g. after logging in: the new token is used), keeping every channel. */
    reconnect() {
      this._closing = false;
      this.error = null;
      this._attempt = 0;
      this._generation += 1;
      if (this._timer) { clearTimeout(this._timer); this._timer = null; }
      if (this._ws) {
        var old = this._ws;
        this._detach(old);
        try { old.close(1000, "reconnect"); } catch (err) { /* already closing */ }
      }
      this._open();
    }

    close() {
      this._closing = true;
      this._generation += 1;
      if (this._timer) { clearTimeout(this._timer); this._timer = null; }
      if (this._ws) {
        var old = this._ws;
        this._detach(old);
        try { old.close(1000, "client closed"); } catch (err) { /* already closing */ }
      }
      this._failWaiters(new ScoreboardError(0, "closed", "the live connection was closed"));
      this._setState("closed", { error: this.error });
    }

    // ---- connection ---------------------------------------------------------------------------

    async _open() {
      var self = this, generation = this._generation;
      this._timer = null;
      this._setState(this.connections === 0 ? "connecting" : "reconnecting", { attempt: this._attempt, delay: 0 });
      var token;
      try {
        token = this.tokenProvider ? await this.tokenProvider() : this.token;
      } catch (err) {
        if (generation !== this._generation) return;
        if (err && (err.status === 401 || err.status === 403)) { this._fatal(err); return; }
        this._scheduleReconnect(null);
        return;
      }
      if (this._closing || generation !== this._generation) return;
      var ws;
      try {
        ws = new WebSocket(this.url);
      } catch (err) {
        this._scheduleReconnect(null);
        return;
      }
      this._ws = ws;
      this._gotFrame = false;
      ws.onopen = function () {
        if (token) {
          self._authTimer = setTimeout(function () { try { ws.close(4000, "no answer to auth"); } catch (e) { /* */ } },
                                       10000);
          self._awaitingAuth = true;
          ws.send(JSON.stringify({ op: "auth", token: token }));
        } else {
          self._becomeLive();
        }
      };
      ws.onmessage = function (message) { self._onMessage(message.data); };
      ws.onclose = function (event) { self._onClose(ws, event.code, event.reason); };
      ws.onerror = function () { /* a close event follows */ };
    }

    _becomeLive() {
      this._awaitingAuth = false;
      if (this._authTimer) { clearTimeout(this._authTimer); this._authTimer = null; }
      var self = this;
      this._ready = true;
      this.connections += 1;
      this.channels.forEach(function (_, channel) { self._sendSubscribe(channel); });
      this._setState("live", { url: this.url, connections: this.connections });
    }

    _detach(ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      if (this._ws === ws) this._cleanup();
    }

    _cleanup() {
      this._ws = null;
      this._ready = false;
      this._awaitingAuth = false;
      if (this._authTimer) { clearTimeout(this._authTimer); this._authTimer = null; }
      this._inFlight = [];
      this._confirmed.clear();
      var pings = this._pings;
      this._pings = [];
      pings.forEach(function (p) { p.reject(new ScoreboardError(0, "closed", "connection lost before the pong")); });
    }

    _onClose(ws, code, reason) {
      if (this._ws !== ws) return;
      var gotFrame = this._gotFrame;
      this._cleanup();
      if (this._closing) { this._setState("closed", { error: this.error }); return; }
      if (code === 4001) {
        this._unauthorized += 1;
        if (!this.tokenProvider || this._unauthorized > 1) {
          this._fatal(new ScoreboardError(401, "unauthorized", reason || "the server closed with 4001"));
          return;
        }
      } else if (code === 4003) {
        this._fatal(new ScoreboardError(403, "forbidden", reason || "the server closed with 4003"));
        return;
      } else if (gotFrame) {
        this._unauthorized = 0;
      }
      if (gotFrame) this._attempt = 0;
      this._scheduleReconnect(code);
    }

    _scheduleReconnect(code) {
      var self = this;
      if (this._closing) return;
      var delay = backoffDelay(this._attempt, this.backoff);
      this._attempt += 1;
      this._setState("reconnecting", { attempt: this._attempt, delay: delay, at: Date.now() + delay * 1000,
                                       closeCode: code });
      this._timer = setTimeout(function () { self._open(); }, delay * 1000);
    }

    _fatal(error) {
      this.error = error;
      this._closing = true;
      this._failWaiters(error);
      this._emit("error", error);
      this._setState("closed", { error: error });
    }

    // ---- frames -------------------------------------------------------------------------------

    _onMessage(text) {
      var frame;
      try { frame = JSON.parse(text); } catch (err) { return; }
      if (!frame || typeof frame !== "object") return;
      this._gotFrame = true;
      switch (frame.op) {
        case "authed":
          this.identity = { user_id: frame.user_id, role: frame.role };
          if (this._awaitingAuth) this._becomeLive();
          break;
        case "subscribed": this._onSubscribed(frame); break;
        case "event": this._onEvent(frame); break;
        case "pong": if (this._pings.length) this._pings.shift().resolve(); break;
        case "error": this._onError(frame); break;
        default: break;
      }
    }

    _onEvent(frame) {
      var channel = frame.channel;
      if (!this.channels.has(channel)) return;
      var known = this.positions.get(channel);
      if (known && known.epoch === frame.epoch && typeof frame.offset === "number" && frame.offset <= known.offset) {
        return;  // already seen
      }
      if (typeof frame.offset === "number") this.positions.set(channel, { epoch: frame.epoch, offset: frame.offset });
      this._emit("event", channel, frame.type, frame.data);
      this._dispatch(channel, frame.type, frame.data, false);
    }

    _onSubscribed(frame) {
      var channel = frame.channel;
      if (!this.channels.has(channel)) return;
      var i = this._inFlight.indexOf(channel);
      if (i >= 0) this._inFlight.splice(i, 1);
      this._confirmed.set(channel, frame);
      var known = this.positions.get(channel);
      if (!frame.recovered || !known || known.epoch !== frame.epoch) {
        if (typeof frame.offset === "number") this.positions.set(channel, { epoch: frame.epoch, offset: frame.offset });
      }
      if (!frame.recovered && frame.snapshot !== undefined) {
        this._emit("snapshot", channel, frame.snapshot);
        this._dispatch(channel, "snapshot", frame.snapshot, true);
      }
      var waiters = this._pending.get(channel) || [];
      this._pending.delete(channel);
      waiters.forEach(function (w) { w.resolve(frame); });
    }

    _onError(frame) {
      var error = new ScoreboardError(STATUS_OF_CODE[frame.code] || 0, frame.code, frame.message, frame.reason);
      if (this._awaitingAuth) {
        this._fatal(error);
        try { this._ws && this._ws.close(1000, "auth refused"); } catch (err) { /* */ }
        return;
      }
      var channel = frame.channel || this._inFlight[0];
      if (!channel) { this._emit("error", error); return; }
      var i = this._inFlight.indexOf(channel);
      if (i >= 0) this._inFlight.splice(i, 1);
      this.channels.delete(channel);
      this.positions.delete(channel);
      var waiters = this._pending.get(channel) || [];
      this._pending.delete(channel);
      waiters.forEach(function (w) { w.reject(error); });
      if (!waiters.length) this._emit("error", error);
    }

    _dispatch(channel, type, data, snapshot) {
      this._handlers.slice().forEach(function (entry) {
        var typeMatches = snapshot ? entry[1] === "snapshot" : (entry[1] === type || entry[1] === "*");
        if ((entry[0] === channel || entry[0] === "*") && typeMatches) safely(entry[2], [channel, type, data]);
      });
    }

    _sendSubscribe(channel) {
      var frame = { op: "subscribe", channel: channel };
      var known = this.positions.get(channel);
      if (known) frame.since = { epoch: known.epoch, offset: known.offset };
      this._inFlight.push(channel);
      this._send(frame);
    }

    _send(frame) {
      if (this._ws && this._ws.readyState === 1) this._ws.send(JSON.stringify(frame));
    }

    _emit(name) {
      var callback = this.callbacks[name];
      if (callback) safely(callback, Array.prototype.slice.call(arguments, 1));
    }

    _setState(state, info) {
      if (state === this.state && (state === "closed" || state === "idle")) return;
      this.state = state;
      this._emit("state", state, info || {});
    }

    _failWaiters(error) {
      this._pending.forEach(function (waiters) { waiters.forEach(function (w) { w.reject(error); }); });
      this._pending.clear();
    }
  }

  function safely(callback, args) {
    try {
      var result = callback.apply(null, args);
      if (result && typeof result.catch === "function") result.catch(function (err) { console.error(err); });
    } catch (err) {
      console.error("scoreboard callback failed", err);
    }
  }

  global.Scoreboard = {
    Client: Client,
    Live: Live,
    ScoreboardError: ScoreboardError,
    signBody: signBody,
    backoffDelay: backoffDelay,
    base64urlDecode: base64urlDecode,
    base64urlEncode: base64urlEncode,
    sha256: sha256,
    wsUrl: wsUrl,
    version: 1
  };
})(typeof globalThis !== "undefined" ? globalThis : this);
