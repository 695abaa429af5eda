// Helpers for vendor provider plugins (WIT loopcall:provider@0.2.0 and later):
// settings with defaults and per-channel overrides, JWTs signed through the
// host's crypto import, the encodings vendors' REST APIs want, and a small
// reader for the one string or number a plugin needs from a JSON answer.
//
// Header-only, no libc I/O, like loop_plugin.h. Every lp_buf_t handed out must be
// freed by the caller (lp_buf_free) or moved into a host string (lp_buf_into_string).
#ifndef LOOP_VENDOR_H
#define LOOP_VENDOR_H

#include "loop_plugin.h"

#ifndef LOOPCALL_PROVIDER_CRYPTO_SIGNING_ALGORITHM_RS256
#error "loop_vendor.h needs loopcall:provider@0.2.0 or later (crypto.sign)"
#endif

// ---- strings and settings ---------------------------------------------------

// A NUL-terminated copy of a host string, for building keys and messages.
static inline char *lp_cstr(const plugin_string_t *s) {
  char *c = (char *)lp_alloc(s->len + 1);
  if (s->len) memcpy(c, s->ptr, s->len);
  c[s->len] = 0;
  return c;
}

// Settings cannot change during an instance's life (one Loop call: create-session
// and both issue-tokens), and every export reads the same ones, so each key is
// asked of the host once per instance and later reads copy the remembered value:
// a host call costs a boundary crossing and an allocation inside the plugin.
#define LP_REMEMBERED_SETTINGS 32
typedef struct {
  lp_buf_t key;
  bool found;
  plugin_string_t value;
} lp_remembered_setting_t;
static lp_remembered_setting_t lp_remembered[LP_REMEMBERED_SETTINGS];
static size_t lp_remembered_len;

// Reads the setting named by `key` (`len` bytes), through the instance's memory
// of earlier reads. False when absent, with `out` left empty (safe to free:
// the generated settings.get binding leaves it uninitialised for `none`);
// otherwise the caller owns `out`.
static inline bool lp_vendor_setting(const uint8_t *key, size_t len, plugin_string_t *out) {
  for (size_t i = 0; i < lp_remembered_len; i++) {
    lp_remembered_setting_t *r = &lp_remembered[i];
    if (r->key.len != len || memcmp(r->key.ptr, key, len) != 0) continue;
    if (!r->found) {
      *out = (plugin_string_t){0};
      return false;
    }
    lp_string_from(out, r->value.ptr, r->value.len);
    return true;
  }
  plugin_string_t name = {(uint8_t *)key, len};
  plugin_string_t value;
  bool found = loopcall_provider_settings_get(&name, &value);
  if (lp_remembered_len < LP_REMEMBERED_SETTINGS) {
    lp_remembered_setting_t *r = &lp_remembered[lp_remembered_len++];
    r->key = (lp_buf_t){0};
    lp_buf_put(&r->key, key, len);
    r->found = found;
    r->value = (plugin_string_t){0};
    if (found) lp_string_from(&r->value, value.ptr, value.len);
  }
  *out = found ? value : (plugin_string_t){0};
  return found;
}

// lp_setting_nonempty through the instance's memory of earlier reads: false when
// the setting is absent or empty, with `out` left empty (safe to free);
// otherwise the caller owns `out`.
static inline bool lp_vendor_setting_nonempty(const char *key, plugin_string_t *out) {
  if (!lp_vendor_setting((const uint8_t *)key, strlen(key), out)) return false;
  if (out->len == 0) {
    plugin_string_free(out);
    *out = (plugin_string_t){0};
    return false;
  }
  return true;
}

// Reads setting `key`, or `fallback` when it is absent or empty. The caller owns `out`.
static inline void lp_setting_or(const char *key, const char *fallback, plugin_string_t *out) {
  if (!lp_vendor_setting_nonempty(key, out)) lp_string_cstr(out, fallback);
}

