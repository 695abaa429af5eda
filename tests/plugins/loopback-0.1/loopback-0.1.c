// loopback: Loop's self-hosted provider. It needs no vendor account: session ids
// are random, and tokens are HMAC-signed grants that the host checks through
// `verify-token` when it serves the call's signaling itself.
//
// Settings ([plugins.loopback.settings]):
//   secret   token-signing key, at least 16 bytes. Left unset in config.toml, the
//            host generates one in its data directory (generated_secrets = ["secret"]).
//   api_key  what clients receive as `apiKey`; "loopback" when unset.
//
// Token format, all ASCII:  v1.<payload>.<mac>
//   payload = base64url(role:u8 | expires_at:u64 BE | len:u16 BE | session id
//                       | len:u16 BE | identity)
//   mac     = base64url(HMAC-SHA256(secret, "v1." payload))
// Length prefixes keep the fields unambiguous whatever bytes an identity holds, and
// the MAC covers the version so a later format cannot be confused with this one.

#include "loop_plugin.h"

#define TOKEN_VERSION "v1."
#define SESSION_ID_RANDOM_BYTES 18 // 144 bits; 24 base64url characters
#define MIN_SECRET_BYTES 16
#define MAX_SESSION_ID_BYTES 256
#define MAX_IDENTITY_BYTES 1024
#define MAX_DISPLAY_NAME_BYTES 1024
#define MAX_LIFETIME_SECONDS (30u * 24 * 3600)
#define MAC_BYTES 32
// Version, both fields at their maximum, the MAC and separators, base64url-encoded.
#define MAX_TOKEN_BYTES 2048

void exports_loopcall_provider_provider_describe(exports_loopcall_provider_provider_provider_info_t *ret) {
  lp_describe_all(ret, "loopback", "0.1.0", true);
}

bool exports_loopcall_provider_provider_create_session(
    exports_loopcall_provider_provider_session_request_t *request,
    exports_loopcall_provider_provider_session_t *ret, lp_error_t *err) {
  exports_loopcall_provider_provider_session_request_free(request);

  plugin_list_u8_t random;
  loopcall_provider_crypto_random_bytes(SESSION_ID_RANDOM_BYTES, &random);
  if (random.len != SESSION_ID_RANDOM_BYTES) {
    plugin_list_u8_free(&random);
    return lp_unavailable(err, "the host returned too few random bytes");
  }
  lp_buf_t id = {0};
  lp_b64url_encode(&id, random.ptr, random.len);
  plugin_list_u8_free(&random);
  lp_buf_into_string(&id, &ret->session_id);

  if (!lp_setting_nonempty("api_key", &ret->api_key)) lp_string_cstr(&ret->api_key, "loopback");
  return true;
}

// Loads the signing key, or explains to the operator what is wrong with it.
static bool load_secret(plugin_string_t *secret, lp_error_t *err) {
  if (!lp_setting_nonempty("secret", secret))
    return lp_misconfigured(err, "setting `secret` is not set (list it in generated_secrets "
                                 "or set [plugins.loopback.settings] secret)");
  if (secret->len < MIN_SECRET_BYTES) {
    plugin_string_free(secret);
    return lp_misconfigured(err, "setting `secret` must be at least 16 bytes");
  }
  return true;
}

static void put_u16(lp_buf_t *b, size_t v) {
  lp_buf_byte(b, (uint8_t)(v >> 8));
  lp_buf_byte(b, (uint8_t)v);
}

// The MAC over `v1.<payload>` as base64url, appended to `out`.
static void append_mac(lp_buf_t *out, const plugin_string_t *secret, const uint8_t *signed_part,
                       size_t len) {
  plugin_list_u8_t mac;
  lp_hmac_sha256(secret->ptr, secret->len, signed_part, len, &mac);
  lp_b64url_encode(out, mac.ptr, mac.len);
  plugin_list_u8_free(&mac);
}

