/* Attention browser, client side: shade tokens by attention while the pointer is over one.
   The server sends one [T, T] pattern as base64 little-endian uint16 (see dashboards/attention.py).
   Only styles, titles and textContent are set here: token text is never parsed as HTML. */
(function () {
  var state = null;

  function decode(data) {
    var bin = atob(data.b64), bytes = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return new Uint16Array(bytes.buffer);
  }

  function spans() {
    return document.querySelectorAll("#attn-strip .tok");
  }

  function clear() {
    spans().forEach(function (s) { s.style.backgroundColor = ""; s.classList.remove("focus"); s.title = ""; });
    var info = document.getElementById("attn-hover-info");
    if (info) info.textContent = "";
  }

  function shade(i) {
    if (!state) return;
    var T = state.T, vals = [], peak = 0, from = state.mode === "from";
    for (var j = 0; j < T; j++) {
      var v = (from ? state.p[i * T + j] : state.p[j * T + i]) / 65535;
      vals.push(v);
      if (j > 0 || state.first) peak = Math.max(peak, v);
    }
    spans().forEach(function (s) {
      var j = parseInt(s.getAttribute("data-i"), 10), v = vals[j] || 0;
      s.style.backgroundColor = peak > 0 && v > 0 ? "rgba(31,119,180," + Math.min(v / peak, 1).toFixed(3) + ")" : "";
      s.title = v.toFixed(4);
      s.classList.toggle("focus", j === i);
    });
    var info = document.getElementById("attn-hover-info");
    if (info) info.textContent = state.label + ": token " + i + (from ? " attends to" : " is attended by") +
      " the shaded tokens (darkest = " + peak.toFixed(3) + ")";
  }

  document.addEventListener("mouseover", function (e) {
    var tok = e.target.closest && e.target.closest("#attn-strip .tok");
    if (tok) shade(parseInt(tok.getAttribute("data-i"), 10));
  });
  document.addEventListener("mouseout", function (e) {
    if (e.target.closest && e.target.closest("#attn-strip") &&
        !(e.relatedTarget && e.relatedTarget.closest && e.relatedTarget.closest("#attn-strip"))) clear();
  });

  window.dash_clientside = Object.assign({}, window.dash_clientside, {
    interp: {
      setAttention: function (data, mode) {
        state = data ? {T: data.T, p: decode(data), first: data.first, label: data.label, mode: mode} : null;
        clear();
        return data ? data.label + " (" + mode + ")" : "";
      },
      showAttentionView: function (view) {
        /* head, model and neuron view boxes: only the chosen one is displayed */
        return ["head", "model", "neuron"].map(function (v) { return v === view ? {} : {display: "none"}; });
      }
    }
  });
})();
