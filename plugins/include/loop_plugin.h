// Small helpers for Loop provider plugins written in C, on top of the bindings
// that `cargo xtask plugins` generates for the `plugin` world (plugin.h).
//
// Everything here is header-only and uses no libc I/O, so a plugin that includes it
// still imports nothing but the host's loopcall:provider interfaces. Memory handed to
// the host (return values) must come from malloc: the generated post-return
// functions free it once the host has copied it out.
#ifndef LOOP_PLUGIN_H
#define LOOP_PLUGIN_H

#include "plugin.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef exports_loopcall_provider_provider_provider_error_t lp_error_t;

// Out of memory inside a plugin cannot be reported as a provider error reliably
// (building the error allocates too), so it traps; the host maps a trap to a
// provider failure. abort() is avoided on purpose: some libcs route it through WASI.
static inline void *lp_alloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) __builtin_trap();
  return p;
}

// ---- strings -------------------------------------------------------------

static inline void lp_string_from(plugin_string_t *out, const void *bytes, size_t len) {
  out->ptr = len ? (uint8_t *)lp_alloc(len) : NULL;
  out->len = len;
  if (len) memcpy(out->ptr, bytes, len);
}

static inline void lp_string_cstr(plugin_string_t *out, const char *s) {
  lp_string_from(out, s, strlen(s));
}

static inline bool lp_string_eq(const plugin_string_t *a, const plugin_string_t *b) {
  return a->len == b->len && (a->len == 0 || memcmp(a->ptr, b->ptr, a->len) == 0);
}

static inline bool lp_string_eq_cstr(const plugin_string_t *a, const char *s) {
  size_t n = strlen(s);
  return a->len == n && (n == 0 || memcmp(a->ptr, s, n) == 0);
}

// A growable byte buffer for building tokens, JSON bodies and messages.
typedef struct {
  uint8_t *ptr;
  size_t len;
  size_t cap;
} lp_buf_t;

static inline void lp_buf_reserve(lp_buf_t *b, size_t extra) {
  if (extra > SIZE_MAX - b->len) __builtin_trap();
  size_t need = b->len + extra;
  if (need <= b->cap) return;
  size_t cap = b->cap ? b->cap : 64;
  while (cap < need) cap = cap > SIZE_MAX / 2 ? need : cap * 2;
  uint8_t *p = (uint8_t *)realloc(b->ptr, cap);
  if (!p) __builtin_trap();
  b->ptr = p;
  b->cap = cap;
}

static inline void lp_buf_put(lp_buf_t *b, const void *bytes, size_t len) {
  if (!len) return;
  lp_buf_reserve(b, len);
  memcpy(b->ptr + b->len, bytes, len);
  b->len += len;
}

static inline void lp_buf_str(lp_buf_t *b, const char *s) { lp_buf_put(b, s, strlen(s)); }

static inline void lp_buf_byte(lp_buf_t *b, uint8_t c) { lp_buf_put(b, &c, 1); }

