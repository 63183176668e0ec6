/* StackShift dashboard: live updates, relative times, small conveniences.
 *
 * Pages are rendered on the server. This script polls a small JSON endpoint
 * for a change marker; when it moves, it fetches the page again and swaps the
 * blocks marked [data-live] whose content changed. Blocks holding a form the
 * user is editing, or the focused element, are left alone.
 */
(function () {
  "use strict";

  var body = document.body;
  var liveUrl = body.getAttribute("data-live-url");
  var marker = body.getAttribute("data-marker");
  var poll = parseInt(body.getAttribute("data-poll") || "2000", 10);
  var indicator = document.getElementById("live-state");
  var busy = false;

  /* A form refused for its input comes back as its page, at the form's address:
     show (and poll) the page's own address instead. */
  var pageUrl = body.getAttribute("data-page-url");
  if (pageUrl && window.history.replaceState) window.history.replaceState(null, "", pageUrl);

  function setState(name, text) {
    if (!indicator) return;
    indicator.classList.remove("paused", "offline");
    if (name) indicator.classList.add(name);
    var label = indicator.querySelector(".live-text");
    if (label) label.textContent = text;
  }

  /* A <details> by its id, else its data-key (a row's payload or value), else its
     summary's text and how many before it in the block have the same. */
  function detailsKeys(root) {
    var seen = {};
    return Array.prototype.map.call(root.querySelectorAll("details"), function (d) {
      if (d.id) return "#" + d.id;
      if (d.hasAttribute("data-key")) return "@" + d.getAttribute("data-key");
      var summary = d.querySelector("summary");
      var text = summary ? summary.textContent.trim() : "";
      seen[text] = (seen[text] || 0) + 1;
      return text + "\u0000" + seen[text];
    });
  }

  /* What the reader opened or closed in ``old`` stays so in ``next`` (set before
     the two are compared: a block changes only when its content does). */
  function keepOpen(old, next) {
    var open = {};
    var found = old.querySelectorAll("details");
    detailsKeys(old).forEach(function (key, i) { open[key] = found[i].open; });
    var fresh = next.querySelectorAll("details");
    detailsKeys(next).forEach(function (key, i) {
      if (Object.prototype.hasOwnProperty.call(open, key)) fresh[i].open = open[key];
    });
  }

  function swap(html) {
    var doc = new DOMParser().parseFromString(html, "text/html");
    var fresh = doc.body.getAttribute("data-marker");
    if (fresh) marker = fresh;
    document.querySelectorAll("[data-live][id]").forEach(function (old) {
      var next = doc.getElementById(old.id);
      if (!next) return;
      if (old.contains(document.activeElement) && document.activeElement !== document.body) return;
      if (old.querySelector("form.dirty") || old.classList.contains("dirty")) return;
      keepOpen(old, next);
      if (old.innerHTML === next.innerHTML) return;
      var chosen = {};
      old.querySelectorAll("[data-log-filter], [data-log-level]").forEach(function (s) {
        chosen[s.hasAttribute("data-log-level") ? "level" : "step"] = s.value;
      });
      old.innerHTML = next.innerHTML;
      var again = null;
      old.querySelectorAll("[data-log-filter], [data-log-level]").forEach(function (s) {
        var value = chosen[s.hasAttribute("data-log-level") ? "level" : "step"];
        if (value) { s.value = value; again = s; }
      });
      if (again) applyLogFilter(again);
      wire(old);
    });
    document.title = doc.title;
    markStepRows();
    relativeTimes();
  }

  function refresh() {
    return fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) {
        if (r.redirected || r.status === 401) { window.location.reload(); return null; }
        return r.ok ? r.text() : null;
      })
      .then(function (html) { if (html) swap(html); });
  }

  function tick() {
    if (busy || !liveUrl) return;
    if (document.hidden) { setState("paused", "Paused"); return; }
    busy = true;
    fetch(liveUrl, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) {
        if (r.status === 401) { window.location.reload(); return null; }
        if (!r.ok) throw new Error("status " + r.status);
        return r.json();
      })
      .then(function (data) {
        setState(null, "Live");
        if (data && data.marker !== marker) {
          marker = data.marker;
          return refresh();
        }
      })
      .catch(function () { setState("offline", "Reconnecting…"); })
      .then(function () { busy = false; });
  }

  /* "3m ago" texts stay current between refreshes (as formatting.ago writes them);
     a due time past reads "due 3m ago". */
  function ago(seconds, due) {
    var s = Math.abs(seconds);
    var text;
    if (s < 5) return "just now";
    var r = Math.round(s);
    if (r < 60) text = r + "s";
    else if (r < 3600) text = Math.floor(r / 60) + "m" + (r < 600 && r % 60 ? " " + (r % 60) + "s" : "");
    else if (r < 86400) text = Math.floor(r / 3600) + "h" + (Math.floor(r % 3600 / 60) ? " " + Math.floor(r % 3600 / 60) + "m" : "");
    else text = Math.floor(r / 86400) + "d" + (Math.floor(r % 86400 / 3600) ? " " + Math.floor(r % 86400 / 3600) + "h" : "");
    if (seconds < 0) return "in " + text;
    return (due ? "due " : "") + text + " ago";
  }
  /* The server's clock may differ from the browser's (or be a test clock). */
  var skew = parseFloat(body.getAttribute("data-now") || "0") - Date.now() / 1000;
  if (isNaN(skew) || !body.getAttribute("data-now")) skew = 0;
  /* "12 ms", "4.20 s", "1m 15s", as formatting.duration writes them (keep the two alike). */
  function duration(s) {
    if (s < 0) s = 0;
    if (Math.round(s * 1000) < 1000) return s * 1000 < 1 ? "<1 ms" : (s * 1000).toFixed(0) + " ms";
    if (Math.round(s * 100) / 100 < 10) return s.toFixed(2) + " s";
    if (Math.round(s * 10) / 10 < 60) return s.toFixed(1) + " s";
    var whole = Math.round(s);
    var days = Math.floor(whole / 86400), hours = Math.floor(whole % 86400 / 3600);
    var minutes = Math.floor(whole % 3600 / 60), secs = whole % 60;
    if (days) return days + "d" + (hours ? " " + hours + "h" : "");
    if (hours) return hours + "h" + (minutes ? " " + minutes + "m" : "");
    return minutes + "m" + (secs ? " " + secs + "s" : "");
  }
  /* Times kept current: "3m ago" (data-rel), a run's duration so far (data-elapsed)
     and the age of the oldest queued run (data-age, "3m"). */
  function relativeTimes() {
    var now = Date.now() / 1000 + skew;
    document.querySelectorAll("time[datetime]").forEach(function (t) {
      var at = Date.parse(t.getAttribute("datetime")) / 1000;
      if (isNaN(at)) return;
      if (t.hasAttribute("data-rel")) t.textContent = ago(now - at, t.hasAttribute("data-due"));
      else if (t.hasAttribute("data-elapsed")) t.textContent = duration(now - at);
      else if (t.hasAttribute("data-age")) t.textContent = ago(now - at, false).replace(" ago", "");
    });
  }

  /* The log lines of the chosen step (if one is) at the chosen level or above. */
  function applyLogFilter(select) {
    var card = select.closest("section") || document;
    var stepSelect = card.querySelector("[data-log-filter]");
    var levelSelect = card.querySelector("[data-log-level]");
    var step = stepSelect ? stepSelect.value : "";
    var level = levelSelect && levelSelect.value ? Number(levelSelect.value) : 0;
    card.querySelectorAll(".log-line").forEach(function (line) {
      var hidden = (!!step && line.getAttribute("data-step") !== step)
        || Number(line.getAttribute("data-level")) < level;
      line.classList.toggle("hidden", hidden);
    });
    card.querySelectorAll(".log-group").forEach(function (group) {
      var visible = group.querySelectorAll(".log-line:not(.hidden)").length;
      group.style.display = visible ? "" : "none";
    });
    markStepRows();
  }

  /* The waterfall's step rows are toggle buttons of the log filter: pressed while
     the logs show only their step. */
  function markStepRows() {
    var select = document.querySelector("[data-log-filter]");
    var chosen = select ? select.value : "";
    document.querySelectorAll(".wf-row[data-step][role=button]").forEach(function (row) {
      row.setAttribute("aria-pressed", String(!!chosen && row.getAttribute("data-step") === chosen));
    });
  }

  function toggleStep(row) {
    var select = document.querySelector("[data-log-filter]");
    var step = row.getAttribute("data-step");
    if (!select || !Array.prototype.some.call(select.options, function (o) { return o.value === step; })) return;
    var on = select.value !== step;
    select.value = on ? step : "";
    applyLogFilter(select);
    if (on) document.getElementById("logs").scrollIntoView({ behavior: "smooth", block: "start" });
  }

  /* A backoff's label ("retry in 291 ms") goes on its dashed line when it fits there;
     else before the line, in the empty track left of the retry mark; else shortened
     ("291 ms") on the line; with no room for that either it is left out (the line's
     tooltip and the axis give the same). So it never covers the next attempt's bar,
     however short the backoff is drawn. */
  function placeBackoffLabels(root) {
    root.querySelectorAll(".bar-backoff .bar-label").forEach(function (label) {
      var full = label.getAttribute("data-full") || label.textContent;
      label.setAttribute("data-full", full);
      label.textContent = full;
      label.classList.remove("wf-before", "wf-off");
      var fits = function () { return label.scrollWidth <= label.clientWidth; };
      if (fits()) return;
      label.classList.add("wf-before");
      if (label.offsetWidth + 12 <= label.parentElement.offsetLeft) return;
      label.classList.remove("wf-before");
      label.textContent = label.getAttribute("data-short") || full;
      if (!fits()) label.classList.add("wf-off");
    });
  }

  /* Another bar's label (a step's duration, "waited 3m 5s") stays within its bar:
     its short form ("3m 5s") where the whole does not fit, or nothing. */
  function fitBarLabels(root) {
    placeBackoffLabels(root);
    root.querySelectorAll(".bar:not(.bar-backoff) .bar-label").forEach(function (label) {
      var full = label.getAttribute("data-full") || label.textContent;
      label.setAttribute("data-full", full);
      label.textContent = full;
      label.classList.remove("wf-off");
      var fits = function () { return label.scrollWidth <= label.clientWidth; };
      if (fits()) return;
      label.textContent = label.getAttribute("data-short") || full;
      if (!fits()) label.classList.add("wf-off");
    });
  }

  function wire(root) {
    fitBarLabels(root);
    root.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (e) {
        if (!window.confirm(form.getAttribute("data-confirm"))) e.preventDefault();
      });
    });
    root.querySelectorAll("button[data-confirm]").forEach(function (button) {
      button.addEventListener("click", function (e) {
        if (!window.confirm(button.getAttribute("data-confirm"))) e.preventDefault();
      });
    });
    root.querySelectorAll("form[data-keep], form.send-event").forEach(function (form) {
      form.addEventListener("input", function () { form.classList.add("dirty"); });
      form.addEventListener("change", function () { form.classList.add("dirty"); });
    });
    root.querySelectorAll("[data-range-select]").forEach(function (select) {
      select.addEventListener("change", function () {
        var form = select.closest("form");
        form.classList.toggle("custom", select.value === "custom");
        if (select.value !== "custom") {
          form.querySelectorAll(".range input").forEach(function (i) { i.value = ""; });
        }
      });
    });
    root.querySelectorAll("[data-check-all]").forEach(function (box) {
      box.addEventListener("change", function () {
        var form = box.closest("form");
        form.querySelectorAll("input[type=checkbox][name=run]").forEach(function (c) { c.checked = box.checked; });
      });
    });
    root.querySelectorAll("[data-log-filter], [data-log-level]").forEach(function (select) {
      select.addEventListener("change", function () { applyLogFilter(select); });
    });
    root.querySelectorAll(".wf-row[data-step][role=button]").forEach(function (row) {
      row.addEventListener("click", function () { toggleStep(row); });
      /* As a button: Enter acts when pressed, Space when released (and does not scroll). */
      row.addEventListener("keydown", function (e) {
        if (e.key === "Enter" && !e.repeat) { e.preventDefault(); toggleStep(row); }
        if (e.key === " ") e.preventDefault();
      });
      row.addEventListener("keyup", function (e) {
        if (e.key === " ") { e.preventDefault(); toggleStep(row); }
      });
    });
  }

  wire(document);
  window.addEventListener("resize", function () { fitBarLabels(document); });
  if (document.fonts && document.fonts.ready) {
    document.fonts.ready.then(function () { fitBarLabels(document); });
  }
  relativeTimes();
  setInterval(relativeTimes, 15000);
  if (liveUrl && poll > 0) {
    setInterval(tick, poll);
    document.addEventListener("visibilitychange", function () { if (!document.hidden) tick(); });
  }
  var periodic = document.querySelector("[data-refresh]");
  if (periodic) {
    setInterval(function () { if (!document.hidden) refresh(); }, parseInt(periodic.getAttribute("data-refresh"), 10) * 1000);
  }
})();
