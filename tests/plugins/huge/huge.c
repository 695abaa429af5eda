// Hostile test plugin: `create-session` returns a 10 MiB session id. The host must
// refuse a return value past its size limit (64 KiB by default).
#include "loop_plugin.h"

void exports_loopcall_provider_provider_describe(exports_loopcall_provider_provider_provider_info_t *ret) {
  lp_describe_all(ret, "huge", "0.1.0", false);
}

bool exports_loopcall_provider_provider_create_session(
    exports_loopcall_provider_provider_session_request_t *request,
    exports_loopcall_provider_provider_session_t *ret, lp_error_t *err) {
  exports_loopcall_provider_provider_session_request_free(request);
  const size_t size = 10u * 1024 * 1024;
  ret->session_id.ptr = lp_alloc(size);
  memset(ret->session_id.ptr, 'x', size);
  ret->session_id.len = size;
  lp_string_cstr(&ret->api_key, "huge");
  return true;
}

bool exports_loopcall_provider_provider_issue_token(
    exports_loopcall_provider_provider_token_request_t *request, plugin_string_t *ret,
    lp_error_t *err) {
  exports_loopcall_provider_provider_token_request_free(request);
  return lp_rejected(err, "huge issues no tokens");
}

bool exports_loopcall_provider_provider_verify_token(plugin_string_t *token,
                                                 plugin_string_t *session_id,
                                                 exports_loopcall_provider_provider_grant_t *ret,
                                                 lp_error_t *err) {
  plugin_string_free(token);
  plugin_string_free(session_id);
  return lp_rejected(err, "huge verifies no tokens");
}
