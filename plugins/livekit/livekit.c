// livekit: calls carried by a LiveKit server (self-hosted or LiveKit Cloud).
//
// Every call gets a room of its own, named "loop-" + 32 random hex digits; that
// name is the session id Loop returns. Tokens are LiveKit access tokens (HS256
// JWTs signed with the API secret), claim for claim what the `livekit-api` SDK's
// AccessToken.to_jwt() issues for the same identity, name, room and grants.
//
// Settings ([plugins.livekit.settings]); README.md says more:
//   url                    websocket URL clients connect to (ws:// or wss://); returned
//                          to clients as `apiKey`
//   api_key, api_secret    the LiveKit API key pair
//   create_room            create the room ahead of the call (default false: LiveKit
//                          creates it when the first participant joins)
//   empty_timeout_seconds  with create_room: how long an empty room lives (300)
//   max_participants       with create_room: the room's participant limit (2)
//   timeout_ms             per-request timeout of the room API (2000)
//   retries                extra attempts after a timeout, transport failure, 429 or 5xx (2)
//
// Room API (Twirp, JSON), only with create_room:
//   create-session: POST <url as http(s)>/twirp/livekit.RoomService/CreateRoom
//                   {"name","empty_timeout","max_participants"}
//   end-session:    POST <url as http(s)>/twirp/livekit.RoomService/DeleteRoom {"room"}
//   both with Authorization: Bearer <an access token with video.roomCreate>, as the SDK's
//   RoomService signs them. 401/403 -> misconfigured; 429, 5xx, timeouts -> retried,
//   then unavailable; other answers -> misconfigured.
#include "loop_vendor.h"

#define ROOM_RANDOM_BYTES 16
#define MAX_SESSION_ID_BYTES 256
#define MAX_FIELD_BYTES 1024
// The room API token lives long enough for one request and its retries.
#define SERVICE_TOKEN_SECONDS 600

typedef struct {
  plugin_string_t url, api_key, api_secret;
  bool create_room;
  uint64_t empty_timeout, max_participants, timeout_ms, retries;
} config_t;

static void config_free(config_t *c) {
  plugin_string_free(&c->url);
  plugin_string_free(&c->api_key);
  plugin_string_free(&c->api_secret);
}

static bool starts_with(const plugin_string_t *s, const char *prefix) {
  size_t n = strlen(prefix);
  return s->len >= n && memcmp(s->ptr, prefix, n) == 0;
}

// Length of the scheme and "://" of a usable `url`, or 0.
static size_t scheme_len(const plugin_string_t *url) {
  static const char *const schemes[] = {"wss://", "ws://", "https://", "http://"};
  for (size_t i = 0; i < 4; i++) {
    size_t n = strlen(schemes[i]);
    if (starts_with(url, schemes[i]) && url->len > n && url->ptr[n] != '/') return n;
  }
  return 0;
}

static bool load_config(config_t *c, lp_error_t *err) {
  *c = (config_t){0};
  if (!lp_vendor_setting_nonempty("url", &c->url)) return lp_missing_setting(err, "url");
  if (!scheme_len(&c->url)) {
    config_free(c);
    return lp_misconfigured(err, "setting `url` must be a ws://, wss://, http:// or https:// URL");
  }
  if (!lp_vendor_setting_nonempty("api_key", &c->api_key)) {
    config_free(c);
    return lp_missing_setting(err, "api_key");
  }
  if (!lp_vendor_setting_nonempty("api_secret", &c->api_secret)) {
    config_free(c);
    return lp_missing_setting(err, "api_secret");
  }
  if (!lp_setting_bool("create_room", false, &c->create_room, err) ||
      !lp_setting_u64("empty_timeout_seconds", 300, 0, 4294967295u, &c->empty_timeout, err) ||
      !lp_setting_u64("max_participants", 2, 0, 4294967295u, &c->max_participants, err) ||
      !lp_setting_u64("timeout_ms", 2000, 1, 60000, &c->timeout_ms, err) ||
      !lp_setting_u64("retries", 2, 0, 10, &c->retries, err)) {
    config_free(c);
    return false;
  }
  return true;
}

