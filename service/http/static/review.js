// labelqa review workbench: keyboard shortcuts and overlay toggles (plain JavaScript, no build step).
(function () {
  "use strict";
  function typing(e) {
    var t = e.target;
    return t && (t.tagName === "INPUT" && t.type !== "radio" && t.type !== "checkbox" || t.tagName === "TEXTAREA" || t.tagName === "SELECT");
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
  var apply = document.getElementById("apply-window");
  if (apply) {
    apply.addEventListener("click", function () {
      var img = document.getElementById("image"), wc = document.getElementById("wc").value, ww = document.getElementById("ww").value;
      var base = img.src.split("?")[0];
      img.src = (wc && ww) ? base + "?wc=" + encodeURIComponent(wc) + "&ww=" + encodeURIComponent(ww) : base;
    });
  }

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
