// Hawk request signing with WebCrypto, for Bob's device session.
//
// The session token (hex, from the Hawk-Session-Token header of
// POST /registration) gives the credentials through HKDF-SHA256 (no salt,
// info "identity.mozilla.com/picl/v1/sessionToken"): the id is the hex of
// bytes 0..32, the key the hex of bytes 32..64, used as that ASCII string.
"use strict";

const encoder = new TextEncoder();
const INFO = "identity.mozilla.com/picl/v1/sessionToken";
const OFFSET_KEY = "loop.clockOffset";

function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function fromHex(text) {
  if (!/^([0-9a-f]{2})+$/i.test(text)) {
    throw new Error("not hex");
  }
  const bytes = new Uint8Array(text.length / 2);
  for (let i = 0; i < bytes.length; i++) {
    bytes[i] = parseInt(text.substr(i * 2, 2), 16);
  }
  return bytes;
}

function base64(buffer) {
  let text = "";
  for (const b of new Uint8Array(buffer)) {
    text += String.fromCharCode(b);
  }
  return btoa(text);
}

async function sha256Base64(text) {
  return base64(await crypto.subtle.digest("SHA-256", encoder.encode(text)));
}

// Hawk hashes the media type only: lower case, parameters dropped.
function mediaType(contentType) {
  return (contentType || "").split(";")[0].trim().toLowerCase();
}

// Seconds to add to the local clock to get the server's.
function clockOffset() {
  const stored = Number(localStorage.getItem(OFFSET_KEY));
  return Number.isFinite(stored) ? stored : 0;
}

export class HawkSession {
  constructor(id, key) {
    this.id = id;
    this.key = key;
  }

  static async fromToken(tokenHex) {
    const ikm = await crypto.subtle.importKey("raw", fromHex(tokenHex), "HKDF", false, [
      "deriveBits",
    ]);
    const bits = await crypto.subtle.deriveBits(
      { name: "HKDF", hash: "SHA-256", salt: new Uint8Array(0), info: encoder.encode(INFO) },
      ikm,
      64 * 8,
    );
    const bytes = new Uint8Array(bits);
    const key = await crypto.subtle.importKey(
      "raw",
      encoder.encode(hex(bytes.slice(32, 64))),
      { name: "HMAC", hash: "SHA-256" },
      false,
      ["sign"],
    );
    return new HawkSession(hex(bytes.slice(0, 32)), key);
  }

  // The Authorization header for one request.
  async header(method, url, contentType, body) {
    const ts = String(Math.floor(Date.now() / 1000) + clockOffset());
    const nonce = hex(crypto.getRandomValues(new Uint8Array(8)));
    const port = url.port || (url.protocol === "https:" ? "443" : "80");
    let hash = "";
    if (body !== undefined && body !== null) {
      hash = await sha256Base64(`hawk.1.payload\n${mediaType(contentType)}\n${body}\n`);
    }
    const normalized =
      `hawk.1.header\n${ts}\n${nonce}\n${method.toUpperCase()}\n` +
      `${url.pathname}${url.search}\n${url.hostname.toLowerCase()}\n${port}\n${hash}\n\n`;
    const mac = base64(await crypto.subtle.sign("HMAC", this.key, encoder.encode(normalized)));
    const hashPart = hash ? `, hash="${hash}"` : "";
    return `Hawk id="${this.id}", ts="${ts}", nonce="${nonce}"${hashPart}, mac="${mac}"`;
  }

  // fetch() signed with Hawk. `path` is relative to the page; a JSON body is
  // given as `json`. A stale timestamp corrects the clock from the server's
  // Timestamp header and the request is retried once.
  async fetch(path, { method = "GET", json, headers = {}, signal } = {}) {
    const url = new URL(path, document.baseURI);
    const body = json === undefined ? undefined : JSON.stringify(json);
    const contentType = body === undefined ? undefined : "application/json";
    for (let attempt = 0; ; attempt++) {
      const all = { Accept: "application/json", ...headers };
      if (contentType) {
        all["Content-Type"] = contentType;
      }
      all.Authorization = await this.header(method, url, contentType, body);
      const response = await fetch(url, { method, headers: all, body, signal, cache: "no-store" });
      if (response.status === 401 && attempt === 0 && correctClock(response)) {
        continue;
      }
      return response;
    }
  }
}

// True if the answer says our timestamp is stale; then the offset is set
// from the server's clock.
function correctClock(response) {
  const challenge = response.headers.get("WWW-Authenticate") || "";
  const serverTime = Number(response.headers.get("Timestamp"));
  if (!/stale timestamp/i.test(challenge) || !Number.isFinite(serverTime) || serverTime <= 0) {
    return false;
  }
  const offset = serverTime - Math.floor(Date.now() / 1000);
  localStorage.setItem(OFFSET_KEY, String(offset));
  return true;
}