// Reads an unsigned integer setting in [min, max]; `fallback` when absent. False
// (and a misconfigured error naming the key) when it is present but not such a number.
static inline bool lp_setting_u64(const char *key, uint64_t fallback, uint64_t min, uint64_t max,
                                  uint64_t *out, lp_error_t *err) {
  plugin_string_t text;
  if (!lp_vendor_setting_nonempty(key, &text)) {
    *out = fallback;
    return true;
  }
  uint64_t v = 0;
  bool ok = text.len <= 19;
  for (size_t i = 0; ok && i < text.len; i++) {
    if (text.ptr[i] < '0' || text.ptr[i] > '9') ok = false;
    else v = v * 10 + (uint64_t)(text.ptr[i] - '0');
  }
  plugin_string_free(&text);
  if (!ok || v < min || v > max) {
    lp_buf_t m = {0};
    lp_buf_str(&m, "setting `");
    lp_buf_str(&m, key);
    lp_buf_str(&m, "` must be a whole number from ");
    lp_buf_u64(&m, min);
    lp_buf_str(&m, " to ");
    lp_buf_u64(&m, max);
    lp_buf_byte(&m, 0);
    lp_misconfigured(err, (const char *)m.ptr);
    lp_buf_free(&m);
    return false;
  }
  *out = v;
  return true;
}

// Reads a boolean setting ("true"/"false"); `fallback` when absent.
static inline bool lp_setting_bool(const char *key, bool fallback, bool *out, lp_error_t *err) {
  plugin_string_t text;
  if (!lp_vendor_setting_nonempty(key, &text)) {
    *out = fallback;
    return true;
  }
  bool t = lp_string_eq_cstr(&text, "true"), f = lp_string_eq_cstr(&text, "false");
  plugin_string_free(&text);
  if (!t && !f) {
    lp_buf_t m = {0};
    lp_buf_str(&m, "setting `");
    lp_buf_str(&m, key);
    lp_buf_str(&m, "` must be true or false");
    lp_buf_byte(&m, 0);
    lp_misconfigured(err, (const char *)m.ptr);
    lp_buf_free(&m);
    return false;
  }
  *out = t;
  return true;
}

// Reads `channels.<channel>.<key>` when the call has a channel and that table sets
// the key, else the top-level `key`. False when neither is set (or both are empty).
static inline bool lp_channel_setting(const plugin_string_t *channel, const char *key,
                                      plugin_string_t *out) {
  if (channel && channel->len) {
    lp_buf_t k = {0};
    lp_buf_str(&k, "channels.");
    lp_buf_put(&k, channel->ptr, channel->len);
    lp_buf_byte(&k, '.');
    lp_buf_str(&k, key);
    bool found = lp_vendor_setting(k.ptr, k.len, out);
    lp_buf_free(&k);
    if (found && out->len) return true;
    if (found) plugin_string_free(out);
  }
  return lp_vendor_setting_nonempty(key, out);
}

// A misconfigured error saying which setting is missing.
static inline bool lp_missing_setting(lp_error_t *err, const char *key) {
  lp_buf_t m = {0};
  lp_buf_str(&m, "setting `");
  lp_buf_str(&m, key);
  lp_buf_str(&m, "` is not set");
  lp_buf_byte(&m, 0);
  lp_misconfigured(err, (const char *)m.ptr);
  lp_buf_free(&m);
  return false;
}

// ---- encodings --------------------------------------------------------------

