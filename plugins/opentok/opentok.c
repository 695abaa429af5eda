// opentok: TokBox OpenTok, the provider of the original Loop.
//
// Sessions come from the OpenTok REST API (POST {api_url}/session/create,
// authenticated by an HS256 project JWT in X-OPENTOK-AUTH); client tokens are
// made locally, as the opentok server SDKs make them: "T1==" tokens (HMAC-SHA1)
// by default, or HS256 JWTs with token_format = "jwt". Settings, requests and
// token formats are described in README.md next to this file.

#include "loop_vendor.h"

#define DEFAULT_API_URL "https://api.opentok.com"
#define DEFAULT_TIMEOUT_MS 2000
#define MAX_TIMEOUT_MS 60000
#define DEFAULT_RETRIES 3
#define MAX_RETRIES 10
// The project JWT in X-OPENTOK-AUTH: OpenTok accepts at most 5 minutes; the
// SDKs use 3.
#define AUTH_JWT_SECONDS 180
// OpenTok tokens live at most 30 days.
#define MAX_TOKEN_SECONDS (30u * 24 * 3600)
// OpenTok session ids are up to 255 characters; leave room for a longer form.
#define MAX_SESSION_ID_BYTES 512
// The SDKs refuse connection data over 1000 characters.
#define MAX_CONNECTION_DATA_CHARS 1000
#define MAX_NONCE 999999

void exports_loopcall_provider_provider_describe(exports_loopcall_provider_provider_provider_info_t *ret) {
  lp_describe_all(ret, "opentok", "1.0.0", false);
}

// ---- settings -----------------------------------------------------------------

// Reads a setting that is one of two words, `a` (the default) or `b`; *is_b
// tells which. Anything else is misconfigured.
static bool setting_choice(const char *key, const char *a, const char *b, bool *is_b,
                           lp_error_t *err) {
  plugin_string_t text;
  if (!lp_vendor_setting_nonempty(key, &text)) {
    *is_b = false;
    return true;
  }
  bool is_a = lp_string_eq_cstr(&text, a);
  *is_b = lp_string_eq_cstr(&text, b);
  plugin_string_free(&text);
  if (is_a || *is_b) return true;
  lp_buf_t m = {0};
  lp_buf_str(&m, "setting `");
  lp_buf_str(&m, key);
  lp_buf_str(&m, "` must be \"");
  lp_buf_str(&m, a);
  lp_buf_str(&m, "\" or \"");
  lp_buf_str(&m, b);
  lp_buf_str(&m, "\"");
  lp_buf_byte(&m, 0);
  lp_misconfigured(err, (const char *)m.ptr);
  lp_buf_free(&m);
  return false;
}

// The credentials of one call: the channel's table when it sets them, else the
// top-level ones (lp_channel_setting, key by key).
typedef struct {
  plugin_string_t api_key, api_secret;
} credentials_t;

static void credentials_free(credentials_t *c) {
  plugin_string_free(&c->api_key);
  plugin_string_free(&c->api_secret);
}

static bool load_credentials(const plugin_string_t *channel, credentials_t *c, lp_error_t *err) {
  *c = (credentials_t){0};
  if (!lp_channel_setting(channel, "api_key", &c->api_key)) return lp_missing_setting(err, "api_key");
  if (!lp_channel_setting(channel, "api_secret", &c->api_secret)) {
    plugin_string_free(&c->api_key);
    return lp_missing_setting(err, "api_secret");
  }
  return true;
}

static const plugin_string_t *channel_of(const plugin_option_string_t *channel) {
  return channel->is_some ? &channel->val : NULL;
}

