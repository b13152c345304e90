// The nstd dashboard: polls api/status every few seconds and draws what it says.
// Everything from the journal (photo names, reasons, hosts) goes into the page as text,
// through el(), never as markup: a photo named <img onerror=...> is shown, not run.
"use strict";

(() => {
  const POLL_MS = 3000;
  const TIMEOUT_MS = 10000; // a poll that takes longer is given up and tried again
  const KEY = "nstd.token";
  const thumbs = new Map(); // job id -> Promise of an object URL (or null) for its thumbnail
  let token = null;

  // --- the token --------------------------------------------------------------------
  // Given as #token=... (a fragment never leaves the browser, so it is in no request
  // line, proxy log or Referer), or typed into the form; kept for this tab only.

  function loadToken() {
    const found = /^#(?:.*&)?token=([^&]*)/.exec(location.hash);
    if (found) {
      token = decodeURIComponent(found[1]);
      history.replaceState(null, "", location.pathname + location.search);
    } else {
      try { token = sessionStorage.getItem(KEY); } catch (e) { token = null; }
    }
    remember();
  }

  function remember() {
    try {
      if (token) sessionStorage.setItem(KEY, token); else sessionStorage.removeItem(KEY);
    } catch (e) { /* storage refused (a private window): the token lasts until a reload */ }
  }

  function askToken() {
    const form = document.getElementById("login");
    form.hidden = false;
    banner(token ? "That token was refused." : null);
    document.getElementById("token").focus();
  }

  function tokenGiven(event) {
    event.preventDefault();
    token = document.getElementById("token").value.trim();
    remember();
    document.getElementById("login").hidden = true;
    poll();
  }

  // --- requests ---------------------------------------------------------------------

  async function get(path) {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), TIMEOUT_MS);
    try {
      return await fetch(path, {
        headers: token ? { Authorization: "Bearer " + token } : {},
        signal: abort.signal, cache: "no-store",
      });
    } finally {
      clearTimeout(timer);
    }
  }

  async function reasonOf(response) {
    try { return (await response.json()).reason; } catch (e) { return "HTTP " + response.status; }
  }

  async function poll() {
    try {
      const response = await get("api/status");
      if (response.status === 401) return askToken(); // polling waits for a token
      if (response.ok) {
        banner(null);
        draw(await response.json());
      } else {
        banner("The daemon answered: " + (await reasonOf(response)));
      }
    } catch (e) {
      banner("The daemon does not answer; trying again.");
    }
    setTimeout(poll, POLL_MS);
  }

  // --- drawing ----------------------------------------------------------------------

  function el(tag, cls, ...children) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function banner(text) {
    const node = document.getElementById("banner");
    node.hidden = !text;
    node.textContent = text || "";
  }

  function span(seconds) {
    if (seconds === null || seconds === undefined) return "?";
    const s = Math.round(seconds);
    if (s < 60) return s + " s";
    if (s < 3600) return Math.round(s / 60) + " min";
    if (s < 172800) return (s / 3600).toFixed(1).replace(/\.0$/, "") + " h";
    return Math.round(s / 86400) + " d";
  }

  // columns: [heading, class, label]: the class on the heading and on each cell below it
  // ("short": kept on one line; "wide": left out on a phone; "main": the row's name, first
  // on a phone), and the label a cell carries on a phone, where a row is a card.
  function table(columns, rows) {
    const head = el("tr", null, ...columns.map(([name, cls]) => el("th", cls, name)));
    const body = rows.map((cells) => el("tr", null, ...cells.map((c, i) => {
      const [, cls, label] = columns[i];
      const td = el("td", cls, c);
      if (label) td.dataset.label = label;
      return td;
    })));
    return el("table", null, el("thead", null, head), el("tbody", null, ...body));
  }

  function empty(text) {
    return el("p", "muted empty", text);
  }

  function draw(doc) {
    document.getElementById("host").textContent = "on " + doc.host;
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
    if (doc.paused) banner("This daemon takes no new work: " + doc.paused);
    drawCounts(doc);
    drawPauses(doc.pauses || []);
    drawWorkers(doc.workers);
    drawBatches(doc.batches);
    drawQueue(doc.queue, doc.jobs.queued);
    drawDone(doc.done);
    drawFailures(doc.failures);
  }

  function drawCounts(doc) {
    // The four states always, and any other the journal has (cancelled, say) once there are some.
    const states = ["queued", "running", "done", "failed"];
    for (const [state, n] of Object.entries(doc.jobs)) if (n && !states.includes(state)) states.push(state);
    document.getElementById("counts").replaceChildren(...states.map((state) =>
      el("div", "count state-" + state, el("span", "n", doc.jobs[state] || 0), el("span", null, state))));
    const p = doc.photos;
    document.getElementById("photos").textContent =
      `Jobs are photo × style. Photos: ${p.queued} in progress, ${p.done} done, ${p.failed} failed.`;
  }

  function drawWorkers(workers) {
    const box = document.getElementById("workers");
    if (!workers.length) return box.replaceChildren(empty("No worker is listed in the journal."));
    // An operator's pause gives its reason as "paused by …": said once, not "paused: paused by …".
    const why = (w) => (w.reason && w.reason.startsWith(w.state + " ") ? w.reason.slice(w.state.length + 1) : w.reason);
    const rows = workers.map((w) => [
      w.host, w.device,
      el("span", "state state-" + (w.silent ? "silent" : w.state), w.silent ? "silent" : w.state,
        w.reason ? ": " + why(w) : ""),
      (w.silent ? "silent for " : "") + span(w.heartbeat_age) + (w.silent ? "" : " ago"),
      w.memory ? (w.memory / 2 ** 30).toFixed(0) + " GiB" : "",
    ]);
    box.replaceChildren(table([["host", "main"], ["device", "short"], ["state", null],
      ["heartbeat", "short", "heard"], ["memory", "wide short"]], rows));
  }

  // The operators' pauses (nstd pause), each with the command that lifts it; nothing
  // at all while there are none, as a pause is the exception.
  function drawPauses(pauses) {
    const box = document.getElementById("pauses");
    if (!pauses.length) return box.replaceChildren();
    box.replaceChildren(el("ul", "pauses", ...pauses.map(pauseItem)));
  }

  function pauseItem(p) {
    const side = (name, what) => (name === "*" ? "every " + what : name); // "*": the journal's every one
    const when = (p.by ? "by " + p.by + ", " : "") + span(p.ago) + " ago";
    return el("li", "pause",
      el("div", null, el("b", null, `Paused: ${side(p.host, "host")}, ${side(p.device, "device")}`), " ",
        el("span", "muted", when)),
      el("code", "resume", p.resume));
  }

  function drawBatches(batches) {
    const box = document.getElementById("batches");
    if (!batches.length) return box.replaceChildren(empty("No batch is running."));
    box.replaceChildren(...batches.map(batchCard));
  }

  function batchCard(b) {
    const where = b.host ? `${b.host} · ${b.device}` : "a host not listed";
    const bar = el("progress");
    const words = el("p", "pace");
    if (b.iteration === null) {
      words.append("starting");
    } else {
      bar.max = b.total;
      bar.value = b.iteration;
      const it = el("span", "iteration", `iteration ${b.iteration} of ${b.total}`);
      it.dataset.iteration = b.iteration;
      words.append(it);
      if (b.rate !== null) words.append(` · ${b.rate.toFixed(2)} it/s`);
      if (b.left !== null) words.append(` · about ${span(b.left)} left`);
    }
    const photos = el("ul", "photos", ...b.jobs.map((j) => el("li", null, j.photo, " ", el("span", "muted", j.style))));
    const card = el("article", "card batch", el("h3", null, where, " ", el("span", "muted", `${b.count} × ${b.size}`)),
      bar, words, photos);
    card.dataset.batch = b.id;
    return card;
  }

  function drawQueue(queue, total) {
    const box = document.getElementById("queue");
    document.getElementById("queue-note").textContent =
      total > queue.length ? `(the first ${queue.length} of ${total})` : "";
    if (!queue.length) return box.replaceChildren(empty("The queue is empty."));
    // Taken highest priority first, then oldest: the server sends them so; kept so here.
    const order = queue.slice().sort((a, b) => (b.priority - a.priority) || (b.waiting - a.waiting));
    const rows = order.map((j) => [String(j.priority), j.photo, j.style, j.size, span(j.waiting)]);
    box.replaceChildren(table([["priority", "short", "priority"], ["photo", "main"], ["style", null],
      ["size", "wide short"], ["waiting", "short", "waiting"]], rows));
  }

  function drawDone(done) {
    const box = document.getElementById("done");
    forgetThumbs(new Set(done.map((d) => d.id)));
    if (!done.length) return box.replaceChildren(empty("Nothing finished yet."));
    box.replaceChildren(...done.map((d) => el("figure", "output", thumb(d),
      el("figcaption", null, el("span", "photo", d.photo), el("span", "muted", d.style + " · " + span(d.ago) + " ago"),
        el("span", "muted path", "outbox/" + (d.output || ""))))));
  }

  function drawFailures(failures) {
    const box = document.getElementById("failures");
    if (!failures.length) return box.replaceChildren(empty("No failures."));
    box.replaceChildren(el("ul", "failures", ...failures.map((f) => el("li", "failure",
      el("div", null, el("b", "photo", f.photo), " ", el("span", "muted", span(f.ago) + " ago")),
      el("div", "reason", f.reason),
      el("code", "retry", f.retry)))));
  }

  // --- thumbnails -------------------------------------------------------------------
  // Fetched with the token (an <img src> cannot send one) and shown from a blob; each
  // once, as a thumbnail never changes (its name is its job's id).

  function thumb(item) {
    const img = el("img", "thumb");
    img.alt = `${item.photo} in ${item.style}`;
    if (item.thumb || thumbs.has(item.id)) {
      fetchThumb(item.id).then((url) => { if (url) img.src = url; });
    }
    return img;
  }

  function fetchThumb(id) {
    if (!thumbs.has(id)) {
      const url = get("api/thumb/" + id)
        .then(async (r) => (r.ok ? URL.createObjectURL(await r.blob()) : null))
        .catch(() => null)
        .then((u) => { if (!u) thumbs.delete(id); return u; }); // try again at the next poll
      thumbs.set(id, url);
    }
    return thumbs.get(id);
  }

  function forgetThumbs(shown) {
    for (const [id, url] of thumbs) {
      if (!shown.has(id)) {
        thumbs.delete(id);
        url.then((u) => u && URL.revokeObjectURL(u));
      }
    }
  }

  document.getElementById("login").addEventListener("submit", tokenGiven);
  loadToken();
  poll();
})();
