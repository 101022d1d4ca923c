// The worklist refreshes itself: every few seconds it fetches its own table and puts it in
// place when a study arrived or changed (the server's data-version says so), and at least
// once a minute so that waiting times stay true. Nothing else needs script.
"use strict";

const FRESH_WAITING_TIMES_MS = 60000;

function versionOf(element) {
  const rows = element.querySelector(".rows");
  return rows ? rows.dataset.version : "";
}

function refreshWorklist(box) {
  const url = box.dataset.refresh;
  const seconds = Number(box.dataset.seconds) || 5;
  let replacedAt = Date.now();
  async function poll() {
    try {
      const response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
      if (response.redirected || response.status === 401) {
        window.location.assign("/login?next=/");
        return;
      }
      if (response.ok) {
        const fetched = document.createElement("div");
        fetched.innerHTML = await response.text();
        const stale = Date.now() - replacedAt > FRESH_WAITING_TIMES_MS;
        if (versionOf(fetched) !== versionOf(box) || stale) {
          box.replaceChildren(...fetched.childNodes);
          replacedAt = Date.now();
        }
      }
    } catch (error) {
      // The server is restarting or the network is down: try again at the next tick.
    }
    window.setTimeout(poll, seconds * 1000);
  }
  window.setTimeout(poll, seconds * 1000);
}

document.addEventListener("DOMContentLoaded", () => {
  const box = document.getElementById("worklist");
  if (box) {
    refreshWorklist(box);
  }
});
