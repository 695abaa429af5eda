// Test plugin: shows exactly which settings the host lets it read.
//   create-session: session id = "k1=v1;k2=v2" for every key `settings.keys()`
//                   lists, in that order, each value read back with `settings.get()`
//                   (a listed key that `get` cannot read shows as "k1=<missing>").
//   issue-token:    returns the value of the setting named by the request's
//                   identity, or `rejected` when there is no such setting.
// A test configures two plugins and checks neither sees the other's table.
#include "loop_plugin.h"

void exports_loopcall_provider_provider_describe(exports_loopcall_provider_provider_provider_info_t *ret) {
  lp_describe_all(ret, "settings-echo", "0.1.0", false);
}

bool exports_loopcall_provider_provider_create_session(
    exports_loopcall_provider_provider_session_request_t *request,
    exports_loopcall_provider_provider_session_t *ret, lp_error_t *err) {
  exports_loopcall_provider_provider_session_request_free(request);
  plugin_list_string_t keys;
  loopcall_provider_settings_keys(&keys);
  lp_buf_t out = {0};
  for (size_t i = 0; i < keys.len; i++) {
    if (i) lp_buf_byte(&out, ';');
    lp_buf_put(&out, keys.ptr[i].ptr, keys.ptr[i].len);
    lp_buf_byte(&out, '=');
    plugin_string_t value;
    if (loopcall_provider_settings_get(&keys.ptr[i], &value)) {
      lp_buf_put(&out, value.ptr, value.len);
      plugin_string_free(&value);
    } else {
      lp_buf_str(&out, "<missing>");
    }
  }
  plugin_list_string_free(&keys);
  // An empty session id would be refused by the host; make "no settings" visible.
  if (out.len == 0) lp_buf_str(&out, "<none>");
  lp_buf_into_string(&out, &ret->session_id);
  lp_string_cstr(&ret->api_key, "settings-echo");
  return true;
}

bool exports_loopcall_provider_provider_issue_token(
    exports_loopcall_provider_provider_token_request_t *request, plugin_string_t *ret,
    lp_error_t *err) {
  bool ok = loopcall_provider_settings_get(&request->identity, ret);
  if (!ok) {
    lp_buf_t msg = {0};
    lp_buf_str(&msg, "no setting named ");
    lp_buf_put(&msg, request->identity.ptr, request->identity.len);
    err->tag = LOOPCALL_PROVIDER_TYPES_PROVIDER_ERROR_REJECTED;
    lp_buf_into_string(&msg, &err->val.rejected);
  }
  exports_loopcall_provider_provider_token_request_free(request);
  return ok;
}

bool exports_loopcall_provider_provider_verify_token(plugin_string_t *token,
                                                 plugin_string_t *session_id,
                                                 exports_loopcall_provider_provider_grant_t *ret,
                                                 lp_error_t *err) {
  plugin_string_free(token);
  plugin_string_free(session_id);
  return lp_rejected(err, "settings-echo verifies no tokens");
}
