// vonage: the Vonage Video API (OpenTok's successor, with application JWTs).
//
// Sessions come from POST {api_url}/session/create, authenticated by an RS256
// application JWT; client tokens are RS256 JWTs with the claims the
// `vonage-video` SDK puts in them. Both are signed by the host's crypto.sign
// with the application's PKCS#8 private key. Settings, requests and tokens are
// described in README.md next to this file.

#include "loop_vendor.h"

#define DEFAULT_API_URL "https://video.api.vonage.com"
#define DEFAULT_TIMEOUT_MS 2000
#define MAX_TIMEOUT_MS 60000
#define DEFAULT_RETRIES 3
#define MAX_RETRIES 10
// The application JWT's lifetime, as the Vonage SDKs make it.
#define APP_JWT_SECONDS 900
// Vonage client tokens live at most 30 days.
#define MAX_TOKEN_SECONDS (30u * 24 * 3600)
#define MAX_SESSION_ID_BYTES 512
#define MAX_CONNECTION_DATA_CHARS 1000

void exports_loopcall_provider_provider_describe(exports_loopcall_provider_provider_provider_info_t *ret) {
  lp_describe_all(ret, "vonage", "1.0.0", false);
}

// ---- settings -----------------------------------------------------------------

typedef struct {
  plugin_string_t application_id, private_key;
} app_t;

static void app_free(app_t *a) {
  plugin_string_free(&a->application_id);
  plugin_string_free(&a->private_key);
}

// A PEM given on one line with "\n" escapes (as environment variables often
// carry it) gets its line breaks back.
static void unescape_newlines(plugin_string_t *pem) {
  for (size_t i = 0; i < pem->len; i++)
    if (pem->ptr[i] == '\n') return;
  size_t out = 0;
  for (size_t i = 0; i < pem->len; i++) {
    if (pem->ptr[i] == '\\' && i + 1 < pem->len && pem->ptr[i + 1] == 'n') {
      pem->ptr[out++] = '\n';
      i++;
    } else {
      pem->ptr[out++] = pem->ptr[i];
    }
  }
  pem->len = out;
}

static bool load_app(app_t *a, lp_error_t *err) {
  *a = (app_t){0};
  if (!lp_vendor_setting_nonempty("application_id", &a->application_id))
    return lp_missing_setting(err, "application_id");
  if (!lp_vendor_setting_nonempty("private_key", &a->private_key)) {
    plugin_string_free(&a->application_id);
    return lp_missing_setting(err, "private_key");
  }
  unescape_newlines(&a->private_key);
  return true;
}

static bool media_routed(bool *routed, lp_error_t *err) {
  plugin_string_t text;
  *routed = false;
  if (!lp_vendor_setting_nonempty("media_mode", &text)) return true;
  bool relayed = lp_string_eq_cstr(&text, "relayed");
  *routed = lp_string_eq_cstr(&text, "routed");
  plugin_string_free(&text);
  if (relayed || *routed) return true;
  return lp_misconfigured(err, "setting `media_mode` must be \"relayed\" or \"routed\"");
}

static void rs256_header(lp_json_t *header) {
  lp_json_open(header);
  lp_json_cstr(header, "alg", "RS256");
  lp_json_cstr(header, "typ", "JWT");
  lp_json_close(header);
}

// The application JWT: {"application_id","iat","jti","exp" = iat + 900}, in
// the order vonage_jwt writes them.
static bool app_jwt(lp_buf_t *out, const app_t *a, lp_error_t *err) {
  uint64_t now = lp_now_seconds();
  lp_json_t header = {0}, claims = {0};
  rs256_header(&header);
  lp_buf_t jti = {0};
  lp_uuid4(&jti);
  lp_json_open(&claims);
  lp_json_str(&claims, "application_id", &a->application_id);
  lp_json_u64(&claims, "iat", now);
  lp_json_str_n(&claims, "jti", jti.ptr, jti.len);
  lp_json_u64(&claims, "exp", now + APP_JWT_SECONDS);
  lp_json_close(&claims);
  bool ok = lp_jwt_sign(out, LOOPCALL_PROVIDER_CRYPTO_SIGNING_ALGORITHM_RS256, &a->private_key,
                        "private_key", &header.buf, &claims.buf, err);
  lp_buf_free(&jti);
  lp_buf_free(&header.buf);
  lp_buf_free(&claims.buf);
  return ok;
}

// ---- the REST call ------------------------------------------------------------

// The application JWT as a Bearer token, signed afresh (a new jti) per attempt.
// False when the host cannot use the key: no attempt can fix that.
static bool bearer_app_jwt(const void *ctx, lp_buf_t *value, lp_error_t *err) {
  // lp_jwt_sign signs all of its buffer: the JWT is made on its own first.
  lp_buf_t jwt = {0};
  bool ok = app_jwt(&jwt, ctx, err);
  if (ok) {
    lp_buf_str(value, "Bearer ");
    lp_buf_put(value, jwt.ptr, jwt.len);
  }
  lp_buf_free(&jwt);
  return ok;
}

