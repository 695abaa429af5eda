// jitsi: Jitsi Meet rooms for Loop calls, on a self-hosted Jitsi Meet with
// prosody's token authentication (HS256 with the app secret) or on Jitsi as a
// Service, 8x8's JaaS (RS256 with the app's private key, signed by the host).
//
// Jitsi has no room API to call: a room exists while someone is in it, and a
// token names the room it opens. create-session picks a fresh room name and
// end-session has nothing to close. Settings and tokens are described in
// README.md next to this file.
//
// One call's create-session and both issue-tokens run in one fresh instance
// (the host's setup_call), and nothing else does: the session request's
// `callee` is kept in a static between them, so the callee's token is the
// moderator's. A token issued in any other instance is a participant's.

#include "loop_vendor.h"

#define PLUGIN_VERSION "0.1.0"
#define MAX_LIFETIME_SECONDS 86400u
// Tokens are valid from a little before they are made, for servers whose
// clocks run slightly behind ours.
#define NBF_SKEW_SECONDS 10
#define ROOM_RANDOM_BYTES 16 // "loop-" + 32 hex digits
#define MAX_ROOM_NAME_BYTES 128
#define MAX_FIELD_BYTES 1024

static lp_buf_t g_room = {0};
static lp_buf_t g_callee = {0};
static bool g_have_session = false;

void exports_loopcall_provider_provider_describe(
    exports_loopcall_provider_provider_provider_info_t *ret) {
  lp_describe_all(ret, "jitsi", PLUGIN_VERSION, false);
}

// ---- settings ----------------------------------------------------------------

// JaaS's documented features; each is the setting `features.<name>` (false by
// default: a private call needs none of them).
static const char *const FEATURES[] = {"livestreaming", "recording", "transcription",
                                       "outbound-call"};
#define FEATURE_COUNT (sizeof FEATURES / sizeof FEATURES[0])

typedef struct {
  plugin_string_t base_url, app_id, domain;
  bool jaas;
  plugin_string_t app_secret;     // self-hosted
  plugin_string_t kid, private_key; // JaaS
  bool features[FEATURE_COUNT];
} account_t;

static void account_free(account_t *a) {
  plugin_string_free(&a->base_url);
  plugin_string_free(&a->app_id);
  plugin_string_free(&a->domain);
  plugin_string_free(&a->app_secret);
  plugin_string_free(&a->kid);
  plugin_string_free(&a->private_key);
}

// The host of an http(s) URL (no user info, no port). False when `url` is not one.
static bool url_host(const plugin_string_t *url, const uint8_t **host, size_t *len) {
  size_t start;
  if (url->len > 8 && memcmp(url->ptr, "https://", 8) == 0) start = 8;
  else if (url->len > 7 && memcmp(url->ptr, "http://", 7) == 0) start = 7;
  else return false;
  size_t end = start;
  while (end < url->len && url->ptr[end] != '/' && url->ptr[end] != '?' && url->ptr[end] != '#')
    end++;
  for (size_t i = start; i < end; i++)
    if (url->ptr[i] == '@') start = i + 1;
  size_t stop = start;
  while (stop < end && url->ptr[stop] != ':') stop++;
  if (stop == start) return false;
  *host = url->ptr + start;
  *len = stop - start;
  return true;
}

static bool load_account(account_t *a, lp_error_t *err) {
  *a = (account_t){0};
  if (!lp_vendor_setting_nonempty("base_url", &a->base_url)) return lp_missing_setting(err, "base_url");
  while (a->base_url.len && a->base_url.ptr[a->base_url.len - 1] == '/') a->base_url.len--;
  const uint8_t *host;
  size_t host_len;
  if (!url_host(&a->base_url, &host, &host_len)) {
    account_free(a);
    return lp_misconfigured(err, "setting `base_url` must be an http(s) URL, "
                                 "e.g. \"https://meet.example.com\" or \"https://8x8.vc\"");
  }
  if (!lp_vendor_setting_nonempty("app_id", &a->app_id)) {
    account_free(a);
    return lp_missing_setting(err, "app_id");
  }
  if (!lp_vendor_setting_nonempty("domain", &a->domain)) lp_string_from(&a->domain, host, host_len);

  bool secret = lp_vendor_setting_nonempty("app_secret", &a->app_secret);
  bool kid = lp_vendor_setting_nonempty("kid", &a->kid);
  bool key = lp_vendor_setting_nonempty("private_key", &a->private_key);
  if (secret && (kid || key)) {
    account_free(a);
    return lp_misconfigured(err, "set either `app_secret` (self-hosted Jitsi Meet) or `kid` "
                                 "and `private_key` (Jitsi as a Service), not both");
  }
  if (!secret && !kid && !key) {
    account_free(a);
    return lp_misconfigured(err, "set `app_secret` (self-hosted Jitsi Meet) or `kid` and "
                                 "`private_key` (Jitsi as a Service)");
  }
  if (!secret && (!kid || !key)) {
    account_free(a);
    return lp_missing_setting(err, kid ? "private_key" : "kid");
  }
  a->jaas = !secret;
  if (a->jaas) {
    // JaaS key ids are "<AppID>/<key id>", and the AppID is the token's `sub`.
    if (!(a->kid.len > a->app_id.len + 1 && memcmp(a->kid.ptr, a->app_id.ptr, a->app_id.len) == 0 &&
          a->kid.ptr[a->app_id.len] == '/')) {
      account_free(a);
      return lp_misconfigured(err, "setting `kid` must be the full JaaS key id, "
                                   "\"<app_id>/<key id>\", for the AppID in `app_id`");
    }
    for (size_t i = 0; i < FEATURE_COUNT; i++) {
      char key_name[40] = "features.";
      strcat(key_name, FEATURES[i]);
      if (!lp_setting_bool(key_name, false, &a->features[i], err)) {
        account_free(a);
        return false;
      }
    }
  }
  return true;
}

