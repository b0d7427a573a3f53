(function () {
  "use strict";
  var root = document.documentElement;
  window.addEventListener("error", function (e) { fail(e.message || "script error"); });
  function fail(message) {
    root.setAttribute("data-rendered", "error");
    var p = document.getElementById("render-error");
    if (p) { p.hidden = false; p.textContent = "The timeline and charts could not be drawn: " + message; }
  }
  var NS = "http://www.w3.org/2000/svg";
  var COLORS = { accepted: "#9aa5b1", precheck: "#5b8def", backup: "#8e6cef", apply: "#f0a030",
    restart: "#2bb3a3", validate: "#3fa34d", inspect: "#d4a72c", rollback: "#d64545",
    finalize: "#6b7785", recover: "#c77dba" };
  function el(name, attrs, parent, text) {
    var e = document.createElementNS(NS, name);
    for (var k in attrs) { if (Object.prototype.hasOwnProperty.call(attrs, k)) e.setAttribute(k, attrs[k]); }
    if (text !== undefined) e.textContent = text;
    if (parent) parent.appendChild(e);
    return e;
  }
  function seconds(ms) {
    var s = ms / 1000;
    return (Math.abs(s) >= 10 ? s.toFixed(0) : Math.abs(s) >= 1 ? s.toFixed(1) : s.toFixed(2)) + " s";
  }
  function niceStep(span, ticks) {
    var raw = span / ticks, p = Math.pow(10, Math.floor(Math.log10(raw)));
    var steps = [1, 2, 5, 10];
    for (var i = 0; i < steps.length; i++) { if (steps[i] * p >= raw) return steps[i] * p; }
    return 10 * p;
  }

  function legend() {
    var box = document.getElementById("legend");
    Object.keys(COLORS).forEach(function (phase) {
      var s = document.createElement("span");
      s.style.setProperty("--swatch", COLORS[phase]);
      s.textContent = phase;
      box.appendChild(s);
    });
  }

  function timeline(data) {
    var svg = document.getElementById("timeline");
    var width = Math.max(svg.getBoundingClientRect().width || 0, 900);
    var labelW = 190, rightPad = 180, top = 40, rowH = 24, waveH = 22, barH = 15;
    var span = Math.max(data.duration_ms, 1);
    var scale = (width - labelW - rightPad) / span;
    var x = function (ms) { return labelW + Math.max(0, ms) * scale; };
    var y = top, layout = [];
    data.waves.forEach(function (wave, w) {
      layout.push({ wave: w, y: y }); y += waveH;
      wave.rows.forEach(function (r) { layout.push({ row: r, y: y }); y += rowH; });
    });
    var rowsEnd = y, height = y + 12 + 16 * data.marks.length;
    svg.setAttribute("viewBox", "0 0 " + width + " " + height);
    svg.setAttribute("height", height);
    var axis = el("g", { "class": "axis" }, svg);
    var step = niceStep(span, 10);
    for (var t = 0; t <= span + 1e-9; t += step) {
      el("line", { "class": "grid", x1: x(t), x2: x(t), y1: top - 6, y2: rowsEnd }, axis);
      el("text", { x: x(t), y: top - 12, "text-anchor": "middle" }, axis, seconds(t));
    }
    layout.forEach(function (item) {
      if (item.wave !== undefined) {
        var wave = data.waves[item.wave];
        var rows = wave.rows.length;
        if (wave.start !== null && wave.end !== null) {
          el("rect", { "class": "wave-band", x: x(wave.start), y: item.y + 2,
            width: Math.max(2, (wave.end - wave.start) * scale), height: waveH + rows * rowH - 4, rx: 4 }, svg);
        }
        el("text", { "class": "wave-label", x: 6, y: item.y + 15 }, svg,
          "wave " + (item.wave + 1) + ": " + wave.name + " (" + wave.status + ")");
        return;
      }
      var row = data.rows[item.row];
      var g = el("g", { "class": "row", "data-service": row.service }, svg);
      el("text", { "class": "row-label", x: 18, y: item.y + 16 }, g, row.target);
      row.bars.forEach(function (bar) {
        var r = el("rect", { "class": "bar " + bar.status + " kind-" + bar.kind,
          x: x(bar.start), y: item.y + (rowH - barH) / 2, height: barH, rx: 2,
          width: Math.max(2, (bar.end - bar.start) * scale),
          fill: COLORS[bar.phase] || "#888", "data-phase": bar.phase }, g);
        el("title", {}, r, row.target + " " + bar.kind + ": " + bar.phase + " " + bar.status +
          ", " + Math.max(0, bar.end - bar.start) + " ms (at " + seconds(bar.start) + ")" +
          (bar.detail ? "\n" + bar.detail : ""));
      });
      var failed = row.bars.filter(function (b) { return b.status === "failed"; })
        .map(function (b) { return b.phase + " ✗"; });
      el("text", { "class": "row-status status-" + row.status, x: width - rightPad + 12, y: item.y + 16 }, g,
        row.status + (failed.length ? " (" + failed.join(", ") + ")" : ""));
    });
    data.marks.forEach(function (mark, i) {
      var g = el("g", { "class": "mark " + mark.kind }, svg);
      var ly = rowsEnd + 14 + 16 * i, right = x(mark.at) > width * 0.7;
      el("line", { x1: x(mark.at), x2: x(mark.at), y1: top - 4, y2: ly + 2 }, g);
      el("text", { x: x(mark.at) + (right ? -4 : 4), y: ly, "text-anchor": right ? "end" : "start" }, g, mark.label);
    });
    return data.rows.length;
  }

  function charts(data) {
    var box = document.getElementById("charts");
    var drawn = 0;
    data.charts.forEach(function (c) {
      var card = document.createElement("div");
      card.className = "card";
      var h = document.createElement("h3");
      var name = document.createElement("span"); name.textContent = c.target;
      var status = document.createElement("span"); status.className = "badge " + c.status; status.textContent = c.status;
      h.appendChild(name); h.appendChild(status); card.appendChild(h);
      var width = 420, labelW = 112, valueW = 118, gateH = 62, barH = 14;
      var height = Math.max(1, c.gates.length) * gateH + 6;
      var svg = el("svg", { "class": "chart", "data-service": c.service, viewBox: "0 0 " + width + " " + height,
        role: "img" }, card);
      el("title", {}, svg, c.target + ": figures before and after the migration");
      if (!c.gates.length) {
        el("text", { x: 4, y: 20 }, svg, "no figures: the migration did not get that far");
      }
      c.gates.forEach(function (gate, i) {
        var y = i * gateH + 4;
        var top = Math.max(gate.before, gate.after || 0, gate.limit || 0, 1) * 1.12;
        var sx = function (v) { return labelW + (v / top) * (width - labelW - valueW); };
        var vx = width - valueW + 8;
        el("text", { x: 0, y: y + 13 }, svg, gate.name);
        el("text", { "class": "value", x: 0, y: y + 29 }, svg, gate.text.verdict);
        el("rect", { "class": "before", x: labelW, y: y + 2, height: barH, width: Math.max(1, sx(gate.before) - labelW) }, svg);
        el("text", { "class": "value", x: vx, y: y + 13 }, svg, "before " + gate.text.before);
        if (gate.after !== null) {
          var cls = "after" + (gate.passed === false ? " tripped" : "") + (gate.inconclusive ? " inconclusive" : "");
          el("rect", { "class": cls, x: labelW, y: y + 2 + barH + 3, height: barH, width: Math.max(1, sx(gate.after) - labelW) }, svg);
          el("text", { "class": "value", x: vx, y: y + 13 + barH + 3 }, svg, "after " + gate.text.after);
        }
        if (gate.limit !== null) {
          el("line", { "class": "limit", x1: sx(gate.limit), x2: sx(gate.limit), y1: y, y2: y + 2 * barH + 7 }, svg);
          el("text", { "class": "value", x: vx, y: y + 13 + 2 * (barH + 3) }, svg,
            "limit " + gate.text.limit);
        }
      });
      box.appendChild(card);
      drawn++;
    });
    return drawn;
  }

  try {
    var data = JSON.parse(document.getElementById("flotilla-data").textContent);
    legend();
    var rows = timeline(data);
    var cards = charts(data);
    if (rows !== data.rows.length || cards !== data.charts.length) throw new Error("incomplete drawing");
    if (root.getAttribute("data-rendered") !== "error") root.setAttribute("data-rendered", "ok");
  } catch (e) {
    fail(e && e.message ? e.message : String(e));
  }
})();
