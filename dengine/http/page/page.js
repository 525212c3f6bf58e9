// The cluster page (docs/http.md): reads status.json from the node that
// served it, every second, and draws members, leader and small charts.
// Plain DOM, no libraries; text goes in with textContent only.
"use strict";

(function () {
  const POLL_MS = 1000;
  const TIMEOUT_MS = 2500;
  const POINTS = 60;
  const $ = (id) => document.getElementById(id);

  function show(el, value) {
    el.textContent = value === null || value === undefined ? "\u2013" : String(value);
  }

  function setConnection(kind, message) {
    const el = $("connection");
    el.className = kind;
    el.textContent = message;
  }

  // The leader: the reachable member that says it leads, in the highest term;
  // else whom the serving node follows.
  function leaderOf(doc) {
    let best = null;
    for (const row of doc.cluster || []) {
      if (row.reachable && row.role === "leader" && (best === null || row.term > best.term)) best = row;
    }
    if (best !== null) return best.node_id;
    return doc.leader_id === undefined ? null : doc.leader_id;
  }

  function cell(tr, value, className) {
    const td = document.createElement("td");
    show(td, value);
    if (className) td.className = className;
    tr.appendChild(td);
    return td;
  }

  function renderMembers(doc, leader) {
    const body = document.querySelector("#members tbody");
    const rows = [];
    for (const m of doc.cluster || []) {
      const tr = document.createElement("tr");
      const health = !m.reachable ? "unreachable" : m.healthy ? "healthy" : "unhealthy";
      tr.dataset.nodeId = String(m.node_id);
      tr.dataset.role = m.role || "";
      tr.dataset.health = health;
      tr.className = [m.node_id === leader ? "leader" : "", m.self ? "self" : "", health].join(" ").trim();
      tr.title = m.self ? "this node (it served the page)" : (m.error || "");
      cell(tr, m.node_id);
      cell(tr, m.role ? m.role + (m.is_learner && m.role !== "learner" ? " (learner)" : "") : null,
           m.role ? "role-" + m.role : "");
      cell(tr, m.reachable ? m.health : "unreachable", "health-" + health);
      cell(tr, m.term);
      cell(tr, m.commit_index);
      cell(tr, m.applied_index);
      cell(tr, m.lag);
      cell(tr, m.peer_address, "address");
      cell(tr, m.client_address, "address");
      rows.push(tr);
    }
    body.replaceChildren(...rows);
  }

  function format(v) {
    if (v === null || v === undefined) return "\u2013";
    if (v >= 100) return v.toFixed(0);
    if (v >= 10) return v.toFixed(1);
    return v.toFixed(2);
  }

  // One sparkline: a line (broken where a value is unknown) over a filled area.
  function renderChart(figure, history) {
    const values = ((history && history[figure.dataset.series]) || []).slice(-POINTS);
    const known = values.filter((v) => v !== null && v !== undefined);
    const max = Math.max(1e-9, ...known);
    const step = 300 / (POINTS - 1);
    const x0 = (POINTS - values.length) * step;
    let line = "";
    let area = "";
    let run = [];
    const flush = () => {
      if (run.length) {
        area += "M" + run[0][0] + ",60 L" + run.map((p) => p.join(",")).join(" L") + " L" + run[run.length - 1][0] + ",60 Z ";
      }
      run = [];
    };
    values.forEach((v, i) => {
      if (v === null || v === undefined) { flush(); return; }
      const p = [(x0 + i * step).toFixed(1), (58 - (v / max) * 54).toFixed(1)];
      line += (run.length ? " L" : " M") + p.join(",");
      run.push(p);
    });
    flush();
    figure.querySelector("path.line").setAttribute("d", line.trim());
    figure.querySelector("path.area").setAttribute("d", area.trim());
    show(figure.querySelector(".value"), known.length ? format(known[known.length - 1]) : null);
    figure.querySelector(".scale").textContent = known.length
      ? "max " + format(Math.max(...known)) + " over the last " + values.length + " s"
      : "no data yet";
  }

  function render(doc) {
    if (doc.starting) {
      show($("served-by"), "a starting node");
      return;
    }
    const leader = leaderOf(doc);
    show($("cluster-id"), doc.cluster_id);
    const leaderEl = $("leader");
    leaderEl.textContent = leader === null ? "none" : "node " + leader;
    leaderEl.dataset.leaderId = leader === null ? "" : String(leader);
    const terms = (doc.cluster || []).filter((m) => m.reachable).map((m) => m.term);
    show($("term"), terms.length ? Math.max(...terms) : doc.term);
    show($("member-count"), (doc.cluster || []).length);
    show($("served-by"), "node " + doc.node_id);
    document.title = "dengine " + doc.cluster_id + ": leader " + (leader === null ? "none" : leader);
    renderMembers(doc, leader);
    for (const figure of document.querySelectorAll(".chart")) renderChart(figure, doc.history);
    $("updated").textContent = new Date().toLocaleTimeString();
  }

  async function poll() {
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), TIMEOUT_MS);
    try {
      const res = await fetch("status.json", { cache: "no-store", signal: ctrl.signal });
      const doc = await res.json();
      render(doc);
      if (doc.starting) setConnection("pending", "this node is starting");
      else if (doc.health && doc.health.health !== "true") setConnection("error", "this node: " + doc.health.reason);
      else setConnection("ok", "live");
    } catch (err) {
      setConnection("error", "cannot reach the node that served this page; showing its last answer");
    } finally {
      clearTimeout(timer);
      setTimeout(poll, POLL_MS);
    }
  }

  poll();
})();
