// labelqa review workbench: keyboard shortcuts and overlay toggles (plain JavaScript, no build step).
(function () {
  "use strict";
  function typing(e) {
    var t = e.target;
    return t && (t.tagName === "INPUT" && t.type !== "radio" && t.type !== "checkbox" && t.type !== "range" || t.tagName === "TEXTAREA" || t.tagName === "SELECT");
  }
  function go(id) { var a = document.getElementById(id); if (a) { window.location.href = a.href; } }

  // --- the worklist: j/k move the highlight, Enter (or click) opens the item
  var rows = Array.prototype.slice.call(document.querySelectorAll("tr.row"));
  var at = 0;
  function mark() { rows.forEach(function (r, i) { r.classList.toggle("active", i === at); }); }
  rows.forEach(function (r, i) { r.addEventListener("click", function () { window.location.href = r.dataset.href; }); });
  if (rows.length) { mark(); }

  // --- the item view
  var form = document.getElementById("decision-form");
  // mask: "suggestion" accepts labelqa's suggested mask (a flagged SEG mask; the class stays unless one is chosen)
  function decide(kind, mask) {
    if (!form) { return; }
    if (mask && !document.getElementById("btn-accept-mask")) { return; }
    if (kind === "label_wrong" && !mask && !form.querySelector("input[name=corrected_label]:checked")) {
      alert("choose the correct label first (1-9)");
      return;
    }
    document.getElementById("decision").value = kind;
    document.getElementById("corrected-mask").value = mask || "";
    form.submit();
  }
  if (form) {
    form.querySelectorAll("button[data-decision]").forEach(function (b) {
      b.addEventListener("click", function (e) { e.preventDefault(); decide(b.dataset.decision, b.dataset.mask); });
    });
  }
  var heat = document.getElementById("heatmap"), heatBox = document.getElementById("toggle-heatmap");
  function showHeat(on) { if (heat) { heat.classList.toggle("hidden", !on); if (heatBox) { heatBox.checked = on; } } }
  if (heatBox) { heatBox.addEventListener("change", function () { showHeat(heatBox.checked); }); }
  var mask = document.getElementById("mask"), maskBox = document.getElementById("toggle-mask");
  function showMask(on) { if (mask) { mask.classList.toggle("hidden", !on); if (maskBox) { maskBox.checked = on; } } }
  if (maskBox) { maskBox.addEventListener("change", function () { showMask(maskBox.checked); }); }
  var sugg = document.getElementById("suggestion"), suggBox = document.getElementById("toggle-suggestion");
  function showSugg(on) { if (sugg) { sugg.classList.toggle("hidden", !on); if (suggBox) { suggBox.checked = on; } } }
  if (suggBox) { suggBox.addEventListener("change", function () { showSugg(suggBox.checked); }); }

  // --- the pictures: a volume item (one segment over a series) shows one slice at a time
  var item = document.getElementById("item"), stack = document.getElementById("stack");
  var slider = document.getElementById("slice");
  var volume = item && item.dataset.dims === "3" && slider ? {
    n: parseInt(item.dataset.slices, 10), at: parseInt(item.dataset.slice, 10),
    keys: item.dataset.keySlices ? item.dataset.keySlices.split(",").map(Number) : []
  } : null;
  var win = null; // the window the reviewer applied: {wc, ww}
  function pictures() {
    return ["image", "mask", "suggestion"].map(function (id) { return document.getElementById(id); })
      .filter(function (img) { return img; });
  }
  function query(img) {
    var q = [];
    if (volume) { q.push("slice=" + volume.at); }
    if (img.id === "image" && win) { q.push("wc=" + encodeURIComponent(win.wc), "ww=" + encodeURIComponent(win.ww)); }
    return q.length ? "?" + q.join("&") : "";
  }
  // data-loaded on the stack says which slice every picture shows (data-failed: which one could not be shown)
  function loaded() {
    if (!volume) { return; }
    var want = String(volume.at);
    var done = pictures().every(function (img) {
      return img.complete && img.naturalWidth > 0 && new URL(img.src).searchParams.get("slice") === want;
    });
    if (done) { stack.dataset.loaded = want; }
  }
  function refresh() {
    if (volume) { stack.dataset.loaded = ""; }
    pictures().forEach(function (img) {
      var want = img.src.split("?")[0] + query(img);
      if (img.src !== want) { img.src = want; }
    });
    loaded();
  }
  if (volume) {
    pictures().forEach(function (img) {
      img.addEventListener("load", loaded);
      img.addEventListener("error", function () { stack.dataset.failed = String(volume.at); });
    });
    document.querySelectorAll("#ticks .tick").forEach(function (t) {
      var k = parseInt(t.dataset.slice, 10);
      t.style.left = (volume.n > 1 ? 100 * k / (volume.n - 1) : 0) + "%";
    });
    document.querySelectorAll("button.key-slice").forEach(function (b) {
      b.addEventListener("click", function () { show(parseInt(b.dataset.slice, 10)); });
    });
    slider.addEventListener("input", function () { show(parseInt(slider.value, 10)); });
    loaded();
  }
  function show(k) {
    k = Math.max(0, Math.min(volume.n - 1, k));
    slider.value = String(k);
    if (k === volume.at) { return; }
    volume.at = k;
    item.dataset.slice = String(k);
    document.getElementById("slice-no").textContent = String(k + 1);
    var i = volume.keys.indexOf(k), badge = document.getElementById("key-badge");
    badge.classList.toggle("hidden", i < 0);
    badge.textContent = i === 0 ? "key slice (worst)" : "key slice";
    document.querySelectorAll("button.key-slice").forEach(function (b) {
      b.classList.toggle("current", parseInt(b.dataset.slice, 10) === k);
    });
    refresh();
  }
  function nextKey() {
    if (!volume.keys.length) { return; }
    var i = volume.keys.indexOf(volume.at);
    show(volume.keys[(i + 1) % volume.keys.length]);
  }
  var apply = document.getElementById("apply-window");
  if (apply) {
    apply.addEventListener("click", function () {
      var wc = document.getElementById("wc").value, ww = document.getElementById("ww").value;
      win = (wc && ww) ? {wc: wc, ww: ww} : null;
      refresh();
    });
  }
  var STEPS = {"ArrowDown": 1, "]": 1, "ArrowUp": -1, "[": -1, "PageDown": 10, "PageUp": -10};

  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey || typing(e)) { return; }
    var k = e.key;
    if (rows.length && !form) {
      if (k === "j") { at = Math.min(rows.length - 1, at + 1); mark(); rows[at].scrollIntoView({block: "nearest"}); }
      else if (k === "k") { at = Math.max(0, at - 1); mark(); rows[at].scrollIntoView({block: "nearest"}); }
      else if (k === "Enter") { window.location.href = rows[at].dataset.href; }
      return;
    }
    if (!form) { return; }
    if (volume) {
      if (STEPS[k]) { e.preventDefault(); show(volume.at + STEPS[k]); return; }
      if (k === "Home" || k === "End") { e.preventDefault(); show(k === "Home" ? 0 : volume.n - 1); return; }
      if (k === "n") { nextKey(); return; }
    }
    if (k === "j") { go("next"); }
    else if (k === "k") { go("prev"); }
    else if (k === "c") { decide("label_wrong"); }
    else if (k === "d") { decide("label_right"); }
    else if (k === "u") { decide("unsure"); }
    else if (k === "h") { showHeat(heat && heat.classList.contains("hidden")); }
    else if (k === "m") { showMask(mask && mask.classList.contains("hidden")); }
    else if (k === "s") { showSugg(sugg && sugg.classList.contains("hidden")); }
    else if (k === "a") { decide("label_wrong", "suggestion"); }
    else if (/^[1-9]$/.test(k)) {
      var r = form.querySelector("input[name=corrected_label][data-key='" + k + "']");
      if (r && !r.disabled) { r.checked = true; }
    }
  });
})();
