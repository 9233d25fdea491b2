// The inference widget of a model page: sends its form with fetch and shows the node's
// answer in place. Without this script the form posts and the answer comes back as a page.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("widget-form");
  if (!form) return;
  const out = document.getElementById("widget-output");
  const err = document.getElementById("widget-error");
  const show = (kind, body) => {
    if (kind === "text-generation") return body[0].generated_text;
    const v = Array.isArray(body[0]) ? body[0] : body;
    return v.length + " dimensions: " + v.slice(0, 8).map((x) => x.toFixed(4)).join(", ") + ", …";
  };
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = form.querySelector("button");
    button.disabled = true;
    out.textContent = "";
    err.textContent = "";
    form.dataset.state = "running";
    try {
      const r = await fetch(form.action, {
        method: "POST",
        body: new URLSearchParams(new FormData(form)),
        headers: { accept: "application/json" },
        credentials: "same-origin",
      });
      const json = (r.headers.get("content-type") || "").includes("application/json");
      const body = json ? await r.json() : {};
      if (r.ok) out.textContent = show(form.dataset.kind, body);
      else err.textContent = body.error || "HTTP " + r.status;
    } catch (e) {
      err.textContent = String(e);
    } finally {
      button.disabled = false;
      form.dataset.state = "done";
    }
  });
});