// A pre-created session for this call: `channels.<channel>.session_id`, else the
// top-level `session_id` unless the channel has an API key of its own (a
// session belongs to the project that created it).
static bool preset_session(const plugin_string_t *channel, plugin_string_t *out) {
  if (channel && channel->len) {
    lp_buf_t k = {0};
    lp_buf_str(&k, "channels.");
    lp_buf_put(&k, channel->ptr, channel->len);
    lp_buf_byte(&k, '.');
    size_t prefix = k.len;
    lp_buf_str(&k, "session_id");
    bool found = lp_vendor_setting(k.ptr, k.len, out);
    if (found && out->len) {
      lp_buf_free(&k);
      return true;
    }
    if (found) plugin_string_free(out);
    k.len = prefix;
    lp_buf_str(&k, "api_key");
    plugin_string_t own_key;
    bool has_own_key = lp_vendor_setting(k.ptr, k.len, &own_key);
    lp_buf_free(&k);
    if (has_own_key) {
      bool nonempty = own_key.len > 0;
      plugin_string_free(&own_key);
      if (nonempty) return false;
    }
  }
  return lp_vendor_setting_nonempty("session_id", out);
}

// ---- the REST call ------------------------------------------------------------

// X-OPENTOK-AUTH: an HS256 JWT {"ist":"project","iat","exp","iss","jti"}, as the
// SDKs make it, with a fresh random jti for every request.
static void auth_jwt(lp_buf_t *out, const credentials_t *c) {
  uint64_t now = lp_now_seconds();
  lp_json_t header = {0}, claims = {0};
  lp_json_open(&header);
  lp_json_cstr(&header, "alg", "HS256");
  lp_json_cstr(&header, "typ", "JWT");
  lp_json_close(&header);
  lp_buf_t jti = {0};
  lp_random_hex(&jti, 16);
  lp_json_open(&claims);
  lp_json_cstr(&claims, "ist", "project");
  lp_json_u64(&claims, "iat", now);
  lp_json_u64(&claims, "exp", now + AUTH_JWT_SECONDS);
  lp_json_str(&claims, "iss", &c->api_key);
  lp_json_str_n(&claims, "jti", jti.ptr, jti.len);
  lp_json_close(&claims);
  lp_jwt_hs256(out, &header.buf, &claims.buf, c->api_secret.ptr, c->api_secret.len);
  lp_buf_free(&jti);
  lp_buf_free(&header.buf);
  lp_buf_free(&claims.buf);
}

static bool x_opentok_auth(const void *ctx, lp_buf_t *value, lp_error_t *err) {
  (void)err;
  auth_jwt(value, ctx);
  return true;
}

// POST {api_url}/session/create; the session id of a 2xx answer into `out`.
static bool create_remote_session(const credentials_t *c, const plugin_string_t *api_url,
                                  bool routed, bool always, uint64_t timeout_ms,
                                  uint64_t retries, plugin_string_t *out, lp_error_t *err) {
  lp_buf_t url = {0};
  size_t base_len = api_url->len;
  while (base_len && api_url->ptr[base_len - 1] == '/') base_len--;
  lp_buf_put(&url, api_url->ptr, base_len);
  lp_buf_str(&url, "/session/create");

  lp_buf_t body = {0};
  lp_form_encode(&body, (const uint8_t *)"p2p.preference", 14);
  lp_buf_byte(&body, '=');
  lp_buf_str(&body, routed ? "disabled" : "enabled");
  lp_buf_byte(&body, '&');
  lp_form_encode(&body, (const uint8_t *)"archiveMode", 11);
  lp_buf_byte(&body, '=');
  lp_buf_str(&body, always ? "always" : "manual");

  const lp_vendor_t opentok = {
      .api = "the OpenTok API",
      .credentials = "`api_key` and `api_secret`",
      .url_setting = "`api_url`",
      .timeout_ms = timeout_ms,
      .retries = retries,
      .auth_header = "X-OPENTOK-AUTH",
      .authorize = x_opentok_auth,
      .ctx = c,
  };
  loopcall_provider_http_response_t resp;
  bool ok = lp_vendor_send(&opentok, LOOPCALL_PROVIDER_HTTP_METHOD_POST, &url,
                           "application/x-www-form-urlencoded", &body, "create the session",
                           false, &resp, err);
  if (ok) {
    if (!lp_json_get_string(resp.body.ptr, resp.body.len, "session_id", out)) {
      ok = lp_unavailable(err, "the OpenTok API answered without a session_id");
    } else if (out->len == 0 || out->len > MAX_SESSION_ID_BYTES) {
      plugin_string_free(out);
      ok = lp_unavailable(err, "the OpenTok API returned an unusable session_id");
    }
    loopcall_provider_http_response_free(&resp);
  }
  lp_buf_free(&url);
  lp_buf_free(&body);
  return ok;
}

