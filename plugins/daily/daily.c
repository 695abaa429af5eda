// daily: Daily (daily.co) rooms and meeting tokens for Loop calls.
//
// create-session makes a private two-person room through Daily's REST API; each
// side gets a meeting token that Daily's client SDKs accept, signed locally
// (HS256) with the API key, as Daily documents for self-signed meeting tokens.
// end-session deletes the room, so Daily stops counting it.
// Settings, requests and answers are described in README.md next to this file.
//
// One call's create-session and both issue-tokens run in one fresh instance
// (the host's setup_call), and nothing else does: the session request's
// `callee` is kept in a static between them, so the callee's token is the
// owner's (o = true). A token issued in any other instance is a guest's.

#include "loop_vendor.h"

#define PLUGIN_VERSION "0.1.0"
#define DEFAULT_API_URL "https://api.daily.co"
#define DEFAULT_TIMEOUT_MS 2000
#define DEFAULT_RETRIES 2
// The host's token lifetime (one day) is also the room's: the room expires with
// the tokens into it. Longer lifetimes are clamped to it.
#define MAX_LIFETIME_SECONDS 86400u
#define ROOM_RANDOM_BYTES 16 // "loop-" + 32 hex digits
#define MAX_ROOM_NAME_BYTES 128
#define MAX_FIELD_BYTES 1024

// What create-session leaves for the issue-token calls of the same call.
static lp_buf_t g_room = {0};
static lp_buf_t g_callee = {0};
static uint64_t g_room_exp = 0;
static bool g_have_session = false;

void exports_loopcall_provider_provider_describe(
    exports_loopcall_provider_provider_provider_info_t *ret) {
  lp_describe_all(ret, "daily", PLUGIN_VERSION, false);
}

// ---- settings ----------------------------------------------------------------

typedef struct {
  plugin_string_t api_key, api_url, domain, domain_id;
  uint64_t timeout_ms, retries;
} account_t;

static void account_free(account_t *a) {
  plugin_string_free(&a->api_key);
  plugin_string_free(&a->api_url);
  plugin_string_free(&a->domain);
  plugin_string_free(&a->domain_id);
}

// A Daily subdomain: letters, digits and hyphens, so it can go into a URL as is.
static bool valid_domain(const plugin_string_t *d) {
  if (d->len == 0 || d->len > 63) return false;
  for (size_t i = 0; i < d->len; i++) {
    uint8_t c = d->ptr[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-'))
      return false;
  }
  return true;
}

// Loads the settings every export needs; `for_rest` adds those of the REST API.
static bool load_account(account_t *a, bool for_rest, lp_error_t *err) {
  *a = (account_t){0};
  if (!lp_vendor_setting_nonempty("api_key", &a->api_key)) return lp_missing_setting(err, "api_key");
  if (!lp_vendor_setting_nonempty("domain_id", &a->domain_id)) {
    account_free(a);
    return lp_missing_setting(err, "domain_id");
  }
  if (!for_rest) return true;
  if (!lp_vendor_setting_nonempty("domain", &a->domain)) {
    account_free(a);
    return lp_missing_setting(err, "domain");
  }
  if (!valid_domain(&a->domain)) {
    account_free(a);
    return lp_misconfigured(err, "setting `domain` must be the Daily subdomain alone "
                                 "(letters, digits and hyphens), e.g. \"acme\" for acme.daily.co");
  }
  lp_setting_or("api_url", DEFAULT_API_URL, &a->api_url);
  while (a->api_url.len && a->api_url.ptr[a->api_url.len - 1] == '/') a->api_url.len--;
  if (a->api_url.len >= 3 && memcmp(a->api_url.ptr + a->api_url.len - 3, "/v1", 3) == 0) {
    account_free(a);
    return lp_misconfigured(err, "setting `api_url` is the API's origin, without /v1 "
                                 "(e.g. \"https://api.daily.co\")");
  }
  if (!lp_setting_u64("timeout_ms", DEFAULT_TIMEOUT_MS, 1, 60000, &a->timeout_ms, err) ||
      !lp_setting_u64("retries", DEFAULT_RETRIES, 0, 10, &a->retries, err)) {
    account_free(a);
    return false;
  }
  return true;
}

// Room names are ours ("loop-" and hex), but a session id handed back by the host
// is checked before it goes into a URL path or a token.
static bool valid_room(const plugin_string_t *s) {
  if (s->len == 0 || s->len > MAX_ROOM_NAME_BYTES) return false;
  for (size_t i = 0; i < s->len; i++) {
    uint8_t c = s->ptr[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
          c == '-' || c == '_'))
      return false;
  }
  return true;
}