// Padded standard base64 (RFC 4648 §4), for Basic auth and OpenTok's T1 tokens.
static inline void lp_b64_encode(lp_buf_t *out, const uint8_t *in, size_t len) {
  static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  size_t i = 0;
  for (; i + 3 <= len; i += 3) {
    uint32_t v = ((uint32_t)in[i] << 16) | ((uint32_t)in[i + 1] << 8) | in[i + 2];
    lp_buf_byte(out, (uint8_t)abc[(v >> 18) & 63]);
    lp_buf_byte(out, (uint8_t)abc[(v >> 12) & 63]);
    lp_buf_byte(out, (uint8_t)abc[(v >> 6) & 63]);
    lp_buf_byte(out, (uint8_t)abc[v & 63]);
  }
  if (len - i == 1) {
    uint32_t v = (uint32_t)in[i] << 16;
    lp_buf_byte(out, (uint8_t)abc[(v >> 18) & 63]);
    lp_buf_byte(out, (uint8_t)abc[(v >> 12) & 63]);
    lp_buf_str(out, "==");
  } else if (len - i == 2) {
    uint32_t v = ((uint32_t)in[i] << 16) | ((uint32_t)in[i + 1] << 8);
    lp_buf_byte(out, (uint8_t)abc[(v >> 18) & 63]);
    lp_buf_byte(out, (uint8_t)abc[(v >> 12) & 63]);
    lp_buf_byte(out, (uint8_t)abc[(v >> 6) & 63]);
    lp_buf_byte(out, '=');
  }
}

static inline void lp_hex_encode(lp_buf_t *out, const uint8_t *in, size_t len) {
  static const char hex[] = "0123456789abcdef";
  for (size_t i = 0; i < len; i++) {
    lp_buf_byte(out, (uint8_t)hex[in[i] >> 4]);
    lp_buf_byte(out, (uint8_t)hex[in[i] & 15]);
  }
}

// application/x-www-form-urlencoded, as Python's urllib.parse.urlencode spells it
// (quote_plus: letters, digits and "_.-~" kept, space as "+").
static inline void lp_form_encode(lp_buf_t *out, const uint8_t *s, size_t len) {
  static const char hex[] = "0123456789ABCDEF";
  for (size_t i = 0; i < len; i++) {
    uint8_t c = s[i];
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
        c == '.' || c == '-' || c == '~') {
      lp_buf_byte(out, c);
    } else if (c == ' ') {
      lp_buf_byte(out, '+');
    } else {
      lp_buf_byte(out, '%');
      lp_buf_byte(out, (uint8_t)hex[c >> 4]);
      lp_buf_byte(out, (uint8_t)hex[c & 15]);
    }
  }
}

// `n` random bytes from the host, appended as lowercase hex.
static inline void lp_random_hex(lp_buf_t *out, uint32_t n) {
  plugin_list_u8_t bytes;
  loopcall_provider_crypto_random_bytes(n, &bytes);
  lp_hex_encode(out, bytes.ptr, bytes.len);
  plugin_list_u8_free(&bytes);
}

// A random (version 4) UUID in its canonical lowercase spelling.
static inline void lp_uuid4(lp_buf_t *out) {
  plugin_list_u8_t r;
  loopcall_provider_crypto_random_bytes(16, &r);
  r.ptr[6] = (uint8_t)((r.ptr[6] & 0x0f) | 0x40);
  r.ptr[8] = (uint8_t)((r.ptr[8] & 0x3f) | 0x80);
  for (size_t i = 0; i < 16; i++) {
    if (i == 4 || i == 6 || i == 8 || i == 10) lp_buf_byte(out, '-');
    lp_hex_encode(out, r.ptr + i, 1);
  }
  plugin_list_u8_free(&r);
}

// A random number below 2^53 (exact in every JSON implementation).
static inline uint64_t lp_random_u53(void) {
  plugin_list_u8_t r;
  loopcall_provider_crypto_random_bytes(8, &r);
  uint64_t v = 0;
  for (size_t i = 0; i < 8; i++) v = (v << 8) | r.ptr[i];
  plugin_list_u8_free(&r);
  return v & ((1ull << 53) - 1);
}

// ---- JSON building ----------------------------------------------------------
// Objects are built field by field; `first` tracks whether a comma is needed.

