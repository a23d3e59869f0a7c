// Veil service graph page (/ui): draws /api/v1/graph with the vendored
// cytoscape.js. Namespaces are groups, pods are aggregated to workloads,
// nodes and addresses outside the cluster have their own groups and shapes
// and are not counted as workloads. Edge width follows the last minute's
// rate, colour the verdict (red: denied), labels carry ports, connections
// and HTTP rates. Positions are computed here, once per vertex, and never
// change afterwards: live updates add and restyle elements, they never
// re-run a layout.
"use strict";

(function () {
  const REFRESH_MS = 5000;
  const COL_W = 320, ROW_H = 160, TOP = 90, LEFT = 150;
  const COLORS = { pod: "#2563eb", node: "#6b7280", external: "#d97706", world: "#9ca3af" };
  const SHAPES = { pod: "round-rectangle", node: "hexagon", external: "diamond", world: "ellipse" };
  const RED = "#dc2626", ORANGE = "#ea580c", GREY = "#4b5563";

  const api = document.body.dataset.api || "/api/v1/graph";
  const state = { window: "all", ns: "", verdict: "all", selected: null, data: null };
  // Stable layout: group → column, vertex → position.
  const columns = new Map();
  const rows = new Map();
  const positions = new Map();

  const cy = cytoscape({
    container: document.getElementById("graph"),
    wheelSensitivity: 0.3,
    minZoom: 0.2,
    maxZoom: 3,
    style: [
      { selector: "node", style: {
        "label": "data(label)", "text-wrap": "wrap", "text-max-width": 180, "text-valign": "bottom",
        "text-margin-y": 5, "font-size": 12, "background-color": "data(color)", "shape": "data(shape)",
        "width": 34, "height": 34, "color": "#111827",
        "text-background-color": "#ffffff", "text-background-opacity": 0.85, "text-background-padding": 2 } },
      { selector: "node.world", style: { "border-width": 2, "border-style": "dashed", "border-color": "#6b7280" } },
      { selector: ":parent", style: {
        "label": "data(label)", "text-valign": "top", "text-halign": "center", "font-size": 13,
        "font-weight": "bold", "shape": "round-rectangle", "background-color": "data(color)",
        "background-opacity": 0.07, "border-width": 1, "border-color": "#9ca3af", "padding": 22,
        "text-background-opacity": 0, "color": "#374151" } },
      { selector: "edge", style: {
        "label": "data(label)", "font-size": 10, "curve-style": "bezier", "control-point-step-size": 40,
        "target-arrow-shape": "triangle", "arrow-scale": 1.1, "width": "data(width)",
        "line-color": "data(color)", "target-arrow-color": "data(color)", "line-style": "data(style)",
        "text-background-color": "#ffffff", "text-background-opacity": 0.9, "text-background-padding": 2,
        "text-rotation": "none", "text-wrap": "wrap", "z-index": 10, "z-compound-depth": "top", "color": "#111827" } },
      // Edges inside a group bow out instead of crossing its other members.
      { selector: "edge.intra", style: { "curve-style": "unbundled-bezier", "control-point-distances": 90,
        "control-point-weights": 0.5 } },
      { selector: ":selected", style: { "overlay-color": "#2563eb", "overlay-opacity": 0.15, "overlay-padding": 6 } },
    ],
  });

  function human(b) {
    const u = ["B", "KiB", "MiB", "GiB", "TiB"]; let i = 0;
    while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
    return i === 0 ? Math.round(b) + "B" : b.toFixed(1) + u[i];
  }
  function rate(x) { return x >= 10 ? x.toFixed(0) : x >= 0.1 ? x.toFixed(1) : x.toFixed(2); }
  function ago(ms) {
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    return s < 60 ? s + " s ago" : s < 3600 ? Math.round(s / 60) + " min ago" : Math.round(s / 3600) + " h ago";
  }
  function esc(s) {
    return String(s).replace(/[&<>"]/g, c => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
  }

  function groupOf(n) {
    if (n.kind === "pod") return { id: "ns:" + n.namespace, label: "namespace " + n.namespace, color: COLORS.pod };
    if (n.kind === "node") return { id: "grp:nodes", label: "nodes", color: COLORS.node };
    return { id: "grp:outside", label: "outside the cluster", color: COLORS.external };
  }
  function groupRank(id) { return id === "grp:nodes" ? 1 : id === "grp:outside" ? 2 : 0; }

  // Positions for vertices never seen: a column per group (namespaces in
  // name order, then nodes, then outside, on the first draw; later groups to
  // the right), a row per vertex in its group. Existing positions never move.
  function place(nodes) {
    const fresh = nodes.filter(n => !positions.has(n.id));
    const groups = [...new Set(fresh.map(n => groupOf(n).id))].filter(g => !columns.has(g));
    groups.sort((a, b) => groupRank(a) - groupRank(b) || a.localeCompare(b));
    for (const g of groups) columns.set(g, columns.size);
    fresh.sort((a, b) => a.id.localeCompare(b.id));
    for (const n of fresh) {
      const g = groupOf(n).id;
      const r = rows.get(g) || 0;
      rows.set(g, r + 1);
      // Members zig-zag inside their column and odd columns start half a
      // row lower, so that straight edges do not run through vertices.
      const c = columns.get(g);
      positions.set(n.id, { x: LEFT + c * COL_W + (r % 2 ? 75 : -75), y: TOP + r * ROW_H + (c % 2) * ROW_H / 2 });
    }
  }

  function visibleEdges(g) {
    return g.edges.filter(e => {
      if (state.verdict === "denied" && !(e.denied > 0)) return false;
      if (state.verdict === "allowed" && !(e.connections > 0)) return false;
      if (state.ns) {
        const ns = id => (g.byId.get(id) || {}).namespace;
        if (ns(e.source) !== state.ns && ns(e.target) !== state.ns) return false;
      }
      return true;
    });
  }

  // One drawn edge per (source, target): the ports' figures summed.
  function pairs(edges) {
    const m = new Map();
    for (const e of edges) {
      const k = e.source + "->" + e.target;
      let p = m.get(k);
      if (!p) {
        p = { id: "e:" + k, source: e.source, target: e.target, ports: [], connections: 0, denied: 0,
          bytes: 0, cps: 0, bps: 0, rps: 0, eps: 0, http: false, p99: 0 };
        m.set(k, p);
      }
      p.ports.push(e);
      p.connections += e.connections; p.denied += e.denied; p.bytes += e.bytes;
      p.cps += e.rate_1m.connections_per_second; p.bps += e.rate_1m.bytes_per_second;
      if (e.http) {
        p.http = true; p.rps += e.http.requests_per_second; p.eps += e.http.errors_per_second;
        p.p99 = Math.max(p.p99, e.http.p99_seconds);
      }
    }
    return [...m.values()];
  }

  function edgeData(p) {
    const color = p.connections === 0 && p.denied > 0 ? RED : p.denied > 0 ? ORANGE : GREY;
    const activity = p.bps / 1000 + p.cps * 10 + p.rps * 10;
    const width = 1.5 + Math.min(8.5, 2.2 * Math.log10(1 + activity));
    const ports = p.ports.map(e => e.port + "/" + e.protocol).join(", ");
    let label = ports + " · " + (p.connections ? p.connections + " conns" : "") +
      (p.denied ? (p.connections ? ", " : "") + p.denied + " denied" : "");
    if (p.http) label += "\n" + rate(p.rps) + " req/s · " + (p.rps ? (100 * p.eps / p.rps).toFixed(1) : "0") +
      "% err · p99 " + Math.round(p.p99 * 1000) + " ms";
    return { id: p.id, source: p.source, target: p.target, color: color, width: width, label: label,
      style: p.connections === 0 && p.denied > 0 ? "dashed" : "solid",
      verdict: color === RED ? "denied" : color === ORANGE ? "partly-denied" : "allowed" };
  }

  function draw(g) {
    g.byId = new Map(g.nodes.map(n => [n.id, n]));
    const edges = visibleEdges(g);
    const drawnPairs = pairs(edges);
    const used = new Set(drawnPairs.flatMap(p => [p.source, p.target]));
    const nodes = g.nodes.filter(n => used.has(n.id) || (!state.ns && state.verdict === "all"));
    place(nodes);
    const want = new Set();
    cy.batch(() => {
      for (const n of nodes) {
        const grp = groupOf(n);
        want.add(grp.id);
        if (cy.getElementById(grp.id).empty()) {
          cy.add({ group: "nodes", data: { id: grp.id, label: grp.label, color: grp.color }, selectable: false });
        }
      }
      for (const n of nodes) {
        want.add(n.id);
        const data = { id: n.id, parent: groupOf(n).id, kind: n.kind, color: COLORS[n.kind] || "#999",
          shape: SHAPES[n.kind] || "ellipse",
          label: n.kind === "node" ? "node " + n.workload : n.kind === "world" ? "world (unknown addresses)" : n.workload };
        const el = cy.getElementById(n.id);
        if (el.empty()) cy.add({ group: "nodes", data: data, position: Object.assign({}, positions.get(n.id)), classes: n.kind });
        else el.data(data);
      }
      for (const p of drawnPairs) {
        const d = edgeData(p);
        want.add(d.id);
        const el = cy.getElementById(d.id);
        const intra = groupOf(g.byId.get(p.source) || {}).id === groupOf(g.byId.get(p.target) || {}).id;
        if (el.empty()) cy.add({ group: "edges", data: d, classes: intra ? "intra" : "" });
        else el.data(d);
      }
      cy.elements().forEach(el => { if (!want.has(el.id())) cy.remove(el); });
    });
    if (!draw.fitted && nodes.length) { cy.fit(undefined, 30); draw.fitted = true; }
    table(edges);
    report(drawnPairs);
    details();
  }

  function table(edges) {
    const rowsHtml = edges.map(e => "<tr data-verdict=\"" + e.verdict + "\"><td>" + esc(e.source) + " → " + esc(e.target) +
      " :" + e.port + "/" + e.protocol + "</td><td>" + e.connections + (e.denied ? " (" + e.denied + " denied)" : "") +
      "</td><td>" + human(e.bytes) + "</td></tr>");
    document.getElementById("edges").innerHTML = rowsHtml.join("");
  }

  // For tests and for the curious: what was drawn, as the renderer styled it,
  // and how many pairs of vertices (labels included) overlap on screen.
  function report(drawnPairs) {
    const list = document.getElementById("drawn");
    list.innerHTML = drawnPairs.map(p => {
      const el = cy.getElementById(p.id);
      return "<li data-edge=\"" + esc(p.id) + "\" data-verdict=\"" + el.data("verdict") +
        "\" data-line-color=\"" + esc(el.style("line-color")) + "\"></li>";
    }).join("");
    const boxes = cy.nodes().filter(n => !n.isParent()).map(n => n.boundingBox({ includeLabels: true }));
    let overlaps = 0;
    for (let i = 0; i < boxes.length; i++) {
      for (let j = i + 1; j < boxes.length; j++) {
        const a = boxes[i], b = boxes[j];
        if (a.x1 < b.x2 && b.x1 < a.x2 && a.y1 < b.y2 && b.y1 < a.y2) overlaps++;
      }
    }
    document.body.dataset.overlaps = String(overlaps);
    document.body.dataset.vertices = String(boxes.length);
  }

  function portRows(list) {
    return list.map(e => "<tr><td>" + e.port + "/" + e.protocol + "</td><td>" + e.connections + " (" + e.active +
      " open)</td><td>" + human(e.bytes_sent) + " → / " + human(e.bytes_received) + " ←</td><td>" +
      (e.denied ? "<b class=\"denied\">" + e.denied + " denied</b>" : "allowed") +
      (e.policy ? "<br><small class=\"policy\">deciding policy: " + esc(e.policy) + "</small>" : "") + "</td><td>" + ago(e.last_seen) + "</td></tr>" +
      (e.http ? "<tr><td></td><td colspan=\"4\">HTTP " + e.http.requests + " requests, " + e.http.errors + " errors" +
        (e.http.denied ? ", " + e.http.denied + " denied" : "") + " · " + rate(e.http.requests_per_second) +
        " req/s · p99 " + Math.round(e.http.p99_seconds * 1000) + " ms</td></tr>" : "")).join("");
  }
  const PORT_HEAD = "<tr><th>port</th><th>conns</th><th>bytes</th><th>verdict</th><th>last seen</th></tr>";

  function details() {
    const box = document.getElementById("details");
    const g = state.data;
    const sel = state.selected;
    if (!g || !sel) { box.innerHTML = "<p class=\"hint\">Click a workload or an edge for details.</p>"; return; }
    if (sel.startsWith("e:")) {
      const [s, t] = sel.slice(2).split("->");
      const list = g.edges.filter(e => e.source === s && e.target === t);
      if (!list.length) { box.innerHTML = "<p class=\"hint\">No longer in view.</p>"; return; }
      box.innerHTML = "<h3>" + esc(s) + " → " + esc(t) + "</h3><table>" + PORT_HEAD + portRows(list) + "</table>";
      return;
    }
    const n = g.byId.get(sel);
    if (!n) { box.innerHTML = "<p class=\"hint\">No longer in view.</p>"; return; }
    const inbound = g.edges.filter(e => e.target === sel);
    const outbound = g.edges.filter(e => e.source === sel);
    box.innerHTML = "<h3>" + esc(n.id) + "</h3><p>" + esc(n.kind) + (n.namespace ? " in namespace " + esc(n.namespace) : "") +
      "</p><h4>called by (" + inbound.length + ")</h4><table>" + PORT_HEAD +
      inbound.map(e => "<tr><td colspan=\"5\"><b>" + esc(e.source) + "</b></td></tr>" + portRows([e])).join("") +
      "</table><h4>calls (" + outbound.length + ")</h4><table>" + PORT_HEAD +
      outbound.map(e => "<tr><td colspan=\"5\"><b>" + esc(e.target) + "</b></td></tr>" + portRows([e])).join("") + "</table>";
  }

  function status(g, errs) {
    const count = k => g.nodes.filter(n => n.kind === k).length;
    const st = document.getElementById("status");
    st.textContent = count("pod") + " workloads, " + visibleEdges(g).length + " edges · " + count("node") + " nodes · " +
      (count("external") + count("world")) + " outside · updated " + new Date().toLocaleTimeString() +
      (errs ? " · " + errs + " node(s) unreachable" : "");
    st.className = errs ? "err" : "";
  }

  function fillNamespaces(g) {
    const sel = document.getElementById("ns");
    const names = [...new Set(g.nodes.filter(n => n.namespace).map(n => n.namespace))].sort();
    const have = [...sel.options].map(o => o.value).filter(v => v);
    if (names.join("|") === have.join("|")) return;
    sel.innerHTML = "<option value=\"\">all namespaces</option>" +
      names.map(n => "<option" + (n === state.ns ? " selected" : "") + ">" + esc(n) + "</option>").join("");
  }

  function get(url) {
    // XMLHttpRequest rather than fetch: it also reads file:// fixtures.
    return new Promise((resolve, reject) => {
      const x = new XMLHttpRequest();
      x.open("GET", url);
      x.onload = () => (x.status === 200 || x.status === 0) ? resolve(x.responseText) : reject(new Error("HTTP " + x.status));
      x.onerror = () => reject(new Error("no answer"));
      x.send();
    });
  }

  async function refresh() {
    const st = document.getElementById("status");
    try {
      const url = state.window === "all" ? api : api + (api.includes("?") ? "&" : "?") + "window=" + state.window;
      const g = JSON.parse(await get(url));
      state.data = g;
      fillNamespaces(g);
      draw(g);
      status(g, (g.errors || []).length);
      document.body.dataset.ready = "1";
    } catch (e) {
      st.textContent = "cannot load the graph: " + e.message;
      st.className = "err";
    }
  }

  cy.on("tap", "node, edge", ev => {
    const el = ev.target;
    if (el.isNode && el.isNode() && el.isParent()) return;
    state.selected = el.id();
    details();
  });
  cy.on("tap", ev => { if (ev.target === cy) { state.selected = null; details(); } });
  document.getElementById("window").addEventListener("change", ev => { state.window = ev.target.value; refresh(); });
  document.getElementById("ns").addEventListener("change", ev => { state.ns = ev.target.value; if (state.data) draw(state.data); });
  document.getElementById("verdict").addEventListener("change", ev => {
    state.verdict = ev.target.value; if (state.data) draw(state.data);
  });
  refresh();
  setInterval(refresh, REFRESH_MS);
})();
