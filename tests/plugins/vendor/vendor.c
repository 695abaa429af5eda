// Test plugin shaped like a real vendor's provider: sessions come from the
// vendor's HTTP API, tokens are signed locally with the account secret.
//
// Settings ([plugins.<name>.settings]):
//   api_url     base URL of the vendor API; its origin must be in allowed_hosts
//   api_key     account key; returned to clients as `apiKey`
//   api_secret  account secret; never leaves the plugin except as MACs
//   timeout_ms  per-request timeout, 1..60000 (default 3000)
//
// create-session: POST <api_url>/v1/sessions
//   Authorization: Bearer <api_key>.<unix seconds>.<base64url(HMAC-SHA256(api_secret,
//                  "<api_key>.<unix seconds>"))>
//   body {"callId":"...","callType":"audio"|"audio-video"[,"channel":"..."]}
//   (the caller's and callee's identities are not sent: the vendor does not need them)
//   expects 2xx with {"sessionId":"..."}.
//   5xx, 429, timeouts and transport failures -> unavailable (the host may retry or
//   fall back); 401/403 -> misconfigured (the credentials are wrong); other 4xx ->
//   rejected; a missing setting or an api_url outside allowed_hosts -> misconfigured.
// issue-token: vt1.<base64url(claims JSON)>.<base64url(HMAC-SHA256(api_secret,
//   "vt1." claims))>, claims {"sid","role","sub","name","iat","exp","key"}.
// verify-token: rejected; the vendor's own service checks its tokens.
#include "loop_plugin.h"

#define DEFAULT_TIMEOUT_MS 3000
#define MAX_TIMEOUT_MS 60000
#define MAX_SESSION_ID_BYTES 256
#define MAX_FIELD_BYTES 1024
#define MAX_LIFETIME_SECONDS (30u * 24 * 3600)

void exports_loopcall_provider_provider_describe(exports_loopcall_provider_provider_provider_info_t *ret) {
  lp_describe_all(ret, "vendor", "0.1.0", false);
}

typedef struct {
  plugin_string_t api_url, api_key, api_secret;
  uint32_t timeout_ms;
} account_t;

static void account_free(account_t *a) {
  plugin_string_free(&a->api_url);
  plugin_string_free(&a->api_key);
  plugin_string_free(&a->api_secret);
}

static bool load_account(account_t *a, lp_error_t *err) {
  *a = (account_t){0};
  a->timeout_ms = DEFAULT_TIMEOUT_MS;
  if (!lp_setting_nonempty("api_url", &a->api_url))
    return lp_misconfigured(err, "setting `api_url` is not set");
  if (!lp_setting_nonempty("api_key", &a->api_key)) {
    account_free(a);
    return lp_misconfigured(err, "setting `api_key` is not set");
  }
  if (!lp_setting_nonempty("api_secret", &a->api_secret)) {
    account_free(a);
    return lp_misconfigured(err, "setting `api_secret` is not set");
  }
  plugin_string_t t;
  if (lp_setting_nonempty("timeout_ms", &t)) {
    uint64_t v = 0;
    bool valid = t.len <= 6;
    for (size_t i = 0; valid && i < t.len; i++) {
      valid = t.ptr[i] >= '0' && t.ptr[i] <= '9';
      v = v * 10 + (uint64_t)(t.ptr[i] - '0');
    }
    plugin_string_free(&t);
    if (!valid || v == 0 || v > MAX_TIMEOUT_MS) {
      account_free(a);
      return lp_misconfigured(err, "setting `timeout_ms` must be a whole number from 1 to 60000");
    }
    a->timeout_ms = (uint32_t)v;
  }
  return true;
}