// The room API's origin and path: `url` with ws -> http, wss -> https, without
// query, fragment or trailing slash, as the SDK's TwirpClient makes it.
static void api_base(lp_buf_t *out, const plugin_string_t *url) {
  size_t n = scheme_len(url);
  if (starts_with(url, "wss://")) lp_buf_str(out, "https://");
  else if (starts_with(url, "ws://")) lp_buf_str(out, "http://");
  else lp_buf_put(out, url->ptr, n);
  size_t end = n;
  while (end < url->len && url->ptr[end] != '?' && url->ptr[end] != '#') end++;
  while (end > n && url->ptr[end - 1] == '/') end--;
  lp_buf_put(out, url->ptr + n, end - n);
}

static const uint8_t JWT_HEADER[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";

static void sign(lp_buf_t *out, const config_t *c, const lp_buf_t *payload) {
  lp_buf_t header = {(uint8_t *)JWT_HEADER, sizeof JWT_HEADER - 1, 0};
  lp_jwt_hs256(out, &header, payload, c->api_secret.ptr, c->api_secret.len);
}

// ---- the room API -------------------------------------------------------------

// The room API's Bearer token: what the SDK's RoomService sends, an access
// token with only the roomCreate grant (and VideoGrants' publish defaults), no
// identity. Made afresh for each attempt.
static bool service_token(const void *ctx, lp_buf_t *auth, lp_error_t *err) {
  (void)err;
  const config_t *c = ctx;
  uint64_t now = lp_now_seconds();
  lp_json_t p = {0};
  lp_json_open(&p);
  lp_json_object(&p, "video");
  lp_json_bool(&p, "roomCreate", true);
  lp_json_bool(&p, "canPublish", true);
  lp_json_bool(&p, "canSubscribe", true);
  lp_json_bool(&p, "canPublishData", true);
  lp_json_close(&p);
  lp_json_cstr(&p, "sub", "");
  lp_json_str(&p, "iss", &c->api_key);
  lp_json_u64(&p, "nbf", now);
  lp_json_u64(&p, "exp", now + SERVICE_TOKEN_SECONDS);
  lp_json_close(&p);
  lp_buf_str(auth, "Bearer ");
  sign(auth, c, &p.buf);
  lp_buf_free(&p.buf);
  return true;
}

// Calls RoomService `method` with the JSON `body` to do `what`. True on
// success; with `not_found_ok`, a 404 (the room is already gone) is success too.
static bool room_api(const config_t *c, const char *method, const char *what,
                     const lp_buf_t *body, bool not_found_ok, lp_error_t *err) {
  lp_buf_t url = {0};
  api_base(&url, &c->url);
  lp_buf_str(&url, "/twirp/livekit.RoomService/");
  lp_buf_str(&url, method);
  const lp_vendor_t room_service = {
      .api = "the LiveKit room API",
      .credentials = "`api_key` and `api_secret`",
      .url_setting = "`url` (its http(s) origin)",
      .timeout_ms = c->timeout_ms,
      .retries = c->retries,
      .auth_header = "authorization",
      .authorize = service_token,
      .ctx = c,
  };
  bool ok = lp_vendor_send(&room_service, LOOPCALL_PROVIDER_HTTP_METHOD_POST, &url,
                           "application/json", body, what, not_found_ok, NULL, err);
  lp_buf_free(&url);
  return ok;
}

// ---- exports ------------------------------------------------------------------

void exports_loopcall_provider_provider_describe(exports_loopcall_provider_provider_provider_info_t *ret) {
  lp_describe_all(ret, "livekit", "0.1.0", false);
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
    lp_json_t body = {0};
    lp_json_open(&body);
    lp_json_str_n(&body, "name", room.ptr, room.len);
    lp_json_u64(&body, "empty_timeout", c.empty_timeout);
    lp_json_u64(&body, "max_participants", c.max_participants);
    lp_json_close(&body);
    bool created = room_api(&c, "CreateRoom", "create the room", &body.buf, false, err);
    lp_buf_free(&body.buf);
    if (!created) {
      lp_buf_free(&room);
      config_free(&c);
      return false;
    }
    lp_log(LOOPCALL_PROVIDER_LOG_LEVEL_DEBUG, "livekit room created");
  }

  lp_buf_into_string(&room, &ret->session_id);
  ret->api_key = c.url; // ownership passes to the host
  c.url = (plugin_string_t){0};
  config_free(&c);
  return true;
}

