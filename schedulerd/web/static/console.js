// The console's live parts: tables refresh themselves; a task's log follows (server-sent events).
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const every = parseFloat(document.body.dataset.refresh || "5") * 1000;
  // Rows in use are not replaced: a pointer pressed on them (a button pressed, text being selected;
  // Safari does not focus a pressed button) or the focus in them. Checked again when the response
  // arrives: a press during the fetch would otherwise lose its click with the replaced button.
  let pressed = null;
  document.addEventListener("pointerdown", (e) => { pressed = e.target; }, true);
  for (const end of ["pointerup", "pointercancel"]) document.addEventListener(end, () => { pressed = null; }, true);
  const inUse = (body) => body.contains(pressed) || body.contains(document.activeElement);
  for (const body of document.querySelectorAll("tbody[data-live]")) {
    setInterval(async () => {
      if (inUse(body)) return;
      const r = await fetch(body.dataset.live, {credentials: "same-origin", redirect: "error"}).catch(() => null);
      const rows = r && r.ok ? await r.text().catch(() => null) : null;
      if (rows !== null && !inUse(body)) body.innerHTML = rows;
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