// The bearer credential: the key, a timestamp, and a MAC over both, so the secret
// itself never crosses the network and a captured header goes stale.
static void bearer(lp_buf_t *out, const account_t *a) {
  lp_buf_t signed_part = {0};
  lp_buf_put(&signed_part, a->api_key.ptr, a->api_key.len);
  lp_buf_byte(&signed_part, '.');
  lp_buf_u64(&signed_part, lp_now_seconds());
  plugin_list_u8_t mac;
  lp_hmac_sha256(a->api_secret.ptr, a->api_secret.len, signed_part.ptr, signed_part.len, &mac);
  lp_buf_str(out, "Bearer ");
  lp_buf_put(out, signed_part.ptr, signed_part.len);
  lp_buf_byte(out, '.');
  lp_b64url_encode(out, mac.ptr, mac.len);
  plugin_list_u8_free(&mac);
  lp_buf_free(&signed_part);
}

// ---- just enough JSON to read {"sessionId": "..."} --------------------------

typedef struct {
  const uint8_t *p, *end;
} json_t;

static void json_ws(json_t *j) {
  while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
    j->p++;
}

static int hex_value(uint8_t c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static bool json_hex4(json_t *j, uint32_t *out) {
  if (j->end - j->p < 4) return false;
  uint32_t v = 0;
  for (int i = 0; i < 4; i++) {
    int h = hex_value(j->p[i]);
    if (h < 0) return false;
    v = (v << 4) | (uint32_t)h;
  }
  j->p += 4;
  *out = v;
  return true;
}

static void put_utf8(lp_buf_t *b, uint32_t cp) {
  if (cp < 0x80) {
    lp_buf_byte(b, (uint8_t)cp);
  } else if (cp < 0x800) {
    lp_buf_byte(b, (uint8_t)(0xC0 | (cp >> 6)));
    lp_buf_byte(b, (uint8_t)(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    lp_buf_byte(b, (uint8_t)(0xE0 | (cp >> 12)));
    lp_buf_byte(b, (uint8_t)(0x80 | ((cp >> 6) & 0x3F)));
    lp_buf_byte(b, (uint8_t)(0x80 | (cp & 0x3F)));
  } else {
    lp_buf_byte(b, (uint8_t)(0xF0 | (cp >> 18)));
    lp_buf_byte(b, (uint8_t)(0x80 | ((cp >> 12) & 0x3F)));
    lp_buf_byte(b, (uint8_t)(0x80 | ((cp >> 6) & 0x3F)));
    lp_buf_byte(b, (uint8_t)(0x80 | (cp & 0x3F)));
  }
}

// Reads a JSON string at the cursor; decoded into `out` when it is not NULL.
static bool json_string(json_t *j, lp_buf_t *out) {
  if (j->p >= j->end || *j->p != '"') return false;
  j->p++;
  while (j->p < j->end) {
    uint8_t c = *j->p++;
    if (c == '"') return true;
    if (c < 0x20) return false;
    if (c != '\\') {
      if (out) lp_buf_byte(out, c);
      continue;
    }
    if (j->p >= j->end) return false;
    uint8_t e = *j->p++;
    uint32_t cp;
    switch (e) {
    case '"': case '\\': case '/': cp = e; break;
    case 'b': cp = '\b'; break;
    case 'f': cp = '\f'; break;
    case 'n': cp = '\n'; break;
    case 'r': cp = '\r'; break;
    case 't': cp = '\t'; break;
    case 'u':
      if (!json_hex4(j, &cp)) return false;
      if (cp >= 0xD800 && cp <= 0xDBFF) {
        uint32_t lo;
        if (j->end - j->p < 2 || j->p[0] != '\\' || j->p[1] != 'u') return false;
        j->p += 2;
        if (!json_hex4(j, &lo) || lo < 0xDC00 || lo > 0xDFFF) return false;
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
      } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
        return false;
      }
      break;
    default:
      return false;
    }
    if (out) put_utf8(out, cp);
  }
  return false;
}

// Skips any JSON value; nesting is bounded so hostile input cannot exhaust the stack.
static bool json_skip(json_t *j, int depth) {
  if (depth > 32) return false;
  json_ws(j);
  if (j->p >= j->end) return false;
  uint8_t c = *j->p;
  if (c == '"') return json_string(j, NULL);
  if (c == '{' || c == '[') {
    uint8_t close = c == '{' ? '}' : ']';
    j->p++;
    json_ws(j);
    if (j->p < j->end && *j->p == close) {
      j->p++;
      return true;
    }
    for (;;) {
      if (c == '{') {
        json_ws(j);
        if (!json_string(j, NULL)) return false;
        json_ws(j);
        if (j->p >= j->end || *j->p++ != ':') return false;
      }
      if (!json_skip(j, depth + 1)) return false;
      json_ws(j);
      if (j->p >= j->end) return false;
      uint8_t sep = *j->p++;
      if (sep == close) return true;
      if (sep != ',') return false;
    }
  }
  // Numbers, true, false, null: the characters they are made of.
  const uint8_t *start = j->p;
  while (j->p < j->end && ((*j->p >= '0' && *j->p <= '9') || (*j->p >= 'a' && *j->p <= 'z') ||
                           *j->p == '-' || *j->p == '+' || *j->p == '.' || *j->p == 'E'))
    j->p++;
  return j->p > start;
}

// Finds the top-level member "sessionId" of a JSON object and decodes its string value.
static bool json_session_id(const uint8_t *body, size_t len, lp_buf_t *out) {
  json_t j = {body, body + len};
  json_ws(&j);
  if (j.p >= j.end || *j.p++ != '{') return false;
  json_ws(&j);
  if (j.p < j.end && *j.p == '}') return false;
  for (;;) {
    lp_buf_t key = {0};
    json_ws(&j);
    bool key_ok = json_string(&j, &key);
    bool is_session_id = key_ok && key.len == 9 && memcmp(key.ptr, "sessionId", 9) == 0;
    lp_buf_free(&key);
    if (!key_ok) return false;
    json_ws(&j);
    if (j.p >= j.end || *j.p++ != ':') return false;
    json_ws(&j);
    if (is_session_id) return j.p < j.end && *j.p == '"' && json_string(&j, out);
    if (!json_skip(&j, 1)) return false;
    json_ws(&j);
    if (j.p >= j.end || *j.p++ != ',') return false;
  }
}

// ---- exports ---------------------------------------------------------------

static bool http_failure(lp_error_t *err, const loopcall_provider_http_http_error_t *e) {
  lp_buf_t msg = {0};
  uint8_t tag = LOOPCALL_PROVIDER_TYPES_PROVIDER_ERROR_UNAVAILABLE;
  switch (e->tag) {
  case LOOPCALL_PROVIDER_HTTP_HTTP_ERROR_DENIED:
    tag = LOOPCALL_PROVIDER_TYPES_PROVIDER_ERROR_MISCONFIGURED;
    lp_buf_str(&msg, "the host denied the request to api_url (check allowed_hosts): ");
    lp_buf_put(&msg, e->val.denied.ptr, e->val.denied.len);
    break;
  case LOOPCALL_PROVIDER_HTTP_HTTP_ERROR_TIMEOUT:
    lp_buf_str(&msg, "the vendor API timed out");
    break;
  case LOOPCALL_PROVIDER_HTTP_HTTP_ERROR_TOO_LARGE:
    lp_buf_str(&msg, "the vendor API response was too large");
    break;
  case LOOPCALL_PROVIDER_HTTP_HTTP_ERROR_TRANSPORT:
    lp_buf_str(&msg, "cannot reach the vendor API: ");
    lp_buf_put(&msg, e->val.transport.ptr, e->val.transport.len);
    break;
  default:
    tag = LOOPCALL_PROVIDER_TYPES_PROVIDER_ERROR_MISCONFIGURED;
    lp_buf_str(&msg, "invalid request to the vendor API (check api_url): ");
    lp_buf_put(&msg, e->val.invalid_request.ptr, e->val.invalid_request.len);
    break;
  }
  err->tag = tag;
  lp_buf_into_string(&msg, &err->val.unavailable);
  return false;
}

static bool status_failure(lp_error_t *err, uint16_t status) {
  lp_buf_t msg = {0};
  uint8_t tag;
  if (status == 401 || status == 403) {
    tag = LOOPCALL_PROVIDER_TYPES_PROVIDER_ERROR_MISCONFIGURED;
    lp_buf_str(&msg, "the vendor API refused the credentials (check api_key/api_secret): HTTP ");
  } else if (status == 429 || status >= 500) {
    tag = LOOPCALL_PROVIDER_TYPES_PROVIDER_ERROR_UNAVAILABLE;
    lp_buf_str(&msg, "the vendor API is unavailable: HTTP ");
  } else if (status >= 400) {
    tag = LOOPCALL_PROVIDER_TYPES_PROVIDER_ERROR_REJECTED;
    lp_buf_str(&msg, "the vendor API rejected the session: HTTP ");
  } else {
    tag = LOOPCALL_PROVIDER_TYPES_PROVIDER_ERROR_UNAVAILABLE;
    lp_buf_str(&msg, "unexpected answer from the vendor API: HTTP ");
  }
  lp_buf_u64(&msg, status);
  err->tag = tag;
  lp_buf_into_string(&msg, &err->val.unavailable);
  return false;
}

static plugin_tuple2_string_string_t header(const char *name, lp_buf_t *value) {
  plugin_tuple2_string_string_t h;
  lp_string_cstr(&h.f0, name);
  lp_buf_into_string(value, &h.f1);
  return h;
}

bool exports_loopcall_provider_provider_create_session(
    exports_loopcall_provider_provider_session_request_t *request,
    exports_loopcall_provider_provider_session_t *ret, lp_error_t *err) {
  account_t a;
  if (!load_account(&a, err)) {
    exports_loopcall_provider_provider_session_request_free(request);
    return false;
  }

  lp_buf_t url = {0};
  size_t base_len = a.api_url.len;
  while (base_len && a.api_url.ptr[base_len - 1] == '/') base_len--;
  lp_buf_put(&url, a.api_url.ptr, base_len);
  lp_buf_str(&url, "/v1/sessions");

  lp_buf_t body = {0};
  lp_buf_str(&body, "{\"callId\":\"");
  lp_json_escape(&body, request->call_id.ptr, request->call_id.len);
  lp_buf_str(&body, "\",\"callType\":\"");
  lp_buf_str(&body, request->call_type == LOOPCALL_PROVIDER_TYPES_CALL_TYPE_AUDIO ? "audio"
                                                                              : "audio-video");
  lp_buf_byte(&body, '"');
  if (request->channel.is_some) {
    lp_buf_str(&body, ",\"channel\":\"");
    lp_json_escape(&body, request->channel.val.ptr, request->channel.val.len);
    lp_buf_byte(&body, '"');
  }
  lp_buf_byte(&body, '}');
  exports_loopcall_provider_provider_session_request_free(request);

  lp_buf_t auth = {0}, content_type = {0}, accept = {0};
  bearer(&auth, &a);
  lp_buf_str(&content_type, "application/json");
  lp_buf_str(&accept, "application/json");
  plugin_tuple2_string_string_t headers[3] = {
      header("authorization", &auth),
      header("content-type", &content_type),
      header("accept", &accept),
  };

  loopcall_provider_http_request_t req = {0};
  req.method = LOOPCALL_PROVIDER_HTTP_METHOD_POST;
  lp_buf_into_string(&url, &req.url);
  req.headers.ptr = headers;
  req.headers.len = 3;
  req.body.is_some = true;
  req.body.val.ptr = body.ptr;
  req.body.val.len = body.len;
  req.timeout_ms.is_some = true;
  req.timeout_ms.val = a.timeout_ms;

  loopcall_provider_http_response_t resp;
  loopcall_provider_http_http_error_t http_err;
  bool sent = loopcall_provider_http_send(&req, &resp, &http_err);
  plugin_string_free(&req.url);
  for (size_t i = 0; i < 3; i++) plugin_tuple2_string_string_free(&headers[i]);
  lp_buf_free(&body);

  bool ok = false;
  if (!sent) {
    http_failure(err, &http_err);
    loopcall_provider_http_http_error_free(&http_err);
  } else {
    if (resp.status < 200 || resp.status > 299) {
      status_failure(err, resp.status);
    } else {
      lp_buf_t sid = {0};
      if (!json_session_id(resp.body.ptr, resp.body.len, &sid) || sid.len == 0) {
        lp_unavailable(err, "the vendor API answered without a sessionId");
      } else if (sid.len > MAX_SESSION_ID_BYTES || !lp_utf8_valid(sid.ptr, sid.len)) {
        lp_unavailable(err, "the vendor API returned an unusable sessionId");
      } else {
        lp_buf_into_string(&sid, &ret->session_id);
        lp_string_from(&ret->api_key, a.api_key.ptr, a.api_key.len);
        lp_log(LOOPCALL_PROVIDER_LOG_LEVEL_DEBUG, "vendor session created");
        ok = true;
      }
      lp_buf_free(&sid);
    }
    loopcall_provider_http_response_free(&resp);
  }
  account_free(&a);
  return ok;
}

static const char *role_name(loopcall_provider_types_role_t role) {
  switch (role) {
  case LOOPCALL_PROVIDER_TYPES_ROLE_PUBLISHER: return "publisher";
  case LOOPCALL_PROVIDER_TYPES_ROLE_SUBSCRIBER: return "subscriber";
  default: return "moderator";
  }
}

bool exports_loopcall_provider_provider_issue_token(
    exports_loopcall_provider_provider_token_request_t *request, plugin_string_t *ret,
    lp_error_t *err) {
  bool ok = false;
  account_t a = {0};
  lp_buf_t claims = {0}, token = {0};

  if (request->session_id.len == 0 || request->session_id.len > MAX_SESSION_ID_BYTES) {
    lp_rejected(err, "session id must be 1 to 256 bytes");
    goto done;
  }
  if (request->identity.len > MAX_FIELD_BYTES || request->display_name.len > MAX_FIELD_BYTES) {
    lp_rejected(err, "identity and display name must be at most 1024 bytes");
    goto done;
  }
  if (request->lifetime_seconds == 0 || request->lifetime_seconds > MAX_LIFETIME_SECONDS) {
    lp_rejected(err, "token lifetime must be from 1 second to 30 days");
    goto done;
  }
  if (!load_account(&a, err)) goto done;

  uint64_t now = lp_now_seconds();
  lp_buf_str(&claims, "{\"sid\":\"");
  lp_json_escape(&claims, request->session_id.ptr, request->session_id.len);
  lp_buf_str(&claims, "\",\"role\":\"");
  lp_buf_str(&claims, role_name(request->role));
  lp_buf_str(&claims, "\",\"sub\":\"");
  lp_json_escape(&claims, request->identity.ptr, request->identity.len);
  lp_buf_str(&claims, "\",\"name\":\"");
  lp_json_escape(&claims, request->display_name.ptr, request->display_name.len);
  lp_buf_str(&claims, "\",\"iat\":");
  lp_buf_u64(&claims, now);
  lp_buf_str(&claims, ",\"exp\":");
  lp_buf_u64(&claims, now + request->lifetime_seconds);
  lp_buf_str(&claims, ",\"key\":\"");
  lp_json_escape(&claims, a.api_key.ptr, a.api_key.len);
  lp_buf_str(&claims, "\"}");

  lp_buf_str(&token, "vt1.");
  lp_b64url_encode(&token, claims.ptr, claims.len);
  size_t signed_len = token.len;
  plugin_list_u8_t mac;
  lp_hmac_sha256(a.api_secret.ptr, a.api_secret.len, token.ptr, signed_len, &mac);
  lp_buf_byte(&token, '.');
  lp_b64url_encode(&token, mac.ptr, mac.len);
  plugin_list_u8_free(&mac);
  lp_buf_into_string(&token, ret);
  ok = true;

done:
  account_free(&a);
  lp_buf_free(&claims);
  lp_buf_free(&token);
  exports_loopcall_provider_provider_token_request_free(request);
  return ok;
}

bool exports_loopcall_provider_provider_verify_token(plugin_string_t *token,
                                                 plugin_string_t *session_id,
                                                 exports_loopcall_provider_provider_grant_t *ret,
                                                 lp_error_t *err) {
  plugin_string_free(token);
  plugin_string_free(session_id);
  return lp_rejected(err, "vendor tokens are checked by the vendor's service");
}