bool exports_loopcall_provider_provider_issue_token(
    exports_loopcall_provider_provider_token_request_t *request, plugin_string_t *ret,
    lp_error_t *err) {
  bool ok = false;
  config_t c = {0};
  lp_json_t p = {0};
  lp_buf_t token = {0};

  if (request->session_id.len == 0 || request->session_id.len > MAX_SESSION_ID_BYTES) {
    lp_rejected(err, "session id must be 1 to 256 bytes");
    goto done;
  }
  if (request->identity.len == 0 || request->identity.len > MAX_FIELD_BYTES ||
      request->display_name.len > MAX_FIELD_BYTES) {
    lp_rejected(err, "identity must be 1 to 1024 bytes, display name at most 1024");
    goto done;
  }
  if (request->lifetime_seconds == 0) {
    lp_rejected(err, "token lifetime must be at least 1 second");
    goto done;
  }
  if (!load_config(&c, err)) goto done;

  // The claims in the order AccessToken.to_jwt() writes them: the Claims
  // dataclass without empty fields (name, then video in VideoGrants' field
  // order), then sub, iss, nbf, exp.
  uint64_t now = lp_now_seconds();
  lp_json_open(&p);
  if (request->display_name.len) lp_json_str(&p, "name", &request->display_name);
  lp_json_object(&p, "video");
  if (request->role == LOOPCALL_PROVIDER_TYPES_ROLE_MODERATOR) lp_json_bool(&p, "roomAdmin", true);
  lp_json_bool(&p, "roomJoin", true);
  lp_json_str(&p, "room", &request->session_id);
  bool publishes = request->role != LOOPCALL_PROVIDER_TYPES_ROLE_SUBSCRIBER;
  lp_json_bool(&p, "canPublish", publishes);
  lp_json_bool(&p, "canSubscribe", true);
  lp_json_bool(&p, "canPublishData", publishes);
  lp_json_close(&p);
  lp_json_str(&p, "sub", &request->identity);
  lp_json_str(&p, "iss", &c.api_key);
  lp_json_u64(&p, "nbf", now);
  lp_json_u64(&p, "exp", now + request->lifetime_seconds);
  lp_json_close(&p);

  sign(&token, &c, &p.buf);
  lp_buf_into_string(&token, ret);
  ok = true;

done:
  config_free(&c);
  lp_buf_free(&p.buf);
  lp_buf_free(&token);
  exports_loopcall_provider_provider_token_request_free(request);
  return ok;
}

LP_EXPORT_VERIFY_TOKEN_REJECTS("LiveKit tokens are checked by the LiveKit server")

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
      lp_json_t body = {0};
      lp_json_open(&body);
      lp_json_str(&body, "room", session_id);
      lp_json_close(&body);
      ok = room_api(&c, "DeleteRoom", "delete the room", &body.buf, true, err);
      lp_buf_free(&body.buf);
      if (ok) lp_log(LOOPCALL_PROVIDER_LOG_LEVEL_DEBUG, "livekit room deleted");
    }
  }
  config_free(&c);
  plugin_string_free(session_id);
  return ok;
}