bool exports_loopcall_provider_provider_create_session(
    exports_loopcall_provider_provider_session_request_t *request,
    exports_loopcall_provider_provider_session_t *ret, lp_error_t *err) {
  bool ok = false;
  credentials_t c = {0};
  plugin_string_t api_url = {0};
  bool routed, always;
  uint64_t timeout_ms, retries;
  const plugin_string_t *channel = channel_of(&request->channel);

  if (!setting_choice("media_mode", "relayed", "routed", &routed, err)) goto done;
  if (!setting_choice("archive_mode", "manual", "always", &always, err)) goto done;
  if (always && !routed) {
    lp_misconfigured(err, "setting `archive_mode = \"always\"` needs `media_mode = \"routed\"`");
    goto done;
  }
  if (!lp_setting_u64("timeout_ms", DEFAULT_TIMEOUT_MS, 1, MAX_TIMEOUT_MS, &timeout_ms, err))
    goto done;
  if (!lp_setting_u64("retries", DEFAULT_RETRIES, 0, MAX_RETRIES, &retries, err)) goto done;
  if (!load_credentials(channel, &c, err)) goto done;

  if (preset_session(channel, &ret->session_id)) {
    ok = true;
  } else {
    lp_setting_or("api_url", DEFAULT_API_URL, &api_url);
    ok = create_remote_session(&c, &api_url, routed, always, timeout_ms, retries,
                               &ret->session_id, err);
    if (ok) lp_log(LOOPCALL_PROVIDER_LOG_LEVEL_DEBUG, "OpenTok session created");
  }
  if (ok) {
    ret->api_key = c.api_key;
    c.api_key = (plugin_string_t){0};
  }

done:
  credentials_free(&c);
  plugin_string_free(&api_url);
  exports_loopcall_provider_provider_session_request_free(request);
  return ok;
}

// ---- tokens -------------------------------------------------------------------

// What the other side learns about this one: {"id":"<identity>","name":"<display name>"}.
static void connection_data(lp_buf_t *out, const exports_loopcall_provider_provider_token_request_t *r) {
  lp_json_t j = {0};
  lp_json_open(&j);
  lp_json_str(&j, "id", &r->identity);
  lp_json_str(&j, "name", &r->display_name);
  lp_json_close(&j);
  *out = j.buf;
}

static uint64_t random_nonce(void) { return lp_random_u53() % (MAX_NONCE + 1); }

static void form_field(lp_buf_t *out, const char *key, const uint8_t *value, size_t len) {
  if (out->len) lp_buf_byte(out, '&');
  lp_buf_str(out, key);
  lp_buf_byte(out, '=');
  lp_form_encode(out, value, len);
}

static void form_u64(lp_buf_t *out, const char *key, uint64_t v) {
  if (out->len) lp_buf_byte(out, '&');
  lp_buf_str(out, key);
  lp_buf_byte(out, '=');
  lp_buf_u64(out, v);
}

// "T1==" base64("partner_id=<key>&sig=<hex HMAC-SHA1(secret, data)>:" data), the
// fields of data in the order the SDKs write them.
static void t1_token(lp_buf_t *out, const credentials_t *c, const plugin_string_t *session_id,
                     const char *role, uint64_t now, uint64_t exp, const lp_buf_t *data) {
  lp_buf_t fields = {0};
  form_field(&fields, "session_id", session_id->ptr, session_id->len);
  form_u64(&fields, "create_time", now);
  form_u64(&fields, "expire_time", exp);
  form_field(&fields, "role", (const uint8_t *)role, strlen(role));
  form_u64(&fields, "nonce", random_nonce());
  form_field(&fields, "initial_layout_class_list", NULL, 0);
  form_field(&fields, "connection_data", data->ptr, data->len);

  plugin_list_u8_t key = {c->api_secret.ptr, c->api_secret.len};
  plugin_list_u8_t msg = {fields.ptr, fields.len};
  plugin_list_u8_t mac;
  loopcall_provider_crypto_hmac_sha1(&key, &msg, &mac);

  lp_buf_t plain = {0};
  lp_buf_str(&plain, "partner_id=");
  lp_buf_put(&plain, c->api_key.ptr, c->api_key.len);
  lp_buf_str(&plain, "&sig=");
  lp_hex_encode(&plain, mac.ptr, mac.len);
  lp_buf_byte(&plain, ':');
  lp_buf_put(&plain, fields.ptr, fields.len);
  plugin_list_u8_free(&mac);

  lp_buf_str(out, "T1==");
  lp_b64_encode(out, plain.ptr, plain.len);
  lp_buf_free(&plain);
  lp_buf_free(&fields);
}

