// A provider that does nothing: fixed session and tokens, no settings, no host
// calls. What a call through it costs is what the host's sandbox costs (a fresh
// instance, three export calls, teardown); loop-bench providers measures it as
// the floor under every real plugin.
#include "loop_vendor.h"

void exports_loopcall_provider_provider_describe(exports_loopcall_provider_provider_provider_info_t *ret) {
  lp_describe_all(ret, "empty", "0.2.0", false);
}

bool exports_loopcall_provider_provider_create_session(
    exports_loopcall_provider_provider_session_request_t *request,
    exports_loopcall_provider_provider_session_t *ret, lp_error_t *err) {
  (void)err;
  exports_loopcall_provider_provider_session_request_free(request);
  lp_string_cstr(&ret->session_id, "empty-session");
  lp_string_cstr(&ret->api_key, "empty");
  return true;
}

bool exports_loopcall_provider_provider_issue_token(
    exports_loopcall_provider_provider_token_request_t *request, plugin_string_t *ret,
    lp_error_t *err) {
  (void)err;
  exports_loopcall_provider_provider_token_request_free(request);
  lp_string_cstr(ret, "empty-token");
  return true;
}

LP_EXPORT_VERIFY_TOKEN_REJECTS("empty verifies no tokens")

LP_EXPORT_END_SESSION_NOTHING_TO_CLOSE()