typedef struct {
  lp_buf_t buf;
  bool first;
} lp_json_t;

static inline void lp_json_open(lp_json_t *j) {
  lp_buf_byte(&j->buf, '{');
  j->first = true;
}

static inline void lp_json_close(lp_json_t *j) {
  lp_buf_byte(&j->buf, '}');
  j->first = false;
}

static inline void lp_json_key(lp_json_t *j, const char *key) {
  if (!j->first) lp_buf_byte(&j->buf, ',');
  j->first = false;
  lp_buf_byte(&j->buf, '"');
  lp_json_escape(&j->buf, (const uint8_t *)key, strlen(key));
  lp_buf_str(&j->buf, "\":");
}

static inline void lp_json_str_n(lp_json_t *j, const char *key, const uint8_t *s, size_t len) {
  lp_json_key(j, key);
  lp_buf_byte(&j->buf, '"');
  lp_json_escape(&j->buf, s, len);
  lp_buf_byte(&j->buf, '"');
}

static inline void lp_json_str(lp_json_t *j, const char *key, const plugin_string_t *s) {
  lp_json_str_n(j, key, s->ptr, s->len);
}

static inline void lp_json_cstr(lp_json_t *j, const char *key, const char *s) {
  lp_json_str_n(j, key, (const uint8_t *)s, strlen(s));
}

static inline void lp_json_u64(lp_json_t *j, const char *key, uint64_t v) {
  lp_json_key(j, key);
  lp_buf_u64(&j->buf, v);
}

static inline void lp_json_bool(lp_json_t *j, const char *key, bool v) {
  lp_json_key(j, key);
  lp_buf_str(&j->buf, v ? "true" : "false");
}

// Opens a nested object under `key`; close it with lp_json_close.
static inline void lp_json_object(lp_json_t *j, const char *key) {
  lp_json_key(j, key);
  lp_json_open(j);
}

// Appends already-encoded JSON (`raw`) under `key`.
static inline void lp_json_raw(lp_json_t *j, const char *key, const char *raw) {
  lp_json_key(j, key);
  lp_buf_str(&j->buf, raw);
}

// ---- JWTs -------------------------------------------------------------------

// Appends "<b64url(header)>.<b64url(payload)>" to `out`: the JWS signing input.
static inline void lp_jwt_signing_input(lp_buf_t *out, const lp_buf_t *header,
                                        const lp_buf_t *payload) {
  lp_b64url_encode(out, header->ptr, header->len);
  lp_buf_byte(out, '.');
  lp_b64url_encode(out, payload->ptr, payload->len);
}

// Appends an HS256 JWT of the given header and payload JSON, signed with `key`, to
// `out` (which may already hold a prefix such as "Bearer ": only the JWT is signed).
static inline void lp_jwt_hs256(lp_buf_t *out, const lp_buf_t *header, const lp_buf_t *payload,
                                const uint8_t *key, size_t key_len) {
  size_t start = out->len;
  lp_jwt_signing_input(out, header, payload);
  plugin_list_u8_t mac;
  lp_hmac_sha256(key, key_len, out->ptr + start, out->len - start, &mac);
  lp_buf_byte(out, '.');
  lp_b64url_encode(out, mac.ptr, mac.len);
  plugin_list_u8_free(&mac);
}

