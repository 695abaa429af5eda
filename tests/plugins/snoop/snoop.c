// Hostile test plugin: `create-session` fetches the URL in its setting `target`
// through the host's HTTP import. Pointed at a host outside `allowed_hosts`, the
// host must deny it before connecting; the plugin then reports the host's text as
// `unavailable`. If the request goes through, the response body becomes the
// session id, which lets a test prove what the plugin could reach.
#include "loop_plugin.h"

void exports_loopcall_provider_provider_describe(exports_loopcall_provider_provider_provider_info_t *ret) {
  lp_describe_all(ret, "snoop", "0.1.0", false);
}

static bool http_failure(lp_error_t *err, const loopcall_provider_http_http_error_t *e) {
  lp_buf_t msg = {0};
  switch (e->tag) {
  case LOOPCALL_PROVIDER_HTTP_HTTP_ERROR_DENIED:
    lp_buf_str(&msg, "denied: ");
    lp_buf_put(&msg, e->val.denied.ptr, e->val.denied.len);
    break;
  case LOOPCALL_PROVIDER_HTTP_HTTP_ERROR_TIMEOUT:
    lp_buf_str(&msg, "timeout");
    break;
  case LOOPCALL_PROVIDER_HTTP_HTTP_ERROR_TOO_LARGE:
    lp_buf_str(&msg, "too large");
    break;
  case LOOPCALL_PROVIDER_HTTP_HTTP_ERROR_TRANSPORT:
    lp_buf_str(&msg, "transport: ");
    lp_buf_put(&msg, e->val.transport.ptr, e->val.transport.len);
    break;
  default:
    lp_buf_str(&msg, "invalid request: ");
    lp_buf_put(&msg, e->val.invalid_request.ptr, e->val.invalid_request.len);
    break;
  }
  err->tag = LOOPCALL_PROVIDER_TYPES_PROVIDER_ERROR_UNAVAILABLE;
  lp_buf_into_string(&msg, &err->val.unavailable);
  return false;
}

bool exports_loopcall_provider_provider_create_session(
    exports_loopcall_provider_provider_session_request_t *request,
    exports_loopcall_provider_provider_session_t *ret, lp_error_t *err) {
  exports_loopcall_provider_provider_session_request_free(request);
  plugin_string_t target;
  if (!lp_setting_nonempty("target", &target))
    return lp_misconfigured(err, "setting `target` is not set");

  loopcall_provider_http_request_t req = {0};
  req.method = LOOPCALL_PROVIDER_HTTP_METHOD_GET;
  req.url = target;
  loopcall_provider_http_response_t resp;
  loopcall_provider_http_http_error_t http_err;
  bool sent = loopcall_provider_http_send(&req, &resp, &http_err);
  plugin_string_free(&target);
  if (!sent) {
    bool r = http_failure(err, &http_err);
    loopcall_provider_http_http_error_free(&http_err);
    return r;
  }
  bool ok = false;
  if (resp.body.len == 0) {
    lp_unavailable(err, "empty response body");
  } else if (!lp_utf8_valid(resp.body.ptr, resp.body.len)) {
    lp_unavailable(err, "response body is not UTF-8");
  } else {
    lp_string_from(&ret->session_id, resp.body.ptr, resp.body.len);
    lp_string_cstr(&ret->api_key, "snoop");
    ok = true;
  }
  loopcall_provider_http_response_free(&resp);
  return ok;
}

bool exports_loopcall_provider_provider_issue_token(
    exports_loopcall_provider_provider_token_request_t *request, plugin_string_t *ret,
    lp_error_t *err) {
  exports_loopcall_provider_provider_token_request_free(request);
  return lp_rejected(err, "snoop issues no tokens");
}

bool exports_loopcall_provider_provider_verify_token(plugin_string_t *token,
                                                 plugin_string_t *session_id,
                                                 exports_loopcall_provider_provider_grant_t *ret,
                                                 lp_error_t *err) {
  plugin_string_free(token);
  plugin_string_free(session_id);
  return lp_rejected(err, "snoop verifies no tokens");
}
