// lakecurate serve: selection, review marks, undo, image search, version picker. No framework, no CDN.
"use strict";
(function () {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const status = document.getElementById("review-status");
  const count = document.getElementById("selected-count");
  const undoButton = document.getElementById("undo");
  const reviewer = document.getElementById("reviewer");
  if (reviewer) {
    reviewer.value = localStorage.getItem("lakecurate-reviewer") || "";
    reviewer.addEventListener("change", () => localStorage.setItem("lakecurate-reviewer", reviewer.value));
  }
  const say = (text, bad) => { if (status) { status.textContent = text; status.className = bad ? "bad" : "ok"; } };
  const selected = () => Array.from(document.querySelectorAll("input.sel:checked")).map((el) => el.value);
  const refreshCount = () => { if (count) count.textContent = selected().length + " selected"; };
  document.addEventListener("change", (e) => {
    if (e.target.classList && e.target.classList.contains("sel")) {
      e.target.closest(".card, .pair")?.classList.toggle("picked", e.target.checked);
      refreshCount();
    }
  });
  refreshCount();

  async function post(url, body) {
    const v = document.body.dataset.version;  // the view shown: marks go to its branch
    const resp = await fetch(url, {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
      body: JSON.stringify(v ? {...body, v: v} : body),
    });
    const data = await resp.json().catch(() => ({error: resp.statusText}));
    if (!resp.ok) throw new Error(data.error || resp.statusText);
    return data;
  }

  async function mark(body) {
    const ids = selected();
    if (!ids.length) { say("select rows first", true); return; }
    try {
      const done = await post("/api/review", {ids: ids, by: reviewer ? reviewer.value : "", ...body});
      sessionStorage.setItem("lakecurate-last-action", done.action);
      say(`marked ${done.rows} rows` + (done.not_found.length ? `; ${done.not_found.length} not found` : ""));
      setTimeout(() => location.reload(), 300);
    } catch (err) { say(err.message, true); }
  }
  document.getElementById("mark-keep")?.addEventListener("click", () => mark({verdict: "keep"}));
  document.getElementById("mark-drop")?.addEventListener("click", () =>
    mark({verdict: "drop", reason: document.getElementById("drop-reason").value}));
  document.getElementById("mark-label")?.addEventListener("click", () =>
    mark({label: document.getElementById("label").value}));
  if (undoButton) {
    undoButton.disabled = !sessionStorage.getItem("lakecurate-last-action");
    undoButton.addEventListener("click", async () => {
      const action = sessionStorage.getItem("lakecurate-last-action");
      if (!action) return;
      try {
        const done = await post("/api/undo", {action: action, by: reviewer ? reviewer.value : ""});
        sessionStorage.removeItem("lakecurate-last-action");
        say(done.already_undone ? "nothing restored: that action is already undone"
            : `restored ${done.rows} rows` + (done.changed_since.length ? `; ${done.changed_since.length} changed since, left as they are` : ""));
        setTimeout(() => location.reload(), 300);
      } catch (err) { say(err.message, true); }
    });
  }

  const image = document.getElementById("search-image");
  image?.addEventListener("change", async () => {
    const file = image.files[0];
    if (!file) return;
    const v = document.body.dataset.version;
    const resp = await fetch("/api/search-image" + (v ? "?v=" + encodeURIComponent(v) : ""),
      {method: "POST", credentials: "same-origin", headers: {"X-CSRF-Token": csrf}, body: file});
    const data = await resp.json();
    if (resp.ok) location.href = data.url; else alert(data.error);
  });
  document.getElementById("version-select")?.addEventListener("change", (e) => e.target.form.submit());
})();
