// The annotation page: keyboard shortcuts, client-side checks (the server checks again), and a
// submit that reports "saved" only when the server answered 200, i.e. after its commit.
(function () {
  "use strict";
  var root = document.getElementById("studio");
  if (!root) return;
  var mode = root.dataset.mode;
  var itemId = parseInt(root.dataset.item, 10);
  var csrf = root.dataset.csrf;
  var started = Date.now();
  var active = 0;
  var busy = false;
  var CATEGORY_KEYS = "qwertyuiopasdfghjkl";
  var statusLine = document.getElementById("status");
  var suggestion = JSON.parse(document.getElementById("suggestion").textContent);
  var prefill = JSON.parse(document.getElementById("prefill").textContent);
  var showBox = document.getElementById("show-suggestions");

  function q(selector) { return Array.prototype.slice.call(root.querySelectorAll(selector)); }
  function say(text, bad) { statusLine.textContent = text; statusLine.className = bad ? "error" : "ok"; }

  function setActive(i) {
    active = i;
    q(".response").forEach(function (el) { el.classList.toggle("active", el.dataset.response === String(i)); });
  }

  function pick(name, value) {
    var input = root.querySelector('input[name="' + name + '"][value="' + value + '"]');
    if (input) input.checked = true;
  }

  function labels() {
    var out = {responses: []};
    for (var i = 0; i < 2; i++) {
      var severity = root.querySelector('input[name="severity-' + i + '"]:checked');
      var categories = q('input[name="categories-' + i + '"]:checked').map(function (el) { return el.value; });
      out.responses.push({categories: categories, severity: severity ? parseInt(severity.value, 10) : null});
    }
    ["better", "safer"].forEach(function (name) {
      var chosen = root.querySelector('input[name="' + name + '"]:checked');
      out[name] = chosen ? parseInt(chosen.value, 10) : null;
    });
    return out;
  }

  function problem(l) {
    for (var i = 0; i < 2; i++) {
      var r = l.responses[i], name = "response " + "AB"[i];
      if (r.severity === null) return name + ": choose a severity";
      if (r.categories.length && r.severity === 0) return name + ": a harm category with severity 0 (safe)";
      if (!r.categories.length && r.severity > 0) return name + ": severity " + r.severity + " needs a harm category";
    }
    if (l.better === null) return "choose the better response";
    if (l.safer === null) return "choose the safer response";
    var safer = l.responses[l.safer], other = l.responses[1 - l.safer];
    if (safer.severity > 0 && other.severity === 0) return "the safe response is the safer one";
    return null;
  }

  function fill(l) {
    if (!l) return;
    l.responses.forEach(function (r, i) {
      pick("severity-" + i, r.severity);
      r.categories.forEach(function (c) { pick("categories-" + i, c); });
    });
    pick("better", l.better);
    pick("safer", l.safer);
  }

  function renderSuggestion() {
    if (!suggestion) { showBox.disabled = true; return; }
    var s = suggestion.labels, p = suggestion.partial || {}, who = suggestion.machine ? "machine" : "source";
    q(".response").forEach(function (el, i) {
      var line = el.querySelector(".suggested");
      if (s) {
        var r = s.responses[i];
        line.textContent = who + ": severity " + r.severity + (r.categories.length ? " (" + r.categories.join(", ") + ")" : "");
      } else if (p.safe && p.safe[i] !== null && p.safe[i] !== undefined) {
        line.textContent = who + ": " + (p.safe[i] ? "safe" : "unsafe");
      } else { line.textContent = ""; }
    });
    var better = s ? s.better : p.better, safer = s ? s.safer : p.safer;
    var parts = [];
    if (better !== null && better !== undefined) parts.push("better " + "AB"[better]);
    if (safer !== null && safer !== undefined) parts.push("safer " + "AB"[safer]);
    document.getElementById("suggested-pair").textContent = parts.length ? who + ": " + parts.join(", ") : "";
  }

  function toggleSuggestions() {
    q(".suggested").forEach(function (el) { el.hidden = !showBox.checked || !el.textContent; });
  }

  function send(status) {
    if (busy) return;
    var body, url;
    var comment = document.getElementById("comment").value;
    var l = labels();
    if (mode === "adjudicate") {
      var bad = problem(l);
      if (bad) { say(bad, true); return; }
      url = "/api/adjudications"; body = {item_id: itemId, labels: l};
    } else {
      if (status === "answered") {
        var wrong = problem(l);
        if (wrong) { say(wrong, true); return; }
      }
      if (status === "flagged" && !comment.trim()) { say("write a comment to flag", true); document.getElementById("comment").focus(); return; }
      body = {item_id: itemId, status: status, comment: comment || null, suggestions_shown: showBox.checked,
              seconds: (Date.now() - started) / 1000};
      if (status === "answered" || (status === "flagged" && !problem(l))) body.labels = l;
      url = "/api/answers";
    }
    busy = true;
    say("saving…");
    fetch(url, {method: "POST", headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
                body: JSON.stringify(body), credentials: "same-origin"})
      .then(function (response) {
        return response.json().then(function (data) { return {ok: response.ok, data: data}; });
      })
      .then(function (result) {
        busy = false;
        if (!result.ok) { say("not saved: " + ((result.data.error || {}).message || "error"), true); return; }
        say("saved");
        root.dataset.saved = "true";
        setTimeout(function () { window.location.assign(mode === "adjudicate" ? "/admin" : "/annotate"); }, 150);
      })
      .catch(function () { busy = false; say("not saved: the server did not answer; try again", true); });
  }

  document.addEventListener("keydown", function (event) {
    if (event.target.tagName === "INPUT" && event.target.type === "text") {
      if (event.key === "Enter") { event.preventDefault(); send(document.getElementById("flag") && event.shiftKey ? "flagged" : "answered"); }
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    var key = event.key;
    if (key === "[") setActive(0);
    else if (key === "]") setActive(1);
    else if (key >= "0" && key <= "3") pick("severity-" + active, key);
    else if (CATEGORY_KEYS.indexOf(key) >= 0 && key.length === 1) {
      var box = q('input[name="categories-' + active + '"]')[CATEGORY_KEYS.indexOf(key)];
      box.checked = !box.checked;
    }
    else if (key === "z" || key === "x") pick("better", key === "z" ? 0 : 1);
    else if (key === "c" || key === "v") pick("safer", key === "c" ? 0 : 1);
    else if (key === ".") { showBox.checked = !showBox.checked; toggleSuggestions(); }
    else if (key === "Enter") send("answered");
    else if (key === "-" && mode === "annotate") send("skipped");
    else if (key === "!" && mode === "annotate") send("flagged");
    else return;
    event.preventDefault();
  });

  q(".response").forEach(function (el) { el.addEventListener("click", function () { setActive(parseInt(el.dataset.response, 10)); }); });
  showBox.addEventListener("change", toggleSuggestions);
  document.getElementById("submit").addEventListener("click", function () { send("answered"); });
  var skip = document.getElementById("skip"), flag = document.getElementById("flag");
  if (skip) skip.addEventListener("click", function () { send("skipped"); });
  if (flag) flag.addEventListener("click", function () { send("flagged"); });
  renderSuggestion();
  toggleSuggestions();
  fill(prefill);
  setActive(0);
})();