bool exports_loopcall_provider_provider_issue_token(
    exports_loopcall_provider_provider_token_request_t *request, plugin_string_t *ret,
    lp_error_t *err) {
  bool ok = false;
  plugin_string_t secret = {0};
  lp_buf_t payload = {0};
  lp_buf_t token = {0};

  if (request->session_id.len == 0) {
    lp_rejected(err, "session id is empty");
    goto done;
  }
  if (request->session_id.len > MAX_SESSION_ID_BYTES) {
    lp_rejected(err, "session id is longer than 256 bytes");
    goto done;
  }
  if (request->identity.len > MAX_IDENTITY_BYTES) {
    lp_rejected(err, "identity is longer than 1024 bytes");
    goto done;
  }
  if (request->display_name.len > MAX_DISPLAY_NAME_BYTES) {
    lp_rejected(err, "display name is longer than 1024 bytes");
    goto done;
  }
  if (request->lifetime_seconds == 0) {
    lp_rejected(err, "token lifetime must be at least one second");
    goto done;
  }
  if (request->lifetime_seconds > MAX_LIFETIME_SECONDS) {
    lp_rejected(err, "token lifetime is longer than 30 days");
    goto done;
  }
  if (!load_secret(&secret, err)) goto done;

  uint64_t expires_at = lp_now_seconds() + request->lifetime_seconds;
  lp_buf_byte(&payload, request->role);
  for (int shift = 56; shift >= 0; shift -= 8) lp_buf_byte(&payload, (uint8_t)(expires_at >> shift));
  put_u16(&payload, request->session_id.len);
  lp_buf_put(&payload, request->session_id.ptr, request->session_id.len);
  put_u16(&payload, request->identity.len);
  lp_buf_put(&payload, request->identity.ptr, request->identity.len);

  lp_buf_str(&token, TOKEN_VERSION);
  lp_b64url_encode(&token, payload.ptr, payload.len);
  size_t signed_len = token.len;
  lp_buf_byte(&token, '.');
  append_mac(&token, &secret, token.ptr, signed_len);

  lp_buf_into_string(&token, ret);
  ok = true;

done:
  if (secret.ptr) plugin_string_free(&secret);
  lp_buf_free(&payload);
  lp_buf_free(&token);
  exports_loopcall_provider_provider_token_request_free(request);
  return ok;
}

static uint64_t read_u64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v = (v << 8) | p[i];
  return v;
}

// Splits `v1.<payload>.<mac>` and decodes both parts; false on any malformation.
static bool split_token(const plugin_string_t *token, size_t *signed_len, lp_buf_t *payload,
                        lp_buf_t *mac) {
  const size_t vlen = sizeof(TOKEN_VERSION) - 1;
  if (token->len > MAX_TOKEN_BYTES || token->len < vlen ||
      memcmp(token->ptr, TOKEN_VERSION, vlen) != 0)
    return false;
  const uint8_t *rest = token->ptr + vlen;
  size_t rest_len = token->len - vlen;
  const uint8_t *dot = memchr(rest, '.', rest_len);
  if (!dot) return false;
  size_t payload_len = (size_t)(dot - rest);
  *signed_len = vlen + payload_len;
  return lp_b64url_decode(payload, rest, payload_len) &&
         lp_b64url_decode(mac, dot + 1, rest_len - payload_len - 1) && mac->len == MAC_BYTES;
}

bool exports_loopcall_provider_provider_verify_token(plugin_string_t *token,
                                                 plugin_string_t *session_id,
                                                 exports_loopcall_provider_provider_grant_t *ret,
                                                 lp_error_t *err) {
  bool ok = false;
  plugin_string_t secret = {0};
  lp_buf_t payload = {0};
  lp_buf_t mac = {0};
  size_t signed_len = 0;

  if (!split_token(token, &signed_len, &payload, &mac)) {
    lp_rejected(err, "malformed");
    goto done;
  }
  if (!load_secret(&secret, err)) goto done;
  plugin_list_u8_t want;
  lp_hmac_sha256(secret.ptr, secret.len, token->ptr, signed_len, &want);
  bool mac_ok = want.len == MAC_BYTES && lp_ct_equal(want.ptr, mac.ptr, MAC_BYTES);
  plugin_list_u8_free(&want);
  if (!mac_ok) {
    lp_rejected(err, "bad signature");
    goto done;
  }

  // Signed by us, but still parsed defensively: a key shared with another
  // deployment or a future format must not make this read out of bounds.
  const uint8_t *p = payload.ptr;
  size_t n = payload.len;
  if (n < 1 + 8 + 2 || p[0] > LOOPCALL_PROVIDER_TYPES_ROLE_MODERATOR) {
    lp_rejected(err, "malformed");
    goto done;
  }
  uint8_t role = p[0];
  uint64_t expires_at = read_u64(p + 1);
  size_t sid_len = ((size_t)p[9] << 8) | p[10];
  if (n < 11 + sid_len + 2) {
    lp_rejected(err, "malformed");
    goto done;
  }
  const uint8_t *sid = p + 11;
  size_t id_len = ((size_t)sid[sid_len] << 8) | sid[sid_len + 1];
  const uint8_t *identity = sid + sid_len + 2;
  if (n != 11 + sid_len + 2 + id_len) {
    lp_rejected(err, "malformed");
    goto done;
  }
  if (sid_len != session_id->len || memcmp(sid, session_id->ptr, sid_len) != 0) {
    lp_rejected(err, "wrong session");
    goto done;
  }
  if (lp_now_seconds() > expires_at) {
    lp_rejected(err, "expired");
    goto done;
  }

  lp_string_from(&ret->session_id, sid, sid_len);
  ret->role = role;
  lp_string_from(&ret->identity, identity, id_len);
  ret->expires_at = expires_at;
  ok = true;

done:
  if (secret.ptr) plugin_string_free(&secret);
  lp_buf_free(&payload);
  lp_buf_free(&mac);
  plugin_string_free(token);
  plugin_string_free(session_id);
  return ok;
}
