// The console's only script (CSP: scripts from this origin only, nothing inline).
// The overview refreshes its #live section from /overview/live (server-rendered, escaped
// HTML) and redraws the outcomes chart from the JSON data block in it.
"use strict";
(function () {
  var COLORS = {
    applied: "#15803d", retrying: "#ca8a04", unexpected_skip: "#ea580c",
    dead_lettered: "#b91c1c", unknown_kind_dead_lettered: "#7c3aed"
  };
  var plot = null;

  function chartData() {
    var el = document.getElementById("chart-data");
    return el ? JSON.parse(el.textContent) : null;
  }

  function drawChart() {
    var box = document.getElementById("chart");
    var data = chartData();
    if (!box || !data || typeof uPlot === "undefined") { return; }
    var rows = [data.x].concat(data.series.map(function (s) { return s.data; }));
    if (plot) { plot.destroy(); }
    box.textContent = "";
    plot = new uPlot({
      width: Math.max(400, box.clientWidth - 20), height: 280,
      scales: { x: { time: true } },
      axes: [{}, { label: "outcomes / minute" }],
      series: [{}].concat(data.series.map(function (s) {
        return { label: s.label, stroke: COLORS[s.label] || "#333", width: 2 };
      }))
    }, rows, box);
    box.setAttribute("data-drawn", "1");
  }

  function refresh(live) {
    var seconds = parseFloat(live.getAttribute("data-refresh")) || 5;
    setTimeout(function tick() {
      fetch(live.getAttribute("data-src"), { credentials: "same-origin" })
        .then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.text(); })
        .then(function (html) {
          live.innerHTML = html;
          plot = null;
          drawChart();
          live.setAttribute("data-refreshed", String(Date.now()));
        })
        .catch(function () { live.classList.add("stale"); })
        .finally(function () { setTimeout(tick, seconds * 1000); });
    }, seconds * 1000);
  }

  function selectAll() {
    var all = document.getElementById("select-all");
    if (!all) { return; }
    all.addEventListener("change", function () {
      document.querySelectorAll("#dead-letters input[name=id]").forEach(function (c) {
        c.checked = all.checked;
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    drawChart();
    selectAll();
    var live = document.getElementById("live");
    if (live) { refresh(live); }
  });
})();