// ---- the REST API --------------------------------------------------------------

// Daily's REST API takes the API key as a Bearer token.
static bool bearer(const void *ctx, lp_buf_t *value, lp_error_t *err) {
  (void)err;
  const account_t *a = ctx;
  lp_buf_str(value, "Bearer ");
  lp_buf_put(value, a->api_key.ptr, a->api_key.len);
  return true;
}

// One request to Daily, retried and mapped to errors as every vendor's are.
static bool daily_send(const account_t *a, loopcall_provider_http_method_t method,
                       const lp_buf_t *url, const lp_buf_t *body, bool ok_404, const char *what,
                       loopcall_provider_http_response_t *resp, lp_error_t *err) {
  const lp_vendor_t daily = {
      .api = "the Daily API",
      .credentials = "`api_key`",
      .url_setting = "`api_url`",
      .timeout_ms = a->timeout_ms,
      .retries = a->retries,
      .auth_header = "authorization",
      .authorize = bearer,
      .ctx = a,
  };
  return lp_vendor_send(&daily, method, url, "application/json", body, what, ok_404, resp, err);
}

static void rooms_url(lp_buf_t *url, const account_t *a) {
  lp_buf_put(url, a->api_url.ptr, a->api_url.len);
  lp_buf_str(url, "/v1/rooms");
}

// ---- exports -----------------------------------------------------------------

bool exports_loopcall_provider_provider_create_session(
    exports_loopcall_provider_provider_session_request_t *request,
    exports_loopcall_provider_provider_session_t *ret, lp_error_t *err) {
  account_t a;
  if (!load_account(&a, true, err)) {
    exports_loopcall_provider_provider_session_request_free(request);
    return false;
  }

  lp_buf_t room = {0};
  lp_buf_str(&room, "loop-");
  lp_random_hex(&room, ROOM_RANDOM_BYTES);
  uint64_t exp = lp_now_seconds() + MAX_LIFETIME_SECONDS;

  lp_json_t body = {0};
  lp_json_open(&body);
  lp_json_str_n(&body, "name", room.ptr, room.len);
  lp_json_cstr(&body, "privacy", "private");
  lp_json_object(&body, "properties");
  lp_json_u64(&body, "exp", exp);
  lp_json_u64(&body, "max_participants", 2);
  lp_json_close(&body);
  lp_json_close(&body);

  lp_buf_t url = {0};
  rooms_url(&url, &a);
  loopcall_provider_http_response_t resp;
  bool ok = daily_send(&a, LOOPCALL_PROVIDER_HTTP_METHOD_POST, &url, &body.buf, false,
                       "create the room", &resp, err);
  lp_buf_free(&url);
  lp_buf_free(&body.buf);
  if (ok) {
    // Daily answers with the room object; its name must be the one we asked for.
    plugin_string_t name;
    if (!lp_json_get_string(resp.body.ptr, resp.body.len, "name", &name)) {
      ok = lp_unavailable(err, "the Daily API answered without the room's name");
    } else {
      if (!(name.len == room.len && memcmp(name.ptr, room.ptr, room.len) == 0))
        ok = lp_unavailable(err, "the Daily API answered with another room's name");
      plugin_string_free(&name);
    }
    loopcall_provider_http_response_free(&resp);
  }
  if (ok) {
    lp_buf_t room_url = {0};
    lp_buf_str(&room_url, "https://");
    lp_buf_put(&room_url, a.domain.ptr, a.domain.len);
    lp_buf_str(&room_url, ".daily.co/");
    lp_buf_put(&room_url, room.ptr, room.len);
    lp_buf_into_string(&room_url, &ret->api_key);
    lp_string_from(&ret->session_id, room.ptr, room.len);

    lp_buf_free(&g_room);
    lp_buf_free(&g_callee);
    lp_buf_put(&g_room, room.ptr, room.len);
    lp_buf_put(&g_callee, request->callee.ptr, request->callee.len);
    g_room_exp = exp;
    g_have_session = true;
  }
  lp_buf_free(&room);
  account_free(&a);
  exports_loopcall_provider_provider_session_request_free(request);
  return ok;
}

