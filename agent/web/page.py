"""The status page itself: static HTML, CSS and a small script that fetches /api/status every `refresh_s`.

The script only places strings the server formatted (agent/web/fmt.py) and SVG the server drew (agent/web/svg.py):
there is no chart library and no number formatting in the browser. Data goes into the page through `textContent`
(never as markup), charts through `innerHTML` from this server's own SVG routes, under a Content-Security-Policy
that allows the page's own script and style only. Asset rows come one page at a time (50 by default), filtered on the
server, so a 1000-asset site sends and renders what one screen shows. Relative URLs, so the page also works behind a
reverse proxy that mounts it under a path.

`document.body.dataset.firstRenderMs` is set once the first status and the plan chart are on screen (milliseconds
since navigation started): what bench/web_load.py reads as the page's load time.
"""

from __future__ import annotations

HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>vpp-agent status</title>
<link rel="stylesheet" href="app.css">
<script src="app.js" defer></script>
</head>
<body>
<header>
  <h1><span data-f="site.name">vpp-agent</span> <span id="state" class="badge" data-f="health.state">…</span></h1>
  <p><span data-f="site.now"></span> · mode <span data-f="site.mode"></span> · money in
  <span data-f="site.currency"></span> · vpp-agent <span data-f="site.version"></span>
  <span id="conn" class="warn"></span></p>
  <ul id="reasons" class="warn"></ul>
</header>
<main>
<section id="envelope">
  <h2>VPP envelope</h2>
  <dl>
    <dt>assets</dt><dd><span data-f="envelope.available"></span> available of <span data-f="envelope.assets"></span>,
      <span data-f="envelope.out"></span> out, <span data-f="envelope.clamped"></span> clamped</dd>
    <dt>site meter</dt><dd id="site-meter" data-f="envelope.site_meter"></dd>
    <dt>site target</dt><dd data-f="envelope.site_target"></dd>
    <dt>site limits</dt><dd>import <span data-f="envelope.import_limit"></span>,
      export <span data-f="envelope.export_limit"></span></dd>
    <dt>assets' power</dt><dd id="fleet-power" data-f="envelope.power"></dd>
    <dt>stored</dt><dd data-f="envelope.stored"></dd>
    <dt>can absorb</dt><dd><span data-f="envelope.absorb"></span> for <span data-f="envelope.absorb_for"></span></dd>
    <dt>can deliver</dt><dd><span data-f="envelope.deliver"></span> for <span data-f="envelope.deliver_for"></span></dd>
    <dt>EVs still need</dt><dd data-f="envelope.ev_needed"></dd>
  </dl>
</section>
<section id="health">
  <h2>Agent health</h2>
  <dl>
    <dt>cycles</dt><dd><span id="cycles" data-f="health.cycles"></span>
      (period <span data-f="health.period"></span>)</dd>
    <dt>cycle time</dt><dd>last <span data-f="health.cycle_last"></span>, median
      <span data-f="health.cycle_median"></span>, max <span data-f="health.cycle_max"></span> of the last
      <span data-f="health.cycle_window"></span></dd>
    <dt>overruns / failures</dt><dd><span data-f="health.overruns"></span> /
      <span data-f="health.cycle_failures"></span></dd>
    <dt>polls / writes</dt><dd><span data-f="health.polls"></span> / <span data-f="health.writes"></span>
      (<span data-f="health.write_failures"></span> failed)</dd>
    <dt>signals</dt><dd><span data-f="health.signals.accepted"></span> accepted,
      <span data-f="health.signals.duplicate"></span> duplicate, <span data-f="health.signals.rejected"></span>
      rejected</dd>
    <dt>MQTT</dt><dd data-f="health.mqtt"></dd>
    <dt>state file</dt><dd data-f="health.store"></dd>
    <dt>up since</dt><dd data-f="health.up_since"></dd>
    <dt>page snapshot</dt><dd data-f="health.snapshot_ms"></dd>
  </dl>
</section>
<section id="plan" class="wide">
  <h2>Plan against price</h2>
  <p id="plan-line"></p>
  <p id="plan-reserve"></p>
  <ul id="plan-terms"></ul>
  <div id="plan-chart" class="chart"></div>
</section>
<section id="events" class="wide">
  <h2>Grid events</h2>
  <table><thead><tr><th>id</th><th>kind</th><th>state</th><th>window</th><th>asked</th><th>baseline</th>
  <th>now</th><th>result</th><th>money</th></tr></thead><tbody id="event-rows"></tbody></table>
  <div id="event-charts"></div>