// An HS256 JWT with the claims of the opentok SDKs' generate_token, in their order.
static void jwt_token(lp_buf_t *out, const credentials_t *c, const plugin_string_t *session_id,
                      const char *role, uint64_t now, uint64_t exp, const lp_buf_t *data) {
  lp_json_t header = {0}, claims = {0};
  lp_json_open(&header);
  lp_json_cstr(&header, "alg", "HS256");
  lp_json_cstr(&header, "typ", "JWT");
  lp_json_close(&header);
  lp_json_open(&claims);
  lp_json_str(&claims, "session_id", session_id);
  lp_json_cstr(&claims, "role", role);
  lp_json_u64(&claims, "iat", now);
  lp_json_u64(&claims, "exp", exp);
  lp_json_cstr(&claims, "scope", "session.connect");
  lp_json_str_n(&claims, "connection_data", data->ptr, data->len);
  lp_json_str(&claims, "iss", &c->api_key);
  lp_json_cstr(&claims, "ist", "project");
  lp_json_u64(&claims, "nonce", random_nonce());
  lp_json_close(&claims);
  lp_jwt_hs256(out, &header.buf, &claims.buf, c->api_secret.ptr, c->api_secret.len);
  lp_buf_free(&header.buf);
  lp_buf_free(&claims.buf);
}

bool exports_loopcall_provider_provider_issue_token(
    exports_loopcall_provider_provider_token_request_t *request, plugin_string_t *ret,
    lp_error_t *err) {
  bool ok = false, jwt;
  credentials_t c = {0};
  lp_buf_t data = {0}, token = {0};

  if (request->session_id.len == 0 || request->session_id.len > MAX_SESSION_ID_BYTES) {
    lp_rejected(err, "the session id must be 1 to 512 bytes");
    goto done;
  }
  if (request->lifetime_seconds == 0) {
    lp_rejected(err, "the token lifetime must be at least 1 second");
    goto done;
  }
  connection_data(&data, request);
  if (lp_utf8_chars(data.ptr, data.len) > MAX_CONNECTION_DATA_CHARS) {
    lp_rejected(err, "identity and display name make connection data over 1000 characters");
    goto done;
  }
  if (!setting_choice("token_format", "t1", "jwt", &jwt, err)) goto done;
  if (!load_credentials(channel_of(&request->channel), &c, err)) goto done;

  uint64_t lifetime = request->lifetime_seconds;
  if (lifetime > MAX_TOKEN_SECONDS) lifetime = MAX_TOKEN_SECONDS;
  uint64_t now = lp_now_seconds();
  const char *role = lp_role_name(request->role);
  if (jwt) jwt_token(&token, &c, &request->session_id, role, now, now + lifetime, &data);
  else t1_token(&token, &c, &request->session_id, role, now, now + lifetime, &data);
  lp_buf_into_string(&token, ret);
  ok = true;

done:
  credentials_free(&c);
  lp_buf_free(&data);
  lp_buf_free(&token);
  exports_loopcall_provider_provider_token_request_free(request);
  return ok;
}

LP_EXPORT_VERIFY_TOKEN_REJECTS("OpenTok tokens are checked by OpenTok")

// OpenTok sessions need no closing: they cost nothing once nobody is connected.
LP_EXPORT_END_SESSION_NOTHING_TO_CLOSE()