bool exports_loopcall_provider_provider_create_session(
    exports_loopcall_provider_provider_session_request_t *request,
    exports_loopcall_provider_provider_session_t *ret, lp_error_t *err) {
  exports_loopcall_provider_provider_session_request_free(request);
  bool ok = false, routed;
  uint64_t timeout_ms, retries;
  app_t a = {0};
  plugin_string_t api_url = {0};
  lp_buf_t url = {0}, body = {0};

  if (!media_routed(&routed, err)) goto done;
  if (!lp_setting_u64("timeout_ms", DEFAULT_TIMEOUT_MS, 1, MAX_TIMEOUT_MS, &timeout_ms, err))
    goto done;
  if (!lp_setting_u64("retries", DEFAULT_RETRIES, 0, MAX_RETRIES, &retries, err)) goto done;
  if (!load_app(&a, err)) goto done;

  lp_setting_or("api_url", DEFAULT_API_URL, &api_url);
  size_t base_len = api_url.len;
  while (base_len && api_url.ptr[base_len - 1] == '/') base_len--;
  lp_buf_put(&url, api_url.ptr, base_len);
  lp_buf_str(&url, "/session/create");
  lp_form_encode(&body, (const uint8_t *)"p2p.preference", 14);
  lp_buf_byte(&body, '=');
  lp_buf_str(&body, routed ? "disabled" : "enabled");

  const lp_vendor_t vonage = {
      .api = "the Vonage Video API",
      .credentials = "`application_id` and `private_key`",
      .url_setting = "`api_url`",
      .timeout_ms = timeout_ms,
      .retries = retries,
      .auth_header = "authorization",
      .authorize = bearer_app_jwt,
      .ctx = &a,
  };
  loopcall_provider_http_response_t resp;
  if (!lp_vendor_send(&vonage, LOOPCALL_PROVIDER_HTTP_METHOD_POST, &url,
                      "application/x-www-form-urlencoded", &body, "create the session", false,
                      &resp, err))
    goto done;
  if (!lp_json_get_string(resp.body.ptr, resp.body.len, "session_id", &ret->session_id)) {
    lp_unavailable(err, "the Vonage Video API answered without a session_id");
  } else if (ret->session_id.len == 0 || ret->session_id.len > MAX_SESSION_ID_BYTES) {
    plugin_string_free(&ret->session_id);
    lp_unavailable(err, "the Vonage Video API returned an unusable session_id");
  } else {
    ret->api_key = a.application_id;
    a.application_id = (plugin_string_t){0};
    lp_log(LOOPCALL_PROVIDER_LOG_LEVEL_DEBUG, "Vonage Video session created");
    ok = true;
  }
  loopcall_provider_http_response_free(&resp);

done:
  app_free(&a);
  plugin_string_free(&api_url);
  lp_buf_free(&url);
  lp_buf_free(&body);
  return ok;
}

// ---- tokens -------------------------------------------------------------------

bool exports_loopcall_provider_provider_issue_token(
    exports_loopcall_provider_provider_token_request_t *request, plugin_string_t *ret,
    lp_error_t *err) {
  bool ok = false;
  app_t a = {0};
  lp_json_t data = {0}, header = {0}, claims = {0};
  lp_buf_t jti = {0}, token = {0};

  if (request->session_id.len == 0 || request->session_id.len > MAX_SESSION_ID_BYTES) {
    lp_rejected(err, "the session id must be 1 to 512 bytes");
    goto done;
  }
  if (request->lifetime_seconds == 0) {
    lp_rejected(err, "the token lifetime must be at least 1 second");
    goto done;
  }
  // What the other side learns about this one.
  lp_json_open(&data);
  lp_json_str(&data, "id", &request->identity);
  lp_json_str(&data, "name", &request->display_name);
  lp_json_close(&data);
  if (lp_utf8_chars(data.buf.ptr, data.buf.len) > MAX_CONNECTION_DATA_CHARS) {
    lp_rejected(err, "identity and display name make connection data over 1000 characters");
    goto done;
  }
  if (!load_app(&a, err)) goto done;

  uint64_t lifetime = request->lifetime_seconds;
  if (lifetime > MAX_TOKEN_SECONDS) lifetime = MAX_TOKEN_SECONDS;
  uint64_t now = lp_now_seconds();
  lp_uuid4(&jti);
  rs256_header(&header);
  // The claims of vonage_video's generate_client_token, in its order.
  lp_json_open(&claims);
  lp_json_str(&claims, "session_id", &request->session_id);
  lp_json_cstr(&claims, "role", lp_role_name(request->role));
  lp_json_str_n(&claims, "connection_data", data.buf.ptr, data.buf.len);
  lp_json_u64(&claims, "exp", now + lifetime);
  lp_json_str_n(&claims, "jti", jti.ptr, jti.len);
  lp_json_u64(&claims, "iat", now);
  lp_json_cstr(&claims, "subject", "video");
  lp_json_cstr(&claims, "scope", "session.connect");
  lp_json_raw(&claims, "acl", "{\"paths\":{\"/session/**\":{}}}");
  lp_json_str(&claims, "application_id", &a.application_id);
  lp_json_close(&claims);
  if (!lp_jwt_sign(&token, LOOPCALL_PROVIDER_CRYPTO_SIGNING_ALGORITHM_RS256, &a.private_key,
                   "private_key", &header.buf, &claims.buf, err))
    goto done;
  lp_buf_into_string(&token, ret);
  ok = true;

done:
  app_free(&a);
  lp_buf_free(&data.buf);
  lp_buf_free(&header.buf);
  lp_buf_free(&claims.buf);
  lp_buf_free(&jti);
  lp_buf_free(&token);
  exports_loopcall_provider_provider_token_request_free(request);
  return ok;
}

LP_EXPORT_VERIFY_TOKEN_REJECTS("Vonage Video tokens are checked by Vonage")

// Vonage Video sessions need no closing: they cost nothing once nobody is connected.
LP_EXPORT_END_SESSION_NOTHING_TO_CLOSE()