</section>
<section id="assets" class="wide">
  <h2>Assets</h2>
  <form id="filter">
    <input id="q" type="search" placeholder="filter by id" autocomplete="off">
    <label><input id="problems" type="checkbox"> problems only</label>
    <button type="button" id="prev">‹ prev</button>
    <span id="pager"></span>
    <button type="button" id="next">next ›</button>
  </form>
  <table><thead><tr><th>id</th><th>kind</th><th>availability</th><th>status</th><th>power</th><th>setpoint</th>
  <th>planned now</th><th>SoC</th><th>EV</th><th>clamped by / error</th></tr></thead>
  <tbody id="asset-rows"></tbody></table>
  <div id="asset-detail"><p class="hint">Click an asset's id for its 24-h schedule and SoC.</p>
  <div id="asset-chart" class="chart"></div></div>
</section>
</main>
</body>
</html>
"""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 0 1.5em 2em; color: #222; background: #f6f7f9; }
header h1 { margin: 0.6em 0 0.1em; font-size: 1.4em; }
header p { margin: 0 0 0.4em; color: #555; }
main { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 1em; }
section { background: #fff; border: 1px solid #dde; border-radius: 6px; padding: 0.4em 1em 1em; overflow-x: auto; }
section.wide { grid-column: 1 / -1; }
h2 { font-size: 1.1em; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 0.2em 1em; margin: 0; }
dt { color: #666; } dd { margin: 0; font-variant-numeric: tabular-nums; }
table { border-collapse: collapse; width: 100%; font-size: 0.9em; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: 0.2em 0.5em; border-bottom: 1px solid #eee; white-space: nowrap; }
td.err { white-space: normal; color: #a33; }
#events td { white-space: normal; }
.badge { font-size: 0.7em; padding: 0.1em 0.5em; border-radius: 4px; background: #2a7; color: #fff; }
.badge.degraded { background: #d80; } .badge.offline { background: #a33; }
.warn { color: #a33; }
tr.out td { color: #a33; } tr.clamped td.clamp { color: #d80; }
a.asset { color: #1f5fa8; cursor: pointer; text-decoration: underline; }
.chart svg { max-width: 100%; height: auto; }
.hint { color: #777; }
form#filter { margin: 0 0 0.5em; display: flex; gap: 0.6em; align-items: center; }
"""

