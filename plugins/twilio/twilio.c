// twilio: calls carried by Twilio Video.
//
// Every call gets a room of its own, named "loop-" + 32 random hex digits; that
// name (the room's UniqueName) is the session id Loop returns. Tokens are Twilio
// access tokens (HS256 JWTs signed with an API key secret) with a video grant for
// that room, claim for claim what the `twilio` SDK's AccessToken + VideoGrant issue.
//
// Settings ([plugins.twilio.settings]); README.md says more:
//   account_sid      the account (AC...), the tokens' `sub`
//   api_key_sid      the API key (SK...), the tokens' `iss`; returned to clients as `apiKey`
//   api_key_secret   the API key's secret
//   api_url          the Video REST API (default https://video.twilio.com)
//   create_room      create the room ahead of the call and complete it when the call
//                    ends (default false: Twilio creates it when the first side joins)
//   room_type        with create_room: group (default), group-small, peer-to-peer or go
//   timeout_ms       per-request timeout of the REST API (2000)
//   retries          extra attempts after a timeout, transport failure, 429 or 5xx (2)
//
// REST API, only with create_room, Basic auth <api_key_sid>:<api_key_secret>, form bodies:
//   create-session: POST {api_url}/v1/Rooms  UniqueName, Type, MaxParticipants=2
//   end-session:    POST {api_url}/v1/Rooms/{UniqueName}  Status=completed (404: already over)
//   401/403 -> misconfigured; 429, 5xx, timeouts -> retried, then unavailable;
//   other answers -> misconfigured.
#include "loop_vendor.h"

#define ROOM_RANDOM_BYTES 16
#define MAX_SESSION_ID_BYTES 256
#define MAX_FIELD_BYTES 1024
// Twilio refuses access tokens valid for longer than a day.
#define MAX_LIFETIME_SECONDS 86400u
#define MAX_PARTICIPANTS "2"

typedef struct {
  plugin_string_t account_sid, key_sid, key_secret, api_url, room_type;
  bool create_room;
  uint64_t timeout_ms, retries;
} config_t;

static void config_free(config_t *c) {
  plugin_string_free(&c->account_sid);
  plugin_string_free(&c->key_sid);
  plugin_string_free(&c->key_secret);
  plugin_string_free(&c->api_url);
  plugin_string_free(&c->room_type);
}

static bool load_config(config_t *c, lp_error_t *err) {
  *c = (config_t){0};
  static const char *const required[] = {"account_sid", "api_key_sid", "api_key_secret"};
  plugin_string_t *slots[] = {&c->account_sid, &c->key_sid, &c->key_secret};
  for (size_t i = 0; i < 3; i++) {
    if (!lp_vendor_setting_nonempty(required[i], slots[i])) {
      config_free(c);
      return lp_missing_setting(err, required[i]);
    }
  }
  lp_setting_or("api_url", "https://video.twilio.com", &c->api_url);
  lp_setting_or("room_type", "group", &c->room_type);
  if (!(lp_string_eq_cstr(&c->room_type, "group") ||
        lp_string_eq_cstr(&c->room_type, "group-small") ||
        lp_string_eq_cstr(&c->room_type, "peer-to-peer") ||
        lp_string_eq_cstr(&c->room_type, "go"))) {
    config_free(c);
    return lp_misconfigured(err,
                            "setting `room_type` must be group, group-small, peer-to-peer or go");
  }
  if (!lp_setting_bool("create_room", false, &c->create_room, err) ||
      !lp_setting_u64("timeout_ms", 2000, 1, 60000, &c->timeout_ms, err) ||
      !lp_setting_u64("retries", 2, 0, 10, &c->retries, err)) {
    config_free(c);
    return false;
  }
  return true;
}

// ---- the REST API -------------------------------------------------------------

// Twilio's REST API takes the API key's sid and secret as Basic credentials.
static bool basic_auth(const void *ctx, lp_buf_t *auth, lp_error_t *err) {
  (void)err;
  const config_t *c = ctx;
  lp_buf_t credentials = {0};
  lp_buf_put(&credentials, c->key_sid.ptr, c->key_sid.len);
  lp_buf_byte(&credentials, ':');
  lp_buf_put(&credentials, c->key_secret.ptr, c->key_secret.len);
  lp_buf_str(auth, "Basic ");
  lp_b64_encode(auth, credentials.ptr, credentials.len);
  // The secret is not left lying around in freed memory.
  memset(credentials.ptr, 0, credentials.len);
  lp_buf_free(&credentials);
  return true;
}

