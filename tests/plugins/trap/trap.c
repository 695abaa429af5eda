// Hostile test plugin: `create-session` executes an unreachable instruction. The host
// must turn the trap into a provider error and keep serving.
#include "loop_plugin.h"

void exports_loopcall_provider_provider_describe(exports_loopcall_provider_provider_provider_info_t *ret) {
  lp_describe_all(ret, "trap", "0.1.0", false);
}

bool exports_loopcall_provider_provider_create_session(
    exports_loopcall_provider_provider_session_request_t *request,
    exports_loopcall_provider_provider_session_t *ret, lp_error_t *err) {
  exports_loopcall_provider_provider_session_request_free(request);
  __builtin_trap();
}

bool exports_loopcall_provider_provider_issue_token(
    exports_loopcall_provider_provider_token_request_t *request, plugin_string_t *ret,
    lp_error_t *err) {
  exports_loopcall_provider_provider_token_request_free(request);
  return lp_rejected(err, "trap issues no tokens");
}

bool exports_loopcall_provider_provider_verify_token(plugin_string_t *token,
                                                 plugin_string_t *session_id,
                                                 exports_loopcall_provider_provider_grant_t *ret,
                                                 lp_error_t *err) {
  plugin_string_free(token);
  plugin_string_free(session_id);
  return lp_rejected(err, "trap verifies no tokens");
}
