// SPDX-License-Identifier: MIT
// libssh2 behind Swift types (being written).
