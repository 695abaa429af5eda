// jitsi (JavaScript): Jitsi Meet rooms for Loop calls on a self-hosted Jitsi
// Meet with prosody's token authentication, HS256-signed with the app secret.
//
// A port of the C plugin plugins/jitsi/jitsi.c, issuing byte-for-byte the
// same tokens for the same settings and requests. Only the self-hosted variant
// is here: Jitsi as a Service (8x8 JaaS, RS256 with `kid` and `private_key`)
// is refused as `misconfigured` (see README.md).
//
// Jitsi has no room API to call: a room exists while someone is in it, and a
// token names the room it opens. create-session picks a fresh room name and
// end-session has nothing to close.
//
// One call's create-session and both issue-tokens run in one fresh instance
// (the host's setup_call), and nothing else does: the session request's
// `callee` is kept in module state between them, so the callee's token is the
// moderator's. A token issued in any other instance is a participant's.
//
// Everything the plugin needs from outside comes through the world's imports:
// randomness from `crypto.random-bytes`, the MAC from `crypto.hmac-sha256`,
// time from `clock.now`. The JS engine's own `crypto`, `Date` and
// `Math.random` are not used, so the component is built with no WASI at all
// (build.sh: every WASI import stubbed out).
//
// Built by `jco componentize --backend qjs` (QuickJS-NG through
// componentize-qjs; build.sh), and also runs as written on jco's other engine,
// StarlingMonkey (`build.sh --engine starlingmonkey`). How both map the WIT
// world, and where they differ:
// - the exported interface `provider` is the exported object `provider`, its
//   functions camelCased (`create-session` is `createSession`);
// - records are objects with camelCased fields, enums are their WIT names as
//   strings, variants are `{ tag, val }`, `list<u8>` is a Uint8Array;
// - `option<T>` is T or, for none, null (QuickJS) or undefined
//   (StarlingMonkey); `u64` is a number (QuickJS) or a BigInt
//   (StarlingMonkey), so the plugin converts with BigInt() where it counts;
// - a `result<T, E>` export returns T for `ok` and throws for `err`: the
//   thrown value is the error variant (here a `provider-error`).

import { hmacSha256, randomBytes } from 'loopcall:provider/crypto@0.2.0';
import { now } from 'loopcall:provider/clock@0.2.0';
import { get as getSetting } from 'loopcall:provider/settings@0.2.0';

const PLUGIN_VERSION = '0.1.0';
const MAX_LIFETIME_SECONDS = 86400;
// Tokens are valid from a little before they are made, for servers whose
// clocks run slightly behind ours.
const NBF_SKEW_SECONDS = 10n;
const ROOM_RANDOM_BYTES = 16; // "loop-" + 32 hex digits
const MAX_ROOM_NAME_BYTES = 128;
const MAX_FIELD_BYTES = 1024;

// UTF-8 bytes of a string, as TextEncoder gives them (a lone surrogate
// becomes U+FFFD). QuickJS-NG has no TextEncoder; WIT strings are always
// well-formed, so the replacement never happens with what the host sends.
const utf8 = {
  encode(s) {
    const out = [];
    for (const ch of s) {
      let c = ch.codePointAt(0);
      if (c >= 0xd800 && c <= 0xdfff) c = 0xfffd;
      if (c < 0x80) out.push(c);
      else if (c < 0x800) out.push(0xc0 | (c >> 6), 0x80 | (c & 63));
      else if (c < 0x10000) out.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
      else {
        out.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 63), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
      }
    }
    return new Uint8Array(out);
  },
};

// ---- errors ------------------------------------------------------------------

// Thrown from an export, a `provider-error` value becomes the `err` of its
// result. Plain objects, not Error instances: an uncaught Error is a bug, not
// an error value, and the engine traps on it, which the host treats as a
// broken plugin.
const misconfigured = (message) => ({ tag: 'misconfigured', val: message });
const rejected = (message) => ({ tag: 'rejected', val: message });
const missingSetting = (key) => misconfigured(`setting \`${key}\` is not set`);

// ---- settings ----------------------------------------------------------------