static bool valid_room(const plugin_string_t *s) {
  if (s->len == 0 || s->len > MAX_ROOM_NAME_BYTES) return false;
  for (size_t i = 0; i < s->len; i++) {
    uint8_t c = s->ptr[i];
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_')) return false;
  }
  return true;
}

// ---- exports -----------------------------------------------------------------

bool exports_loopcall_provider_provider_create_session(
    exports_loopcall_provider_provider_session_request_t *request,
    exports_loopcall_provider_provider_session_t *ret, lp_error_t *err) {
  account_t a;
  if (!load_account(&a, err)) {
    exports_loopcall_provider_provider_session_request_free(request);
    return false;
  }
  lp_buf_t room = {0};
  lp_buf_str(&room, "loop-");
  lp_random_hex(&room, ROOM_RANDOM_BYTES);

  lp_string_from(&ret->session_id, room.ptr, room.len);
  lp_string_from(&ret->api_key, a.base_url.ptr, a.base_url.len);

  lp_buf_free(&g_room);
  lp_buf_free(&g_callee);
  lp_buf_put(&g_room, room.ptr, room.len);
  lp_buf_put(&g_callee, request->callee.ptr, request->callee.len);
  g_have_session = true;

  lp_buf_free(&room);
  account_free(&a);
  exports_loopcall_provider_provider_session_request_free(request);
  return true;
}

bool exports_loopcall_provider_provider_issue_token(
    exports_loopcall_provider_provider_token_request_t *request, plugin_string_t *ret,
    lp_error_t *err) {
  bool ok = false;
  account_t a = {0};
  lp_json_t header = {0}, claims = {0};
  lp_buf_t token = {0};

  if (!valid_room(&request->session_id)) {
    lp_rejected(err, "session id is not a Jitsi room name of this plugin");
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
  if (!load_account(&a, err)) goto done;

  bool moderator = g_have_session && request->session_id.len == g_room.len &&
                   memcmp(request->session_id.ptr, g_room.ptr, g_room.len) == 0 &&
                   request->identity.len == g_callee.len &&
                   (g_callee.len == 0 ||
                    memcmp(request->identity.ptr, g_callee.ptr, g_callee.len) == 0);

  uint64_t now = lp_now_seconds();
  uint64_t lifetime = request->lifetime_seconds;
  if (lifetime > MAX_LIFETIME_SECONDS) lifetime = MAX_LIFETIME_SECONDS;

  lp_json_open(&header);
  lp_json_cstr(&header, "alg", a.jaas ? "RS256" : "HS256");
  if (a.jaas) lp_json_str(&header, "kid", &a.kid);
  lp_json_cstr(&header, "typ", "JWT");
  lp_json_close(&header);

  lp_json_open(&claims);
  if (a.jaas) lp_json_cstr(&claims, "iss", "chat");
  else lp_json_str(&claims, "iss", &a.app_id);
  lp_json_cstr(&claims, "aud", "jitsi");
  lp_json_str(&claims, "sub", a.jaas ? &a.app_id : &a.domain);
  lp_json_str(&claims, "room", &request->session_id);
  lp_json_u64(&claims, "exp", now + lifetime);
  lp_json_u64(&claims, "nbf", now > NBF_SKEW_SECONDS ? now - NBF_SKEW_SECONDS : 0);
  lp_json_object(&claims, "context");
  lp_json_object(&claims, "user");
  lp_json_str(&claims, "id", &request->identity);
  lp_json_str(&claims, "name", &request->display_name);
  // JaaS documents "true"/"false" strings; prosody's token plugins take a boolean.
  if (a.jaas) lp_json_cstr(&claims, "moderator", moderator ? "true" : "false");
  else lp_json_bool(&claims, "moderator", moderator);
  lp_json_close(&claims);
  if (a.jaas) {
    lp_json_object(&claims, "features");
    for (size_t i = 0; i < FEATURE_COUNT; i++)
      lp_json_cstr(&claims, FEATURES[i], a.features[i] ? "true" : "false");
    lp_json_close(&claims);
  }
  lp_json_close(&claims);
  lp_json_close(&claims);

  if (a.jaas) {
    if (!lp_jwt_sign(&token, LOOPCALL_PROVIDER_CRYPTO_SIGNING_ALGORITHM_RS256, &a.private_key,
                     "private_key", &header.buf, &claims.buf, err))
      goto done;
  } else {
    lp_jwt_hs256(&token, &header.buf, &claims.buf, a.app_secret.ptr, a.app_secret.len);
  }
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

LP_EXPORT_VERIFY_TOKEN_REJECTS("Jitsi tokens are checked by the Jitsi deployment")

// Jitsi rooms end when their last participant leaves: nothing to close.
LP_EXPORT_END_SESSION_NOTHING_TO_CLOSE()