// Appends an RS256 or ES256 JWT signed by the host with a PKCS#8 PEM key to `out`
// (only the JWT is signed, not what `out` already holds). False (and a
// misconfigured error naming `key_setting`) when the host refuses the key.
static inline bool lp_jwt_sign(lp_buf_t *out, loopcall_provider_crypto_signing_algorithm_t alg,
                               const plugin_string_t *pem, const char *key_setting,
                               const lp_buf_t *header, const lp_buf_t *payload, lp_error_t *err) {
  size_t start = out->len;
  lp_jwt_signing_input(out, header, payload);
  plugin_list_u8_t data = {out->ptr + start, out->len - start};
  plugin_list_u8_t sig;
  plugin_string_t refused;
  if (!loopcall_provider_crypto_sign(alg, (plugin_string_t *)pem, &data, &sig, &refused)) {
    lp_buf_t m = {0};
    lp_buf_str(&m, "setting `");
    lp_buf_str(&m, key_setting);
    lp_buf_str(&m, "`: ");
    lp_buf_put(&m, refused.ptr, refused.len);
    lp_buf_byte(&m, 0);
    plugin_string_free(&refused);
    lp_misconfigured(err, (const char *)m.ptr);
    lp_buf_free(&m);
    return false;
  }
  lp_buf_byte(out, '.');
  lp_b64url_encode(out, sig.ptr, sig.len);
  plugin_list_u8_free(&sig);
  return true;
}

// ---- HTTP -------------------------------------------------------------------

// A header list of up to 8 entries that points into caller-owned strings.
typedef struct {
  plugin_tuple2_string_string_t items[8];
  size_t len;
} lp_headers_t;

static inline void lp_header(lp_headers_t *h, const char *name, const uint8_t *value,
                             size_t value_len) {
  if (h->len == 8) __builtin_trap();
  h->items[h->len].f0 = (plugin_string_t){(uint8_t *)name, strlen(name)};
  h->items[h->len].f1 = (plugin_string_t){(uint8_t *)value, value_len};
  h->len++;
}

static inline void lp_header_cstr(lp_headers_t *h, const char *name, const char *value) {
  lp_header(h, name, (const uint8_t *)value, strlen(value));
}

// Whether a host HTTP failure is worth retrying (timeouts and transport errors).
static inline bool lp_http_error_retryable(const loopcall_provider_http_http_error_t *e) {
  return e->tag == LOOPCALL_PROVIDER_HTTP_HTTP_ERROR_TIMEOUT ||
         e->tag == LOOPCALL_PROVIDER_HTTP_HTTP_ERROR_TRANSPORT;
}

// ---- JSON reading -----------------------------------------------------------
// Vendors answer with JSON; a plugin needs one or two fields of it. These find the
// first member named `key` at any depth (vendor answers name their fields uniquely)
// and decode its value; they never read past `len`.

static inline size_t lp_json_skip_ws(const uint8_t *s, size_t len, size_t i) {
  while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) i++;
  return i;
}

// Index just past the JSON string starting at s[i] == '"', or 0 when unterminated.
static inline size_t lp_json_skip_string(const uint8_t *s, size_t len, size_t i) {
  for (i++; i < len; i++) {
    if (s[i] == '\\') i++;
    else if (s[i] == '"') return i + 1;
  }
  return 0;
}

// Index of the value of member `key`, or 0 when there is none.
static inline size_t lp_json_find(const uint8_t *s, size_t len, const char *key) {
  size_t key_len = strlen(key);
  for (size_t i = 0; i < len; i++) {
    if (s[i] != '"') continue;
    size_t end = lp_json_skip_string(s, len, i);
    if (!end) return 0;
    size_t after = lp_json_skip_ws(s, len, end);
    bool is_member = after < len && s[after] == ':';
    if (is_member && end - i - 2 == key_len && memcmp(s + i + 1, key, key_len) == 0) {
      size_t v = lp_json_skip_ws(s, len, after + 1);
      return v < len ? v : 0;
    }
    i = end - 1;
  }
  return 0;
}

