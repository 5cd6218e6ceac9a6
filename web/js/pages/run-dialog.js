// SPDX-License-Identifier: Apache-2.0
// The Run button: optional env overrides for this execution only, then
// straight to the live execution.

import { post } from "../api.js";
import { h } from "../dom.js";
import { openDialog, showFieldErrors, toast } from "../ui.js";
import { envEditor } from "./env-editor.js";

/** A "Run" button for a job; `go` navigates to the new execution. */
export function runButton(job, go, { compact = false } = {}) {
  const button = h("button", { type: "button", class: compact ? "small primary" : "primary", text: compact ? "Run" : "Run now",
    "aria-label": compact ? `Run ${job.name}` : null });
  button.addEventListener("click", () => openRun(job, go));
  return button;
}

export function openRun(job, go) {
  const env = envEditor({}, { name: "env", addLabel: "Add override" });
  const body = h("div", { class: "form" },
    h("p", { class: "form-error", role: "alert", "data-ref": "form-error", tabindex: "-1", hidden: true }),
    h("p", { class: "muted", text: `Runs ${job.name} now on ${job.server_ids.length} server(s). Variables given here override the job's environment for this run only.` }),
    env.node);
  return openDialog(`Run ${job.name}`, body, {
    okText: "Run now",
    onSubmit: async (form) => {
      const overrides = env.value();
      try {
        const e = await post(`/api/v1/jobs/${job.id}/run`, Object.keys(overrides).length ? { env: overrides } : {});
        toast(`Started ${job.name} (#${e.id}).`);
        setTimeout(() => go(`/executions/${e.id}`));
        return true;
      } catch (err) {
        showFieldErrors(form, err);
        return false;
      }
    },
  });
}
