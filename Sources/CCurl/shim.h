// SPDX-License-Identifier: MIT
// libcurl for Swift. curl_easy_setopt and curl_easy_getinfo are variadic,
// which Swift cannot call: these one-line wrappers fix each argument type.
// The gcc type-checking macros of curl.h are turned off so the wrappers
// compile as plain calls.
#ifndef TSUBAME_CCURL_SHIM_H
#define TSUBAME_CCURL_SHIM_H
#define CURL_DISABLE_TYPECHECK 1
#include <curl/curl.h>

typedef size_t (*tsubame_curl_data_callback)(char *buffer, size_t size, size_t count, void *context);

static inline CURLcode tsubame_curl_setopt_long(CURL *c, CURLoption o, long v) { return curl_easy_setopt(c, o, v); }
static inline CURLcode tsubame_curl_setopt_string(CURL *c, CURLoption o, const char *v) { return curl_easy_setopt(c, o, v); }
static inline CURLcode tsubame_curl_setopt_pointer(CURL *c, CURLoption o, void *v) { return curl_easy_setopt(c, o, v); }
static inline CURLcode tsubame_curl_setopt_list(CURL *c, CURLoption o, struct curl_slist *v) { return curl_easy_setopt(c, o, v); }
static inline CURLcode tsubame_curl_setopt_callback(CURL *c, CURLoption o, tsubame_curl_data_callback v) { return curl_easy_setopt(c, o, v); }
static inline CURLcode tsubame_curl_getinfo_long(CURL *c, CURLINFO i, long *v) { return curl_easy_getinfo(c, i, v); }
#endif