// The string value of member `key`, unescaped (\uXXXX outside ASCII is refused:
// ids never need it). False when absent or not a plain string.
static inline bool lp_json_get_string(const uint8_t *s, size_t len, const char *key,
                                      plugin_string_t *out) {
  size_t i = lp_json_find(s, len, key);
  if (!i || s[i] != '"') return false;
  lp_buf_t b = {0};
  for (i++; i < len; i++) {
    uint8_t c = s[i];
    if (c == '"') {
      if (!lp_utf8_valid(b.ptr, b.len)) break;
      lp_buf_into_string(&b, out);
      return true;
    }
    if (c != '\\') {
      lp_buf_byte(&b, c);
      continue;
    }
    if (++i >= len) break;
    switch (s[i]) {
      case '"': case '\\': case '/': lp_buf_byte(&b, s[i]); continue;
      case 'n': lp_buf_byte(&b, '\n'); continue;
      case 't': lp_buf_byte(&b, '\t'); continue;
      case 'r': lp_buf_byte(&b, '\r'); continue;
      case 'b': lp_buf_byte(&b, '\b'); continue;
      case 'f': lp_buf_byte(&b, '\f'); continue;
      case 'u': {
        if (i + 4 >= len) break;
        uint32_t v = 0;
        bool ok = true;
        for (size_t k = 1; k <= 4; k++) {
          uint8_t h = s[i + k];
          v <<= 4;
          if (h >= '0' && h <= '9') v |= (uint32_t)(h - '0');
          else if (h >= 'a' && h <= 'f') v |= (uint32_t)(h - 'a' + 10);
          else if (h >= 'A' && h <= 'F') v |= (uint32_t)(h - 'A' + 10);
          else ok = false;
        }
        if (!ok || v >= 0x80) break;
        lp_buf_byte(&b, (uint8_t)v);
        i += 4;
        continue;
      }
      default: break;
    }
    break;
  }
  lp_buf_free(&b);
  return false;
}

// ---- calling a vendor's REST API ---------------------------------------------
// One request to a vendor, retried the same way by every plugin: timeouts,
// transport failures, 429 and 5xx are retried up to `retries` times, then
// `unavailable` (so fallback can serve the call); 401/403 and any other
// refusal are `misconfigured` (Loop builds these requests from settings
// alone, so the deployment has something to fix), and never retried. Every
// message names the API and, where it helps, the settings to check; the
// vendor's own words (the first of its JSON `message`, `msg`, `detail`, `info`, `error`
// or `title`) follow the
// status. Credentials never appear in a message.

typedef struct {
  const char *api;         // "the Daily API": how messages name it
  const char *credentials; // the settings to check on 401/403: "api_key"
  const char *url_setting; // the setting holding the API's address: "api_url"
  uint64_t timeout_ms;
  uint64_t retries;
  const char *auth_header; // "authorization", or a vendor's own header
  // Writes the auth header's value for one attempt (a fresh JWT each time,
  // where a vendor refuses a reused `jti`). False, with `err` set, when it
  // cannot (an unusable key): no attempt is made.
  bool (*authorize)(const void *ctx, lp_buf_t *value, lp_error_t *err);
  const void *ctx;
} lp_vendor_t;

// Appends " (…)" with the vendor's explanation from a JSON error body, if any.
static inline void lp_vendor_words(lp_buf_t *msg, const loopcall_provider_http_response_t *resp) {
  static const char *const keys[] = {"message", "msg", "detail", "info", "error", "title"};
  for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
    plugin_string_t words = {0};
    if (!lp_json_get_string(resp->body.ptr, resp->body.len, keys[k], &words)) continue;
    if (words.len) {
      size_t n = words.len > 200 ? 200 : words.len;
      while (n < words.len && n && (words.ptr[n] & 0xC0) == 0x80) n--;
      lp_buf_str(msg, " (");
      lp_buf_put(msg, words.ptr, n);
      lp_buf_byte(msg, ')');
    }
    plugin_string_free(&words);
    return;
  }
}