// Settings cannot change during an instance's life (one Loop call), and every
// export reads the same ones, so each key is asked of the host once: a host
// call crosses the component boundary and copies the string in.
const remembered = new Map();

// The setting `key`, or undefined when it is absent or empty (as the C
// plugin's lp_vendor_setting_nonempty: an empty value is an unset one).
function setting(key) {
  if (!remembered.has(key)) remembered.set(key, getSetting(key));
  const value = remembered.get(key);
  return value ? value : undefined;
}

// The host of an http(s) URL (no user info, no port), or undefined when `url`
// is not one. The same byte-level reading as the C plugin's url_host, so both
// plugins take the same default `domain` from the same `base_url`.
function urlHost(url) {
  let start;
  if (url.length > 8 && url.startsWith('https://')) start = 8;
  else if (url.length > 7 && url.startsWith('http://')) start = 7;
  else return undefined;
  let end = start;
  while (end < url.length && !'/?#'.includes(url[end])) end++;
  const at = url.lastIndexOf('@', end - 1);
  if (at >= start) start = at + 1;
  let stop = url.indexOf(':', start);
  if (stop < 0 || stop > end) stop = end;
  return stop > start ? url.slice(start, stop) : undefined;
}

// The self-hosted account from the settings; throws `misconfigured` naming
// the setting to fix, in the C plugin's order and words.
function loadAccount() {
  let baseUrl = setting('base_url');
  if (baseUrl === undefined) throw missingSetting('base_url');
  baseUrl = baseUrl.replace(/\/+$/, '');
  const host = urlHost(baseUrl);
  if (host === undefined) {
    throw misconfigured(
      'setting `base_url` must be an http(s) URL, ' +
        'e.g. "https://meet.example.com" or "https://8x8.vc"',
    );
  }
  const appId = setting('app_id');
  if (appId === undefined) throw missingSetting('app_id');
  const domain = setting('domain') ?? host;

  // JaaS needs RS256 through `crypto.sign`; this port does not carry it, and
  // signing HS256 while the operator set up a JaaS key would only fail later,
  // at the Jitsi server, with a less useful message.
  if (setting('kid') !== undefined || setting('private_key') !== undefined) {
    throw misconfigured(
      'settings `kid` and `private_key` (Jitsi as a Service) are not supported by ' +
        'this plugin: set `app_secret` (self-hosted Jitsi Meet), or use plugins/jitsi',
    );
  }
  const appSecret = setting('app_secret');
  if (appSecret === undefined) throw missingSetting('app_secret');
  return { baseUrl, appId, domain, appSecret };
}

// ---- encodings -----------------------------------------------------------------

const HEX = '0123456789abcdef';
const B64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

function hex(bytes) {
  let out = '';
  for (const b of bytes) out += HEX[b >> 4] + HEX[b & 15];
  return out;
}

// Unpadded base64url (RFC 4648 §5), as JWS wants it.
function base64url(bytes) {
  let out = '';
  let i = 0;
  for (; i + 3 <= bytes.length; i += 3) {
    const v = (bytes[i] << 16) | (bytes[i + 1] << 8) | bytes[i + 2];
    out += B64URL[(v >> 18) & 63] + B64URL[(v >> 12) & 63] + B64URL[(v >> 6) & 63] + B64URL[v & 63];
  }
  const rest = bytes.length - i;
  if (rest > 0) {
    const v = (bytes[i] << 16) | (rest === 2 ? bytes[i + 1] << 8 : 0);
    out += B64URL[(v >> 18) & 63] + B64URL[(v >> 12) & 63];
    if (rest === 2) out += B64URL[(v >> 6) & 63];
  }
  return out;
}

// A JSON string literal escaped exactly as the C plugins' lp_json_escape does
// it (only `"`, `\` and control characters, the latter as \u00xx), not as
// JSON.stringify does (\n, \t, ...): both are valid JSON, but the two plugins
// are meant to sign the very same bytes.
function jsonString(s) {
  let out = '"';
  for (const c of s) {
    const code = c.charCodeAt(0);
    if (c === '"' || c === '\\') out += '\\' + c;
    else if (code < 0x20) out += '\\u00' + HEX[code >> 4] + HEX[code & 15];
    else out += c;
  }
  return out + '"';
}

