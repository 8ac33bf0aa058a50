// The console's live parts: tables refresh themselves; a task's log follows (server-sent events).
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const every = parseFloat(document.body.dataset.refresh || "5") * 1000;
  for (const body of document.querySelectorAll("tbody[data-live]")) {
    setInterval(async () => {
      if (document.activeElement && body.contains(document.activeElement)) return;
      const r = await fetch(body.dataset.live, {credentials: "same-origin", redirect: "error"}).catch(() => null);
      if (r && r.ok) body.innerHTML = await r.text();
    }, every);
  }
  const log = document.getElementById("log");
  if (log && log.dataset.stream) {
    const source = new EventSource(log.dataset.stream);
    source.onmessage = (e) => {
      const follow = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
      log.append(document.createTextNode(e.data + "\n"));
      if (follow) log.scrollTop = log.scrollHeight;
    };
  }
});
