// SPDX-License-Identifier: MIT
// Some explanation is required here: libssh2 1.10 exposes several entry points
// only as function-like macros (libssh2_session_init, libssh2_channel_exec,
// libssh2_channel_read, ...), which Swift cannot import. These one-line
// wrappers make them callable. They can go once libssh2 ships real functions.
#ifndef CTSUBAMESHIMS_H
#define CTSUBAMESHIMS_H
#include <libssh2.h>

static inline LIBSSH2_SESSION *CTsubameShims_session_init(void) { return libssh2_session_init(); }
static inline int CTsubameShims_session_disconnect(LIBSSH2_SESSION *s, const char *why) { return libssh2_session_disconnect(s, why); }
static inline LIBSSH2_CHANNEL *CTsubameShims_channel_open_session(LIBSSH2_SESSION *s) { return libssh2_channel_open_session(s); }
static inline int CTsubameShims_channel_exec(LIBSSH2_CHANNEL *c, const char *cmd) { return libssh2_channel_exec(c, cmd); }
static inline ssize_t CTsubameShims_channel_read(LIBSSH2_CHANNEL *c, char *buf, size_t len) { return libssh2_channel_read(c, buf, len); }
static inline ssize_t CTsubameShims_channel_read_stderr(LIBSSH2_CHANNEL *c, char *buf, size_t len) { return libssh2_channel_read_stderr(c, buf, len); }
static inline ssize_t CTsubameShims_channel_write(LIBSSH2_CHANNEL *c, const char *buf, size_t len) { return libssh2_channel_write(c, buf, len); }
static inline int CTsubameShims_userauth_password(LIBSSH2_SESSION *s, const char *u, const char *p) { return libssh2_userauth_password(s, u, p); }
#endif
