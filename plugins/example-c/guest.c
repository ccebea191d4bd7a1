// A sinker condition plugin in C, with the same behaviour as the Rust template.
//
// Config: a comma-separated list of measurement names, e.g. `cpu,mem`.
// A point matches when its measurement is one of them.
//
// Build: `./build.sh OUT.wasm` (needs clang-19, lld-19 and wasi-libc).
// Bindings (gen/) come from `wit-bindgen c`; see regen-bindings.sh.
//
// Memory rules of the generated bindings: arguments of exported functions are
// owned by us (free them), strings and lists we return must be malloc'ed (the
// bindings free them after the host has copied them), and what imported
// functions return is ours to free.

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "sinker.h"

// Set by `init`: the names, pointing into `names_buf`. A plugin instance is
// single-threaded.
static char *names_buf;
static char **names;
static size_t n_names;

static char *trim(char *s) {
  while (isspace((unsigned char)*s)) s++;
  char *end = s + strlen(s);
  while (end > s && isspace((unsigned char)end[-1])) *--end = '\0';
  return s;
}

static bool is_name(const sinker_string_t *m) {
  for (size_t i = 0; i < n_names; i++)
    if (strlen(names[i]) == m->len && memcmp(names[i], m->ptr, m->len) == 0) return true;
  return false;
}

bool exports_sinker_init(sinker_string_t *config, sinker_string_t *err) {
  free(names_buf);
  free(names);
  n_names = 0;
  names_buf = strndup((const char *)config->ptr, config->len);
  names = malloc((config->len / 2 + 1) * sizeof *names);  // at most this many names
  sinker_string_free(config);

  for (char *tok = strtok(names_buf, ","); tok; tok = strtok(NULL, ",")) {
    tok = trim(tok);
    if (*tok) names[n_names++] = tok;
  }
  if (n_names == 0) {
    sinker_string_dup(err, "config must list measurement names, e.g. \"cpu,mem\"");
    return false;
  }

  // Log `matching measurements ["cpu", "mem"]`, like the Rust template.
  static const char prefix[] = "matching measurements [";
  size_t cap = sizeof prefix + 1;
  for (size_t i = 0; i < n_names; i++) cap += strlen(names[i]) + 4;
  char *line = malloc(cap), *p = stpcpy(line, prefix);
  for (size_t i = 0; i < n_names; i++) {
    if (i > 0) p = stpcpy(p, ", ");
    *p++ = '"';
    p = stpcpy(p, names[i]);
    *p++ = '"';
  }
  stpcpy(p, "]");
  sinker_string_t msg;
  sinker_string_set(&msg, line);
  dataway_sinker_host_log(DATAWAY_SINKER_TYPES_LOG_LEVEL_INFO, &msg);
  free(line);
  return true;
}

void exports_sinker_matches(sinker_borrow_batch_t points, sinker_list_bool_t *ret) {
  // Columns are dictionary-encoded: test each distinct measurement once,
  // then look the answer up per point.
  dataway_sinker_types_string_column_t column;
  dataway_sinker_types_method_batch_measurements(points, &column);

  bool *hit = malloc(column.dict.len);
  for (size_t d = 0; d < column.dict.len; d++) {
    sinker_option_string_t *m = &column.dict.ptr[d];
    hit[d] = m->is_some && is_name(&m->val);
  }

  ret->len = column.index.len;
  ret->ptr = malloc(ret->len);
  for (size_t i = 0; i < ret->len; i++) ret->ptr[i] = hit[column.index.ptr[i]];

  free(hit);
  dataway_sinker_types_string_column_free(&column);
}