// POSTs the form `body` to {api_url}{path} to do `what`. True on 2xx; with
// `not_found_ok`, a 404 is success too.
static bool rest_post(const config_t *c, const lp_buf_t *path, const lp_buf_t *body,
                      const char *what, bool not_found_ok, lp_error_t *err) {
  lp_buf_t url = {0};
  size_t base_len = c->api_url.len;
  while (base_len && c->api_url.ptr[base_len - 1] == '/') base_len--;
  lp_buf_put(&url, c->api_url.ptr, base_len);
  lp_buf_put(&url, path->ptr, path->len);
  const lp_vendor_t rooms = {
      .api = "the Twilio Video API",
      .credentials = "`api_key_sid` and `api_key_secret`",
      .url_setting = "`api_url`",
      .timeout_ms = c->timeout_ms,
      .retries = c->retries,
      .auth_header = "authorization",
      .authorize = basic_auth,
      .ctx = c,
  };
  bool ok = lp_vendor_send(&rooms, LOOPCALL_PROVIDER_HTTP_METHOD_POST, &url,
                           "application/x-www-form-urlencoded", body, what, not_found_ok, NULL,
                           err);
  lp_buf_free(&url);
  return ok;
}

static void form_field(lp_buf_t *form, const char *name, const uint8_t *value, size_t len) {
  if (form->len) lp_buf_byte(form, '&');
  lp_buf_str(form, name);
  lp_buf_byte(form, '=');
  lp_form_encode(form, value, len);
}

// ---- exports ------------------------------------------------------------------

void exports_loopcall_provider_provider_describe(exports_loopcall_provider_provider_provider_info_t *ret) {
  lp_string_cstr(&ret->name, "twilio");
  lp_string_cstr(&ret->version, "0.1.0");
  ret->call_types.len = 2;
  ret->call_types.ptr = (loopcall_provider_types_call_type_t *)lp_alloc(2);
  ret->call_types.ptr[0] = LOOPCALL_PROVIDER_TYPES_CALL_TYPE_AUDIO;
  ret->call_types.ptr[1] = LOOPCALL_PROVIDER_TYPES_CALL_TYPE_AUDIO_VIDEO;
  // A Twilio access token grants a room, not a role: every side may publish.
  ret->roles.len = 1;
  ret->roles.ptr = (loopcall_provider_types_role_t *)lp_alloc(1);
  ret->roles.ptr[0] = LOOPCALL_PROVIDER_TYPES_ROLE_PUBLISHER;
  ret->verifies_tokens = false;
}

bool exports_loopcall_provider_provider_create_session(
    exports_loopcall_provider_provider_session_request_t *request,
    exports_loopcall_provider_provider_session_t *ret, lp_error_t *err) {
  exports_loopcall_provider_provider_session_request_free(request);
  config_t c;
  if (!load_config(&c, err)) return false;

  lp_buf_t room = {0};
  lp_buf_str(&room, "loop-");
  lp_random_hex(&room, ROOM_RANDOM_BYTES);

  if (c.create_room) {
    lp_buf_t path = {0}, form = {0};
    lp_buf_str(&path, "/v1/Rooms");
    form_field(&form, "UniqueName", room.ptr, room.len);
    form_field(&form, "Type", c.room_type.ptr, c.room_type.len);
    form_field(&form, "MaxParticipants", (const uint8_t *)MAX_PARTICIPANTS,
               strlen(MAX_PARTICIPANTS));
    bool created = rest_post(&c, &path, &form, "create the room", false, err);
    lp_buf_free(&path);
    lp_buf_free(&form);
    if (!created) {
      lp_buf_free(&room);
      config_free(&c);
      return false;
    }
    lp_log(LOOPCALL_PROVIDER_LOG_LEVEL_DEBUG, "twilio room created");
  }

  lp_buf_into_string(&room, &ret->session_id);
  ret->api_key = c.key_sid; // ownership passes to the host
  c.key_sid = (plugin_string_t){0};
  config_free(&c);
  return true;
}

