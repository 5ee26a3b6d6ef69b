// The CDR console: a page over the public API only (list with scroll, lookup, export,
// stats, and the change feed for the live table). The token lives in this tab's sessionStorage and goes in the Authorization
// header, never in a URL. Every value from the API is written as text, never as HTML.
"use strict";

(() => {
  const TOKEN_KEY = "cdr.token";
  const BATCH = 100;
  const STATUSES = ["ANSWERED", "NO ANSWER", "BUSY", "FAILED"];
  const COLORS = {
    "ANSWERED": "#2e7d32", "NO ANSWER": "#f9a825", "BUSY": "#6a1b9a", "FAILED": "#c62828", "other": "#90a4ae",
  };
  const DIRECTIONS = { 1: "inbound", 2: "outbound", 3: "local" };
  const SVG = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);

  class ApiError extends Error {
    constructor(status, code, message, param) {
      super(message);
      this.status = status;
      this.code = code;
      this.param = param;
    }
  }

  // ---- the API ------------------------------------------------------------------

  const token = () => sessionStorage.getItem(TOKEN_KEY);

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // ``signal``: an AbortSignal that cancels the request (a long poll that is no longer wanted).
  async function api(path, params, signal) {
    const url = new URL(path, window.location.origin);
    for (const [name, value] of params || []) url.searchParams.append(name, value);
    let response;
    // A 429 (the tenant's rate or concurrency limit) is retried after the wait it names, a few times.
    for (let attempt = 0; ; attempt++) {
      try {
        response = await fetch(url, { headers: { Authorization: `Bearer ${token()}` }, signal });
      } catch (err) {
        if (signal && signal.aborted) throw err;
        throw new ApiError(0, "network", `the API did not answer (${err.message})`);
      }
      const wait = Number(response.headers.get("Retry-After") || "1");
      if (response.status !== 429 || attempt >= 4 || wait > 10) break;
      await sleep(wait * 1000);
    }
    if (response.ok) return response;
    let code = `http_${response.status}`;
    let message = response.statusText || "request failed";
    let param;
    try {
      const body = await response.json();
      ({ code, message, param } = body.error);
    } catch (_) { /* not the API's JSON error: keep the status line */ }
    throw new ApiError(response.status, code, message, param);
  }

  // ---- filters --------------------------------------------------------------------

  // datetime-local gives "2026-11-28T10:00" or "...T10:00:05"; the API takes
  // "YYYY-MM-DD HH:MM:SS" in the tenant's time zone.
  function apiTime(value) {
    const [day, clock] = value.split("T");
    return `${day} ${clock.length === 5 ? `${clock}:00` : clock.slice(0, 8)}`;
  }

  function filterParams() {
    const params = [];
    for (const element of $("filters").elements) {
      if (!element.name || !element.value.trim()) continue;
      const value = element.type === "datetime-local" ? apiTime(element.value) : element.value.trim();
      params.push([element.name, value]);
    }
    return params;
  }

  // ---- states -----------------------------------------------------------------------

  function showError(err) {
    if (err instanceof ApiError && err.status === 401) {
      signOut("Your token was refused: it expired or was revoked. Sign in again.");
      return;
    }
    const where = err.param ? ` (${err.param})` : "";
    $("error").textContent = `${err.message}${where}`;
    $("error").hidden = false;
  }

  function clearError() {
    $("error").hidden = true;
    $("error").textContent = "";
  }

  function signOut(why) {
    stopLive();
    sessionStorage.removeItem(TOKEN_KEY);
    $("console").hidden = true;
    $("tabs").hidden = true;
    $("sign-out").hidden = true;
    $("sign-in").hidden = false;
    $("sign-in-error").textContent = why || "";
    $("sign-in-error").hidden = !why;
    $("token").value = "";
  }

  function showConsole() {
    $("sign-in").hidden = true;
    $("console").hidden = false;
    $("tabs").hidden = false;
    $("sign-out").hidden = false;
    refresh();
  }

  // ---- calls: a scroll, one batch at a time as the table's end comes into view --------

  // ``rows``: the table's rows by call id (a live change updates its call's row in place).
  const calls = { scrollId: null, loading: false, loaded: 0, generation: 0, rows: new Map() };

  function cell(row, text, numeric) {
    const td = row.insertCell();
    td.textContent = text === null || text === undefined ? "" : String(text);
    if (numeric) td.className = "num";
  }

  function fill(row, r) {
    row.replaceChildren();
    row.dataset.id = r.id;
    row.tabIndex = 0;
    cell(row, r.time_started);
    cell(row, DIRECTIONS[r.direction] || r.direction);
    cell(row, r.from_number);
    cell(row, r.to_number);
    cell(row, r.extension);
    cell(row, r.status);
    cell(row, r.duration, true);
    cell(row, r.billsec, true);
    cell(row, r.cause);
  }

  function addRows(records) {
    const body = $("calls").tBodies[0];
    for (const r of records) {
      if (calls.rows.has(r.id)) continue; // shown already: it arrived live while this batch was read
      const row = body.insertRow();
      fill(row, r);
      calls.rows.set(r.id, row);
      calls.loaded += 1;
    }
  }

  function showCount() {
    const more = calls.scrollId ? " — scroll for more" : "";
    $("count").textContent = `${calls.loaded.toLocaleString()} calls${more}`;
    $("more").hidden = !calls.scrollId;
    $("empty").hidden = calls.loaded > 0;
  }

  async function loadCalls(first) {
    if (calls.loading || (!first && !calls.scrollId)) return;
    const generation = first ? ++calls.generation : calls.generation;
    calls.loading = true;
    $("loading").hidden = false;
    if (first) {
      $("calls").tBodies[0].replaceChildren();
      calls.rows.clear();
      calls.loaded = 0;
      calls.scrollId = null;
      $("empty").hidden = true;
      $("count").textContent = "";
    }
    try {
      const params = first
        ? [...filterParams(), ["scroll", "true"], ["limit", String(BATCH)]]
        : [["scroll_id", calls.scrollId]];
      const answer = await (await api("/v1/cdr", params)).json();
      if (generation !== calls.generation) return; // the filters changed meanwhile
      addRows(answer.data);
      calls.scrollId = answer.scroll_id;
      showCount();
    } catch (err) {
      showError(err);
    } finally {
      calls.loading = false;
      $("loading").hidden = true;
    }
    // A tall screen may show the end of the table already: keep filling it.
    if (calls.scrollId && sentinelVisible()) loadCalls(false);
  }

  function sentinelVisible() {
    const box = $("sentinel").getBoundingClientRect();
    const wrap = $("table-wrap").getBoundingClientRect();
    return box.top <= wrap.bottom;
  }

  // ---- live: the change feed, long-polled ----------------------------------------------
  // A long poll of /v1/cdr/changes rather than an EventSource on the SSE stream: an
  // EventSource cannot send the Authorization header, and the token must stay out of URLs.
  // The feed filters by status, direction, extension and cause only; the other filters do
  // not apply to live rows.

  const FEED_FILTERS = new Set(["status", "direction", "extension", "cause"]);
  const LIVE_WAIT_S = "25";
  const live = { generation: 0, controller: null };

  function stopLive() {
    live.generation += 1;
    if (live.controller) live.controller.abort();
    live.controller = null;
    $("live-state").textContent = "";
  }

  function showChanges(items) {
    const body = $("calls").tBodies[0];
    const newestFirst = $("f-order").value !== "asc";
    for (const item of items) {
      let row = calls.rows.get(item.id);
      if (row) {
        fill(row, item); // a correction: the row shows the newest version
      } else {
        if (!newestFirst && calls.scrollId) continue; // oldest first: it comes with the last batch
        row = newestFirst ? body.insertRow(0) : body.insertRow();
        fill(row, item);
        calls.rows.set(item.id, row);
        calls.loaded += 1;
      }
      row.classList.add("fresh");
    }
    if (items.length) showCount();
  }

  // Starts following the feed from now; resolves once the start is known, so that the
  // table read after it cannot miss a call stored in between (one shown twice is merged).
  async function startLive() {
    stopLive();
    if (!$("live").checked || currentView() !== "calls") return;
    const generation = live.generation;
    const controller = new AbortController();
    live.controller = controller;
    const filters = filterParams().filter(([name]) => FEED_FILTERS.has(name));
    const ignored = filterParams().some(([name]) => !FEED_FILTERS.has(name) && name !== "order");
    const following = ignored
      ? "watching for new calls (date, phone and duration filters do not apply)"
      : "watching for new calls";
    let cursor;
    try {
      cursor = (await (await api("/v1/cdr/changes", filters, controller.signal)).json()).cursor;
    } catch (err) {
      if (generation === live.generation) liveFailed(err);
      return;
    }
    if (generation !== live.generation) return;
    $("live-state").textContent = following;
    follow(generation, controller, cursor, following);
  }

  async function follow(generation, controller, cursor, following) {
    let failures = 0;
    while (generation === live.generation) {
      try {
        const params = [["cursor", cursor], ["wait", LIVE_WAIT_S], ["limit", String(BATCH)]];
        const answer = await (await api("/v1/cdr/changes", params, controller.signal)).json();
        if (generation !== live.generation) return;
        cursor = answer.cursor;
        failures = 0;
        $("live-state").textContent = following;
        showChanges(answer.data);
      } catch (err) {
        if (generation !== live.generation) return; // stopped: its request was aborted
        if (err.status === 400 || err.status === 401) {
          liveFailed(err);
          return;
        }
        // The API is away (a restart, a deploy): try again, further apart each time.
        failures += 1;
        $("live-state").textContent = `reconnecting (${err.message})`;
        await sleep(Math.min(30, 2 ** failures) * 1000);
      }
    }
  }

  function liveFailed(err) {
    $("live").checked = false;
    stopLive();
    showError(err);
  }

  async function showDetail(id) {
    try {
      const record = await (await api(`/v1/cdr/${encodeURIComponent(id)}`)).json();
      const list = $("detail-fields");
      list.replaceChildren();
      for (const [name, value] of Object.entries(record)) {
        const dt = document.createElement("dt");
        dt.textContent = name;
        const dd = document.createElement("dd");
        dd.textContent = value === null ? "—" : String(value);
        if (name === "direction" && DIRECTIONS[value]) dd.textContent += ` (${DIRECTIONS[value]})`;
        list.append(dt, dd);
      }
      const recording = $("detail-recording");
      recording.replaceChildren();
      // Only web links: a recording_url is the PBX's data, and a javascript: URL is not a recording.
      if (/^https?:\/\//i.test(record.recording_url || "")) {
        const link = document.createElement("a");
        link.href = record.recording_url;
        link.textContent = "Open the recording";
        link.target = "_blank";
        link.rel = "noopener noreferrer";
        recording.append(link);
      } else {
        recording.textContent = "No recording.";
      }
      $("detail").showModal();
    } catch (err) {
      showError(err);
    }
  }

  async function exportCsv() {
    clearError();
    const button = $("export");
    button.disabled = true;
    button.textContent = "Exporting…";
    try {
      const params = [...filterParams(), ["format", "csv"], ["bom", "true"]];
      const response = await api("/v1/cdr/export", params);
      const blob = await response.blob();
      const named = /filename="([^"]+)"/.exec(response.headers.get("Content-Disposition") || "");
      const link = document.createElement("a");
      link.href = URL.createObjectURL(blob);
      link.download = named ? named[1] : "cdr.csv";
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(link.href), 10000);
    } catch (err) {
      showError(err);
    } finally {
      button.disabled = false;
      button.textContent = "Export CSV";
    }
  }

  // ---- charts, from /v1/cdr/stats -------------------------------------------------------

  const W = 800;
  const H = 200;
  const PAD = { left: 48, right: 8, top: 8, bottom: 28 };

  function node(tag, attrs, text) {
    const element = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs || {})) element.setAttribute(name, String(value));
    if (text !== undefined) element.textContent = text;
    return element;
  }

  function frame(into, labels, max, unit) {
    const svg = node("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
    const bottom = H - PAD.bottom;
    svg.append(node("line", { x1: PAD.left, y1: bottom, x2: W - PAD.right, y2: bottom, stroke: "#d9dee5" }));
    svg.append(node("text", { x: PAD.left - 4, y: PAD.top + 8, "text-anchor": "end" }, `${max}${unit}`));
    svg.append(node("text", { x: PAD.left - 4, y: bottom, "text-anchor": "end" }, `0${unit}`));
    const step = (W - PAD.left - PAD.right) / Math.max(labels.length, 1);
    const every = Math.max(1, Math.ceil(labels.length / 8));
    labels.forEach((label, i) => {
      if (i % every === 0) {
        svg.append(node("text", { x: PAD.left + i * step + step / 2, y: H - 10, "text-anchor": "middle" }, label));
      }
    });
    into.replaceChildren(svg);
    return { svg, step, bottom, scale: (v) => ((bottom - PAD.top) * v) / (max || 1) };
  }

  function stackedBars(into, legend, labels, series) {
    const totals = labels.map((_, i) => series.reduce((sum, s) => sum + s.values[i], 0));
    const { svg, step, bottom, scale } = frame(into, labels, Math.max(...totals, 0), "");
    labels.forEach((label, i) => {
      let y = bottom;
      for (const s of series) {
        const h = scale(s.values[i]);
        if (h <= 0) continue;
        y -= h;
        const bar = node("rect", {
          x: PAD.left + i * step + 1, y, width: Math.max(step - 2, 1), height: h, fill: s.color, "data-series": s.name,
        });
        bar.append(node("title", {}, `${label} ${s.name}: ${s.values[i]}`));
        svg.append(bar);
      }
    });
    legend.replaceChildren(...series.map((s) => {
      const item = document.createElement("span");
      item.style.setProperty("--swatch", s.color);
      item.textContent = s.name;
      return item;
    }));
  }

  function line(into, labels, values, unit, color) {
    const known = values.filter((v) => v !== null);
    const { svg, step, scale, bottom } = frame(into, labels, Math.ceil(Math.max(...known, 0)), unit);
    const points = [];
    values.forEach((v, i) => {
      if (v === null) return;
      const x = PAD.left + i * step + step / 2;
      const y = bottom - scale(v);
      points.push(`${x},${y}`);
      const dot = node("circle", { cx: x, cy: y, r: 2.5, fill: color });
      dot.append(node("title", {}, `${labels[i]}: ${v}${unit}`));
      svg.append(dot);
    });
    svg.insertBefore(node("polyline", { points: points.join(" "), fill: "none", stroke: color }), svg.firstChild);
  }

  function horizontalBars(into, rows) {
    const height = Math.max(rows.length * 18 + 8, 40);
    const svg = node("svg", { viewBox: `0 0 ${W} ${height}`, role: "img" });
    svg.style.height = `${height}px`;
    const max = Math.max(...rows.map((r) => r.calls), 1);
    rows.forEach((r, i) => {
      const y = 4 + i * 18;
      svg.append(node("text", { x: 110, y: y + 11, "text-anchor": "end" }, r.group || "(none)"));
      const bar = node("rect", { x: 116, y, height: 14, width: ((W - 180) * r.calls) / max, fill: "#1f5fbf" });
      bar.append(node("title", {}, `${r.group}: ${r.calls} calls`));
      svg.append(bar);
      svg.append(node("text", { x: 120 + ((W - 180) * r.calls) / max, y: y + 11 }, String(r.calls)));
    });
    into.replaceChildren(svg);
  }

  async function stats(groupBy, params) {
    const answer = await (await api("/v1/cdr/stats", [...params, ["group_by", groupBy]])).json();
    return answer.data;
  }

  let chartsGeneration = 0;

  async function loadCharts() {
    const generation = ++chartsGeneration;
    const bucket = $("bucket").value;
    const filters = filterParams();
    const chosen = filters.find(([name]) => name === "status");
    const others = filters.filter(([name]) => name !== "status");
    const statuses = chosen ? [chosen[1]] : STATUSES;
    $("charts-state").textContent = "Loading…";
    try {
      // One request at a time: a tenant may have only a few in progress.
      const total = await stats(bucket, filters);
      const extensions = await stats("extension", filters);
      const perStatus = [];
      for (const s of statuses) perStatus.push(await stats(bucket, [...others, ["status", s]]));
      if (generation !== chartsGeneration) return;
      const labels = total.map((g) => String(g.group));
      const index = new Map(labels.map((label, i) => [label, i]));
      const series = statuses.map((s, k) => {
        const values = labels.map(() => 0);
        for (const g of perStatus[k]) values[index.get(String(g.group))] = g.calls;
        return { name: s, color: COLORS[s.toUpperCase()] || COLORS.other, values };
      });
      if (!chosen) {
        const other = total.map((g, i) => g.calls - series.reduce((sum, s) => sum + s.values[i], 0));
        if (other.some((v) => v > 0)) series.push({ name: "other", color: COLORS.other, values: other });
      }
      stackedBars($("chart-calls"), $("legend-calls"), labels, series);
      line($("chart-asr"), labels, total.map((g) => Math.round(g.asr * 1000) / 10), "%", "#2e7d32");
      line($("chart-acd"), labels, total.map((g) => g.acd), "s", "#1f5fbf");
      const top = [...extensions].sort((a, b) => b.calls - a.calls).slice(0, 10);
      horizontalBars($("chart-extensions"), top);
      $("charts-state").textContent = total.length ? "" : "No calls match these filters.";
    } catch (err) {
      $("charts-state").textContent = "";
      showError(err);
    }
  }

  // ---- wiring -----------------------------------------------------------------------

  function currentView() {
    return $("charts-view").hidden ? "calls" : "charts";
  }

  async function refresh() {
    clearError();
    stopLive();
    if (currentView() === "calls") {
      await startLive();
      loadCalls(true);
    } else {
      loadCharts();
    }
  }

  function showView(view) {
    $("calls-view").hidden = view !== "calls";
    $("charts-view").hidden = view !== "charts";
    for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.view === view);
    refresh();
  }

  $("sign-in-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    try {
      await api("/v1/cdr", [["limit", "1"]]);
      $("sign-in-error").hidden = true;
      showConsole();
    } catch (err) {
      const why = err.status === 401 ? "This token was refused." : err.message;
      signOut(why);
    }
  });
  $("sign-out").addEventListener("click", () => signOut(""));
  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    refresh();
  });
  $("filters").addEventListener("reset", () => setTimeout(refresh, 0));
  $("more").addEventListener("click", () => loadCalls(false));
  $("export").addEventListener("click", exportCsv);
  $("live").addEventListener("change", () => {
    if ($("live").checked) startLive();
    else stopLive();
  });
  $("bucket").addEventListener("change", loadCharts);
  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => showView(tab.dataset.view));
  }
  $("calls").tBodies[0].addEventListener("click", (event) => {
    const row = event.target.closest("tr");
    if (row) showDetail(row.dataset.id);
  });
  $("calls").tBodies[0].addEventListener("keydown", (event) => {
    const row = event.target.closest("tr");
    if (row && event.key === "Enter") showDetail(row.dataset.id);
  });
  new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting)) loadCalls(false);
  }, { root: $("table-wrap") }).observe($("sentinel"));

  if (token()) showConsole();
})();