// A JSON object from [key, value] pairs in the order given (the C plugin's
// member order): strings are quoted, BigInts and booleans written as they
// are, and nested pair lists become nested objects.
function jsonObject(members) {
  const fields = members.map(([key, value]) => {
    let v;
    if (typeof value === 'string') v = jsonString(value);
    else if (Array.isArray(value)) v = jsonObject(value);
    else v = String(value); // bigint or boolean
    return `${jsonString(key)}:${v}`;
  });
  return `{${fields.join(',')}}`;
}

// An HS256 JWT of `header` and `claims` (JSON text), its MAC computed by the
// host: the plugin carries no crypto code.
function jwtHs256(header, claims, secret) {
  const input = `${base64url(utf8.encode(header))}.${base64url(utf8.encode(claims))}`;
  const mac = hmacSha256(utf8.encode(secret), utf8.encode(input));
  return `${input}.${base64url(mac)}`;
}

// ---- one call's state -------------------------------------------------------------

// Set by create-session, read by the issue-tokens of the same instance.
let session = null; // { room, callee }

// A room name this plugin could have made: ASCII only, so its length in
// UTF-16 units is its length in bytes.
const validRoom = (s) => s.length <= MAX_ROOM_NAME_BYTES && /^[a-z0-9_-]+$/.test(s);

// ---- exports --------------------------------------------------------------------------

function describe() {
  return {
    name: 'jitsi',
    version: PLUGIN_VERSION,
    callTypes: ['audio', 'audio-video'],
    roles: ['publisher', 'subscriber', 'moderator'],
    // Jitsi tokens are checked by the Jitsi deployment, never by Loop.
    verifiesTokens: false,
  };
}

function createSession(request) {
  const account = loadAccount();
  const room = `loop-${hex(randomBytes(ROOM_RANDOM_BYTES))}`;
  session = { room, callee: request.callee };
  return { sessionId: room, apiKey: account.baseUrl };
}

function issueToken(request) {
  if (!validRoom(request.sessionId)) {
    throw rejected('session id is not a Jitsi room name of this plugin');
  }
  // Bytes, as the host and the C plugin count them, not UTF-16 code units.
  if (
    utf8.encode(request.identity).length > MAX_FIELD_BYTES ||
    utf8.encode(request.displayName).length > MAX_FIELD_BYTES
  ) {
    throw rejected('identity and display name must be at most 1024 bytes');
  }
  if (request.lifetimeSeconds === 0) {
    throw rejected('token lifetime must be at least 1 second');
  }
  const account = loadAccount();

  const moderator =
    session !== null && request.sessionId === session.room && request.identity === session.callee;

  // `clock.now` gives a u64 (a number or a BigInt, by engine): as a BigInt,
  // the claims stay exact integers.
  const issuedAt = BigInt(now().seconds);
  const lifetime = BigInt(Math.min(request.lifetimeSeconds, MAX_LIFETIME_SECONDS));

  const header = jsonObject([
    ['alg', 'HS256'],
    ['typ', 'JWT'],
  ]);
  const claims = jsonObject([
    ['iss', account.appId],
    ['aud', 'jitsi'],
    ['sub', account.domain],
    ['room', request.sessionId],
    ['exp', issuedAt + lifetime],
    ['nbf', issuedAt > NBF_SKEW_SECONDS ? issuedAt - NBF_SKEW_SECONDS : 0n],
    [
      'context',
      [
        [
          'user',
          [
            ['id', request.identity],
            ['name', request.displayName],
            // prosody's token plugins (token_affiliation, token_moderation)
            // take a JSON boolean.
            ['moderator', moderator],
          ],
        ],
      ],
    ],
  ]);
  return jwtHs256(header, claims, account.appSecret);
}

function verifyToken(_token, _sessionId) {
  throw rejected('Jitsi tokens are checked by the Jitsi deployment');
}

// Jitsi rooms end when their last participant leaves: nothing to close.
function endSession(_sessionId, _channel) {}

export const provider = { describe, createSession, issueToken, verifyToken, endSession };