// Sends `method url` with `body` (of `content_type`; none when NULL) to do
// `what` ("create the room"). True on 2xx, or on 404 when `ok_404` (a room
// already gone); then, when `resp` is not NULL, it holds the answer and the
// caller frees it. False with `err` set otherwise.
static inline bool lp_vendor_send(const lp_vendor_t *v, loopcall_provider_http_method_t method,
                                  const lp_buf_t *url, const char *content_type,
                                  const lp_buf_t *body, const char *what, bool ok_404,
                                  loopcall_provider_http_response_t *resp, lp_error_t *err) {
  uint8_t tag = LOOPCALL_PROVIDER_TYPES_PROVIDER_ERROR_UNAVAILABLE;
  lp_buf_t msg = {0};
  uint64_t attempts = 0;
  bool ok = false, retry = true;
  while (retry && attempts <= v->retries) {
    if (attempts) {
      // The last attempt's failure, as a warning: the call may still succeed.
      lp_buf_str(&msg, "; retrying");
      plugin_string_t line = {msg.ptr, msg.len};
      loopcall_provider_log_log(LOOPCALL_PROVIDER_LOG_LEVEL_WARN, &line);
    }
    attempts++;
    lp_buf_free(&msg);
    lp_buf_t auth = {0};
    if (v->authorize && !v->authorize(v->ctx, &auth, err)) {
      lp_buf_free(&auth);
      return false;
    }
    lp_headers_t headers = {0};
    if (v->authorize) lp_header(&headers, v->auth_header, auth.ptr, auth.len);
    lp_header_cstr(&headers, "accept", "application/json");
    if (body && content_type) lp_header_cstr(&headers, "content-type", content_type);
    loopcall_provider_http_request_t req = {0};
    req.method = method;
    req.url = (plugin_string_t){url->ptr, url->len};
    req.headers.ptr = headers.items;
    req.headers.len = headers.len;
    if (body) {
      req.body.is_some = true;
      req.body.val = (plugin_list_u8_t){body->ptr, body->len};
    }
    req.timeout_ms.is_some = true;
    req.timeout_ms.val = (uint32_t)v->timeout_ms;

    loopcall_provider_http_response_t answer;
    loopcall_provider_http_http_error_t e;
    bool sent = loopcall_provider_http_send(&req, &answer, &e);
    memset(auth.ptr, 0, auth.len);
    lp_buf_free(&auth);
    if (!sent) {
      retry = lp_http_error_retryable(&e);
      tag = retry ? LOOPCALL_PROVIDER_TYPES_PROVIDER_ERROR_UNAVAILABLE
                  : LOOPCALL_PROVIDER_TYPES_PROVIDER_ERROR_MISCONFIGURED;
      switch (e.tag) {
      case LOOPCALL_PROVIDER_HTTP_HTTP_ERROR_DENIED:
        lp_buf_str(&msg, "the host denied the request to ");
        lp_buf_str(&msg, v->url_setting);
        lp_buf_str(&msg, " (list its origin in allowed_hosts): ");
        lp_buf_put(&msg, e.val.denied.ptr, e.val.denied.len);
        break;
      case LOOPCALL_PROVIDER_HTTP_HTTP_ERROR_TIMEOUT:
        lp_buf_str(&msg, v->api);
        lp_buf_str(&msg, " did not answer in time");
        break;
      case LOOPCALL_PROVIDER_HTTP_HTTP_ERROR_TOO_LARGE:
        tag = LOOPCALL_PROVIDER_TYPES_PROVIDER_ERROR_UNAVAILABLE;
        lp_buf_str(&msg, v->api);
        lp_buf_str(&msg, " answered with more than the host accepts");
        break;
      case LOOPCALL_PROVIDER_HTTP_HTTP_ERROR_TRANSPORT:
        lp_buf_str(&msg, "cannot reach ");
        lp_buf_str(&msg, v->api);
        lp_buf_str(&msg, ": ");
        lp_buf_put(&msg, e.val.transport.ptr, e.val.transport.len);
        break;
      default:
        lp_buf_str(&msg, "invalid request to ");
        lp_buf_str(&msg, v->api);
        lp_buf_str(&msg, " (check ");
        lp_buf_str(&msg, v->url_setting);
        lp_buf_str(&msg, "): ");
        lp_buf_put(&msg, e.val.invalid_request.ptr, e.val.invalid_request.len);
        break;
      }
      loopcall_provider_http_http_error_free(&e);
      continue;
    }
    uint16_t status = answer.status;
    if ((status >= 200 && status <= 299) || (ok_404 && status == 404)) {
      if (resp) *resp = answer;
      else loopcall_provider_http_response_free(&answer);
      ok = true;
      break;
    }
    retry = status == 429 || status >= 500;
    lp_buf_str(&msg, v->api);
    if (status == 401 || status == 403) {
      tag = LOOPCALL_PROVIDER_TYPES_PROVIDER_ERROR_MISCONFIGURED;
      lp_buf_str(&msg, " refused the credentials (check ");
      lp_buf_str(&msg, v->credentials);
      lp_buf_str(&msg, ") to ");
    } else if (retry) {
      tag = LOOPCALL_PROVIDER_TYPES_PROVIDER_ERROR_UNAVAILABLE;
      lp_buf_str(&msg, " is unavailable to ");
    } else {
      tag = LOOPCALL_PROVIDER_TYPES_PROVIDER_ERROR_MISCONFIGURED;
      lp_buf_str(&msg, " refused to ");
    }
    lp_buf_str(&msg, what);
    lp_buf_str(&msg, ": HTTP ");
    lp_buf_u64(&msg, status);
    lp_vendor_words(&msg, &answer);
    loopcall_provider_http_response_free(&answer);
  }
  if (ok) {
    lp_buf_free(&msg);
    return true;
  }
  if (retry && attempts > 1) {
    lp_buf_str(&msg, " (after ");
    lp_buf_u64(&msg, attempts);
    lp_buf_str(&msg, " attempts)");
  }
  err->tag = tag;
  lp_buf_into_string(&msg, &err->val.unavailable);
  return false;
}