bool exports_loopcall_provider_provider_issue_token(
    exports_loopcall_provider_provider_token_request_t *request, plugin_string_t *ret,
    lp_error_t *err) {
  bool ok = false;
  account_t a = {0};
  lp_json_t header = {0}, claims = {0};
  lp_buf_t token = {0};

  if (!valid_room(&request->session_id)) {
    lp_rejected(err, "session id is not a Daily room name of this plugin");
    goto done;
  }
  if (request->identity.len > MAX_FIELD_BYTES || request->display_name.len > MAX_FIELD_BYTES) {
    lp_rejected(err, "identity and display name must be at most 1024 bytes");
    goto done;
  }
  if (request->lifetime_seconds == 0) {
    lp_rejected(err, "token lifetime must be at least 1 second");
    goto done;
  }
  if (!load_account(&a, false, err)) goto done;

  bool same_room = g_have_session && request->session_id.len == g_room.len &&
                   memcmp(request->session_id.ptr, g_room.ptr, g_room.len) == 0;
  bool owner = same_room && request->identity.len == g_callee.len &&
               (g_callee.len == 0 || memcmp(request->identity.ptr, g_callee.ptr, g_callee.len) == 0);

  uint64_t now = lp_now_seconds();
  uint64_t lifetime = request->lifetime_seconds;
  if (lifetime > MAX_LIFETIME_SECONDS) lifetime = MAX_LIFETIME_SECONDS;
  uint64_t exp = now + lifetime;
  if (same_room && exp > g_room_exp && g_room_exp > now) exp = g_room_exp;

  lp_json_open(&header);
  lp_json_cstr(&header, "alg", "HS256");
  lp_json_cstr(&header, "typ", "JWT");
  lp_json_close(&header);

  lp_json_open(&claims);
  lp_json_str(&claims, "r", &request->session_id);
  lp_json_u64(&claims, "iat", now);
  lp_json_u64(&claims, "exp", exp);
  lp_json_str(&claims, "d", &a.domain_id);
  lp_json_str(&claims, "ud", &request->identity);
  lp_json_str(&claims, "u", &request->display_name);
  lp_json_bool(&claims, "o", owner);
  lp_json_close(&claims);

  lp_jwt_hs256(&token, &header.buf, &claims.buf, a.api_key.ptr, a.api_key.len);
  lp_buf_into_string(&token, ret);
  ok = true;

done:
  account_free(&a);
  lp_buf_free(&header.buf);
  lp_buf_free(&claims.buf);
  lp_buf_free(&token);
  exports_loopcall_provider_provider_token_request_free(request);
  return ok;
}

LP_EXPORT_VERIFY_TOKEN_REJECTS("Daily meeting tokens are checked by Daily")

bool exports_loopcall_provider_provider_end_session(plugin_string_t *session_id,
                                                    plugin_string_t *maybe_channel,
                                                    lp_error_t *err) {
  bool ok = false;
  account_t a = {0};
  lp_buf_t url = {0};
  if (!valid_room(session_id)) {
    lp_rejected(err, "session id is not a Daily room name of this plugin");
    goto done;
  }
  if (!load_account(&a, true, err)) goto done;
  rooms_url(&url, &a);
  lp_buf_byte(&url, '/');
  lp_buf_put(&url, session_id->ptr, session_id->len);
  // A room that is already gone (expired, deleted by hand) is a success.
  ok = daily_send(&a, LOOPCALL_PROVIDER_HTTP_METHOD_DELETE, &url, NULL, true, "delete the room",
                  NULL, err);
done:
  lp_buf_free(&url);
  account_free(&a);
  plugin_string_free(session_id);
  if (maybe_channel) plugin_string_free(maybe_channel);
  return ok;
}