static const uint8_t JWT_HEADER[] = "{\"cty\":\"twilio-fpa;v=1\",\"typ\":\"JWT\",\"alg\":\"HS256\"}";

bool exports_loopcall_provider_provider_issue_token(
    exports_loopcall_provider_provider_token_request_t *request, plugin_string_t *ret,
    lp_error_t *err) {
  bool ok = false;
  config_t c = {0};
  lp_json_t p = {0};
  lp_buf_t token = {0}, jti = {0};

  if (request->session_id.len == 0 || request->session_id.len > MAX_SESSION_ID_BYTES) {
    lp_rejected(err, "session id must be 1 to 256 bytes");
    goto done;
  }
  if (request->identity.len == 0 || request->identity.len > MAX_FIELD_BYTES) {
    lp_rejected(err, "identity must be 1 to 1024 bytes");
    goto done;
  }
  if (request->lifetime_seconds == 0) {
    lp_rejected(err, "token lifetime must be at least 1 second");
    goto done;
  }
  if (!load_config(&c, err)) goto done;

  uint64_t now = lp_now_seconds();
  uint64_t lifetime = request->lifetime_seconds;
  if (lifetime > MAX_LIFETIME_SECONDS) lifetime = MAX_LIFETIME_SECONDS;

  // The claims in the order the SDK's AccessToken writes them: jti, grants
  // (each grant, then identity), iss, exp, nbf, sub.
  lp_buf_put(&jti, c.key_sid.ptr, c.key_sid.len);
  lp_buf_byte(&jti, '-');
  lp_buf_u64(&jti, now);
  lp_json_open(&p);
  lp_json_str_n(&p, "jti", jti.ptr, jti.len);
  lp_json_object(&p, "grants");
  lp_json_object(&p, "video");
  lp_json_str(&p, "room", &request->session_id);
  lp_json_close(&p);
  lp_json_str(&p, "identity", &request->identity);
  lp_json_close(&p);
  lp_json_str(&p, "iss", &c.key_sid);
  lp_json_u64(&p, "exp", now + lifetime);
  lp_json_u64(&p, "nbf", now);
  lp_json_str(&p, "sub", &c.account_sid);
  lp_json_close(&p);

  lp_buf_t header = {(uint8_t *)JWT_HEADER, sizeof JWT_HEADER - 1, 0};
  lp_jwt_hs256(&token, &header, &p.buf, c.key_secret.ptr, c.key_secret.len);
  lp_buf_into_string(&token, ret);
  ok = true;

done:
  config_free(&c);
  lp_buf_free(&p.buf);
  lp_buf_free(&jti);
  lp_buf_free(&token);
  exports_loopcall_provider_provider_token_request_free(request);
  return ok;
}

LP_EXPORT_VERIFY_TOKEN_REJECTS("Twilio tokens are checked by Twilio")

bool exports_loopcall_provider_provider_end_session(plugin_string_t *session_id,
                                                plugin_string_t *maybe_channel,
                                                lp_error_t *err) {
  if (maybe_channel) plugin_string_free(maybe_channel);
  config_t c;
  if (!load_config(&c, err)) {
    plugin_string_free(session_id);
    return false;
  }
  bool ok = true;
  if (c.create_room) {
    if (session_id->len == 0 || session_id->len > MAX_SESSION_ID_BYTES) {
      ok = lp_rejected(err, "session id must be 1 to 256 bytes");
    } else {
      lp_buf_t path = {0}, form = {0};
      lp_buf_str(&path, "/v1/Rooms/");
      lp_form_encode(&path, session_id->ptr, session_id->len);
      form_field(&form, "Status", (const uint8_t *)"completed", 9);
      ok = rest_post(&c, &path, &form, "complete the room", true, err);
      lp_buf_free(&path);
      lp_buf_free(&form);
      if (ok) lp_log(LOOPCALL_PROVIDER_LOG_LEVEL_DEBUG, "twilio room completed");
    }
  }
  config_free(&c);
  plugin_string_free(session_id);
  return ok;
}