// ---- what several vendors share -----------------------------------------------

// The WIT role's name, which is also how OpenTok and Vonage Video spell it.
static inline const char *lp_role_name(loopcall_provider_types_role_t role) {
  switch (role) {
  case LOOPCALL_PROVIDER_TYPES_ROLE_PUBLISHER: return "publisher";
  case LOOPCALL_PROVIDER_TYPES_ROLE_SUBSCRIBER: return "subscriber";
  default: return "moderator";
  }
}

// Characters (not bytes) in valid UTF-8, for vendors that bound text in characters.
static inline size_t lp_utf8_chars(const uint8_t *s, size_t len) {
  size_t n = 0;
  for (size_t i = 0; i < len; i++) n += (s[i] & 0xC0) != 0x80;
  return n;
}

// The `verify-token` export of a provider whose tokens only its vendor checks
// (the host's signaling relay never sees them): every token is rejected, `why`.
#define LP_EXPORT_VERIFY_TOKEN_REJECTS(why)                                             \
  bool exports_loopcall_provider_provider_verify_token(                                 \
      plugin_string_t *token, plugin_string_t *session_id,                              \
      exports_loopcall_provider_provider_grant_t *ret, lp_error_t *err) {               \
    (void)ret;                                                                          \
    plugin_string_free(token);                                                          \
    plugin_string_free(session_id);                                                     \
    return lp_rejected(err, why);                                                       \
  }

// The `end-session` export of a provider whose sessions need no closing (they
// cost nothing once nobody is connected).
#define LP_EXPORT_END_SESSION_NOTHING_TO_CLOSE()                                        \
  bool exports_loopcall_provider_provider_end_session(                                  \
      plugin_string_t *session_id, plugin_string_t *maybe_channel, lp_error_t *err) {   \
    (void)err;                                                                          \
    plugin_string_free(session_id);                                                     \
    if (maybe_channel) plugin_string_free(maybe_channel);                               \
    return true;                                                                        \
  }

#endif
