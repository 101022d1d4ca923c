// The worklist refreshes itself: every few seconds it fetches its own table and replaces it
// when something changed, so new results appear without a reload. Nothing else needs script.
"use strict";

function refreshWorklist(box) {
  const url = box.dataset.refresh;
  const seconds = Number(box.dataset.seconds) || 5;
  let last = box.innerHTML;
  async function poll() {
    try {
      const response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
      if (response.redirected || response.status === 401) {
        window.location.assign("/login?next=/");
        return;
      }
      if (response.ok) {
        const html = await response.text();
        if (html !== last) {
          box.innerHTML = html;
          last = html;
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