static inline void lp_buf_u64(lp_buf_t *b, uint64_t v) {
  char digits[20];
  size_t n = 0;
  do {
    digits[n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  while (n) lp_buf_byte(b, (uint8_t)digits[--n]);
}

static inline void lp_buf_free(lp_buf_t *b) {
  free(b->ptr);
  b->ptr = NULL;
  b->len = b->cap = 0;
}

// Moves the buffer's bytes into a string the host will take ownership of.
static inline void lp_buf_into_string(lp_buf_t *b, plugin_string_t *out) {
  out->ptr = b->len ? b->ptr : NULL;
  out->len = b->len;
  if (!b->len) free(b->ptr);
  b->ptr = NULL;
  b->len = b->cap = 0;
}

// ---- errors --------------------------------------------------------------

static inline void lp_error(lp_error_t *err, uint8_t tag, const char *message) {
  err->tag = tag;
  // All three variants carry one string at the same place in the union.
  lp_string_cstr(&err->val.misconfigured, message);
}

static inline bool lp_misconfigured(lp_error_t *err, const char *message) {
  lp_error(err, LOOPCALL_PROVIDER_TYPES_PROVIDER_ERROR_MISCONFIGURED, message);
  return false;
}

static inline bool lp_unavailable(lp_error_t *err, const char *message) {
  lp_error(err, LOOPCALL_PROVIDER_TYPES_PROVIDER_ERROR_UNAVAILABLE, message);
  return false;
}

static inline bool lp_rejected(lp_error_t *err, const char *message) {
  lp_error(err, LOOPCALL_PROVIDER_TYPES_PROVIDER_ERROR_REJECTED, message);
  return false;
}

// ---- host imports --------------------------------------------------------

static inline void lp_log(loopcall_provider_log_level_t level, const char *message) {
  plugin_string_t m = {(uint8_t *)message, strlen(message)};
  loopcall_provider_log_log(level, &m);
}

// Reads setting `key`; false when absent. The caller owns `out` afterwards, and
// only when it returns true: for an absent key the generated binding leaves `out`
// undefined, so never free it then.
static inline bool lp_setting(const char *key, plugin_string_t *out) {
  plugin_string_t k = {(uint8_t *)key, strlen(key)};
  return loopcall_provider_settings_get(&k, out);
}

// Reads setting `key` only when it is present and non-empty.
static inline bool lp_setting_nonempty(const char *key, plugin_string_t *out) {
  if (!lp_setting(key, out)) return false;
  if (out->len == 0) {
    plugin_string_free(out);
    return false;
  }
  return true;
}

static inline void lp_hmac_sha256(const uint8_t *key, size_t key_len, const uint8_t *data,
                                  size_t data_len, plugin_list_u8_t *mac) {
  plugin_list_u8_t k = {(uint8_t *)key, key_len};
  plugin_list_u8_t d = {(uint8_t *)data, data_len};
  loopcall_provider_crypto_hmac_sha256(&k, &d, mac);
}

static inline uint64_t lp_now_seconds(void) {
  loopcall_provider_clock_datetime_t now;
  loopcall_provider_clock_now(&now);
  return now.seconds;
}

// ---- encoding ------------------------------------------------------------

// Compares without an early exit, so timing does not reveal how much of a MAC matched.
static inline bool lp_ct_equal(const uint8_t *a, const uint8_t *b, size_t len) {
  volatile uint8_t diff = 0;
  for (size_t i = 0; i < len; i++) diff |= (uint8_t)(a[i] ^ b[i]);
  return diff == 0;
}

static const char LP_B64URL[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

// Unpadded base64url (RFC 4648 §5).
static inline void lp_b64url_encode(lp_buf_t *out, const uint8_t *in, size_t len) {
  size_t i = 0;
  for (; i + 3 <= len; i += 3) {
    uint32_t v = ((uint32_t)in[i] << 16) | ((uint32_t)in[i + 1] << 8) | in[i + 2];
    lp_buf_byte(out, (uint8_t)LP_B64URL[(v >> 18) & 63]);
    lp_buf_byte(out, (uint8_t)LP_B64URL[(v >> 12) & 63]);
    lp_buf_byte(out, (uint8_t)LP_B64URL[(v >> 6) & 63]);
    lp_buf_byte(out, (uint8_t)LP_B64URL[v & 63]);
  }
  if (len - i == 1) {
    uint32_t v = (uint32_t)in[i] << 16;
    lp_buf_byte(out, (uint8_t)LP_B64URL[(v >> 18) & 63]);
    lp_buf_byte(out, (uint8_t)LP_B64URL[(v >> 12) & 63]);
  } else if (len - i == 2) {
    uint32_t v = ((uint32_t)in[i] << 16) | ((uint32_t)in[i + 1] << 8);
    lp_buf_byte(out, (uint8_t)LP_B64URL[(v >> 18) & 63]);
    lp_buf_byte(out, (uint8_t)LP_B64URL[(v >> 12) & 63]);
    lp_buf_byte(out, (uint8_t)LP_B64URL[(v >> 6) & 63]);
  }
}

static inline int lp_b64url_value(uint8_t c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '-') return 62;
  if (c == '_') return 63;
  return -1;
}

// Strict unpadded base64url: only the canonical spelling decodes (unused trailing
// bits must be zero), so two different strings never decode to the same bytes.
static inline bool lp_b64url_decode(lp_buf_t *out, const uint8_t *in, size_t len) {
  if (len % 4 == 1) return false;
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < len; i++) {
    int v = lp_b64url_value(in[i]);
    if (v < 0) return false;
    acc = (acc << 6) | (uint32_t)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      lp_buf_byte(out, (uint8_t)(acc >> bits));
      acc &= (1u << bits) - 1;
    }
  }
  return acc == 0;
}

// Appends `s` as the inside of a JSON string literal.
static inline void lp_json_escape(lp_buf_t *out, const uint8_t *s, size_t len) {
  static const char hex[] = "0123456789abcdef";
  for (size_t i = 0; i < len; i++) {
    uint8_t c = s[i];
    if (c == '"' || c == '\\') {
      lp_buf_byte(out, '\\');
      lp_buf_byte(out, c);
    } else if (c < 0x20) {
      lp_buf_str(out, "\\u00");
      lp_buf_byte(out, (uint8_t)hex[c >> 4]);
      lp_buf_byte(out, (uint8_t)hex[c & 15]);
    } else {
      lp_buf_byte(out, c);
    }
  }
}

// ---- describe ------------------------------------------------------------

// Fills `describe` for a provider that carries both call types and accepts every role.
static inline void lp_describe_all(exports_loopcall_provider_provider_provider_info_t *ret,
                                   const char *name, const char *version, bool verifies_tokens) {
  lp_string_cstr(&ret->name, name);
  lp_string_cstr(&ret->version, version);
  ret->call_types.len = 2;
  ret->call_types.ptr = (loopcall_provider_types_call_type_t *)lp_alloc(2);
  ret->call_types.ptr[0] = LOOPCALL_PROVIDER_TYPES_CALL_TYPE_AUDIO;
  ret->call_types.ptr[1] = LOOPCALL_PROVIDER_TYPES_CALL_TYPE_AUDIO_VIDEO;
  ret->roles.len = 3;
  ret->roles.ptr = (loopcall_provider_types_role_t *)lp_alloc(3);
  ret->roles.ptr[0] = LOOPCALL_PROVIDER_TYPES_ROLE_PUBLISHER;
  ret->roles.ptr[1] = LOOPCALL_PROVIDER_TYPES_ROLE_SUBSCRIBER;
  ret->roles.ptr[2] = LOOPCALL_PROVIDER_TYPES_ROLE_MODERATOR;
  ret->verifies_tokens = verifies_tokens;
}

// WIT strings must be valid UTF-8; bytes from the network are checked before they
// are returned as one (the host refuses a component that lies about a string).
static inline bool lp_utf8_valid(const uint8_t *s, size_t len) {
  size_t i = 0;
  while (i < len) {
    uint8_t c = s[i];
    size_t n;
    uint32_t cp;
    if (c < 0x80) {
      i++;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      n = 1;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      n = 2;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      n = 3;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (len - i <= n) return false;
    for (size_t k = 1; k <= n; k++) {
      if ((s[i + k] & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    // Overlong forms, UTF-16 surrogates and values past U+10FFFF are not UTF-8.
    if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) ||
        cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
      return false;
    i += n + 1;
  }
  return true;
}

#endif
