// SPDX-License-Identifier: Apache-2.0
// follow(): ask again as soon as an answer arrives (the server holds each
// request up to `wait` seconds), resuming from the cursor the page gives,
// with a capped backoff after failures. Stops when the signal aborts, when
// onPage returns false, or on 401 (sign-in takes over).

import { isAbort } from "./api.js";

/** Resolves after ms, or at once when the signal aborts. */
export function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    }, { once: true });
  });
}

/**
 * @param {{fetchPage: (signal: AbortSignal) => Promise<any>, onPage: (page: any) => (boolean|void|Promise<boolean|void>),
 *          signal: AbortSignal, onError?: (err: Error, retryMs: number) => void, onRecover?: () => void}} o
 */
export async function follow({ fetchPage, onPage, signal, onError, onRecover }) {
  let backoff = 0;
  while (!signal.aborted) {
    let page;
    try {
      page = await fetchPage(signal);
    } catch (err) {
      if (isAbort(err) || signal.aborted || err.status === 401) return;
      backoff = Math.min(backoff ? backoff * 2 : 1000, 30000);
      onError?.(err, backoff);
      await sleep(backoff, signal);
      continue;
    }
    if (backoff) {
      backoff = 0;
      onRecover?.();
    }
    if ((await onPage(page)) === false) return;
  }
}