SCRIPT = """'use strict';
const view = {page: 0, q: '', problems: false, planVersion: null, asset: null, eventCharts: {}, first: true,
              refreshMs: 2000};

// relative to the page, without the user:password@ a login URL may carry (fetch refuses URLs holding credentials;
// the browser sends the login it already has to the same origin)
const base = location.origin + location.pathname;
function at(path) { return new URL(path, base).href; }

function field(obj, path) {
  return path.split('.').reduce((o, k) => (o == null ? undefined : o[k]), obj);
}

function cell(row, text, cls) {
  const td = document.createElement('td');
  td.textContent = text == null ? '' : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

async function svgInto(url, element) {
  const r = await fetch(at(url), {cache: 'no-store'});
  if (r.ok) element.innerHTML = await r.text();  // this server's own SVG (svg.py escapes every label)
}

function renderSummary(s) {
  for (const el of document.querySelectorAll('[data-f]')) {
    const value = field(s, el.dataset.f);
    if (value !== undefined && value !== null) el.textContent = String(value);
  }
  const badge = document.getElementById('state');
  badge.className = 'badge ' + s.health.state;
  const reasons = document.getElementById('reasons');
  reasons.replaceChildren(...s.health.reasons.map(r => { const li = document.createElement('li');
                                                          li.textContent = r; return li; }));
  const plan = s.plan;
  const line = document.getElementById('plan-line');
  const terms = document.getElementById('plan-terms');
  document.getElementById('plan-reserve').textContent = (plan && plan.reserve) || '';
  if (!plan) {
    line.textContent = 'No optimiser in this mode: the rule controller steers to the site target.';
    terms.replaceChildren();
  } else if (!plan.start) {
    line.textContent = 'No plan yet (' + plan.failures_in_a_row + ' failed in a row) ' + plan.last_failure;
    terms.replaceChildren();
  } else {
    line.textContent = 'Plan from ' + plan.start + ' to ' + plan.end + ', ' + plan.steps + ' steps of ' +
      plan.step + ', ' + plan.assets + ' assets, ' + plan.method + ' solve in ' + plan.solve + '; ' +
      (plan.covers_now ? 'covers now' : 'does NOT cover now: the rule controller steers') +
      (plan.failures_in_a_row ? '; ' + plan.failures_in_a_row + ' re-plans failed since: ' + plan.last_failure : '') +
      '. Net of its terms: it ' + plan.net +
      ' (wear, penalties and the value of energy left at the end are priced in, but are not cash).';
    terms.replaceChildren(...plan.terms.concat(plan.violations.map(v => ({term: 'short', value: v}))).map(t => {
      const li = document.createElement('li'); li.textContent = t.term + ': ' + t.value; return li; }));
  }
}

function renderEvents(events) {
  const body = document.getElementById('event-rows');
  body.replaceChildren(...events.map(e => {
    const tr = document.createElement('tr');
    tr.dataset.event = e.id;
    for (const k of ['id', 'kind', 'state', 'window', 'ask', 'baseline', 'now', 'result', 'money']) cell(tr, e[k]);
    return tr;
  }));
  if (!events.length) {
    const tr = document.createElement('tr'); cell(tr, 'none yet'); body.appendChild(tr);
  }
}

async function eventCharts(events) {
  const box = document.getElementById('event-charts');
  const wanted = events.filter(e => e.chart).slice(0, 4);
  const keep = new Set(wanted.map(e => e.id));
  for (const div of [...box.children]) if (!keep.has(div.dataset.event)) div.remove();
  for (const e of wanted) {
    let div = box.querySelector('div[data-event="' + CSS.escape(e.id) + '"]');
    if (!div) { div = document.createElement('div'); div.className = 'chart'; div.dataset.event = e.id;
                box.appendChild(div); }
    if (view.eventCharts[e.id] !== e.chart) {
      view.eventCharts[e.id] = e.chart;
      await svgInto('chart/event/' + encodeURIComponent(e.id), div);
    }
  }
}

function renderAssets(a) {
  const body = document.getElementById('asset-rows');
  body.replaceChildren(...a.rows.map(r => {
    const tr = document.createElement('tr');
    tr.dataset.asset = r.id;
    if (r.availability !== 'available') tr.className = 'out';
    else if (r.clamped) tr.className = 'clamped';
    const id = cell(tr, '');
    const link = document.createElement('a'); link.className = 'asset'; link.textContent = r.id;
    link.addEventListener('click', () => { view.asset = r.id; view.planVersion = null; refresh(); });
    id.appendChild(link);
    cell(tr, r.kind); cell(tr, r.availability); cell(tr, r.status); cell(tr, r.power, 'power');
    cell(tr, r.setpoint); cell(tr, r.planned); cell(tr, r.soc); cell(tr, r.ev);
    cell(tr, r.clamped || r.error, r.clamped ? 'clamp' : 'err');
    return tr;
  }));
  document.getElementById('pager').textContent =
    'page ' + (a.page + 1) + ' of ' + a.pages + ' (' + a.matching + ' matching)';
  view.page = a.page;
}

async function refresh() {
  clearTimeout(view.timer);
  try {
    const q = new URLSearchParams({page: view.page, q: view.q, problems: view.problems ? '1' : '0'});
    const r = await fetch(at('api/status?' + q), {cache: 'no-store'});
    if (!r.ok) throw new Error('HTTP ' + r.status);
    const s = await r.json();
    view.refreshMs = s.summary.site.refresh_s * 1000;
    renderSummary(s.summary);
    renderEvents(s.summary.events);
    renderAssets(s.assets);
    const version = s.summary.plan && s.summary.plan.version;
    if (version !== view.planVersion || view.planVersion === null) {
      view.planVersion = version || '';
      await svgInto('chart/plan', document.getElementById('plan-chart'));
      if (view.asset) await svgInto('chart/asset/' + encodeURIComponent(view.asset),
                                    document.getElementById('asset-chart'));
    }
    await eventCharts(s.summary.events);
    document.getElementById('conn').textContent = '';
    if (view.first) { view.first = false; document.body.dataset.firstRenderMs = Math.round(performance.now()); }
  } catch (err) {
    document.getElementById('conn').textContent = ' · agent unreachable (' + err.message + '): showing the last state';
  }
  view.timer = setTimeout(refresh, view.refreshMs);
}

document.addEventListener('DOMContentLoaded', () => {
  const q = document.getElementById('q');
  q.addEventListener('input', () => { view.q = q.value; view.page = 0; refresh(); });
  document.getElementById('problems').addEventListener('change', e => {
    view.problems = e.target.checked; view.page = 0; refresh(); });
  document.getElementById('prev').addEventListener('click', () => {
    view.page = Math.max(0, view.page - 1); refresh(); });
  document.getElementById('next').addEventListener('click', () => { view.page += 1; refresh(); });
  document.getElementById('filter').addEventListener('submit', e => e.preventDefault());
  refresh();
});
"""
