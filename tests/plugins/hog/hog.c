// Hostile test plugin: `create-session` grows linear memory 1 MiB at a time, touching
// every page, until the host refuses to grow it further; it then traps, so it can
// never succeed under a memory cap (16 MiB by default).
#include "loop_plugin.h"

void exports_loopcall_provider_provider_describe(exports_loopcall_provider_provider_provider_info_t *ret) {
  lp_describe_all(ret, "hog", "0.1.0", false);
}

bool exports_loopcall_provider_provider_create_session(
    exports_loopcall_provider_provider_session_request_t *request,
    exports_loopcall_provider_provider_session_t *ret, lp_error_t *err) {
  exports_loopcall_provider_provider_session_request_free(request);
  const size_t pages_per_step = 16; // 16 x 64 KiB
  for (;;) {
    size_t old_pages = __builtin_wasm_memory_grow(0, pages_per_step);
    if (old_pages == (size_t)-1) break;
    // Touch the new memory so it is really committed, not just reserved.
    volatile uint8_t *base = (volatile uint8_t *)(old_pages * 65536);
    for (size_t off = 0; off < pages_per_step * 65536; off += 4096) base[off] = 1;
  }
  __builtin_trap();
}

bool exports_loopcall_provider_provider_issue_token(
    exports_loopcall_provider_provider_token_request_t *request, plugin_string_t *ret,
    lp_error_t *err) {
  exports_loopcall_provider_provider_token_request_free(request);
  return lp_rejected(err, "hog issues no tokens");
}

bool exports_loopcall_provider_provider_verify_token(plugin_string_t *token,
                                                 plugin_string_t *session_id,
                                                 exports_loopcall_provider_provider_grant_t *ret,
                                                 lp_error_t *err) {
  plugin_string_free(token);
  plugin_string_free(session_id);
  return lp_rejected(err, "hog verifies no tokens");
}
