// SPDX-License-Identifier: Apache-2.0
// "Test connection": latency and host-key fingerprint; a changed host key
// is a clear warning with the admin-only "Trust the new key" action.

import { patch, post } from "../api.js";
import { h, replace } from "../dom.js";
import { busy, confirmDialog, toast, toastError } from "../ui.js";

/**
 * A "Test connection" button that writes its outcome into `out`.
 * @param {{id: number, name: string}} srv
 * @param {HTMLElement} out
 * @param {{compact?: boolean, canTrust?: boolean, onChange?: () => void}} o
 */
export function testButton(srv, out, { compact = false, canTrust = false, onChange } = {}) {
  const button = h("button", { type: "button", class: compact ? "small" : null, text: "Test connection",
    "aria-label": compact ? `Test connection to ${srv.name}` : null });
  const run = async () => {
    replace(out, h("p", { class: "loading", role: "status", text: `Connecting to ${srv.name}…` }));
    try {
      const result = await busy(button, () => post(`/api/v1/servers/${srv.id}/test`));
      replace(out, describe(srv, result, { canTrust, retest: run, onChange }));
      onChange?.(result);
    } catch (err) {
      replace(out);
      toastError(err, "Test failed");
    }
  };
  button.addEventListener("click", run);
  return button;
}

function describe(srv, r, { canTrust, retest, onChange }) {
  const key = r.host_key;
  const facts = h("dl", { class: "facts" },
    h("dt", { text: "Latency" }), h("dd", { text: `${Math.round(r.latency_ms)} ms` }),
    key ? [h("dt", { text: "Host key" }), h("dd", null, h("span", { class: "fingerprint", text: `${key.algorithm || "?"} ${key.fingerprint_sha256}` }))] : null,
    key && key.trusted_at ? [h("dt", { text: "Trusted since" }), h("dd", { text: new Date(key.trusted_at).toLocaleString() })] : null);
  if (r.ok) {
    return h("div", { class: "notice good", role: "status" }, h("strong", { text: `Connected to ${srv.name}` }), facts);
  }
  if (r.failure === "hostKeyChanged") {
    const trust = canTrust ? h("button", { type: "button", class: "danger", text: "Trust the new key" }) : null;
    trust?.addEventListener("click", async () => {
      const ok = await confirmDialog({
        title: "Trust the new host key?",
        message: `Only do this if you know why the host key of ${srv.name} changed (reinstalled, new key). `
          + "If you do not, someone may be intercepting the connection.",
        ok: "Trust the new key",
      });
      if (!ok) return;
      try {
        await busy(trust, () => patch(`/api/v1/servers/${srv.id}`, { host_key: null }));
        toast(`The pinned host key of ${srv.name} was cleared; testing again trusts the key it presents.`);
        onChange?.();
        retest();
      } catch (err) {
        toastError(err);
      }
    });
    return h("div", { class: "notice warn", role: "alert" },
      h("strong", { text: "Warning: the host key has changed" }),
      h("p", { text: r.error || "The server presented a different host key than the pinned one. Nothing was run and no credential was sent." }),
      facts,
      trust || h("p", { class: "muted", text: "An admin must confirm the new key before jobs run on this server again." }));
  }
  return h("div", { class: "notice bad", role: "alert" },
    h("strong", { text: `Could not connect to ${srv.name}` }), h("p", { text: r.error || r.failure || "unknown error" }), facts);
}
